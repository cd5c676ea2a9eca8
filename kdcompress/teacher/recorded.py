"""What a teacher file says about itself: architecture, classes, input shape and normalisation, metrics
(any of it may be missing; the flags fill in or override it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..core.classes import duplicate
from ..core.spec import int_list, number_list

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
    # (field, what is wrong) for each value the file records in a form that cannot be used (a mean of
    # "0.5", classes named twice): the loader refuses the file when that value is needed (no flag gives it)
    problems: tuple[tuple[str, str], ...] = ()

    def problem(self, field_: str) -> str | None:
        return next((why for f, why in self.problems if f == field_), None)


def spec_fields(d: Any) -> dict[str, Any]:
    """shape/mean/std from a dict's shape|input_shape|input_size, mean and std entries; a present but
    malformed value goes to "problems" (never silently skipped or read character by character)."""
    if not isinstance(d, dict):
        return {}
    out: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for src, dst in (("shape", "shape"), ("input_shape", "shape"), ("input_size", "shape"),
                     ("mean", "mean"), ("std", "std")):
        v = d.get(src)
        if v is None or dst in out:
            continue
        try:
            out[dst] = int_list(v, src) if dst == "shape" else number_list(v, src)
        except ValueError as e:
            problems.append((dst, str(e)))
    problems = [p for p in problems if p[0] not in out]  # a good input_shape beside a bad shape is used
    if problems:
        out["problems"] = tuple(problems)
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


def _class_problem(key: str, v: Any, names: tuple[str, ...]) -> str | None:
    """Names that cannot label outputs: one name twice, or a class_to_idx whose indices are not 0..K-1."""
    if isinstance(v, dict):
        idx = sorted(i if isinstance(i, int) else j for i, j in v.items())
        if idx != list(range(len(idx))):
            return (f"{key} maps its classes to the indices {idx[:6]}{' ...' if len(idx) > 6 else ''}, "
                    f"not 0..{len(idx) - 1}")
    dup = duplicate(names)
    return f"{key} names class '{dup}' twice" if dup is not None else None


def recorded_from_dict(obj: dict[str, Any]) -> Recorded:
    """What a checkpoint dict (or ONNX/safetensors metadata) records; a Lightning checkpoint's
    hyper_parameters (save_hyperparameters()) count too, the top level winning."""
    hp = obj.get("hyper_parameters")
    if isinstance(hp, dict):
        obj = {**hp, **{k: v for k, v in obj.items() if k != "hyper_parameters"}}
    classes, problem = None, None
    for key in ("classes", "class_names", "class_to_idx", "idx_to_class"):
        if classes is None and (named := _class_names(obj.get(key))) is not None:
            classes, problem = named, _class_problem(key, obj.get(key), named)
    nc = obj.get("num_classes")
    arch = obj.get("arch")
    fields = spec_fields(obj.get("input_spec")) or spec_fields(obj)
    problems = (*fields.pop("problems", ()), *((("classes", problem),) if problem else ()))
    return Recorded(arch=arch if isinstance(arch, str) else None, classes=classes,
                    num_classes=nc if isinstance(nc, int) and not isinstance(nc, bool) else None, **fields,
                    problems=problems)


def recorded_from_module(m: nn.Module) -> Recorded:
    classes, problem = None, None
    for key in ("classes", "class_names"):
        if classes is None and (named := _class_names(getattr(m, key, None))) is not None:
            classes, problem = named, _class_problem(key, getattr(m, key, None), named)
    return Recorded(classes=classes, problems=(("classes", problem),) if problem else ())


