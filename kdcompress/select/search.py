"""Student selection under a latency budget measured in ONNX Runtime on the target provider.

Every plausible candidate (a registered student whose capacity is below the teacher's and that suits the
input size) is exported to ONNX and timed with the one harness (ortbench). Among those whose measured
statistic meets the budget, the most capable wins: FLOPs first, then parameters. Measurements are cached
per machine fingerprint, provider, ORT version, input shape, batch, threads and candidate.

Adherence: the winner of "largest model whose measurement is under the budget" is biased towards a lucky
(low) measurement, so a later re-measurement tends to land above it. Before a candidate is chosen it is
therefore measured a second time in a fresh ONNX Runtime session, and it is kept only if the slower of the
two measurements still meets the budget; otherwise it is marked as not fitting and the next candidate
down the ranking is confirmed the same way. The confirmed (slower) figure is what the cache remembers.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..core.config import Budget, RuntimeConfig
from ..core.errors import BudgetError, KdError, UsageError
from ..core.ortbench import LatencyStats, make_session, measure_latency
from ..core.runio import atomic_write_json
from ..core.spec import InputSpec
from ..core.system import cap_threads, machine_fingerprint


@dataclass(frozen=True)
class Candidate:
    name: str
    params: int
    flops: int
    latency: LatencyStats
    fits: bool
    confirmed: bool = False  # a second, independent measurement agreed (only ever needed near the choice)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params, "flops": self.flops,
                "latency_ms": self.latency.to_json(), "fits": self.fits, "confirmed": self.confirmed}


@dataclass(frozen=True)
class Selection:
    chosen: Candidate | None  # None: no budget was given, so this is the measured ladder only
    candidates: tuple[Candidate, ...]
    budget: Budget
    provider: str
    threads: int
    teacher: Candidate | None = None
    notes: tuple[str, ...] = ()  # warnings about the request (e.g. --threads capped at the CPU limit)

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
                "provider": self.provider, "threads": self.threads,
                "chosen": self.chosen.to_json() if self.chosen else None,
                "teacher": self.teacher.to_json() if self.teacher else None,
                "teacher_meets_budget": self.teacher_meets_budget,
                "warnings": list(self.warnings),
                "candidates": [c.to_json() for c in self.candidates]}


def resolve_threads(requested: int | None) -> tuple[int, str | None]:
    return cap_threads(requested)


def cache_path() -> Path:
    root = os.environ.get("KDCOMPRESS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "kdcompress")
    return Path(root) / "latency.json"


class LatencyCache:
    """Measured latencies on disk, keyed by what changes them. A broken or read-only cache only costs
    time: it is re-measured or left unwritten, never trusted half-read."""

    def __init__(self, path: Path | None = None, enabled: bool = True):
        self.path = path or cache_path()
        self.enabled = enabled
        self.fingerprint = machine_fingerprint()
        self.entries: dict[str, Any] = self._load() if enabled else {}
        self.dirty = False

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return {}

    def key(self, name: str, model, spec: InputSpec, num_classes: int, runtime: RuntimeConfig, batch: int) -> str:
        raw = json.dumps([name, repr(model), list(spec.shape), num_classes, runtime.provider, runtime.threads or 1,
                          batch, self.fingerprint], sort_keys=True, default=str)
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    def get(self, key: str) -> LatencyStats | None:
        e = self.entries.get(key)
        if not isinstance(e, dict):
            return None
        try:
            return LatencyStats(**{k: v for k, v in e.items() if k != "confirmed"})
        except TypeError:
            return None

    def confirmed(self, key: str) -> bool:
        e = self.entries.get(key)
        return isinstance(e, dict) and e.get("confirmed") is True and self.get(key) is not None

    def put(self, key: str, stats: LatencyStats, confirmed: bool = False) -> None:
        self.entries[key] = {**asdict(stats), "confirmed": confirmed}
        self.dirty = True

    def save(self) -> None:
        if self.enabled and self.dirty:
            try:
                atomic_write_json(self.path, self.entries)
                self.dirty = False
            except (OSError, KdError):  # the cache is an optimisation: an unwritable one is skipped
                pass


def measure_model(model, spec: InputSpec, runtime: RuntimeConfig, batch: int) -> LatencyStats:
    from ..core.onnxio import onnx_bytes

    sess = make_session(onnx_bytes(model, spec), runtime.provider, runtime.threads)
    return measure_latency(sess, (batch, *spec.shape))


def measure_cached(name: str, model, spec: InputSpec, num_classes: int, runtime: RuntimeConfig, batch: int,
                   cache: LatencyCache | None = None,
                   on_measure: Callable[[str], None] | None = None) -> LatencyStats:
    """ORT latency of `model` (exported to ONNX) at `batch`, from the cache when this machine measured it."""
    own = cache is None
    cache = cache or LatencyCache()
    key = cache.key(name, model, spec, num_classes, runtime, batch)
    stats = cache.get(key)
    if stats is None:
        if on_measure:
            on_measure(name)
        stats = measure_model(model, spec, runtime, batch)
        cache.put(key, stats)
    if own:
        cache.save()
    return stats


def plausible(num_classes: int, spec: InputSpec, max_flops: int | None,
              names: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """(name, model) for each candidate: the given names, or every student that suits the input size and
    is smaller than the teacher (a 'student' bigger than its teacher is never the point)."""
    from ..students.registry import STUDENTS, capacity

    out = []
    for name in names or tuple(STUDENTS.names()):
        entry = STUDENTS.get(name)
        if not names and not entry.suits(spec):
            continue
        model = entry.build(num_classes, spec)
        if not names and max_flops is not None and capacity(model, spec).flops >= max_flops:
            continue
        out.append((name, model))
    if not out:
        raise UsageError("no student candidate suits this teacher (all are larger or meant for other input sizes)")
    return out


def _budget_error(rows: list[Candidate], budget: Budget, provider: str) -> BudgetError:
    fastest = min(rows, key=lambda c: c.latency.stat(budget.stat))
    return BudgetError(
        f"no student meets the {budget.ms:g} ms budget ({budget.stat}, batch {budget.batch}, {provider}); "
        f"the fastest candidate, {fastest.name}, measured {fastest.latency.stat(budget.stat):.4f} ms")


def select(*, num_classes: int, spec: InputSpec, budget: Budget, runtime: RuntimeConfig,
           teacher_model=None, teacher_name: str = "teacher", names: tuple[str, ...] = (),
           use_cache: bool = True, on_measure: Callable[[str], None] | None = None) -> Selection:
    """Measure the candidates (and the teacher), then choose the most capable one that meets the budget
    on two independent measurements. Without a budget nothing is chosen (the ladder only), except when a
    single candidate was named (`distill --student`), which is then the choice."""
    from ..students.registry import capacity

    threads, note = resolve_threads(runtime.threads)
    runtime = replace(runtime, threads=threads)
    cache = LatencyCache(enabled=use_cache)
    teacher_flops = capacity(teacher_model, spec).flops if teacher_model is not None else None

    def key(name: str, model) -> str:
        return cache.key(name, model, spec, num_classes, runtime, budget.batch)

    def fits(stats: LatencyStats) -> bool:
        return budget.ms is None or stats.stat(budget.stat) <= budget.ms

    rows: list[Candidate] = []
    models: dict[str, Any] = {}
    for name, model in plausible(num_classes, spec, teacher_flops, names):
        cap = capacity(model, spec)
        stats = measure_cached(name, model, spec, num_classes, runtime, budget.batch, cache, on_measure)
        rows.append(Candidate(name, cap.params, cap.flops, stats, fits(stats), cache.confirmed(key(name, model))))
        models[name] = model
    teacher = None
    if teacher_model is not None:
        cap = capacity(teacher_model, spec)
        stats = measure_cached("__teacher__", teacher_model, spec, num_classes, runtime, budget.batch, cache,
                               on_measure and (lambda _: on_measure(f"the teacher ({teacher_name})")))
        teacher = Candidate(teacher_name, cap.params, cap.flops, stats, fits(stats))
    cache.save()

    chosen: Candidate | None = None
    if budget.ms is None:
        chosen = rows[0] if len(names) == 1 else None
    else:
        by_capacity = sorted((c for c in rows if c.fits), key=lambda c: (c.flops, c.params), reverse=True)
        if not by_capacity:
            raise _budget_error(rows, budget, runtime.provider)
        for c in by_capacity:
            if not c.confirmed:
                if on_measure:
                    on_measure(f"{c.name} again (confirming it meets the budget)")
                again = measure_model(models[c.name], spec, runtime, budget.batch)
                slower = max(c.latency, again, key=lambda s: s.stat(budget.stat))
                cache.put(key(c.name, models[c.name]), slower, confirmed=True)
                cache.save()
                c2 = replace(c, latency=slower, fits=fits(slower), confirmed=True)
                rows[rows.index(c)] = c2
                c = c2
            if c.fits:
                chosen = c
                break
        if chosen is None:
            raise _budget_error(rows, budget, runtime.provider)
    rows.sort(key=lambda c: (c.flops, c.params))
    return Selection(chosen, tuple(rows), budget, runtime.provider, threads, teacher, (note,) if note else ())
