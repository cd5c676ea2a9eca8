"""The teacher stage: every teacher file format -> one `Teacher` (logits, the embedding where reachable,
classes, input spec). `load_teacher` is the one entry point; `teacher_onnx_bytes` gives it as ONNX."""

from .formats import load_teacher
from .model import Teacher, teacher_onnx_bytes
from .strength import WEAK_TEACHER_Z, TeacherCheck, input_size_hint, teacher_check, teacher_strength

__all__ = ["WEAK_TEACHER_Z", "Teacher", "TeacherCheck", "input_size_hint", "load_teacher", "teacher_check",
           "teacher_onnx_bytes", "teacher_strength"]
