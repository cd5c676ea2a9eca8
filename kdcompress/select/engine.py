"""Selection as an engine: named phases over one state (`SearchState`), and the latency source as a value.

    candidates -> screen -> rank -> confirm -> choose

* candidates (search.select): the plausible students x the precisions measured, in order of capacity;
* screen (`LatencySource.screen`): a latency for every (student, precision), with a budget skipping those
  that cannot fit (`SearchState.pruned_by`);
* rank (`ranked`): the fitting candidates, most capable first (FLOPs, params, then the exact precision);
* confirm (`LatencySource.confirm`): the top of the ranking measured again on its shipping graph until the
  draws settle it (select.confirm), or the target's own figure when the latencies come from a table;
* choose (`choose`): the first confirmed fit, and the best fp32 fit beside a reduced-precision choice.

Two latency sources implement the same two steps: `MeasuredSource` measures here, through the seams of
`Probes` (search.py's module functions, so fake clocks in tests replace them), and keeps every figure in the
cache; `TableSource` reads a `kdcompress profile` table measured on the target, whose figures need no
confirmation. Nothing else in the engine knows which one it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from ..core.config import Budget, RuntimeConfig
from ..core.errors import BudgetError
from ..core.progress import SILENT, Reporter
from ..runtime import UNSTABLE
from ..runtime import check_table, model_key, table_stats
from ..runtime import LatencyStats, SessionSettings
from ..core.spec import Capacity, InputSpec
from .cache import LatencyCache
from .confirm import CONFIRM_MAX, settled, table_note
from .result import PRECISION_PREFERENCE, Candidate, allowed_precisions

Job = tuple[str, str]  # (student name, precision)

# A candidate prunes the bigger ones of its family only when it measured clearly over the budget, by more
# than 15%: nearer, a re-measurement of it could fit (screening figures sit a few percent off the shipping
# graph's, and re-measuring one setting moves by tens of percent on a shared VM), and so could a bigger
# sibling, which the exhaustive search would then find and the pruned one not.
PRUNE_MARGIN = 1.15


@dataclass
class SearchState:
    """Everything one selection knows: the request, the candidates, and what was measured so far."""

    num_classes: int
    spec: InputSpec
    budget: Budget
    runtime: RuntimeConfig  # threads already capped at the CPU limit
    capacity: dict[str, tuple[Capacity, str]]  # name -> (capacity, family)
    identity: dict[str, str]  # name -> what identifies its architecture in the cache
    jobs: list[Job]  # in order of capacity
    cache: LatencyCache
    build: Callable[[str], Any]  # name -> nn.Module
    prune: bool = True
    tune: bool = False
    rows: dict[Job, Candidate] = field(default_factory=dict)
    over: list[tuple[str, str, Capacity, str]] = field(default_factory=list)  # family, precision, cap, name
    skipped: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=lambda: {"measured": 0, "cached": 0, "skipped": 0,
                                                            "confirmations": 0, "fresh_draws": 0})
    shipping: dict[Job, tuple[bytes, str]] = field(default_factory=dict)  # shipping bytes of the confirmed
    spread: dict[str, tuple[int, float, float]] = field(default_factory=dict)  # unstable confirmations
    models: dict[str, Any] = field(default_factory=dict)

    def model_of(self, name: str):
        if name not in self.models:
            self.models[name] = self.build(name)
        return self.models[name]

    def key(self, j: Job) -> str:
        return self.cache.key(j[0], self.identity[j[0]], self.spec, self.num_classes, self.runtime,
                              self.budget.batch, j[1])

    def value(self, stats: LatencyStats) -> float:
        return stats.stat(self.budget.stat)

    def fits(self, stats: LatencyStats) -> bool:
        return self.budget.ms is None or self.value(stats) <= self.budget.ms

    def record(self, j: Job, stats: LatencyStats, confirmed: bool, settings: SessionSettings | None, graph: str,
               draws: int = 0) -> None:
        cap, fam = self.capacity[j[0]]
        self.rows[j] = Candidate(j[0], cap.params, cap.flops, stats, self.fits(stats), confirmed, j[1], fam,
                                 settings or SessionSettings(self.runtime.threads), graph=graph, draws=draws)
        if self.budget.ms is not None and self.value(stats) > PRUNE_MARGIN * self.budget.ms:
            self.over.append((fam, j[1], cap, j[0]))

    def pruned_by(self, j: Job) -> str | None:
        """The measured same-family, same-precision candidate, clearly over budget, that `j` is at least as
        big as in FLOPs, params and layers (so `j` cannot fit either), or None."""
        if not self.prune or self.budget.ms is None:
            return None
        cap, fam = self.capacity[j[0]]
        return next((n for f, p, o, n in self.over if f == fam and p == j[1] and cap.flops >= o.flops
                     and cap.params >= o.params and cap.layers >= o.layers), None)

    def skip(self, j: Job, by: str) -> None:
        cap, fam = self.capacity[j[0]]
        self.counts["skipped"] += 1
        self.skipped.append({"name": j[0], "precision": j[1], "family": fam, "params": cap.params,
                             "flops": cap.flops,
                             "reason": f"at least the FLOPs, params and layers of {by}, which measured more than "
                                       f"{100 * (PRUNE_MARGIN - 1):.0f}% over budget"})


@dataclass(frozen=True)
class Probes:
    """The measuring seams: a screening or confirming measurement, fresh-process draws, exports, the ORT
    settings sweep and the teacher's cached measurement (search.py's functions)."""

    measure: Callable[..., LatencyStats]
    draws: Callable[..., Any]
    export: Callable[..., dict[Job, tuple[bytes, str]]]
    tune: Callable[..., tuple[SessionSettings, LatencyStats]]
    teacher: Callable[..., LatencyStats]


class LatencySource(Protocol):
    label: str

    def provider(self, runtime: RuntimeConfig) -> str: ...
    def planned(self, st: SearchState, model, cap: Capacity | None) -> int: ...
    def screen(self, st: SearchState, ex) -> None: ...
    def teacher(self, st: SearchState, model, cap: Capacity | None, name: str) -> Candidate | None: ...
    def confirm(self, st: SearchState, c: Candidate, ex) -> Candidate: ...
    def notes(self, chosen: Candidate, stat: str) -> tuple[str, ...]: ...


class MeasuredSource:
    """Latencies measured on this machine: screening exports first, shipping exports to confirm; cached.

    Reports to `report` (core.progress): every candidate job (`planned`, with the teacher when it is not
    cached) is done when measured, found in the cache or pruned; a confirmation is 1 + CONFIRM_MAX units, the
    first planned with the candidates when there is a budget, each later one when it starts (which
    candidates are confirmed, the ranking decides as it goes); the bar counts unneeded units done at its end."""

    label = "measured"

    def __init__(self, probes: Probes, report: Reporter = SILENT):
        self.probes, self.report = probes, report

    def provider(self, runtime: RuntimeConfig) -> str:
        return runtime.provider

    def planned(self, st: SearchState, model, cap: Capacity | None) -> int:
        """Every candidate job, the teacher when it will be measured (known to `teacher`, not cached), and with a
        budget the first confirmation's units: planned late, they would send the bar back from 100%."""
        key = st.cache.key("__teacher__", model, st.spec, st.num_classes, st.runtime, st.budget.batch)
        return (len(st.jobs) + (model is not None and cap is not None and st.cache.get(key) is None)
                + (1 + CONFIRM_MAX if st.budget.ms is not None else 0))  # confirmations need a budget

    def screen(self, st: SearchState, ex) -> None:
        for j in st.jobs:
            if (by := st.pruned_by(j)) is not None:
                st.skip(j, by)
            elif (stats := st.cache.get(st.key(j))) is not None:
                st.counts["cached"] += 1
                k = st.key(j)
                st.record(j, stats, st.cache.confirmed(k), st.cache.settings(k), st.cache.graph(k),
                          len(st.cache.draws(k)))
            else:
                self.report.step(f"measuring {shown(j)}")
                blob, graph = self.probes.export(ex, [j], "screen").get(j, (None, "screen"))
                stats = self.probes.measure(st.model_of(j[0]), st.spec, st.runtime, st.budget.batch, onnx=blob,
                                            precision=j[1], graph=graph)
                st.counts["measured"] += 1
                st.cache.put(st.key(j), stats, graph=graph)
                st.record(j, stats, False, None, graph)
            self.report.advance()

    def teacher(self, st: SearchState, model, cap: Capacity | None, name: str) -> Candidate | None:
        if model is None or cap is None:
            return None
        measured: list[bool] = []

        def say(_: str) -> None:  # called only when the teacher is measured (not cached)
            measured.append(True)
            self.report.step("measuring the teacher")
        stats = self.probes.teacher("__teacher__", model, st.spec, st.num_classes, st.runtime, st.budget.batch,
                                    st.cache, say)
        if measured:
            self.report.advance()
        t_key = st.cache.key("__teacher__", model, st.spec, st.num_classes, st.runtime, st.budget.batch)
        return Candidate(name, cap.params, cap.flops, stats, st.fits(stats), graph=st.cache.graph(t_key))

    def _shipping(self, st: SearchState, ex, j: Job) -> bytes | None:
        if j not in st.shipping:
            st.shipping.update(self.probes.export(ex, [j], "ship"))
        return st.shipping[j][0] if j in st.shipping else None

    def _first(self, st: SearchState, c: Candidate, ship: bytes | None) -> tuple[SessionSettings | None, LatencyStats]:
        """This process's draw of the shipping graph (with the settings sweep when tuning)."""
        model = st.model_of(c.name)
        if st.tune:
            return self.probes.tune(model, st.spec, st.runtime, st.budget.batch, st.budget.stat, onnx=ship,
                                    precision=c.precision)
        if c.graph == "ship":  # the screening export fell back: its figure is of the shipping graph
            return None, c.latency
        return None, self.probes.measure(model, st.spec, st.runtime, st.budget.batch, onnx=ship,
                                         precision=c.precision)

    def _draw(self, st: SearchState, c: Candidate, ex, runs: list[LatencyStats],
              settings: SessionSettings | None) -> tuple[list[LatencyStats], SessionSettings | None]:
        """Draws of the shipping graph, added to an earlier confirmation's `runs` until they are settled. On the
        bar a confirmation is this process's draw and up to CONFIRM_MAX fresh ones (each a process: they take
        the time); those a settled confirmation does not need are done at once."""
        st.counts["confirmations"] += 1
        if st.counts["confirmations"] > 1:  # planned() counted the first one
            self.report.plan(1 + CONFIRM_MAX)
        self.report.step(f"{'tuning' if st.tune and not runs else 'confirming'} {shown((c.name, c.precision))}")
        ship = self._shipping(st, ex, (c.name, c.precision))
        if not runs:
            settings, first = self._first(st, c, ship)
            runs = [first]
        self.report.advance()
        fresh = 0
        if not settled([st.value(r) for r in runs], st.budget.ms):  # e.g. this process's draw is over
            self.report.step(f"confirming {shown((c.name, c.precision))}")
            fresh = self._fresh(st, c, ship, runs, settings)
        self.report.advance(max(0, CONFIRM_MAX - fresh))
        return runs, settings

    def _fresh(self, st: SearchState, c: Candidate, ship: bytes | None, runs: list[LatencyStats],
               settings: SessionSettings | None) -> int:
        """Fresh-process draws appended to `runs` until they are settled; returns how many were drawn."""
        more = iter(self.probes.draws(st.model_of(c.name), st.spec, st.runtime, st.budget.batch, onnx=ship,
                                      precision=c.precision, settings=settings))
        fresh = 0
        for r in more:
            runs.append(r)
            fresh += 1
            st.counts["fresh_draws"] += 1
            if fresh <= CONFIRM_MAX:  # (a test's seam may draw more)
                self.report.advance()
            if settled([st.value(r) for r in runs], st.budget.ms):
                break
        getattr(more, "close", lambda: None)()  # no more fresh processes started
        return fresh

    def confirm(self, st: SearchState, c: Candidate, ex) -> Candidate:
        j, k = (c.name, c.precision), st.key((c.name, c.precision))
        runs = st.cache.draws(k)  # an earlier confirmation's draws: only the missing ones are added
        settings = st.cache.settings(k) if runs else None
        drawn = not settled([st.value(r) for r in runs], st.budget.ms)
        if drawn:
            runs, settings = self._draw(st, c, ex, runs, settings)
        slower = max(runs, key=st.value)
        faster = min(st.value(r) for r in runs)
        if st.value(slower) > UNSTABLE * faster:
            st.spread[shown(j)] = (len(runs), faster, st.value(slower))
        if drawn:
            st.cache.put(k, slower, confirmed=True, settings=settings, graph="ship", draws=runs)
            st.cache.save()
        st.rows[j] = replace(c, latency=slower, fits=st.fits(slower), confirmed=True,
                             settings=settings or SessionSettings(st.runtime.threads), graph="ship", draws=len(runs))
        return st.rows[j]

    def notes(self, chosen: Candidate, stat: str) -> tuple[str, ...]:
        return ()


class TableSource:
    """Latencies from a table `kdcompress profile` measured on the target: the target's own figures are the
    confirmation, and the teacher is not measured here."""

    def __init__(self, path: Path, table: dict[str, Any], report: Reporter = SILENT):
        self.path, self.table, self.report = path, table, report
        self.label = f"latency-table:{path}"

    def provider(self, runtime: RuntimeConfig) -> str:
        return str(self.table.get("provider", runtime.provider))

    def planned(self, st: SearchState, model, cap: Capacity | None) -> int:
        return len(st.jobs)  # the teacher is not measured

    def screen(self, st: SearchState, ex) -> None:
        wanted = {model_key(*j): (st.capacity[j[0]][0].params, st.capacity[j[0]][0].flops) for j in st.jobs}
        check_table(self.table, self.path, input_shape=tuple(st.spec.shape), batch=st.budget.batch, wanted=wanted)
        self.report.step("reading the latency table")
        for j in st.jobs:
            e = self.table["models"][model_key(*j)]
            st.record(j, table_stats(e), True, SessionSettings.from_json(e.get("settings") or {}), "ship")
            self.report.advance()

    def teacher(self, st: SearchState, model, cap: Capacity | None, name: str) -> Candidate | None:
        return None

    def confirm(self, st: SearchState, c: Candidate, ex) -> Candidate:
        return c

    def notes(self, chosen: Candidate, stat: str) -> tuple[str, ...]:
        return table_note(self.table, chosen, stat)


def shown(j: Job) -> str:
    """A candidate as messages name it: "resnet8", "resnet8 (int8)"."""
    return j[0] if j[1] == "fp32" else f"{j[0]} ({j[1]})"


def mark_slower(st: SearchState, c: Candidate) -> Candidate:
    """A reduced-precision variant no faster than its own fp32 form is marked, and never chosen."""
    fp = st.rows.get((c.name, "fp32"))
    if c.precision != "fp32" and fp is not None and st.value(c.latency) >= st.value(fp.latency):
        c = st.rows[(c.name, c.precision)] = replace(c, slower_than_fp32=True)
    return c


def ranked(st: SearchState, allowed: tuple[str, ...]) -> list[Candidate]:
    """The candidates that fit, in the allowed precisions, most capable first."""
    return sorted((c for c in st.rows.values() if c.fits and not c.slower_than_fp32 and c.precision in allowed),
                  key=lambda c: (c.flops, c.params, PRECISION_PREFERENCE[c.precision]), reverse=True)


def best(st: SearchState, source: LatencySource, ex, allowed: tuple[str, ...]) -> Candidate | None:
    """Confirm the top of the ranking until one holds; None when none of the allowed precisions fits."""
    while (top := ranked(st, allowed)):
        c = mark_slower(st, source.confirm(st, top[0], ex))
        if c.fits and not c.slower_than_fp32:
            return c
    return None


def budget_error(rows: list[Candidate], budget: Budget, provider: str, precision: str = "fp32") -> BudgetError:
    """Why nothing was chosen: every variant of the allowed precisions that fits is no faster than its own fp32
    graph (a reduced-precision file would buy nothing), or none fits at all."""
    allowed = allowed_precisions(precision)
    slower = [c for c in rows if c.precision in allowed and c.fits and c.slower_than_fp32]
    if slower:
        c = slower[0]
        fp = next((r for r in rows if (r.name, r.precision) == (c.name, "fp32")), None)
        vs = f" against {fp.latency.stat(budget.stat):.4f} ms in fp32" if fp is not None else ""
        return BudgetError(
            f"the --precision {precision} variants that meet the {budget.ms:g} ms budget are no faster than their "
            f"fp32 graphs here ({shown((c.name, c.precision))} {c.latency.stat(budget.stat):.4f} ms{vs}), so "
            "they would buy nothing; use --precision fp32, or auto")
    fastest = min(rows, key=lambda c: c.latency.stat(budget.stat))
    return BudgetError(
        f"no student meets the {budget.ms:g} ms budget ({budget.stat}, batch {budget.batch}, {provider}); "
        f"the fastest candidate, {fastest.name}, measured {fastest.latency.stat(budget.stat):.4f} ms")


def choose(st: SearchState, source: LatencySource, ex, precision: str,
           single: bool) -> tuple[Candidate | None, Candidate | None]:
    """(chosen, fallback). Without a budget nothing is chosen, except a single named candidate (`distill
    --student`); a reduced-precision choice comes with the best fp32 fit as its fallback."""
    if st.budget.ms is None:
        return (st.rows[st.jobs[0]] if single else None), None
    chosen = best(st, source, ex, allowed_precisions(precision))
    if chosen is None:
        raise budget_error(list(st.rows.values()), st.budget, source.provider(st.runtime), precision)
    fallback = best(st, source, ex, ("fp32",)) if chosen.precision != "fp32" else None
    return chosen, fallback


def screen(st: SearchState, source: LatencySource, ex) -> None:
    """Every candidate's latency (or its pruning), then reduced-precision variants no faster than fp32 marked."""
    source.screen(st, ex)
    for c in list(st.rows.values()):
        mark_slower(st, c)
