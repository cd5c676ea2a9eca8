"""What a teacher file says about itself: architecture, classes, input shape and normalisation, metrics
(any of it may be missing; the flags fill in or override it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["Recorded", "recorded_from_dict", "recorded_from_module", "spec_fields"]


@dataclass(frozen=True)
class Recorded:
    """What a file says about itself (any of it may be missing)."""

    arch: str | None = None
    classes: tuple[str, ...] | None = None
    num_classes: int | None = None
    shape: tuple[int, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    metrics: dict[str, Any] | None = None


def spec_fields(d: Any) -> dict[str, Any]:
    if not isinstance(d, dict):
        return {}
    out: dict[str, Any] = {}
    for src, dst in (("shape", "shape"), ("input_shape", "shape"), ("input_size", "shape"),
                     ("mean", "mean"), ("std", "std")):
        v = d.get(src)
        if isinstance(v, (list, tuple)) and v and all(isinstance(e, (int, float)) for e in v):
            out[dst] = tuple(int(e) for e in v) if dst == "shape" else tuple(float(e) for e in v)
    return out


def _class_names(v: Any) -> tuple[str, ...] | None:
    if isinstance(v, (list, tuple)) and v:
        return tuple(str(c) for c in v)
    if isinstance(v, dict) and v:  # class_to_idx {name: i} or idx_to_class {i: name}
        items = list(v.items())
        if all(isinstance(i, int) for _, i in items):
            return tuple(str(n) for n, _ in sorted(items, key=lambda kv: kv[1]))
        if all(isinstance(i, int) for i, _ in items):
            return tuple(str(n) for _, n in sorted(items))
    return None


def recorded_from_dict(obj: dict[str, Any]) -> Recorded:
    """What a checkpoint dict (or ONNX/safetensors metadata) records; a Lightning checkpoint's
    hyper_parameters (save_hyperparameters()) count too, the top level winning."""
    hp = obj.get("hyper_parameters")
    if isinstance(hp, dict):
        obj = {**hp, **{k: v for k, v in obj.items() if k != "hyper_parameters"}}
    classes = None
    for key in ("classes", "class_names", "class_to_idx", "idx_to_class"):
        classes = classes or _class_names(obj.get(key))
    nc = obj.get("num_classes")
    arch = obj.get("arch")
    fields = spec_fields(obj.get("input_spec")) or spec_fields(obj)
    return Recorded(arch=arch if isinstance(arch, str) else None, classes=classes,
                    num_classes=nc if isinstance(nc, int) and not isinstance(nc, bool) else None, **fields)


def recorded_from_module(m: nn.Module) -> Recorded:
    classes = None
    for key in ("classes", "class_names"):
        classes = classes or _class_names(getattr(m, key, None))
    return Recorded(classes=classes)


