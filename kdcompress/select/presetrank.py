"""`--preset auto`: which distillation preset suits this teacher, student and data, by short paired trials.

No preset wins everywhere (dkd ranks below kd on the digits and above it on mnist5k: benchmarks/RESULTS.md,
section "presets"), so the choice is measured, not guessed: each candidate preset distils the chosen
student for a few epochs on the training split, is scored by its best accuracy on the validation split
(never the test split), and successive halving (trial.run_rungs, the machinery `--rank trial` uses for
students) keeps the better half for twice the epochs until the budget is spent.

The trials are paired: one student architecture, the same seed, so the same initial weights and the same
augmentation stream; only the loss (and the preset's own optimiser recipe) differs. Each trial is the
preset's recipe compressed to the trial's length (milestones and warm-ups rescale with train.epochs), the
best proxy for the full run that a short run gives.

Ties: the simpler preset (SIMPLICITY) wins a tie, i.e. the same validation accuracy to half an image.
Unlike the student trial no noise margin is applied: with paired trials two presets within noise of
each other are as good a pick as each other for the final accuracy, so a margin would only hand the
choice to the simpler preset when the other one is in truth better.

Training is the caller's (`train(name, epochs) -> (val accuracy, seconds)`): select never imports train.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .trial import halving_plan, run_rungs

# the default candidates: logit presets that each won somewhere in benchmarks/RESULTS.md, and nd, the
# feature preset that won on the digits (skipped with a note for a logits-only teacher)
DEFAULT_CANDIDATES = ("kd", "kd_ls", "dist", "dkd", "nd")
# simplest first (fewest terms and hyperparameters, no teacher features): the order ties are broken in
SIMPLICITY = ("ce", "kd", "kd_ls", "nkd", "dist", "bickd", "dkd", "dkd_ls", "gdkd", "nd", "dkd_nd", "ickd")


def simplest_first(names: Sequence[str]) -> list[str]:
    """The built-in presets in SIMPLICITY order, then any other (a user's .toml) in the order given."""
    rank = {n: i for i, n in enumerate(SIMPLICITY)}
    return sorted(names, key=lambda n: rank.get(n, len(SIMPLICITY)))


@dataclass(frozen=True)
class PresetRanking:
    """What the ranking did: the candidates (simplest first), those skipped and why, the plan
    [(presets, epochs)] per rung, every trial (rung, preset, epochs, val_accuracy, seconds) and the winner."""

    winner: str
    candidates: tuple[str, ...]
    budget_epochs: float
    val_images: int
    plan: tuple[tuple[int, int], ...] = ()
    trials: tuple[dict[str, Any], ...] = ()
    skipped: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        rounds = [{"rung": k, "epochs": e, "val_accuracy": {t["preset"]: t["val_accuracy"]
                                                             for t in self.trials if t["rung"] == k}}
                  for k, (_, e) in enumerate(self.plan)]
        return {"winner": self.winner, "candidates": list(self.candidates), "split": "val",
                "val_images": self.val_images, "trial_epochs_budget": self.budget_epochs,
                "plan": [list(r) for r in self.plan], "rounds": rounds, "trials": [dict(t) for t in self.trials],
                "epochs_spent": sum(t["epochs"] for t in self.trials),
                "seconds_spent": round(sum(t["seconds"] for t in self.trials), 3),
                "skipped": [{"preset": n, "reason": r} for n, r in self.skipped.items()],
                "tie_break": "the simpler preset: " + " < ".join(simplest_first(self.candidates))}


def best_or_simplest(n_val: int) -> Callable[[list[str], dict[str, float]], str]:
    """The last rung's pick: the best validation accuracy; a tie (within half an image of `n_val`) goes
    to the survivor that comes first in the pool, the pool being simplest first."""
    tol = 0.5 / max(n_val, 1)

    def pick(alive: list[str], scores: dict[str, float]) -> str:
        top = max(scores.values())
        return next(n for n in alive if scores[n] >= top - tol)
    return pick


def rank_presets(names: Sequence[str], budget_epochs: float, train: Callable[[str, int], tuple[float, float]],
                 n_val: int, skipped: dict[str, str] | None = None, min_epochs: int = 1) -> PresetRanking:
    """Successive halving over the presets `names` within `budget_epochs` trial epochs in all (each preset's
    epoch counted as one: one student, so the costs differ only by the loss). The plan (trial.halving_plan,
    wide) trains as many presets as the budget affords, simplest first, and drops the last rungs before it
    drops presets, and before a first rung would be shorter than `min_epochs` (a 2-epoch first rung of 40
    dropped the preset best at 40 on Fashion-MNIST: benchmarks/RESULTS.md, "Issue 26, stop 34"); presets it
    cannot afford are listed in `skipped`. One preset: it wins untried."""
    pool = simplest_first(names)
    skipped = dict(skipped or {})
    if len(pool) == 1:
        return PresetRanking(pool[0], tuple(pool), budget_epochs, n_val, skipped=skipped)
    plan = halving_plan([1.0] * len(pool), budget_epochs, wide=True, min_epochs=min_epochs)
    if not plan:
        raise ValueError(f"a budget of {budget_epochs:g} trial epochs cannot train 2 presets")  # checked by the caller
    for name in pool[plan[0][0]:]:
        skipped[name] = (f"the trial budget ({budget_epochs:g} epochs) affords {plan[0][0]} presets at "
                         f"{plan[0][1]} epoch(s) each; raise it (--set auto.budget=X) to try it")
    seconds: dict[tuple[str, int], float] = {}

    def trial(name: str, epochs: int) -> float:
        acc, seconds[name, epochs] = train(name, epochs)
        return acc

    winner, log = run_rungs(pool, plan, trial, best_or_simplest(n_val))
    trials = tuple({"rung": r["rung"], "preset": r["name"], "epochs": r["epochs"], "val_accuracy": r["val_accuracy"],
                    "seconds": round(seconds[r["name"], r["epochs"]], 3)} for r in log)
    return PresetRanking(winner, tuple(pool), budget_epochs, n_val, tuple(plan), trials, skipped)
