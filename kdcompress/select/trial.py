"""Trial ranking: among the candidates that fit, the one a short distillation trial says learns best.

The pool (trial_pool): the most capable fit of each family first, by capacity, then the other fits by
capacity; the first `top`. Within a family the bigger sibling is the usual winner, while families differ
(on mnist5k vgg11_x0_25 beat resnet8, resnet14 and resnet20 with fewer FLOPs: benchmarks/RESULTS.md,
"select_quality, mnist5k, full ladder"), so
the few trials a budget affords go to different families first.

Successive halving over the pool: every survivor of a rung is trained (from scratch, the rung's epochs)
and scored by its best validation accuracy; the better half survives and the next rung doubles the
epochs, until one is left; or, in the wide plan the pipeline uses, until the budget ends: a pool that
cannot afford every rung drops the last rungs rather than candidates. The budget is time: `budget` in
epochs of the main training (the FLOPs-rule choice's epochs), each candidate's epoch weighed by its
measured cost relative to that choice's (`costs`, from train.probe: a depthwise mobilenet's step costs
several times a resnet's of the same FLOPs on a CPU; benchmarks/RESULTS.md, "Figures moved out of code
comments"). The plan holds the budget even if the dearest candidates always survived. On select_quality
the wide plan (more candidates for fewer epochs) chose near the best at more budgets than halving did
(benchmarks/RESULTS.md, "Issue 14, stop 20"). Training is the caller's (the pipeline passes
`train(name, epochs) -> val accuracy`): select never imports train.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from .result import PRECISION_PREFERENCE, Candidate, Selection


def halving_plan(costs: Sequence[float], budget: float, wide: bool = False,
                 min_epochs: int = 1) -> list[tuple[int, int]]:
    """[(survivors, epochs)] per rung for a pool whose epochs cost `costs` each (in pool order, in units
    of the main training's epoch), within `budget` of those units in all; the most candidates (a prefix of
    the pool) first, then the most epochs. [] when not even 2 candidates fit one epoch each (then the FLOPs
    rule stands). Rung k trains ceil(n / 2^k) candidates for e0 * 2^k epochs, bounded as if the dearest
    candidates survived every rung. Halving runs down to 2 survivors; with `wide`, a pool that cannot
    afford every rung keeps its size and drops the last rungs instead (down to one rung: all n for e0
    epochs, the best of them wins), and also drops rungs while the first would be shorter than `min_epochs`
    (a floor on the first rung that never costs a candidate: one rung shorter than it still stands)."""
    for n in range(len(costs), 1, -1):
        full = math.ceil(math.log2(n))
        last = 1 if wide else full
        for rungs in range(full, last - 1, -1):
            counts = [math.ceil(n / 2 ** k) for k in range(rungs)]
            dear = sorted(costs[:n], reverse=True)
            unit = sum(sum(dear[:c]) * 2 ** k for k, c in enumerate(counts))  # in all when rung 0 trains 1 epoch
            e0 = math.floor(budget / unit + 1e-9)
            if e0 >= max(1, min_epochs) or (e0 >= 1 and rungs == last):
                return [(c, e0 * 2 ** k) for k, c in enumerate(counts)]
    return []


def plan_cost(plan: list[tuple[int, int]], costs: Sequence[float]) -> float:
    """The most the plan can cost (its bound in halving_plan), in the costs' units."""
    dear = sorted(costs[: plan[0][0]], reverse=True) if plan else []
    return sum(sum(dear[:c]) * e for c, e in plan)


def trial_pool(selection: Selection, top: int) -> list[Candidate]:
    """Up to `top` fits that may ship (fits, not slower than its fp32 form, confirmed or not), one entry per
    student (its most capable fitting form): the most capable of each family first, by capacity, then the
    rest by capacity. The first is the FLOPs rule's choice."""
    allowed = {"auto": ("fp32", "fp16", "int8")}.get(selection.precision, (selection.precision,))
    fits = [c for c in selection.candidates if c.fits and not c.slower_than_fp32 and c.precision in allowed]
    ranked = sorted(fits, key=lambda c: (c.flops, c.params, PRECISION_PREFERENCE[c.precision]), reverse=True)
    seen: set[str] = set()
    students: list[Candidate] = []
    for c in ranked:
        if c.name not in seen:
            seen.add(c.name)
            students.append(c)
    families: set[str] = set()
    heads, rest = [], []
    for c in students:
        (rest if c.family in families else heads).append(c)
        families.add(c.family)
    return (heads + rest)[:top]


def noise_margin(best: float, n_val: int | None, z: float = 1.0) -> float:
    """z standard errors of the difference of two validation accuracies near `best` on n_val images
    (unpaired binomial: sqrt(2 p (1 - p) / n)); 0 when n_val is unknown."""
    if not n_val:
        return 0.0
    return z * math.sqrt(2 * best * (1 - best) / n_val)


def run_rungs(names: Sequence[str], plan: list[tuple[int, int]], train: Callable[[str, int], float],
              pick: Callable[[list[str], dict[str, float]], str]) -> tuple[str, list[dict[str, Any]]]:
    """Successive halving over `names` (pool order) along `plan` (halving_plan): each rung trains every
    survivor for the rung's epochs (`train(name, epochs) -> val accuracy`), the better half goes on in pool
    order (ties: the earlier in the pool stays); `pick(survivors, scores)` chooses among the last rung's. Returns (the
    winner, the log of every trial: rung, name, epochs, val_accuracy). Shared by the student trial below
    and the preset ranking (presetrank.py), which differ only in the pool and the last pick."""
    alive = list(names[: plan[0][0]])
    log: list[dict[str, Any]] = []
    for rung, (_, epochs) in enumerate(plan):
        scores = {}
        for name in alive:
            scores[name] = train(name, epochs)
            log.append({"rung": rung, "name": name, "epochs": epochs, "val_accuracy": scores[name]})
        if rung == len(plan) - 1:
            return pick(alive, scores), log
        better = set(sorted(alive, key=lambda n: -scores[n])[: max(1, math.ceil(len(alive) / 2))])
        alive = [n for n in alive if n in better]  # in pool order, which `pick` may rely on
    raise ValueError("an empty plan trains nothing")


def successive_halving(pool: list[Candidate], budget: float, train: Callable[[str, int], float],
                       n_val: int | None = None, costs: Sequence[float] | None = None,
                       wide: bool = False) -> tuple[Candidate | None, list[dict[str, Any]]]:
    """(winner or None when no plan fits, the log of every trial: rung, name, precision, epochs,
    val_accuracy). `budget` in epochs of the main training; `costs` each pool candidate's epoch in those
    units (default 1); `wide` as in halving_plan.

    The last rung's winner is the most capable survivor (FLOPs, then params) whose validation accuracy
    is within one standard error (noise_margin, on `n_val` validation images) of the best: a less capable
    student displaces another only on a difference a short trial can resolve."""
    plan = halving_plan(list(costs) if costs is not None else [1.0] * len(pool), budget, wide)
    if not plan:
        return None, []
    by_name = {c.name: c for c in pool}

    def most_capable_near_best(alive: list[str], scores: dict[str, float]) -> str:
        top = max(scores.values())
        by_capacity = sorted(alive, key=lambda n: (by_name[n].flops, by_name[n].params), reverse=True)
        return next(n for n in by_capacity if scores[n] >= top - noise_margin(top, n_val))

    winner, log = run_rungs([c.name for c in pool], plan, train, most_capable_near_best)
    log = [{"rung": r["rung"], "name": r["name"], "precision": by_name[r["name"]].precision,
            "epochs": r["epochs"], "val_accuracy": r["val_accuracy"]} for r in log]
    return by_name[winner], log
