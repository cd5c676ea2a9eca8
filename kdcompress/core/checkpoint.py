"""kdcompress's checkpoint format, shared by teachers (`teacher train`) and students (every run's student.pt).

A plain dict of strings, numbers, lists and tensors, so weights-only loading reads it without unpickling
code: format="kdcompress.checkpoint", version, arch, state_dict, classes, input_spec, metrics. Building the
model back from `arch` is the zoo's job (students.checkpoint), so a distilled student can teach in turn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .errors import InputError
from .runio import atomic_torch_save
from .spec import InputSpec

FORMAT = "kdcompress.checkpoint"


VERSION = 1


def save_checkpoint(path: Path, model: nn.Module, arch: str, classes: tuple[str, ...], spec: InputSpec,
                    metrics: dict[str, Any] | None = None) -> None:
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_torch_save({
        "format": FORMAT, "version": VERSION, "arch": arch, "state_dict": state,
        "classes": list(classes), "input_spec": spec.to_json(), "metrics": dict(metrics or {}),
    }, path)


def check_kdcompress_dict(path: Path, obj: Any) -> None:
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise InputError(f"{path} is not a kdcompress checkpoint (no 'format: {FORMAT}' entry)")
    if obj.get("version") != VERSION:
        raise InputError(f"{path}: checkpoint version {obj.get('version')} is not supported (expected {VERSION})")
