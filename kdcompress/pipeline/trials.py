"""`distill --rank trial`: successive halving over the selection's pool (select.trial, the wide plan: as many
candidates as the budget allows, dropping the last rungs before shrinking the pool), each trial a short
distillation into RUN/trials/NAME-eEPOCHS (reused on a rerun), within --trial-budget of the main training's
time (each candidate's epoch measured by train.probe, kept in RUN/trials/epoch_seconds.json so that a rerun
makes the same plan); the winner is confirmed against the budget like any choice."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from rich.console import Console

from .. import losses, students
from ..core.config import RunConfig, preset_to_json
from ..core.errors import BudgetError
from ..core.runio import RunDir, atomic_write_json
from ..core.splits import DataSplits
from ..core.system import process_settings
from ..select import Candidate, Selection, halving_plan, plan_cost, successive_halving, trial_pool
from ..teacher import Teacher
from ..train import epoch_seconds, train
from .selection import Ladder, measure, setting_for

if TYPE_CHECKING:
    from .prepare import Prepared


def trainer(p: Prepared, run: RunDir) -> Callable[[str, int], float]:
    """trial(name, epochs) -> the best validation accuracy of a short distillation in RUN/trials/."""
    cfg, teacher, splits, spec = p.cfg, p.teacher, p.splits, p.teacher.input_spec

    def trial(name: str, epochs: int) -> float:
        preset = replace(cfg.preset, train=replace(cfg.preset.train, epochs=epochs))
        fp = {"arch": name, "data": cfg.data, "teacher": teacher.sha256, "preset": preset_to_json(preset),
              "trial": True}
        p.console.print(f"trial: {name} for {epochs} epoch(s)")
        with process_settings(p.device):
            res = train(arch=name, splits=splits, spec=spec, preset=preset, teacher=teacher, device=p.device,
                        run=RunDir(run.root / "trials" / f"{name}-e{epochs}"), fingerprint=fp,
                        console=Console(stderr=True, quiet=True), dist=p.ddp,
                        make_student=lambda: students.build_student(name, splits.num_classes, spec),
                        make_objective=lambda ctx: losses.Objective(cfg.preset.terms, ctx))
        return res.best_val_accuracy
    return trial


def rank_by_trial(selection: Selection, p: Prepared, run: RunDir) -> Selection:
    """The selection with `chosen` the trials' winner (confirmed against the budget; else the FLOPs choice
    stands), its fp32 `fallback` beside a reduced-precision winner, and the ranking in stats["trial"]."""
    cfg, opts = p.cfg, p.options.select
    budget_epochs = opts.trial_budget * cfg.preset.train.epochs
    pool = trial_pool(selection, opts.trial_top)
    with p.console.status("timing a few training steps of each trial candidate"):
        seconds = p.ddp.on_main(lambda: trial_epoch_seconds([c.name for c in pool] + [selection.chosen.name], cfg,
                                                            p.teacher, p.splits, run, p.device))
    main = seconds[selection.chosen.name]
    costs = [seconds[c.name] / main for c in pool]
    winner, log = successive_halving(pool, budget_epochs, trainer(p, run), n_val=len(p.splits.val), costs=costs,
                                     wide=True)
    plan = halving_plan(costs, budget_epochs, wide=True)
    info = {"rank": "trial", "pool": [c.name for c in pool], "trial_epochs_budget": budget_epochs,
            "epoch_seconds": {c.name: round(seconds[c.name], 4) for c in pool}, "main_epoch_seconds": round(main, 4),
            "plan": [list(r) for r in plan], "plan_bound_epochs": round(plan_cost(plan, costs), 3), "trials": log,
            "val_images": len(p.splits.val), "flops_choice": selection.chosen.name}
    chosen = confirmed_winner(winner, selection, p, info)
    if winner is None:
        info["note"] = (f"a trial budget of {budget_epochs:g} main epoch(s) is too small for 2 of the "
                        f"{len(pool)} candidates at one epoch each")
    p.console.print(f"trial ranking: {chosen.name} (FLOPs rule: {selection.chosen.name})")
    fp32_fits = sorted((c for c in selection.candidates if c.fits and c.precision == "fp32"),
                       key=lambda c: (c.flops, c.params), reverse=True)
    fallback = (selection.fallback or next(iter(fp32_fits), None)) if chosen.precision != "fp32" else None
    return replace(selection, chosen=chosen, fallback=fallback, stats={**selection.stats, "trial": info})


def confirmed_winner(winner: Candidate | None, selection: Selection, p: Prepared, info: dict[str, Any]) -> Candidate:
    """The trials' winner measured again against the budget, alone, in its precision; the FLOPs choice when
    the trials chose it, chose nothing, or the winner misses the budget on confirmation (said in `info`)."""
    if winner is None or winner.name == selection.chosen.name:
        return selection.chosen
    cfg = p.cfg
    try:
        setting = setting_for(replace(p.options.select, precision=winner.precision))
        again = p.ddp.on_main(lambda: measure(Ladder(p.splits.num_classes, p.teacher.input_spec, names=(winner.name,)),
                                              cfg.budget, cfg.runtime, setting))
        return again.chosen
    except BudgetError:
        info["note"] = f"{winner.name} did not meet the budget on confirmation; the FLOPs choice stands"
        return selection.chosen


def trial_epoch_seconds(names: list[str], cfg: RunConfig, teacher: Teacher, splits: DataSplits, run: RunDir,
                        device) -> dict[str, float]:
    """Seconds of one training epoch of each named student (train.probe), from run/trials/epoch_seconds.json
    when an earlier attempt of this run measured it at the same setting (a rerun makes the same plan)."""
    path = run.root / "trials" / "epoch_seconds.json"
    setting = {"batch_size": cfg.preset.train.batch_size, "n_train": len(splits.train), "device": str(device),
               "teacher": teacher.sha256, "teacher_cache": cfg.preset.train.teacher_cache}
    try:
        kept = json.loads(path.read_text())
        known = dict(kept["seconds"]) if kept.get("setting") == setting else {}
    except (OSError, ValueError, KeyError, TypeError):
        known = {}
    missing = [n for n in dict.fromkeys(names) if not isinstance(known.get(n), (int, float))]
    for name in missing:
        with process_settings(device):
            known[name] = epoch_seconds(
                lambda name=name: students.build_student(name, splits.num_classes, teacher.input_spec),
                teacher.input_spec, batch_size=cfg.preset.train.batch_size,
                n_train=len(splits.train), num_classes=splits.num_classes,
                device=device,  # with the teacher-output cache no step runs the teacher
                teacher=None if cfg.preset.train.teacher_cache == "views" else teacher.model)
    if missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"setting": setting, "seconds": known})
    return {n: float(known[n]) for n in names}
