"""Student selection under a latency budget measured in ONNX Runtime on the target provider.

Every plausible candidate (a registered student whose capacity is below the teacher's and that suits the
input size) is exported to ONNX and timed with the one harness (ortbench). Among those whose measured
statistic meets the budget, the most capable wins: FLOPs first, then parameters. Measurements are cached
per machine fingerprint, provider, ORT version, input shape, batch, threads and candidate.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import Budget, InputSpec, RuntimeConfig
from .errors import BudgetError, UsageError
from .ortbench import LatencyStats, machine_fingerprint, make_session, measure_latency
from .runio import atomic_write_json


@dataclass(frozen=True)
class Candidate:
    name: str
    params: int
    flops: int
    latency: LatencyStats
    fits: bool

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params, "flops": self.flops,
                "latency_ms": self.latency.to_json(), "fits": self.fits}


@dataclass(frozen=True)
class Selection:
    chosen: Candidate
    candidates: tuple[Candidate, ...]
    budget: Budget
    provider: str
    threads: int
    teacher: Candidate | None = None

    @property
    def teacher_meets_budget(self) -> bool:
        return self.teacher is not None and self.teacher.fits

    def to_json(self) -> dict[str, Any]:
        return {"budget_ms": self.budget.ms, "stat": self.budget.stat, "batch": self.budget.batch,
                "provider": self.provider, "threads": self.threads, "chosen": self.chosen.to_json(),
                "teacher": self.teacher.to_json() if self.teacher else None,
                "teacher_meets_budget": self.teacher_meets_budget,
                "candidates": [c.to_json() for c in self.candidates]}


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
        try:
            return LatencyStats(**e) if isinstance(e, dict) else None
        except TypeError:
            return None

    def put(self, key: str, stats: LatencyStats) -> None:
        self.entries[key] = asdict(stats)
        self.dirty = True

    def save(self) -> None:
        if self.enabled and self.dirty:
            try:
                atomic_write_json(self.path, self.entries)
                self.dirty = False
            except OSError:
                pass


def measure_model(model, spec: InputSpec, runtime: RuntimeConfig, batch: int) -> LatencyStats:
    from .export import onnx_bytes

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
    from .students import STUDENTS, capacity

    out = []
    for name in names or tuple(STUDENTS.names()):
        entry = STUDENTS.get(name)
        if not names and entry.max_input is not None and max(spec.shape[1:]) > entry.max_input:
            continue
        model = entry.build(num_classes, spec)
        if not names and max_flops is not None and capacity(model, spec).flops >= max_flops:
            continue
        out.append((name, model))
    if not out:
        raise UsageError("no student candidate suits this teacher (all are larger or meant for other input sizes)")
    return out


def select(*, num_classes: int, spec: InputSpec, budget: Budget, runtime: RuntimeConfig,
           teacher_model=None, names: tuple[str, ...] = (), use_cache: bool = True,
           on_measure: Callable[[str], None] | None = None) -> Selection:
    from .students import capacity

    cache = LatencyCache(enabled=use_cache)
    teacher_flops = capacity(teacher_model, spec).flops if teacher_model is not None else None

    def timed(name: str, model) -> LatencyStats:
        return measure_cached(name, model, spec, num_classes, runtime, budget.batch, cache, on_measure)

    def fits(stats: LatencyStats) -> bool:
        return budget.ms is None or stats.stat(budget.stat) <= budget.ms

    rows = []
    for name, model in plausible(num_classes, spec, teacher_flops, names):
        cap = capacity(model, spec)
        stats = timed(name, model)
        rows.append(Candidate(name, cap.params, cap.flops, stats, fits(stats)))
    teacher = None
    if teacher_model is not None:
        cap = capacity(teacher_model, spec)
        stats = timed("__teacher__", teacher_model)
        teacher = Candidate("teacher", cap.params, cap.flops, stats, fits(stats))
    cache.save()
    ok = [c for c in rows if c.fits]
    if not ok:
        fastest = min(rows, key=lambda c: c.latency.stat(budget.stat))
        raise BudgetError(
            f"no student meets the {budget.ms:g} ms budget ({budget.stat}, batch {budget.batch}, "
            f"{runtime.provider}); the fastest candidate, {fastest.name}, measured "
            f"{fastest.latency.stat(budget.stat):.4f} ms")
    chosen = max(ok, key=lambda c: (c.flops, c.params))
    rows.sort(key=lambda c: (c.flops, c.params))
    return Selection(chosen, tuple(rows), budget, runtime.provider, runtime.threads or 1, teacher)
