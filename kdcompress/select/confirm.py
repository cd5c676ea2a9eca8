"""How select confirms the candidate it is about to choose: fresh-process draws of its shipping graph until
they settle it (search.select's confirm step calls these).

Why so many draws near the budget: on a shared machine a model's latency is drawn per process, a slow
speed coming up in a minority of processes (benchmarks/RESULTS.md, "Latency is a per-process draw on this
VM"). The chance that a deployment's process is slower than all of n independent draws is 1/(n+1), so
more draws near the budget's edge make a miss rarer than the 4 of the rule before. The A/B of the two rules
is in benchmarks/RESULTS.md, "Issue 14, stop 21": the settled rule's confirmed figure is truer, but a
burst of draws cannot see the machine drift minutes later.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..core.config import RuntimeConfig
from ..runtime import UNSTABLE
from ..runtime import LatencyStats, SessionSettings
from ..core.spec import InputSpec

# The confirmation measures the shipping graph in this process once, then in fresh processes until
# `settled` (module doc; runtime.freshbench says why): at least CONFIRM_MIN of them, CONFIRM_MAX when the
# slowest draw is within SPREAD_BOUND of the budget (above the widest per-process spread measured:
# benchmarks/RESULTS.md, "Issue 14, stop 21"). The slowest figure is the one that must fit.
CONFIRM_MIN = 3
CONFIRM_MAX = 15
SPREAD_BOUND = 2.0


def settled(values: list[float], budget_ms: float | None) -> bool:
    """Whether a confirmation's draws (this process's first, then the fresh ones, in the budget's
    statistic) decide the candidate: one over the budget rejects it; CONFIRM_MIN fresh draws suffice when
    even SPREAD_BOUND times the slowest fits; otherwise CONFIRM_MAX are drawn."""
    if not values:
        return False
    if budget_ms is None:
        return len(values) - 1 >= CONFIRM_MIN
    fresh, slowest = len(values) - 1, max(values)
    return (slowest > budget_ms or fresh >= CONFIRM_MAX
            or (fresh >= CONFIRM_MIN and SPREAD_BOUND * slowest <= budget_ms))


def confirm_measurements(model, spec: InputSpec, runtime: RuntimeConfig, batch: int, *, onnx: bytes,
                         precision: str = "fp32", settings: SessionSettings | None = None) -> Iterator[LatencyStats]:
    """The confirmation's fresh-process measurements of the shipping bytes, up to CONFIRM_MAX, yielded one
    by one (runtime.freshbench: latency is a per-process draw on a shared VM); the caller stops when the
    draws are `settled`. A seam: fake clocks replace it (a shorter iterable ends the confirmation)."""
    from ..runtime import fresh_draws

    del model, precision  # the bytes are the model, in its precision
    return fresh_draws(onnx, runtime.provider, (batch, *spec.shape), settings or SessionSettings(runtime.threads or 1),
                       CONFIRM_MAX)


def unstable_note(spread: dict[str, tuple[int, float, float]], stat: str) -> tuple[str, ...]:
    """One warning for the confirmations whose draws spread by more than runtime.freshbench.UNSTABLE (the
    widest named)."""
    if not spread:
        return ()
    name, (n, fast, slow) = max(spread.items(), key=lambda kv: kv[1][2] / kv[1][1])
    others = f" ({len(spread) - 1} other candidate(s) too)" if len(spread) > 1 else ""
    return (f"{name}'s {n} measurements of the shipping graph (this process and {n - 1} fresh one(s)) range "
            f"from {fast:.4f} to {slow:.4f} ms {stat} (+{100 * (slow / fast - 1):.0f}%){others}: latency on this "
            "machine depends on the process (or on other load), so a deployment may see either; the slowest "
            "counts. Re-run select on the target, or leave headroom in the budget",)


def table_note(table: dict, chosen, stat: str) -> tuple[str, ...]:
    """A warning when the chosen candidate's per-process draws on the target (the latency table `kdcompress
    profile` wrote, its "draws") spread by more than UNSTABLE in `stat`; nothing for a table without draws."""
    from ..runtime import model_key

    entry = table.get("models", {}).get(model_key(chosen.name, chosen.precision)) or {}
    try:
        vals = [float(d[stat]) for d in entry.get("draws") or ()]
    except (KeyError, TypeError, ValueError):
        return ()
    if len(vals) < 2 or max(vals) <= UNSTABLE * min(vals):
        return ()
    fast, slow = min(vals), max(vals)
    return (f"on the target, {chosen.name} ({chosen.precision}) measured {fast:.4f} to {slow:.4f} ms {stat} in its "
            f"{len(vals)} profile processes (+{100 * (slow / fast - 1):.0f}%): the table's figure is the slowest, "
            "and a deployment may draw slower still; leave headroom in the budget, or profile with more --processes",)
