"""Rebuild a zoo model from a kdcompress checkpoint (core.checkpoint's format)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..core.checkpoint import check_kdcompress_dict
from ..core.errors import InputError
from ..core.runio import safe_torch_load
from ..core.spec import InputSpec
from .registry import STUDENTS


def model_from_kdcompress_dict(path: Path, obj: dict[str, Any]) -> nn.Module:
    check_kdcompress_dict(path, obj)
    try:
        arch = str(obj["arch"])
        classes = tuple(str(c) for c in obj["classes"])
        spec = InputSpec.from_json(obj["input_spec"])
        state = obj["state_dict"]
    except KeyError as e:
        raise InputError(f"{path}: checkpoint lacks the entry {e}") from None
    except InputError as e:  # a malformed or non-finite input_spec: name the file
        raise InputError(f"{path}: {e.message}") from None
    if arch not in STUDENTS:
        raise InputError(f"{path}: unknown architecture '{arch}' in checkpoint")
    model = STUDENTS.get(arch).build(len(classes), spec)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise InputError(f"{path}: weights do not fit architecture '{arch}': {first[:200]}") from None
    return model.eval()


def load_checkpoint(path: Path, *, trust: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a kdcompress checkpoint. Returns (model in eval mode, the raw dict)."""
    obj = safe_torch_load(path, trust=trust)
    return model_from_kdcompress_dict(Path(path), obj), obj
