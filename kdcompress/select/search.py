"""Student selection under a latency budget measured in ONNX Runtime on the target provider.

Every plausible candidate (a registered student whose capacity is below the teacher's and that suits the
input size) is exported to ONNX and timed with the one harness (ortbench). Among those whose measured
statistic meets the budget, the most capable wins: FLOPs first, then parameters. Measurements are cached
per machine fingerprint, provider, ORT version, input shape, batch, threads and candidate.

Adherence: the winner of "largest model whose measurement is under the budget" is biased towards a lucky
(low) measurement, so a later re-measurement tends to land above it; and on a shared VM a model's latency
is drawn once per process (core.freshbench). Before a candidate is chosen it is therefore measured again
on its shipping graph, once in this process and then in fresh processes, one after another, until the
draws settle it (select.confirm.settled): one draw over the budget rejects it; otherwise it needs
CONFIRM_MIN fresh draws when its slowest draw leaves SPREAD_BOUND headroom, and CONFIRM_MAX when it does not. A rejected candidate
is marked as not fitting and the next one down the ranking is confirmed the same way. The slowest draw is
the figure that counts, and the cache keeps every draw, so a confirmation at another budget only adds the
draws that budget still needs (none at the same budget: a warm selection measures nothing).

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
from ..core.errors import BudgetError, UsageError
from ..core.freshbench import UNSTABLE
from ..core.latencytable import check_table, model_key, table_stats
from ..core.ortbench import LatencyStats, SessionSettings, make_session, measure_latency, sweep_settings
from ..core.spec import InputSpec
from .result import (PRECISION_PREFERENCE, Candidate, Selection, allowed_precisions,
                     measured_precisions)
from ..core.system import cap_threads, cpu_limit, torch_threads
from .cache import LatencyCache
from .confirm import (CONFIRM_MAX, CONFIRM_MIN, SPREAD_BOUND, confirm_measurements,  # noqa: F401
                      settled, table_note, unstable_note)
from .warm import LazyTeacher, measure_file, resolve


# A candidate prunes the bigger ones of its family only when it measured clearly over the budget, by more
# than 15%: nearer, a re-measurement of it could fit (screening figures sit 3-10% off the shipping graph's,
# and re-measuring one setting moves up to 23% on 2 vCPUs), and so could a bigger sibling, which the
# exhaustive search would then find and the pruned one not.
PRUNE_MARGIN = 1.15


def measure_model(model, spec: InputSpec, runtime: RuntimeConfig, batch: int, *, onnx: bytes | None = None,
                  precision: str = "fp32", settings: SessionSettings | None = None,
                  graph: str = "ship") -> LatencyStats:
    """The one measurement: `onnx` (or `model` exported to fp32 ONNX: the shipping graph, or with
    graph="screen" the fast screening export) in a fresh ORT session."""
    from ..core.onnxio import onnx_bytes, screen_bytes

    del precision  # carried for fakes in tests: the bytes already are that precision
    data = onnx if onnx is not None else (screen_bytes(model, spec, batch=batch)[0] if graph == "screen" else onnx_bytes(model, spec))
    sess = make_session(data, runtime.provider, runtime.threads, settings)
    return measure_latency(sess, (batch, *spec.shape))


def tune_model(model, spec: InputSpec, runtime: RuntimeConfig, batch: int, stat: str, *, onnx: bytes | None = None,
               precision: str = "fp32") -> tuple[SessionSettings, LatencyStats]:
    """The settings sweep (ortbench.settings_grid up to the CPU limit): the best settings and their stats."""
    from ..core.onnxio import onnx_bytes

    del precision
    data = onnx if onnx is not None else onnx_bytes(model, spec)
    best, stats, _ = sweep_settings(data, (batch, *spec.shape), runtime.provider, cpu_limit(), stat)
    return best, stats


def measure_cached(name: str, model, spec: InputSpec, num_classes: int, runtime: RuntimeConfig, batch: int,
                   cache: LatencyCache | None = None,
                   on_measure: Callable[[str], None] | None = None) -> LatencyStats:
    """ORT latency of `model` at `batch`, from the cache when this machine measured it. Measured on the
    fast screening export (core.onnxio.screen_bytes), not the shipping one: this is the teacher's latency
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
    from ..students.registry import STUDENTS

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


def zoo_candidates(num_classes: int, spec: InputSpec, max_flops: int | None, names: tuple[str, ...],
                   cache: LatencyCache) -> list[tuple[str, Any, str, str]]:
    """(name, Capacity, family, zoo_identity) of each plausible candidate (as plausible()), from `cache`
    (capacity.json beside the latency cache) when known: a warm selection neither builds a model nor
    imports the zoo (the listing is keyed by zoo_signature)."""
    from ..core.spec import Capacity

    lkey = cache.key("__zoo_listing__", [zoo_signature(), list(names), max_flops], spec, num_classes,
                     RuntimeConfig(), 1)
    try:
        return [(str(n), Capacity(int(p), int(f), int(la)), str(fam), str(ident))
                for n, p, f, la, fam, ident in cache.get_json(lkey)]
    except (KeyError, TypeError, ValueError):
        pass
    from ..students.registry import STUDENTS, capacity

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
        if not names and max_flops is not None and cap.flops >= max_flops:
            continue
        out.append((name, cap, entry.family, zoo_identity(name)))
    if not out:
        raise UsageError("no student candidate suits this teacher (all are larger or meant for other input sizes)")
    cache.put_json(lkey, [[n, c.params, c.flops, c.layers, fam, ident] for n, c, fam, ident in out])
    return out


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


def ladder_rows(num_classes: int, spec: InputSpec, teacher_flops: int | None, names: tuple[str, ...],
                precision: str, provider: str) -> list[dict[str, Any]]:
    """The candidates a selection would measure (what `select --export-candidates` writes), in the order
    of capacity: {"name", "precision", "family", "params", "flops"} per (student, precision).
    `teacher_flops` is the loaded teacher's count (None: unknown, and nothing is filtered by it)."""
    from ..students.registry import STUDENTS, capacity

    precs, _ = measured_precisions(precision, provider)
    rows = []
    for name, model in plausible(num_classes, spec, teacher_flops, names):
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


def select(*, num_classes: int, spec: InputSpec, budget: Budget, runtime: RuntimeConfig,
           teacher_model=None, teacher_name: str = "teacher", names: tuple[str, ...] = (),
           use_cache: bool = True, on_measure: Callable[[str], None] | None = None, precision: str = "fp32",
           convert=None, prune: bool = True, tune: bool = False,
           latency_table: tuple[Path, dict[str, Any]] | None = None) -> Selection:
    """Measure the candidates (and the teacher), then choose the most capable one that meets the budget
    on its confirmation (module doc). Without a budget nothing is chosen (the ladder only), except when a
    single candidate was named (`distill --student`), which is then the choice.

    Candidates are measured in order of capacity (FLOPs, params); with a budget, one whose FLOPs, params and
    weighted layers are all at least those of a same-family, same-precision candidate already measured over budget by more
    than PRUNE_MARGIN is skipped (`prune`). Exports run in-process, one model at a time (a screening export takes 0.05-1 s; a
    worker process would cost a torch import; export_ladder uses a pool for shipping exports). `precision` picks what may ship (module doc); `convert` makes the fp16/int8 bytes. `tune` sweeps ORT settings for each
    candidate that is confirmed. `latency_table` (path, table): take every figure from a table measured on
    the target by `kdcompress profile` instead of measuring here."""
    from .ladder import Exporter

    t_start = time.time()
    threads, note = cap_threads(runtime.threads)
    runtime = replace(runtime, threads=threads)
    precs, pnotes = measured_precisions(precision, runtime.provider)
    notes = tuple(n for n in (note, *pnotes) if n)
    spread: dict[str, tuple[int, float, float]] = {}  # confirmations spread by more than UNSTABLE: draws, fastest, slowest
    cache = LatencyCache(enabled=use_cache and latency_table is None)
    caps = LatencyCache(cache.path.with_name("capacity.json"), enabled=use_cache)
    with torch_threads(1):  # torch only builds, counts and exports tiny models here (core.system)
        if isinstance(teacher_model, LazyTeacher):  # the loader's count (select.warm): no torch; FLOPs None
            t_cap = teacher_model.capacity        # when unknown, so the capacity filter is off, never at 0
        elif teacher_model is not None:
            from ..students.registry import capacity

            t_cap = capacity(teacher_model, spec, memo=True)
        else:
            t_cap = None
        teacher_flops = t_cap.flops if t_cap is not None else None
        listing = zoo_candidates(num_classes, spec, teacher_flops, names, caps)
        info = {n: (None, cap, fam) for n, cap, fam, _ in listing}
        identity = {n: ident for n, _, _, ident in listing}
    caps.save()

    def model_of(name: str):
        from ..students.registry import STUDENTS

        if info[name][0] is None:
            info[name] = (STUDENTS.get(name).build(num_classes, spec), *info[name][1:])
        return info[name][0]
    jobs = sorted(((n, p) for n in info for p in precs),
                  key=lambda j: (info[j[0]][1].flops, info[j[0]][1].params, -PRECISION_PREFERENCE[j[1]]))

    def key(j: tuple[str, str]) -> str:
        return cache.key(j[0], identity[j[0]], spec, num_classes, runtime, budget.batch, j[1])

    def fits(stats: LatencyStats) -> bool:
        return budget.ms is None or stats.stat(budget.stat) <= budget.ms

    rows: dict[tuple[str, str], Candidate] = {}
    over: list[tuple[str, str, Any, str]] = []  # family, precision, Capacity, name
    skipped: list[dict[str, Any]] = []
    counts = {"measured": 0, "cached": 0, "skipped": 0, "confirmations": 0, "fresh_draws": 0}
    data: dict[tuple[str, str], tuple[bytes, str]] = {}  # shipping bytes of the confirmed

    def pruned_by(j: tuple[str, str]) -> str | None:
        if not prune or budget.ms is None:
            return None
        _, cap, fam = info[j[0]]
        return next((n for f, p, o, n in over if f == fam and p == j[1] and cap.flops >= o.flops
                     and cap.params >= o.params and cap.layers >= o.layers), None)

    def record(j, stats: LatencyStats, confirmed: bool, settings: SessionSettings | None, graph: str,
               draws: int = 0) -> None:
        _, cap, fam = info[j[0]]
        rows[j] = Candidate(j[0], cap.params, cap.flops, stats, fits(stats), confirmed, j[1], fam,
                            settings or SessionSettings(threads), graph=graph, draws=draws)
        if budget.ms is not None and stats.stat(budget.stat) > PRUNE_MARGIN * budget.ms:
            over.append((fam, j[1], cap, j[0]))

    def skip(j, by: str) -> None:
        _, cap, fam = info[j[0]]
        counts["skipped"] += 1
        skipped.append({"name": j[0], "precision": j[1], "family": fam, "params": cap.params, "flops": cap.flops,
                        "reason": f"at least the FLOPs, params and layers of {by}, which measured more than "
                                  f"{100 * (PRUNE_MARGIN - 1):.0f}% over budget"})

    def ship_of(ex, j) -> bytes | None:
        if j not in data:
            data.update(export_wave(ex, [j], "ship"))
        return data[j][0] if j in data else None

    source = "measured"
    provider = runtime.provider
    with torch_threads(1), Exporter(num_classes, spec, convert, 1, build=model_of, batch=budget.batch) as ex:
        if latency_table is not None:
            path, table = latency_table
            check_table(table, path, input_shape=tuple(spec.shape), batch=budget.batch,
                        wanted={model_key(*j): (info[j[0]][1].params, info[j[0]][1].flops) for j in jobs})
            for j in jobs:
                e = table["models"][model_key(*j)]
                record(j, table_stats(e), True, SessionSettings.from_json(e.get("settings") or {}), "ship")
            source, provider = f"latency-table:{path}", str(table.get("provider", provider))
        for j in jobs if latency_table is None else ():
            if (by := pruned_by(j)) is not None:
                skip(j, by)
            elif (st := cache.get(key(j))) is not None:
                counts["cached"] += 1
                record(j, st, cache.confirmed(key(j)), cache.settings(key(j)), cache.graph(key(j)),
                       len(cache.draws(key(j))))
            else:
                if on_measure:
                    on_measure(j[0] if j[1] == "fp32" else f"{j[0]} ({j[1]})")
                blob, graph = export_wave(ex, [j], "screen").get(j, (None, "screen"))
                stats = measure_model(model_of(j[0]), spec, runtime, budget.batch, onnx=blob, precision=j[1],
                                      graph=graph)
                counts["measured"] += 1
                cache.put(key(j), stats, graph=graph)
                record(j, stats, False, None, graph)
        teacher = None
        if teacher_model is not None and latency_table is None:
            cap = t_cap
            stats = measure_cached("__teacher__", teacher_model, spec, num_classes, runtime, budget.batch, cache,
                                   on_measure and (lambda _: on_measure(f"the teacher ({teacher_name})")))
            t_key = cache.key("__teacher__", teacher_model, spec, num_classes, runtime, budget.batch)
            teacher = Candidate(teacher_name, cap.params, cap.flops, stats, fits(stats), graph=cache.graph(t_key))
        cache.save()

        for j, c in list(rows.items()):
            fp = rows.get((j[0], "fp32"))
            if j[1] != "fp32" and fp is not None and c.latency.stat(budget.stat) >= fp.latency.stat(budget.stat):
                rows[j] = replace(c, slower_than_fp32=True)

        def confirm(c: Candidate) -> Candidate:
            j = (c.name, c.precision)
            if latency_table is not None:  # the target's own figures are the confirmation
                return c
            runs = cache.draws(key(j))  # an earlier confirmation's draws: only the missing ones are added
            settings = cache.settings(key(j)) if runs else None
            value = lambda r: r.stat(budget.stat)  # noqa: E731
            drawn = not settled([value(r) for r in runs], budget.ms)
            if drawn:
                counts["confirmations"] += 1
                model, ship = model_of(c.name), ship_of(ex, j)  # every draw is of the shipping graph
                if on_measure:
                    on_measure(f"{c.name} again (confirming it meets the budget"
                               f"{', tuning ORT settings' if tune and not runs else ''})")
                if not runs:
                    if tune:
                        settings, first = tune_model(model, spec, runtime, budget.batch, budget.stat, onnx=ship,
                                                     precision=c.precision)
                    elif c.graph == "ship":  # the screening export fell back: its figure is of the shipping graph
                        first = c.latency
                    else:
                        first = measure_model(model, spec, runtime, budget.batch, onnx=ship, precision=c.precision)
                    runs = [first]
                if not settled([value(r) for r in runs], budget.ms):  # e.g. this process's draw is over
                    more = iter(confirm_measurements(model, spec, runtime, budget.batch, onnx=ship,
                                                     precision=c.precision, settings=settings))
                    for r in more:
                        runs.append(r)
                        counts["fresh_draws"] += 1
                        if settled([value(r) for r in runs], budget.ms):
                            break
                    getattr(more, "close", lambda: None)()  # no more fresh processes started
            slower = max(runs, key=value)
            faster = min(value(r) for r in runs)
            if value(slower) > UNSTABLE * faster:
                shown = c.name if c.precision == "fp32" else f"{c.name} ({c.precision})"
                spread[shown] = (len(runs), faster, value(slower))
            if drawn:
                cache.put(key(j), slower, confirmed=True, settings=settings, graph="ship", draws=runs)
                cache.save()
            rows[j] = replace(c, latency=slower, fits=fits(slower), confirmed=True,
                              settings=settings or SessionSettings(threads), graph="ship", draws=len(runs))
            return rows[j]

        def best(allowed: tuple[str, ...]) -> Candidate | None:
            while True:
                ranked = sorted((c for c in rows.values() if c.fits and not c.slower_than_fp32 and c.precision in allowed),
                                key=lambda c: (c.flops, c.params, PRECISION_PREFERENCE[c.precision]), reverse=True)
                if not ranked:
                    return None
                c = confirm(ranked[0])
                fp = rows.get((c.name, "fp32"))
                if c.precision != "fp32" and fp is not None and c.latency.stat(budget.stat) >= fp.latency.stat(budget.stat):
                    c = rows[(c.name, c.precision)] = replace(c, slower_than_fp32=True)
                if c.fits and not c.slower_than_fp32:
                    return c

        chosen = fallback = None
        if budget.ms is None:
            chosen = rows[jobs[0]] if len(names) == 1 else None
        else:
            chosen = best(allowed_precisions(precision))
            if chosen is None:
                raise _budget_error(list(rows.values()), budget, provider)
            if chosen.precision != "fp32":
                fallback = best(("fp32",))
            if latency_table is not None:
                notes += table_note(latency_table[1], chosen, budget.stat)
    ordered = sorted(rows.values(), key=lambda c: (c.flops, c.params, -PRECISION_PREFERENCE[c.precision]))
    counts["seconds"] = round(time.time() - t_start, 2)
    return Selection(chosen, tuple(ordered), budget, provider, threads, teacher, notes + unstable_note(spread, budget.stat),
                     precision, fallback,
                     tuple(skipped), source, counts)
