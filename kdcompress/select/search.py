"""Student selection under a latency budget measured in ONNX Runtime on the target provider.

Every plausible candidate (a registered student below the teacher in FLOPs and parameters, and that suits
the input size) is exported to ONNX and timed with the one harness (ortbench). Among those whose measured
statistic meets the budget, the most capable wins: FLOPs first, then parameters. Measurements are cached
per machine fingerprint, provider, ORT version, input shape, batch, threads and candidate.

Adherence: the winner of "largest model whose measurement is under the budget" is biased towards a lucky
(low) measurement, so a later re-measurement tends to land above it; and on a shared VM a model's latency
is drawn once per process (runtime.freshbench). Before a candidate is chosen it is therefore measured again
on its shipping graph, once in this process and then in fresh processes, one after another, until the
draws settle it (select.confirm.settled): one draw over the budget rejects it; otherwise it needs
CONFIRM_MIN fresh draws when its slowest draw leaves SPREAD_BOUND headroom, and CONFIRM_MAX when it does not.
A rejected candidate is marked as not fitting and the next one down the ranking is confirmed the same way.
The slowest draw is the figure that counts, and the cache keeps every draw, so a confirmation at another
budget only adds the draws that budget still needs (none at the same budget: a warm selection measures
nothing).

Two graphs (select.ladder): every candidate is first measured on its fast TorchScript *screening* export
(graph "screen"); the confirmation measures the dynamo *shipping* export (graph "ship", the bytes export
writes), so a confirmed figure, in the cache and in the Selection, is always one of the graph that ships.
Each Candidate says which graph its latency is from (`graph`).
"""

from __future__ import annotations

from collections.abc import Callable
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..core.config import Budget, RuntimeConfig
from ..core.errors import UsageError
from ..core.progress import SILENT, Reporter
from ..runtime import LatencyStats, SessionSettings, make_session, measure_latency, sweep_settings
from ..core.spec import InputSpec
from ..core.system import cap_threads, cpu_limit, torch_threads
from .cache import LatencyCache
from .confirm import CONFIRM_MAX, CONFIRM_MIN, SPREAD_BOUND, confirm_measurements, settled, unstable_note  # noqa: F401
from .engine import (PRUNE_MARGIN, LatencySource, MeasuredSource, Probes, SearchState,  # noqa: F401
                     TableSource, choose, screen)
from .result import PRECISION_PREFERENCE, Candidate, Selection, measured_precisions  # noqa: F401
from .warm import LazyTeacher, measure_file, resolve


def measure_model(model, spec: InputSpec, runtime: RuntimeConfig, batch: int, *, onnx: bytes | None = None,
                  precision: str = "fp32", settings: SessionSettings | None = None,
                  graph: str = "ship") -> LatencyStats:
    """The one measurement: `onnx` (or `model` exported to fp32 ONNX: the shipping graph, or with
    graph="screen" the fast screening export) in a fresh ORT session."""
    from ..runtime import onnx_bytes, screen_bytes

    del precision  # carried for fakes in tests: the bytes already are that precision
    data = onnx if onnx is not None else (
        screen_bytes(model, spec, batch=batch)[0] if graph == "screen" else onnx_bytes(model, spec))
    sess = make_session(data, runtime.provider, runtime.threads, settings)
    return measure_latency(sess, (batch, *spec.shape))


def tune_model(model, spec: InputSpec, runtime: RuntimeConfig, batch: int, stat: str, *, onnx: bytes | None = None,
               precision: str = "fp32") -> tuple[SessionSettings, LatencyStats]:
    """The settings sweep (ortbench.settings_grid up to the CPU limit): the best settings and their stats."""
    from ..runtime import onnx_bytes

    del precision
    data = onnx if onnx is not None else onnx_bytes(model, spec)
    best, stats, _ = sweep_settings(data, (batch, *spec.shape), runtime.provider, cpu_limit(), stat)
    return best, stats


def measure_cached(name: str, model, spec: InputSpec, num_classes: int, runtime: RuntimeConfig, batch: int,
                   cache: LatencyCache | None = None,
                   on_measure: Callable[[str], None] | None = None) -> LatencyStats:
    """ORT latency of `model` at `batch`, from the cache when this machine measured it. Measured on the
    fast screening export (runtime.onnxio.screen_bytes), not the shipping one: this is the teacher's latency
    (name "__teacher__"), which is only reported beside the student's and never shipped; the cache entry
    says graph "screen" (an entry from before screening existed was measured on the shipping graph)."""
    own = cache is None
    cache = cache or LatencyCache()
    key = cache.key(name, model, spec, num_classes, runtime, batch)
    stats = cache.get(key)
    if stats is None:
        if on_measure:
            on_measure(name)
        own_file = model.onnx_file if isinstance(model, LazyTeacher) else None
        stats = (measure_file(*own_file, spec, runtime, batch) if own_file is not None
                 else measure_model(resolve(model), spec, runtime, batch, graph="screen"))
        cache.put(key, stats, graph="screen" if own_file is None else "ship")  # an ONNX teacher's own graph
    if own:
        cache.save()
    return stats


def zoo_identity(name: str) -> str:
    """What identifies a zoo student's architecture without building it (the cache key's model part):
    its builder, its arguments and the kdcompress version (a changed zoo invalidates the cache)."""
    from .. import __version__
    from ..students import STUDENTS

    e = STUDENTS.get(name)
    return f"zoo:{name}:{e.builder.__module__}.{e.builder.__qualname__}:{sorted(e.kwargs.items())}:{__version__}"


def zoo_signature() -> list[Any]:
    """What the zoo's listing depends on, read without importing it (or torch): the kdcompress version, the
    size and mtime of every module of kdcompress/students, and the installed student plugins."""
    from importlib.metadata import entry_points

    from .. import __version__

    here = Path(__file__).resolve().parents[1] / "students"
    files = sorted([p.name, st.st_size, st.st_mtime_ns] for p in here.glob("*.py") for st in [p.stat()])
    plugins = sorted([ep.name, ep.value, getattr(ep.dist, "version", None)]
                     for ep in entry_points(group="kdcompress.students"))
    return [__version__, files, plugins]


def larger_than(cap, limit) -> bool:
    """A student of capacity `cap` is no student of a teacher of capacity `limit` (None: unknown, filters
    nothing): it has at least the teacher's FLOPs (when counted) or more of its parameters (when known)."""
    if limit is None:
        return False
    return bool((limit.flops and cap.flops >= limit.flops) or (limit.params and cap.params > limit.params))


def zoo_candidates(num_classes: int, spec: InputSpec, limit, names: tuple[str, ...],
                   cache: LatencyCache) -> list[tuple[str, Any, str, str]]:
    """(name, Capacity, family, zoo_identity) of each plausible candidate (as plausible(); `limit` the
    teacher's Capacity or None), from `cache` (capacity.json beside the latency cache) when known: a warm
    selection neither builds a model nor imports the zoo (the listing is keyed by zoo_signature)."""
    from ..core.spec import Capacity

    bound = None if limit is None else [limit.flops, limit.params]
    lkey = cache.key("__zoo_listing__", [zoo_signature(), list(names), bound], spec, num_classes,
                     RuntimeConfig(), 1)
    try:
        return [(str(n), Capacity(int(p), int(f), int(la)), str(fam), str(ident))
                for n, p, f, la, fam, ident in cache.get_json(lkey)]
    except (KeyError, TypeError, ValueError):
        pass
    from ..students import STUDENTS, capacity

    out = []
    for name in names or tuple(STUDENTS.names()):
        entry = STUDENTS.get(name)
        if not names and not entry.suits(spec):
            continue
        ckey = cache.key(name, zoo_identity(name), spec, num_classes, RuntimeConfig(), 1)
        got = cache.get_json(ckey)
        try:
            cap = Capacity(int(got["params"]), int(got["flops"]), int(got["layers"]))
        except (TypeError, KeyError, ValueError):
            cap = capacity(entry.build(num_classes, spec), spec)
            cache.put_json(ckey, {"params": cap.params, "flops": cap.flops, "layers": cap.layers})
        if not names and larger_than(cap, limit):
            continue
        out.append((name, cap, entry.family, zoo_identity(name)))
    if not out:
        raise UsageError("no student candidate suits this teacher (all are larger or meant for other input sizes)")
    cache.put_json(lkey, [[n, c.params, c.flops, c.layers, fam, ident] for n, c, fam, ident in out])
    return out


def plausible(num_classes: int, spec: InputSpec, limit,
              names: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """(name, model) for each candidate: the given names, or every student that suits the input size and
    is smaller than the teacher (`limit`, its Capacity; None: unknown) in FLOPs and in parameters (a
    'student' bigger than its teacher is never the point)."""
    from ..students import STUDENTS, capacity

    out = []
    for name in names or tuple(STUDENTS.names()):
        entry = STUDENTS.get(name)
        if not names and not entry.suits(spec):
            continue
        model = entry.build(num_classes, spec)
        if not names and larger_than(capacity(model, spec), limit):
            continue
        out.append((name, model))
    if not out:
        raise UsageError("no student candidate suits this teacher (all are larger or meant for other input sizes)")
    return out


def ladder_rows(num_classes: int, spec: InputSpec, teacher_cap, names: tuple[str, ...],
                precision: str, provider: str) -> list[dict[str, Any]]:
    """The candidates a selection would measure (what `select --export-candidates` writes), in the order
    of capacity: {"name", "precision", "family", "params", "flops"} per (student, precision).
    `teacher_cap` is the loaded teacher's Capacity (a None count filters nothing)."""
    from ..students import STUDENTS, capacity

    precs, _ = measured_precisions(precision, provider)
    rows = []
    for name, model in plausible(num_classes, spec, teacher_cap, names):
        cap = capacity(model, spec)
        rows += [{"name": name, "precision": p, "family": STUDENTS.get(name).family, "params": cap.params,
                  "flops": cap.flops} for p in precs]
    return sorted(rows, key=lambda r: (r["flops"], r["params"], -PRECISION_PREFERENCE[r["precision"]]))


def export_wave(exporter, jobs: list[tuple[str, str]], graph: str = "ship") -> dict[tuple[str, str], tuple[bytes, str]]:
    """(ONNX bytes, graph made) for (name, precision) jobs: graph "screen" asks for the screening export
    (which is "ship" where it fell back), "ship" for the shipping one (a seam: fake clocks skip exporting)."""
    if graph == "screen":
        return {j: exporter.screen(j) for j in jobs}
    return {j: (b, "ship") for j, b in exporter.many(jobs).items()}


def _teacher_capacity(teacher_model, spec: InputSpec):
    if isinstance(teacher_model, LazyTeacher):  # the loader's count (select.warm): no torch; FLOPs None when
        return teacher_model.capacity          # unknown, so the capacity filter is off, never at 0
    if teacher_model is None:
        return None
    from ..students import capacity

    return capacity(teacher_model, spec, memo=True)


def _open_search(num_classes: int, spec: InputSpec, budget: Budget, runtime: RuntimeConfig, teacher_model,
                 names: tuple[str, ...], precs: tuple[str, ...], cache: LatencyCache, caps: LatencyCache,
                 prune: bool, tune: bool) -> tuple[SearchState, Any]:
    """The candidates phase: the plausible students (from the capacity store when known) x the precisions
    measured, in order of capacity; and the teacher's capacity."""
    with torch_threads(1):  # torch only builds, counts and exports tiny models here (core.system)
        t_cap = _teacher_capacity(teacher_model, spec)
        listing = zoo_candidates(num_classes, spec, t_cap, names, caps)
    caps.save()
    capacity = {n: (cap, fam) for n, cap, fam, _ in listing}
    jobs = sorted(((n, p) for n in capacity for p in precs),
                  key=lambda j: (capacity[j[0]][0].flops, capacity[j[0]][0].params, -PRECISION_PREFERENCE[j[1]]))

    def build(name: str):
        from ..students import STUDENTS

        return STUDENTS.get(name).build(num_classes, spec)
    st = SearchState(num_classes, spec, budget, runtime, capacity, {n: ident for n, _, _, ident in listing}, jobs,
                     cache, build, prune=prune, tune=tune)
    return st, t_cap


def _probes() -> Probes:
    """This module's measuring functions, looked up at call time (tests replace them with fake clocks)."""
    return Probes(measure=measure_model, draws=confirm_measurements, export=export_wave, tune=tune_model,
                  teacher=measure_cached)


def select(*, num_classes: int, spec: InputSpec, budget: Budget, runtime: RuntimeConfig,
           teacher_model=None, teacher_name: str = "teacher", names: tuple[str, ...] = (),
           use_cache: bool = True, report: Reporter = SILENT, precision: str = "fp32",
           convert=None, prune: bool = True, tune: bool = False,
           latency_table: tuple[Path, dict[str, Any]] | None = None) -> Selection:
    """Measure the candidates (and the teacher), then choose the most capable one that meets the budget
    on its confirmation (module doc; the phases are select.engine's). Without a budget nothing is chosen
    (the ladder only), except when a single candidate was named (`distill --student`), which is then the choice.

    `prune`: with a budget, skip a candidate at least as big as a same-family, same-precision one measured
    clearly over it. `precision` picks what may ship; `convert` makes the fp16/int8 bytes. `tune` sweeps ORT
    settings for each candidate that is confirmed. `latency_table` (path, table): every figure from a table
    measured on the target by `kdcompress profile` instead of measuring here. `report` (core.progress) is
    told the work as it is planned, runs and is done (select.engine.MeasuredSource); core.progress.StepsTo
    passes only what runs now, for a caller that logs lines (benchmarks/select_adherence.py)."""
    from .ladder import Exporter

    t_start = time.time()
    threads, note = cap_threads(runtime.threads)
    runtime = replace(runtime, threads=threads)
    precs, pnotes = measured_precisions(precision, runtime.provider)
    cache = LatencyCache(enabled=use_cache and latency_table is None)
    caps = LatencyCache(cache.path.with_name("capacity.json"), enabled=use_cache)
    st, t_cap = _open_search(num_classes, spec, budget, runtime, teacher_model, names, precs, cache, caps,
                             prune, tune)
    source: LatencySource = (TableSource(*latency_table, report) if latency_table is not None
                             else MeasuredSource(_probes(), report))
    report.plan(source.planned(st, teacher_model, t_cap))
    with torch_threads(1), Exporter(num_classes, spec, convert, 1, build=st.model_of, batch=budget.batch) as ex:
        screen(st, source, ex)
        teacher = source.teacher(st, teacher_model, t_cap, teacher_name)
        cache.save()
        chosen, fallback = choose(st, source, ex, precision, single=len(names) == 1)
    notes = tuple(n for n in (note, *pnotes) if n)
    notes += source.notes(chosen, budget.stat) if chosen is not None else ()
    ordered = sorted(st.rows.values(), key=lambda c: (c.flops, c.params, -PRECISION_PREFERENCE[c.precision]))
    st.counts["seconds"] = round(time.time() - t_start, 2)
    return Selection(chosen, tuple(ordered), budget, source.provider(runtime), threads, teacher,
                     notes + unstable_note(st.spread, budget.stat), precision, fallback, tuple(st.skipped),
                     source.label, st.counts)
