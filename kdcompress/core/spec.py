"""InputSpec: what a model eats. Validated where it is built: every value finite, std > 0."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import InputError

STATS = ("p50", "p90", "p99")  # the latency statistics a budget can name (runtime.ortbench computes them)

MAX_PIXELS = 4096 * 4096  # one image's H*W above this is refused (a typo such as 3,22400,224)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _shown(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def number_list(v: Any, field: str) -> tuple[float, ...]:
    """A recorded mean/std (JSON from a file's metadata) as floats: a number or a non-empty list of numbers.
    Anything else (a string such as "0.5" or "[a,b]", a bool, an empty list) is a ValueError naming the
    field, so a file's malformed value is refused, never iterated character by character or ignored."""
    if _is_number(v):
        return (float(v),)
    if isinstance(v, (list, tuple)) and v and all(_is_number(e) for e in v):
        return tuple(float(e) for e in v)
    raise ValueError(f"{field} is {_shown(v)}, not a number or a list of numbers")


def int_list(v: Any, field: str) -> tuple[int, ...]:
    """A recorded input shape as integers: a non-empty list of whole numbers (3.0 counts, 3.5 does not)."""
    if isinstance(v, (list, tuple)) and v and all(_is_number(e) and float(e).is_integer() for e in v):
        return tuple(int(e) for e in v)
    raise ValueError(f"{field} is {_shown(v)}, not a list of integers")


@dataclass(frozen=True)
class InputSpec:
    """What a model eats: one image's shape (C, H, W), NCHW layout, and per-channel normalisation.

    Images are scaled to [0, 1] and then normalised as (x - mean) / std; an exported ONNX model takes the
    normalised tensor and carries mean/std in its metadata.
    """

    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        c = self.shape[0]
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise InputError(f"input shape must be (C, H, W) with positive sizes, got {self.shape}")
        if len(self.mean) != c or len(self.std) != c:
            raise InputError(f"mean/std need {c} values for {c} channels, got {len(self.mean)}/{len(self.std)}")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)):
            raise InputError(f"mean/std must be finite numbers, got mean {self.mean} std {self.std}")
        if any(s <= 0 for s in self.std):
            raise InputError(f"std must be > 0, got {self.std}")
        if self.shape[1] * self.shape[2] > MAX_PIXELS or self.shape[0] > 64:
            raise InputError(f"input shape {self.shape} is beyond kdcompress's limits (at most 64 channels and "
                             f"{MAX_PIXELS:,} pixels per image); check --input-shape")

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "mean": list(self.mean), "std": list(self.std), "layout": "NCHW"}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> InputSpec:
        try:
            return cls(int_list(d["shape"], "shape"), number_list(d["mean"], "mean"), number_list(d["std"], "std"))  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"malformed input spec {_shown(d)}: {e}") from None


@dataclass(frozen=True)
class Capacity:
    """A model's size: parameters and batch-1 forward FLOPs (torch.utils.flop_counter: a multiply-add
    counts 2). Here, not in students/, so that a warm selection can hold one without importing torch."""

    params: int
    flops: int | None  # None only for a teacher whose FLOPs cannot be counted (never 0 for "unknown")
    # weighted layers (convolutions and linear layers): at small inputs a model's latency follows its
    # layer count as much as its FLOPs (a wide, shallow resnet ran faster than a deeper one of fewer FLOPs:
    # benchmarks/RESULTS.md, "Issue 14, stop 20"), so pruning compares it too (select.search). 0: not counted.
    layers: int = 0

