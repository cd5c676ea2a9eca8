"""The runtime layer, beneath the stages and above core: ONNX Runtime sessions and the one latency harness
(ortbench), latency drawn in fresh processes (freshbench), latency tables measured on the target
(latencytable), and the torch -> ONNX conversion with its metadata (onnxio).

This is the layer's face: a module outside runtime imports these names from `kdcompress.runtime`, never
from a module of it. The face is lazy (PEP 562): a name imports its own module when first asked for, so
`kdcompress profile` and freshbench's child processes still import ortbench, freshbench and latencytable
with onnxruntime and numpy alone (no torch); onnxio imports torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazyface import lazy_getattr

# name -> the module of this package that defines it
_FACE = {
    **dict.fromkeys(("LatencyStats", "SessionSettings", "check_onnx", "make_session", "measure_latency",
                     "ort_max_opset", "settings_grid", "stored_settings", "sweep_settings"), "ortbench"),
    **dict.fromkeys(("UNSTABLE", "fresh_draws"), "freshbench"),
    **dict.fromkeys(("MANIFEST", "MANIFEST_FORMAT", "check_table", "model_key", "profile_dir", "read_table",
                     "table_stats"), "latencytable"),
    **dict.fromkeys(("DEFAULT_OPSET", "INPUT_NAME", "MIN_OPSET", "OUTPUT_NAME", "TOLERANCES", "VARIANTS", "Tolerance",
                     "build_metadata", "checked_bytes", "detect_variant", "encode_value", "logits_output",
                     "onnx_bytes", "onnx_proto",
                     "read_metadata", "screen_bytes", "set_metadata", "simplify_proto", "stamp_metadata"), "onnxio"),
}
__all__ = sorted(_FACE)


__getattr__ = lazy_getattr(__name__, _FACE)


if TYPE_CHECKING:  # what the face gives, for type checkers and readers
    from .freshbench import UNSTABLE, fresh_draws  # noqa: F401
    from .latencytable import (MANIFEST, MANIFEST_FORMAT, check_table, model_key, profile_dir,  # noqa: F401
                               read_table, table_stats)
    from .onnxio import (DEFAULT_OPSET, INPUT_NAME, MIN_OPSET, OUTPUT_NAME, TOLERANCES, VARIANTS,  # noqa: F401
                         Tolerance, build_metadata, checked_bytes, detect_variant, encode_value, logits_output,
                         onnx_bytes, onnx_proto, read_metadata, screen_bytes, set_metadata, simplify_proto,
                         stamp_metadata)
    from .ortbench import (LatencyStats, SessionSettings, check_onnx, make_session,  # noqa: F401
                           measure_latency, ort_max_opset, settings_grid, stored_settings, sweep_settings)
