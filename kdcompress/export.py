"""torch -> ONNX: the dynamo exporter, one self-contained file, a dynamic batch axis, metadata, checked.

Facts from ENVIRONMENT.md §3: pass input/output names (dynamo otherwise names the output after the last
node), `external_data=False` (dynamo otherwise writes weights to a side file), `verbose=False` (it prints
progress to stdout otherwise), `dynamic_shapes` for the batch (a static batch breaks at batch != example).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import InputSpec
from .errors import InputError
from .runio import atomic_write_bytes

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 20


@dataclass(frozen=True)
class OnnxArtifact:
    path: Path
    opset: int
    sha256: str
    bytes: int
    metadata: dict[str, str]


def onnx_bytes(model: nn.Module, spec: InputSpec, *, opset: int = DEFAULT_OPSET,
               metadata: dict[str, Any] | None = None) -> bytes:
    """Export `model` (fp32, eval, CPU copy) and return the serialised, checked ModelProto."""
    import copy

    import onnx

    m = copy.deepcopy(model).float().cpu().eval()
    example = torch.zeros((2, *spec.shape))
    buf = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            m, (example,), f=None, dynamo=True, external_data=False, verbose=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=({0: "batch"},),
        )
    proto = prog.model_proto
    for k, v in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key = k
        entry.value = v if isinstance(v, str) else json.dumps(v)
    data = proto.SerializeToString()
    try:
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    except Exception as e:  # the exporter produced something ORT may choke on: say so, do not ship it
        raise InputError(f"exported ONNX model failed onnx.checker: {str(e).splitlines()[0][:300]}") from None
    return data


def export_onnx(model: nn.Module, spec: InputSpec, path: Path, *, opset: int = DEFAULT_OPSET,
                metadata: dict[str, Any] | None = None) -> OnnxArtifact:
    data = onnx_bytes(model, spec, opset=opset, metadata=metadata)
    atomic_write_bytes(path, data)
    meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (metadata or {}).items()}
    return OnnxArtifact(Path(path), opset, hashlib.sha256(data).hexdigest(), len(data), meta)


def read_metadata(path: Path) -> dict[str, str]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in m.metadata_props}
