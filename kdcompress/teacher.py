"""Teacher checkpoints: kdcompress's own format, always loaded with torch.load(weights_only=True).

The checkpoint is a plain dict of strings, numbers, lists and tensors, so weights-only loading can read
it without unpickling code:
    format="kdcompress.checkpoint", version, arch, arch_kwargs, state_dict, classes, input_spec, metrics.
A student.pt written by `train` has the same format, so a distilled student can teach in turn.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .config import InputSpec
from .errors import InputError
from .runio import atomic_torch_save, safe_torch_load

FORMAT = "kdcompress.checkpoint"
VERSION = 1


@dataclass(frozen=True)
class Teacher:
    model: nn.Module
    arch: str
    classes: tuple[str, ...]
    input_spec: InputSpec
    embed_dim: int | None
    params: int
    path: Path
    sha256: str
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(path: Path, model: nn.Module, arch: str, classes: tuple[str, ...], spec: InputSpec,
                    metrics: dict[str, Any] | None = None) -> None:
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_torch_save({
        "format": FORMAT, "version": VERSION, "arch": arch, "state_dict": state,
        "classes": list(classes), "input_spec": spec.to_json(), "metrics": dict(metrics or {}),
    }, path)


def load_checkpoint(path: Path, *, trust: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a kdcompress checkpoint. Returns (model in eval mode, the raw dict)."""
    from .students import STUDENTS

    obj = safe_torch_load(path, trust=trust)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise InputError(f"{path} is not a kdcompress checkpoint (no 'format: {FORMAT}' entry)")
    if obj.get("version") != VERSION:
        raise InputError(f"{path}: checkpoint version {obj.get('version')} is not supported (expected {VERSION})")
    try:
        arch = str(obj["arch"])
        classes = tuple(str(c) for c in obj["classes"])
        spec = InputSpec.from_json(obj["input_spec"])
        state = obj["state_dict"]
    except KeyError as e:
        raise InputError(f"{path}: checkpoint lacks the entry {e}") from None
    if arch not in STUDENTS:
        raise InputError(f"{path}: unknown architecture '{arch}' in checkpoint")
    model = STUDENTS.get(arch).build(len(classes), spec)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise InputError(f"{path}: weights do not fit architecture '{arch}': {first[:200]}") from None
    return model.eval(), obj


def load_teacher(path: Path, *, trust: bool = False) -> Teacher:
    path = Path(path)
    model, obj = load_checkpoint(path, trust=trust)
    for p in model.parameters():
        p.requires_grad_(False)
    return Teacher(
        model=model, arch=str(obj["arch"]), classes=tuple(str(c) for c in obj["classes"]),
        input_spec=InputSpec.from_json(obj["input_spec"]), embed_dim=getattr(model, "embed_dim", None),
        params=sum(p.numel() for p in model.parameters()), path=path, sha256=file_sha256(path),
        metrics=dict(obj.get("metrics", {})),
    )
