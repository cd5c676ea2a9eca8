"""The one torch -> ONNX conversion (used by export, select and the teacher), ONNX metadata, and the
parity tolerance of each precision variant.

Facts from ENVIRONMENT.md §3: pass input/output names (dynamo otherwise names the output after the last
node), `external_data=False` (dynamo otherwise writes weights to a side file), `verbose=False` (it prints
progress to stdout otherwise), `dynamic_shapes` for the batch (a static batch breaks at batch != example).
Opsets below 18 are refused: the dynamo exporter silently stays at 18 after a failed down-conversion.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import InputError, UsageError
from ..core.runio import atomic_write_bytes
from ..core.spec import InputSpec

INPUT_NAME = "input"


OUTPUT_NAME = "logits"


DEFAULT_OPSET = 20


MIN_OPSET = 18


def build_metadata(*, arch: str, classes: tuple[str, ...] | list[str], spec: InputSpec, preset: str | None,
                   teacher_sha256: str | None, val_accuracy: float | None = None) -> dict[str, Any]:
    """The self-description every kdcompress ONNX file carries (values JSON-encoded unless strings)."""
    from .. import __version__

    meta: dict[str, Any] = {
        "kdcompress_version": __version__, "arch": arch, "classes": list(classes), "mean": list(spec.mean),
        "std": list(spec.std), "input_shape": list(spec.shape), "layout": "NCHW", "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME, "preset": preset or "", "teacher_sha256": teacher_sha256 or "",
    }
    meta["preprocess"] = preprocess_description(spec)
    if val_accuracy is not None:
        meta["val_accuracy"] = round(val_accuracy, 6)
    return meta


def preprocess_description(spec: InputSpec) -> dict[str, Any]:
    """Everything a deployment does to an image file before the graph, as kdcompress's readers do it
    (data.imagesplits.decode, then core.splits.normalize): no other file or library is needed to feed it."""
    c, h, w = spec.shape
    return {
        "color": "L" if c == 1 else "RGB",  # PIL modes: grey images are replicated to RGB, RGB turned to luma L
        "alpha": "dropped",
        "sixteen_bit_grey": "rounded value / 257 to 8 bits",
        "resize": {"rule": "cover", "size": [h, w], "interpolation": "bilinear",
                   "note": "scale so the image covers the size, keeping its aspect ratio (PIL Image.resize, BILINEAR)"},
        "crop": {"rule": "center", "size": [h, w]},
        "scale": "divide the 8-bit values by 255 (to [0, 1])",
        "normalize": "(x - mean[c]) / std[c] per channel",
        "layout": "NCHW", "dtype": "float32", "output": "logits over classes, in the order of `classes`",
    }


def encode_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def set_metadata(proto, metadata: dict[str, Any]) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for k, v in metadata.items():
        entry = existing.get(k) or proto.metadata_props.add()
        entry.key = k
        entry.value = encode_value(v)


def read_metadata(path: Path) -> dict[str, str]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in m.metadata_props}


def stamp_metadata(path: Path, updates: dict[str, Any]) -> tuple[str, int]:
    """Add or replace metadata entries of an ONNX file in place (atomically); returns (sha256, bytes)."""
    import onnx

    proto = onnx.load(str(path))
    set_metadata(proto, updates)
    data = proto.SerializeToString()
    atomic_write_bytes(Path(path), data)
    return hashlib.sha256(data).hexdigest(), len(data)


def checked_bytes(proto, what: str) -> bytes:
    import onnx

    data = proto.SerializeToString()
    try:
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    except Exception as e:  # the exporter produced something ORT may choke on: say so, do not ship it
        raise InputError(f"{what} failed onnx.checker: {str(e).strip().splitlines()[0][:300]}") from None
    return data


def simplify_proto(proto):
    """`proto` simplified by onnxslim, its input and output names kept."""
    try:
        import onnxslim
    except ImportError:
        raise InputError("--simplify needs onnxslim (pip install onnxslim)") from None
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            slim = onnxslim.slim(proto)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"onnxslim could not simplify the model: {first[:300]}") from None
    names = ([i.name for i in slim.graph.input], [o.name for o in slim.graph.output])
    if names != ([INPUT_NAME], [OUTPUT_NAME]):
        raise InputError(f"onnxslim renamed the graph inputs/outputs to {names}; export without --simplify")
    return slim


@contextlib.contextmanager
def _export_copy(model: nn.Module):
    """An fp32, eval, CPU copy of `model` to export, with the exporters' warnings and stdout lines silenced."""
    import copy

    m = copy.deepcopy(model).float().cpu().eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield m


def onnx_proto(model: nn.Module, spec: InputSpec, *, opset: int = DEFAULT_OPSET, simplify: bool = False):
    """Export `model` (fp32, eval, CPU copy) to a ModelProto with a dynamic batch axis."""
    example = torch.zeros((2, *spec.shape))
    with _export_copy(model) as m:
        prog = torch.onnx.export(
            m, (example,), f=None, dynamo=True, external_data=False, verbose=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=({0: "batch"},),
        )
    proto = prog.model_proto
    got = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        raise UsageError(f"the exporter produced opset {got} instead of the requested --opset {opset}")
    return simplify_proto(proto) if simplify else proto


def onnx_bytes(model: nn.Module, spec: InputSpec, *, opset: int = DEFAULT_OPSET,
               metadata: dict[str, Any] | None = None, simplify: bool = False) -> bytes:
    """Export and return the serialised ModelProto, checked with onnx.checker (full_check)."""
    proto = onnx_proto(model, spec, opset=opset, simplify=simplify)
    set_metadata(proto, metadata or {})
    return checked_bytes(proto, "exported ONNX model")


def screen_bytes(model: nn.Module, spec: InputSpec, *, batch: int = 1, opset: int = DEFAULT_OPSET) -> tuple[bytes, str]:
    """(ONNX bytes, graph) for a latency screening at `batch`: the TorchScript exporter (`dynamo=False`,
    20-50x faster than dynamo, ENVIRONMENT.md §3) with the same names and opset, checked like onnx_bytes;
    graph "screen". The batch is static (the screening measures that batch only): with a dynamic batch the
    TorchScript graph keeps hundreds of shape-computing nodes (ShuffleNetV2: 826 nodes vs dynamo's 173) that
    ONNX Runtime cannot fold, and measured clearly slower than the dynamo graph; static, within a few
    percent (benchmarks/RESULTS.md, "Screening fidelity"). Other small differences stay (GlobalAveragePool+Flatten
    where dynamo writes ReduceMean+Reshape), so a figure that ships is measured on onnx_bytes' graph.
    When the TorchScript export fails, the dynamo bytes are returned instead, with graph "ship"."""
    import onnx

    try:
        buf = io.BytesIO()
        with _export_copy(model) as m:
            torch.onnx.export(m, (torch.zeros((batch, *spec.shape)),), buf, dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
        return checked_bytes(onnx.load_from_string(buf.getvalue()), "screening ONNX export"), "screen"
    except Exception:  # any TorchScript failure: the exporter that ships decides
        return onnx_bytes(model, spec, opset=opset), "ship"


# ------------------------------------------------------------------------------------------ variants

VARIANTS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Tolerance:
    """How far a variant's ONNX Runtime logits may stray from the PyTorch fp32 model on the test split.

    max_abs_diff_rel: allowed max |ORT - PyTorch| as a fraction of max(1, max |PyTorch logit|), so the
    bound follows the logit scale; min_agreement: the fraction of test images with the same top-1 class.
    """

    max_abs_diff_rel: float
    min_agreement: float

    def to_json(self) -> dict[str, float]:
        return {"max_abs_diff_rel": self.max_abs_diff_rel, "min_agreement": self.min_agreement}


# Chosen from measurements on digits students (360 test images; logits up to 8-17 in magnitude):
# fp32 max diff 2e-6..6e-6 (relative <= 4e-7), agreement 1.0: 1e-4 leaves 250x headroom for other CPUs'
#   kernels yet catches any real export bug; 0.999 allows one near-tie flip per thousand images.
# fp16 max diff 4e-3..6e-3 (relative <= 8e-4), agreement 1.0: 1e-2 and 0.99.
# int8 (64 calibration images) max diff 0.6..1.7 (relative 4%..10%), agreement 1.0; with only 8
#   calibration images on a weak tinycnn 2.9 (36%) and agreement 0.994. Max-abs error of int8 is driven by
#   a few outlier logits, so its bound is loose (50%) and agreement (0.97) carries the weight.
TOLERANCES = {
    "fp32": Tolerance(1e-4, 0.999),
    "fp16": Tolerance(1e-2, 0.99),
    "int8": Tolerance(0.5, 0.97),
}


def logits_output(shapes: dict[str, Sequence[Any]], count: int | None) -> str | None:
    """Of a classifier graph's outputs (name -> shape, in graph order), the one that holds the logits: the
    first of shape (batch, count) when the class count is known, else the only rank-2 one; None when the
    shapes cannot tell (the caller refuses, naming what would tell). The ONNX teacher and validate share it."""
    two_d = [n for n, s in shapes.items() if len(s) == 2]
    if count is not None:
        return next((n for n in two_d if shapes[n][1] == count), None)
    return two_d[0] if len(two_d) == 1 else None


def detect_variant(model) -> str:
    """fp32 / fp16 / int8 from the graph itself (for files without kdcompress metadata)."""
    from onnx import TensorProto

    ops = {n.op_type for n in model.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger"}:
        return "int8"
    types = [t.data_type for t in model.graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    if types and sum(t == TensorProto.FLOAT16 for t in types) * 2 > len(types):
        return "fp16"
    return "fp32"
