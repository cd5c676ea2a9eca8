"""What a selection produces: a Candidate per (student, precision) measured, the Selection, and which
precisions are measured and may ship for a --precision request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.config import Budget
from ..core.errors import UsageError
from ..runtime import LatencyStats, SessionSettings

PRECISIONS = ("fp32", "fp16", "int8", "auto")
PRECISION_PREFERENCE = {"fp32": 2, "fp16": 1, "int8": 0}  # equal capacity: the exact one wins


@dataclass(frozen=True)
class Candidate:
    name: str
    params: int
    flops: int | None  # None only in the teacher's row, when its FLOPs cannot be counted
    latency: LatencyStats
    fits: bool
    confirmed: bool = False  # a second, independent measurement agreed (only ever needed near the choice)
    precision: str = "fp32"
    family: str = ""
    settings: SessionSettings | None = None  # the ORT settings the latency was measured with
    slower_than_fp32: bool = False  # a reduced-precision variant that is no faster: never chosen
    graph: str = "ship"  # the export `latency` is of: "screen" (fast TorchScript screening) or "ship" (dynamo)
    draws: int = 0  # how many processes' measurements the confirmation took (latency is the slowest)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "precision": self.precision, "family": self.family, "params": self.params,
                "flops": self.flops, "latency_ms": self.latency.to_json(), "fits": self.fits,
                "confirmed": self.confirmed, "draws": self.draws, "slower_than_fp32": self.slower_than_fp32,
                "graph": self.graph, "settings": (self.settings or SessionSettings()).to_json()}


@dataclass(frozen=True)
class Selection:
    chosen: Candidate | None  # None: no budget was given, so this is the measured ladder only
    candidates: tuple[Candidate, ...]
    budget: Budget
    provider: str
    threads: int
    teacher: Candidate | None = None
    notes: tuple[str, ...] = ()  # warnings about the request (e.g. --threads capped at the CPU limit)
    precision: str = "fp32"  # what was asked: fp32 | fp16 | int8 | auto
    fallback: Candidate | None = None  # the best fp32 fit, when the choice is a reduced-precision variant
    skipped: tuple[dict[str, Any], ...] = ()  # candidates never measured: they cannot fit (pruning)
    source: str = "measured"  # or "latency-table:PATH"
    stats: dict[str, Any] = field(default_factory=dict)  # measured / cached / skipped counts, seconds

    @property
    def teacher_meets_budget(self) -> bool:
        return self.budget.ms is not None and self.teacher is not None and self.teacher.fits

    @property
    def warnings(self) -> tuple[str, ...]:
        extra = ()
        if self.teacher_meets_budget and self.teacher is not None:
            extra = (f"the teacher itself meets this budget ({self.teacher.latency.stat(self.budget.stat):.4f} ms "
                     f"{self.budget.stat} <= {self.budget.ms:g} ms); a student buys speed you may not need",)
        return self.notes + extra

    def to_json(self) -> dict[str, Any]:
        return {"budget_ms": self.budget.ms, "stat": self.budget.stat, "batch": self.budget.batch,
                "provider": self.provider, "threads": self.threads, "precision": self.precision,
                "source": self.source,
                "chosen": self.chosen.to_json() if self.chosen else None,
                "fallback": self.fallback.to_json() if self.fallback else None,
                "teacher": self.teacher.to_json() if self.teacher else None,
                "teacher_meets_budget": self.teacher_meets_budget,
                "warnings": list(self.warnings),
                "candidates": [c.to_json() for c in self.candidates],
                "skipped": list(self.skipped), "search": dict(self.stats)}


def measured_precisions(precision: str, provider: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(precisions to measure, notes). fp32 is always measured: it is the fallback, and the yardstick
    a reduced-precision variant must beat. fp16 only pays on GPU providers (ENVIRONMENT.md §5)."""
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    gpu = provider in ("cuda", "tensorrt")
    if precision == "fp16" and not gpu:
        raise UsageError("--precision fp16 gives no speed-up on the cpu provider (ONNX Runtime computes "
                         "float16 on CPU through casts); use --provider cuda, or --precision int8 or auto")
    if precision == "auto":
        return (("fp32", "fp16", "int8") if gpu else ("fp32", "int8"),
                () if gpu else ("--precision auto: fp16 skipped, it gives no speed-up on the cpu provider",))
    return (("fp32",) if precision == "fp32" else ("fp32", precision)), ()


def allowed_precisions(precision: str) -> tuple[str, ...]:
    return ("fp32", "fp16", "int8") if precision == "auto" else (precision,)


@dataclass(frozen=True)
class SelectOptions:
    """How `distill` selects beyond the budget: the precision it ships in (and the accuracy drop a
    reduced-precision choice may cost before the run falls back to the best fp32 fit), a latency table
    from the target, the ORT settings sweep, and how fitting candidates are ranked."""

    precision: str = "fp32"
    max_precision_drop: float = 0.01  # fp32 student top-1 minus the variant's, as a fraction
    latency_table: Any = None  # Path of a latency.json from `kdcompress profile`
    tune: bool = True
    rank: str = "flops"  # flops | trial
    trial_top: int = 4
    trial_budget: float = 0.25  # trial epochs in all, as a fraction of the main training's epochs

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        if self.rank not in ("flops", "trial"):
            raise UsageError(f"--rank must be flops or trial, got '{self.rank}'")
        if not 0 <= self.max_precision_drop <= 1:
            raise UsageError(f"--max-precision-drop must be a fraction in [0, 1], got {self.max_precision_drop}")
        if self.trial_top < 2 or not 0 < self.trial_budget <= 1:
            raise UsageError("--trial-top must be >= 2 and --trial-budget in (0, 1]")

    def to_json(self) -> dict[str, Any]:
        return {"precision": self.precision, "max_precision_drop": self.max_precision_drop,
                "latency_table": None if self.latency_table is None else str(self.latency_table),
                "tune": self.tune, "rank": self.rank, "trial_top": self.trial_top, "trial_budget": self.trial_budget}
