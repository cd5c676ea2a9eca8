"""Reduced-precision variants of an exported fp32 ONNX model: fp16 and static INT8 (QDQ).

Facts from ENVIRONMENT.md §5 that shape this:
- fp16 with `onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)`: the file
  keeps float32 inputs/outputs (the convention for drop-in use) and halves in size; it brings no CPU
  speed-up. The converter appends its input Casts at the end of the node list, which onnx.checker rejects
  ("Nodes in a graph must be topologically sorted"), so the graph is sorted afterwards.
- INT8: `quant_pre_process` first (the dynamo exporter writes value_info shapes that go stale otherwise),
  then `quantize_static` in QDQ format, per-channel, activations QUInt8 and weights QInt8 — the only
  combination measured faster than fp32 on these CPUs. QOperator, S8/S8 and dynamic quantisation were
  slower. onnxruntime.quantization logs through the root logger ("WARNING:root:..."): silenced here.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..core.errors import InputError

CALIB_BATCH = 16


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(old)


def topological_sort(model) -> None:
    """Sort `model.graph.node` in place so every node follows the producers of its inputs (Kahn)."""
    graph = model.graph
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise InputError(f"ONNX graph has a cycle or an undefined input near node '{rest[0].name}'")
        pending = rest
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered, strict=True):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


def to_fp16(fp32_model):
    """A float16 copy of an fp32 ModelProto with float32 inputs/outputs; metadata_props are kept."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with _quiet_root_logger():
        half = convert_float_to_float16(fp32_model, keep_io_types=True, disable_shape_infer=False)
    topological_sort(half)
    return half


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over an in-memory array of normalised images."""

    def __init__(self, input_name: str, images: np.ndarray):
        self._feeds = iter([{input_name: images[i:i + CALIB_BATCH]} for i in range(0, len(images), CALIB_BATCH)])

    def get_next(self):
        return next(self._feeds, None)


def to_int8(fp32_path: Path, out_path: Path, calib: np.ndarray, input_name: str) -> None:
    """Static QDQ INT8 of the fp32 file at `fp32_path`, calibrated (MinMax) on `calib` (N, C, H, W),
    float32, already normalised like the model's input. Writes `out_path` (one self-contained file)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calib.ndim != 4 or len(calib) == 0:
        raise InputError(f"INT8 calibration needs at least one image, got an array of shape {calib.shape}")

    class Reader(_Calibration, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(prefix="kdc-int8-") as tmp, _quiet_root_logger():
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(fp32_path), str(pre))
            quantize_static(str(pre), str(out_path), Reader(input_name, calib.astype(np.float32)),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        except Exception as e:  # a model ORT's quantiser cannot handle: one line, not a traceback
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise InputError(f"INT8 quantisation of {fp32_path} failed: {first[:300]}") from None




def timing_variant(fp32: bytes, spec, precision: str, n_calib: int = 8) -> bytes:
    """The fp16 or INT8 form of fp32 ONNX bytes, made exactly as export makes it, for latency measurement
    by select: INT8 is calibrated on `n_calib` random images (timing does not depend on the scales)."""
    import onnx

    from ..runtime import INPUT_NAME

    if precision == "fp16":
        return to_fp16(onnx.load_from_string(fp32)).SerializeToString()
    if precision != "int8":
        raise InputError(f"no timing variant for precision '{precision}'")
    with tempfile.TemporaryDirectory(prefix="kdc-timing-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32)
        calib = np.random.default_rng(0).standard_normal((n_calib, *spec.shape)).astype(np.float32)
        to_int8(src, dst, calib, INPUT_NAME)
        return dst.read_bytes()
