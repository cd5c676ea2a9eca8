"""The validate stage: any ONNX classifier in ONNX Runtime (accuracy, parity, latency) and the gates."""

from .gates import (GateResult, Gates, accuracy_drop_warning, check_gates, raise_for_gates, recommend,
                    teacher_not_ahead_warning)
from .models import (
                     THROUGHPUT_BATCH,
                     ModelInput,
                     Validation,
                     accuracy_metrics,
                     accuracy_units,
                     describe,
                     effective_threads,
                     input_shape,
                     map_classes,
                     onnx_logits,
                     parity,
                     reference_logits,
                     validate_models,
)

__all__ = ["THROUGHPUT_BATCH", "GateResult", "Gates", "ModelInput", "Validation", "accuracy_drop_warning",
           "accuracy_metrics", "accuracy_units", "check_gates",
           "describe", "effective_threads", "input_shape", "map_classes", "onnx_logits", "parity", "raise_for_gates",
           "recommend", "reference_logits", "teacher_not_ahead_warning", "validate_models"]
