"""Reading teachers in the formats people already have, into one `Teacher`.

    *.onnx                     ONNX, checked with onnx.checker, run in ONNX Runtime (logits only)
    TorchScript archive        torch.jit.load (a zip with code/); features when forward_features survives
    torch.save'd dict          kdcompress checkpoint; a plain state_dict (needs --teacher-arch); a dict
                               with the weights under state_dict / model / model_state_dict
    pickled nn.Module          only with --trust-checkpoint (unpickling can run arbitrary code)

Everything torch.save wrote is read with weights_only=True unless the user trusts the file, so a
malicious pickle cannot run. TorchScript archives hold TorchScript code and tensors, not Python pickles
of arbitrary classes, so they load without the flag.

Input shape, mean/std and class names come from the flags (they win) or what the file records; a
missing one is a one-line error naming its flag. The class count of a complete model is its output width.
"""

from __future__ import annotations

import json
import math
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.checkpoint import FORMAT
from ..core.config import TeacherOptions
from ..core.errors import InputError, UsageError
from ..core.fsguard import file_sha256
from ..core.runio import regular_file, safe_torch_load
from ..core.spec import InputSpec
from ..students import model_from_kdcompress_dict
from .archs import fit_weights, is_torchvision
from .embedding import find_embedding
from .files import is_hf_folder, read_hf_folder, read_safetensors
from .model import OUTPUT_LOGITS, OUTPUT_PROBABILITIES, Teacher
from .onnxflops import onnx_flops
from .ortteacher import OrtTeacher, graph_layout
from .recorded import Recorded, recorded_from_dict, recorded_from_module, spec_fields

WEIGHT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights")
LIGHTNING_KEYS = ("pytorch-lightning_version", "lightning_version", "hyper_parameters", "optimizer_states")
TORCHSCRIPT_META = "kdcompress.json"  # optional extra file in a TorchScript archive: classes, input_spec


def detect_format(path: Path) -> str:
    if not path.exists():
        raise InputError(f"teacher file not found: {path}")
    if is_hf_folder(path):
        return "hf_folder"
    if path.is_dir():
        raise InputError(f"expected a teacher file or a model folder with config.json, got a directory: {path}")
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if path.suffix.lower() == ".safetensors":
        return "safetensors"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            names = []
        if any("/code/" in n or n.endswith("constants.pkl") for n in names):
            return "torchscript"
    return "torch"


def load_any(path: Path, options: TeacherOptions, *, trust: bool) -> Teacher:
    fmt = detect_format(path)
    if fmt == "onnx":
        return _load_onnx(path, options)
    if fmt == "torchscript":
        return _load_torchscript(path, options)
    if fmt == "safetensors":
        state, rec = read_safetensors(path)
        return _from_state_dict(path, state, rec, options, "safetensors")
    if fmt == "hf_folder":
        state, rec, weights = read_hf_folder(path, arch_given=bool(options.arch))
        return _from_state_dict(path, state, rec, options, "hf_folder", sha_of=weights)
    with warnings.catch_warnings():
        # torch warns about the protocol of plain (non-zip) pickles before refusing or reading them; the
        # outcome is reported in one line, the warning would be a second one
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        obj = safe_torch_load(path, trust=trust)
    if isinstance(obj, nn.Module):  # only reachable with trust=True
        return _finish(path, obj, "pickle", type(obj).__name__, recorded_from_module(obj), options)
    if not isinstance(obj, dict):
        raise InputError(f"{path} holds a {type(obj).__name__}, not a model or its weights")
    if obj.get("format") == FORMAT:
        model = model_from_kdcompress_dict(path, obj)
        named = recorded_from_dict({"classes": list(obj["classes"])})  # names checked (none twice)
        fields = spec_fields(obj.get("input_spec"))
        rec = Recorded(arch=str(obj["arch"]), classes=tuple(str(c) for c in obj["classes"]),
                       metrics=dict(obj.get("metrics", {})), **fields,
                       problems=(*fields.pop("problems", ()), *named.problems))
        return _finish(path, model, "kdcompress", rec.arch or "", rec, options)
    if _is_state_dict(obj):
        return _from_state_dict(path, obj, Recorded(), options, "state_dict")
    rec = recorded_from_dict(obj)
    fmt = "lightning" if any(k in obj for k in LIGHTNING_KEYS) else "checkpoint"
    for key in WEIGHT_KEYS:
        v = obj.get(key)
        if isinstance(v, nn.Module):  # {'model': module}: pickled code, so trust was given
            return _finish(path, v, "pickle", type(v).__name__, rec, options)
        if isinstance(v, dict) and _is_state_dict(v):
            return _from_state_dict(path, v, rec, options, fmt)
    raise InputError(f"{path} holds a dict without model weights: expected a state_dict or weights under "
                     f"one of {', '.join(WEIGHT_KEYS)} (keys found: {', '.join(map(str, list(obj)[:8]))})")


def _is_state_dict(d: dict[str, Any]) -> bool:
    return bool(d) and all(isinstance(k, str) for k in d) and all(isinstance(v, Tensor) for v in d.values())


# --------------------------------------------------------------------------------- resolution


def _refuse_problems(path: Path, rec: Recorded, given: dict[str, object]) -> None:
    """A value the file records malformed (rec.problems) is refused, naming the field, the file and the
    flag that overrides it, when no flag gives that value (a flag wins over the file, so it needs none)."""
    flags = {"shape": "--input-shape C,H,W", "mean": "--mean", "std": "--std", "classes": "--classes a,b,..."}
    for field_, flag in flags.items():
        why = rec.problem(field_)
        if why and field_ in given and given[field_] is None:
            raise InputError(f"teacher {path} records a malformed {field_}: {why}; fix the file or give {flag}")


def _resolve_spec(path: Path, rec: Recorded, opt: TeacherOptions) -> InputSpec:
    _refuse_problems(path, rec, {"shape": opt.input_shape, "mean": opt.mean, "std": opt.std})
    shape = opt.input_shape or rec.shape
    mean = opt.mean or rec.mean
    std = opt.std or rec.std
    missing = [flag for flag, v in (("--input-shape C,H,W", shape), ("--mean", mean), ("--std", std)) if v is None]
    if missing:
        raise UsageError(f"teacher {path} does not record its input " + ("shape and normalisation" if len(missing) > 1
                         else "shape" if shape is None else "normalisation")
                         + f"; give {' and '.join(missing)}")
    if len(shape) != 3:
        raise InputError(f"teacher {path}: input shape {shape} is not (C, H, W)")
    c = shape[0]
    mean = mean * c if len(mean) == 1 else mean  # one value for every channel
    std = std * c if len(std) == 1 else std
    if len(mean) != c or len(std) != c:
        raise UsageError(f"teacher {path} takes {c} channel(s): --mean/--std need 1 or {c} values, "
                         f"got {len(mean)}/{len(std)}")
    return InputSpec(tuple(shape), tuple(mean), tuple(std))  # type: ignore[arg-type]


def _resolve_classes(path: Path, rec: Recorded, opt: TeacherOptions, outputs: int | None) -> tuple[str, ...]:
    """Names from --classes or the file; a count from --num-classes, the file or the model's output width.
    Without names the classes are "0".."K-1" (index names: only the count is checked against the data)."""
    _refuse_problems(path, rec, {"classes": opt.classes})
    names = opt.classes or rec.classes
    count = opt.num_classes or (len(names) if names else None) or rec.num_classes or outputs
    if count is None:
        raise UsageError(f"teacher {path} does not record its classes; give --num-classes N or --classes a,b,...")
    if names is not None and len(names) != count:
        raise UsageError(f"teacher {path}: --num-classes gives {count} classes but "
                         f"{'--classes' if opt.classes else 'the file'} names {len(names)}")
    if outputs is not None and outputs != count:
        src = "--classes" if opt.classes else "--num-classes" if opt.num_classes else "the checkpoint"
        raise InputError(f"teacher {path} outputs {outputs} logits but {src} gives {count} classes")
    return names or tuple(str(i) for i in range(count))


# --------------------------------------------------------------------------------- torch formats


def _from_state_dict(path: Path, state: dict[str, Tensor], rec: Recorded, opt: TeacherOptions,
                     fmt: str, sha_of: Path | None = None) -> Teacher:
    arch = opt.arch or rec.arch
    if not arch:
        raise UsageError(f"teacher {path} holds only weights; give --teacher-arch NAME (a torchvision model "
                         "such as resnet18, timm:NAME for a timm model, or a kdcompress zoo name such as resnet8x4)")
    spec = _resolve_spec(path, rec, opt)
    _refuse_problems(path, rec, {"classes": opt.classes})
    named = opt.classes or rec.classes
    count = opt.num_classes or (len(named) if named else None) or rec.num_classes  # else: the classifier's width
    if count is not None:
        count = len(_resolve_classes(path, rec, opt, None))  # names and count agree
    try:
        label, model, count = fit_weights(path, arch, state, count, spec)
    except InputError:
        bare = arch.rpartition(":")[2]
        if spec.shape[0] != 3 and not arch.startswith(("zoo:", "kdcompress:", "timm:")) and is_torchvision(bare):
            # the zoo has a model of this name too (it adapts to any channel count) and it did not fit: these
            # are most likely torchvision weights, which need 3-channel input
            raise UsageError(f"torchvision's {bare} takes 3-channel images but the input shape has {spec.shape[0]} "
                             f"channel(s); give --input-shape 3,H,W (the kdcompress zoo's {bare} did not fit these "
                             "weights either)") from None
        raise
    rec = rec if rec.num_classes or named else Recorded(**{**rec.__dict__, "num_classes": count})
    return _finish(path, model.eval(), fmt, label, rec, opt, spec=spec, sha_of=sha_of)


def _load_torchscript(path: Path, opt: TeacherOptions) -> Teacher:
    extra = {TORCHSCRIPT_META: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated": not the user's to act on
            model = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as e:  # RuntimeError for a corrupt archive, others from the deserialiser
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"{path} is not a loadable TorchScript model: {first[:200]}") from None
    rec = Recorded()
    if extra[TORCHSCRIPT_META]:
        try:
            rec = recorded_from_dict(json.loads(extra[TORCHSCRIPT_META]))
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            raise InputError(f"{path}: its {TORCHSCRIPT_META} entry is not a JSON object") from None
    name = getattr(model, "original_name", type(model).__name__)
    return _finish(path, model.eval(), "torchscript", f"torchscript:{name}", rec, opt)


def _finish(path: Path, model: nn.Module, fmt: str, arch: str, rec: Recorded, opt: TeacherOptions,
            spec: InputSpec | None = None, sha_of: Path | None = None) -> Teacher:
    """Probe the model once: it must take the input shape and return (batch, classes) logits; find how to
    reach its penultimate embedding (timm-style methods, else the classifier Linear's input); count FLOPs."""
    from ..students import capacity

    spec = spec or _resolve_spec(path, rec, opt)
    model = model.float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    _check_finite_weights(path, model)
    x = torch.zeros((2, *spec.shape))
    try:
        with torch.no_grad():
            logits = model(x)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"teacher {path} does not accept input of shape {tuple(x.shape)}: {first[:200]}; "
                         "check --input-shape") from None
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise InputError(f"teacher {path} returns {shape}, not logits of shape (batch, classes)")
    if not bool(torch.isfinite(logits).all()):
        raise InputError(f"teacher {path} returns NaN or infinite logits (on an all-zero batch); its weights "
                         "are broken: re-export or retrain it")
    classes = _resolve_classes(path, rec, opt, int(logits.shape[1]))
    probe = torch.randn((4, *spec.shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        probe_out = model(probe)
    via, head, dim = find_embedding(model, probe, probe_out)
    output = OUTPUT_PROBABILITIES if is_probability(logits) and is_probability(probe_out) else OUTPUT_LOGITS
    flops: int | None = None
    if not isinstance(model, OrtTeacher):  # ORT runs outside torch: _load_onnx counts them on the graph
        try:
            flops = capacity(model, spec, memo=True).flops
        except Exception:  # some scripted or exotic modules defeat the FLOP counter; leave it unknown
            flops = None
    return Teacher(model=model, arch=arch, classes=classes, input_spec=spec, embed_dim=dim,
                   params=sum(p.numel() for p in model.parameters()), path=path, sha256=file_sha256(sha_of or path),
                   metrics=dict(rec.metrics or {}), format=fmt, flops=flops, embed_via=via, head=head, output=output)


def is_probability(out: Tensor) -> bool:
    """Rows that are already a probability distribution: all in [0, 1], each summing to 1."""
    out = out.float()
    return bool(((out >= 0) & (out <= 1)).all() and torch.allclose(out.sum(1), torch.ones(len(out)), atol=1e-4))


# --------------------------------------------------------------------------------- ONNX


def _load_onnx(path: Path, opt: TeacherOptions) -> Teacher:
    import onnx

    from ..runtime import check_onnx

    check_onnx(path)
    proto = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    raw: dict[str, Any] = {}
    for key in ("classes", "mean", "std", "input_shape"):
        if key in meta:
            try:
                raw[key] = json.loads(meta[key])
            except json.JSONDecodeError:
                raw[key] = meta[key]  # not JSON ("[a,b]"): kept, so the reader calls it malformed
    graph_in = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    if len(graph_in) != 1:
        raise InputError(f"ONNX teacher {path} has {len(graph_in)} inputs; expected one image tensor")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in graph_in[0].type.tensor_type.shape.dim]
    layout = graph_layout(dims, meta.get("layout"))  # an NHWC graph takes (N, H, W, C): fed transposed
    if "input_shape" not in raw and len(dims) == 4 and all(dims[1:]):
        raw["input_shape"] = [dims[3], dims[1], dims[2]] if layout == "NHWC" else dims[1:]
    rec = recorded_from_dict(raw)
    spec = _resolve_spec(path, rec, opt)
    model = OrtTeacher(path, layout)
    if len(proto.graph.output) > 1:
        model = OrtTeacher(path, layout, _logits_output(path, model, spec, rec, opt))
    t = _finish(path, model, "onnx", f"onnx:{proto.graph.name or path.stem}", rec, opt, spec=spec)
    params = sum(math.prod(init.dims) for init in proto.graph.initializer)
    # counted on the graph (torch's counter sees nothing of ORT's run); None when it cannot be counted
    return replace(t, params=params, flops=onnx_flops(proto, spec.shape, layout))


def _logits_output(path: Path, model: OrtTeacher, spec: InputSpec, rec: Recorded, opt: TeacherOptions) -> str:
    """The output of a graph with several (logits + features, say) that holds the logits: the one of
    shape (batch, classes) for the class count the flags or the file give (the first when several fit),
    or the only rank-2 output when no count is known (runtime.logits_output, validate's rule too). Otherwise
    a one-line refusal listing the outputs."""
    from ..runtime import logits_output

    shapes = model.output_shapes(torch.zeros((2, *spec.shape)))
    listed = ", ".join(f"'{n}' {s}" for n, s in shapes.items())
    names = opt.classes or rec.classes
    count = opt.num_classes or (len(names) if names else None) or rec.num_classes
    found = logits_output(shapes, count)
    if found is not None:
        return found
    if count is None:
        raise UsageError(f"ONNX teacher {path} has {len(shapes)} outputs ({listed}) and records no class count to "
                         "tell the logits by; give --num-classes N (or --classes) and the output of that width is used")
    raise InputError(f"ONNX teacher {path} has {len(shapes)} outputs ({listed}) and none is (batch, {count}) for "
                     f"its {count} classes; export the logits as an output, or check --num-classes/--classes")


def _check_finite_weights(path: Path, model: nn.Module) -> None:
    """Weights or buffers holding NaN/inf are refused at load (else training diverges, blamed on the lr)."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise InputError(f"teacher {path} has NaN or infinite values in '{name}'; the file is broken")


def load_teacher(path: Path, *, trust: bool = False, options: TeacherOptions | None = None) -> Teacher:
    """Load a teacher in any supported format (see this module); flags in `options` override what
    the file records. Pickled code runs only with trust=True (--trust-checkpoint). Every command that reads
    a teacher takes the same teacher flags (commands.flags.TEACHER_FLAGS), so an error may name any of them."""
    regular_file(Path(path), "teacher")  # a FIFO or a device would block the reader
    return load_any(Path(path), options or TeacherOptions(), trust=trust)
