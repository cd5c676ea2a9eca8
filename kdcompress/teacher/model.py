"""Teachers: one `Teacher` whatever the file format, and kdcompress's own checkpoint format.

kdcompress's checkpoint is a plain dict of strings, numbers, lists and tensors, so weights-only loading
reads it without unpickling code:
    format="kdcompress.checkpoint", version, arch, arch_kwargs, state_dict, classes, input_spec, metrics.
A student.pt written by `train` has the same format, so a distilled student can teach in turn.
The other formats (a plain state_dict, a dict checkpoint, TorchScript, ONNX, a pickled module) are read
by teacher_formats.py; `load_teacher` is the one entry point.

The trainer never branches on the format: it calls `Teacher.outputs(x, want_embed)`. A teacher whose
penultimate embedding cannot be reached (ONNX, a TorchScript model whose children do not compose into
its forward) is logits-only, and presets
whose losses need that embedding are refused up front by `Teacher.check_needs`.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..runtime import onnx_bytes, set_metadata
from ..core.errors import InputError, UsageError
from ..core.spec import InputSpec

from .embedding import EMBED_CHILDREN, EMBED_HOOK, EMBED_TIMM, forward_with_embed  # noqa: F401  (re-exported)

OUTPUT_LOGITS = "logits"
OUTPUT_PROBABILITIES = "probabilities"  # the model ends in Softmax: outputs() gives log-probabilities
_TINY = torch.finfo(torch.float32).tiny


@dataclass(frozen=True)
class Teacher:
    model: nn.Module  # forward(x normalised) -> logits, for every format (an ORT session is wrapped)
    arch: str
    classes: tuple[str, ...]
    input_spec: InputSpec
    embed_dim: int | None  # None: logits-only
    params: int
    path: Path
    sha256: str
    metrics: dict[str, Any] = field(default_factory=dict)
    # format: kdcompress | state_dict | checkpoint | lightning | safetensors | hf_folder | torchscript | onnx | pickle
    format: str = "kdcompress"
    flops: int | None = None  # forward FLOPs at batch 1 (None: not countable, e.g. an ONNX teacher)
    embed_via: str | None = None  # EMBED_TIMM | EMBED_HOOK | EMBED_CHILDREN | None
    head: str | None = None  # module name of the classifier Linear (EMBED_HOOK, EMBED_CHILDREN)
    # OUTPUT_PROBABILITIES: the model's output rows are already a probability (a Softmax at its end, seen
    # on a probe batch); outputs() then returns log p, and log_softmax(log p / T) is exactly the softened
    # distribution of the underlying logits at any temperature T, so KD loses nothing.
    output: str = OUTPUT_LOGITS

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def logits_only(self) -> bool:
        return self.embed_dim is None

    @property
    def exportable(self) -> bool:
        """True when the model is an ordinary nn.Module that the dynamo exporter (and select) can take."""
        return self.format not in ("torchscript", "onnx")

    def to(self, device: torch.device) -> Teacher:
        """The frozen teacher on `device`, in eval mode (channels_last on CUDA); modules move in place."""
        self.model.to(device).eval()
        if device.type == "cuda" and self.exportable:
            self.model.to(memory_format=torch.channels_last)
        return self

    def outputs(self, x: Tensor, want_embed: bool = False):
        """ModelOut(logits, embed | None) for a normalised batch; the trainer's one call into the teacher."""
        from ..core.types import ModelOut

        if not want_embed:
            return ModelOut(self._as_logits(self.model(x)))
        if self.embed_via is None:
            raise UsageError(f"teacher {self.path} ({self.format}) gives logits only; it has no embedding")
        logits, emb = forward_with_embed(self.model, x, self.embed_via, self.head)
        return ModelOut(self._as_logits(logits), emb)

    def _as_logits(self, out: Tensor) -> Tensor:
        if self.output == OUTPUT_PROBABILITIES:  # log p: logits up to a per-row constant
            return out.float().clamp_min(_TINY).log()
        return out

    def check_needs(self, needs: Iterable[str], preset: str) -> None:
        """Refuse, in one line, a preset whose losses need teacher features this teacher cannot give."""
        from ..core.types import NEED_TEACHER_EMBED

        if NEED_TEACHER_EMBED in set(needs) and self.logits_only:
            raise UsageError(
                f"preset '{preset}' needs the teacher's penultimate features, but teacher {self.path} "
                f"({self.format}) gives logits only; use a logit-only preset (e.g. kd or dkd) or a PyTorch "
                "teacher (kdcompress checkpoint, state_dict + --teacher-arch, or scripted TorchScript)")


# --------------------------------------------------------------------------------- kdcompress format


# --------------------------------------------------------------------------------- any format


def teacher_onnx_bytes(teacher: Teacher, metadata: dict[str, Any] | None = None) -> bytes:
    """The teacher as one self-contained ONNX file (for ORT validation and latency), metadata added.

    ONNX teachers are copied as they are; TorchScript goes through the TorchScript-based exporter (the
    dynamo exporter cannot trace a ScriptModule); everything else through runtime.onnxio.onnx_bytes."""
    import onnx

    if teacher.format == "torchscript":
        buf, out = io.BytesIO(), io.StringIO()
        model = teacher.model.float().cpu().eval()
        with warnings.catch_warnings(), contextlib.redirect_stdout(out):
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(model, (torch.zeros((2, *teacher.input_spec.shape)),), buf, dynamo=False,
                                  input_names=["input"], output_names=["logits"], opset_version=17,
                                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
            except Exception as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise InputError(f"TorchScript teacher {teacher.path} cannot be exported to ONNX: "
                                 f"{first[:200]}") from None
        data = buf.getvalue()
    elif teacher.format == "onnx":
        data = _only_output(_dynamic_batch(_inlined(Path(teacher.path)), teacher),
                            getattr(teacher.model, "output_name", None))
    else:
        return onnx_bytes(teacher.model, teacher.input_spec, metadata=metadata)
    if not metadata:
        return data
    proto = onnx.load_from_string(data)
    set_metadata(proto, metadata)
    return proto.SerializeToString()


def _only_output(data: bytes, name: str | None) -> bytes:
    """A graph with several outputs (logits + features) reduced to the one the teacher reads, so whatever
    measures the copy (validate takes a file's first output) sees the logits."""
    import onnx

    proto = onnx.load_from_string(data)
    if name is None or len(proto.graph.output) < 2:
        return data
    keep = [o for o in proto.graph.output if o.name == name]
    del proto.graph.output[:]
    proto.graph.output.extend(keep)
    return proto.SerializeToString()


def _inlined(path: Path) -> bytes:
    """The ONNX file with any external data (weights in files beside it, as torch.onnx.export(...,
    external_data=True) writes) read in, so the copy in the run directory stands alone."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    if not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        return path.read_bytes()
    try:
        return onnx.load(str(path)).SerializeToString()
    except (ValueError, OSError) as e:  # protobuf's 2 GiB limit, or a missing data file
        raise InputError(f"ONNX teacher {path}: its external data cannot be read into one file "
                         f"({' '.join(str(e).split())[:200]})") from None


def _dynamic_batch(data: bytes, teacher: Teacher) -> bytes:
    """An ONNX teacher exported with a fixed batch gets a symbolic batch axis (validation runs batches of
    256), provided it then really runs at another batch size; otherwise say how to fix the file."""
    import numpy as np
    import onnx

    from ..runtime import make_session

    proto = onnx.load_from_string(data)
    init = {t.name for t in proto.graph.initializer}
    ios = [i for i in proto.graph.input if i.name not in init] + list(proto.graph.output)
    dims = [io.type.tensor_type.shape.dim for io in ios if len(io.type.tensor_type.shape.dim)]
    if not any(d[0].HasField("dim_value") for d in dims):
        return data
    for d in dims:
        d[0].ClearField("dim_value")
        d[0].dim_param = "batch"
    out = proto.SerializeToString()
    try:
        sess = make_session(out)
        sess.run(None, {sess.get_inputs()[0].name: np.zeros((3, *teacher.input_spec.shape), np.float32)})
    except Exception:
        raise InputError(f"ONNX teacher {teacher.path} only runs at a fixed batch size; re-export it with a "
                         "dynamic batch axis (torch.onnx.export(..., dynamic_shapes=...))") from None
    return out


