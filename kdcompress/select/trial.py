"""Trial ranking: among the candidates that fit, the one a short distillation trial says learns best.

Successive halving over the top N fits by capacity: every survivor of a rung is trained (from scratch,
`epochs` of the rung) and scored by its best validation accuracy; the better half survives and the next
rung doubles the epochs, until one is left. The schedule is sized to `max_epochs` in all (the trial budget:
by default 25% of the main training's epochs); epochs of the candidates, which all have at most the FLOPs
of the FLOPs-rule choice, so the bound in epochs also bounds the time. Training is the caller's (the
pipeline passes `train(name, epochs) -> val accuracy`): select never imports train.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .result import PRECISION_PREFERENCE, Candidate, Selection


def halving_plan(n: int, max_epochs: int) -> list[tuple[int, int]]:
    """[(survivors, epochs)] per rung for `n` candidates within `max_epochs` in all; [] when not even one
    epoch per candidate per rung fits (then the FLOPs rule stands)."""
    while n >= 2:
        rungs = math.ceil(math.log2(n))
        counts = [max(1, math.ceil(n / 2 ** k)) for k in range(rungs)]
        unit = sum(c * 2 ** k for k, c in enumerate(counts))  # epochs in all when rung 0 trains 1 epoch
        e0 = max_epochs // unit
        if e0 >= 1:
            return [(c, e0 * 2 ** k) for k, c in enumerate(counts)]
        n -= 1
    return []


def trial_pool(selection: Selection, top: int) -> list[Candidate]:
    """The top `top` fits by capacity that may ship (fits, not slower than its fp32 form, confirmed or not)."""
    allowed = {"auto": ("fp32", "fp16", "int8")}.get(selection.precision, (selection.precision,))
    fits = [c for c in selection.candidates if c.fits and not c.slower_than_fp32 and c.precision in allowed]
    ranked = sorted(fits, key=lambda c: (c.flops, c.params, PRECISION_PREFERENCE[c.precision]), reverse=True)
    seen, out = set(), []
    for c in ranked:  # one entry per student: its most capable fitting form
        if c.name not in seen:
            seen.add(c.name)
            out.append(c)
    return out[:top]


def successive_halving(pool: list[Candidate], max_epochs: int,
                       train: Callable[[str, int], float]) -> tuple[Candidate | None, list[dict[str, Any]]]:
    """(winner or None when no plan fits, the log of every trial: rung, name, epochs, val_accuracy)."""
    plan = halving_plan(len(pool), max_epochs)
    if not plan:
        return None, []
    alive = pool[: plan[0][0]]
    log: list[dict[str, Any]] = []
    for rung, (_, epochs) in enumerate(plan):
        scores = {}
        for c in alive:
            scores[c.name] = train(c.name, epochs)
            log.append({"rung": rung, "name": c.name, "precision": c.precision, "epochs": epochs,
                        "val_accuracy": scores[c.name]})
        # ties: the more capable (earlier in the pool) stays
        alive = sorted(alive, key=lambda c: -scores[c.name])[: max(1, math.ceil(len(alive) / 2))]
    return alive[0], log
