"""`distill --preset auto`: the flags become an AutoPreset; after selection, short paired trials of each
candidate preset on the chosen student pick the one the main training uses (select/presetrank.py ranks;
this module composes the trials from the train, losses and students stages; choose.py calls it).

The ranking is kept in RUN/preset_ranking.json (written atomically once it is finished) under a key of
everything that decides it, so rerunning the same command after an interrupt reuses it instead of
ranking again; the trials themselves train in RUN/preset_trials/NAME-eEPOCHS and resume like any run.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from rich.console import Console

from .. import losses, students
from ..core.config import AUTO_MIN_TRIAL, AutoPreset, Preset, RunConfig, apply_overrides, preset_to_json
from ..core.errors import UsageError
from ..core.runio import RunDir, atomic_write_json
from ..core.splits import DataSplits
from ..core.system import process_settings
from ..core.types import NEED_TEACHER_EMBED
from ..select import DEFAULT_CANDIDATES, rank_presets, simplest_first
from ..train import check_resumable, train

RANKING_FILE = "preset_ranking.json"
TRIALS_DIR = "preset_trials"


# ------------------------------------------------------------------------------------------ flags


def auto_from_flags(names: str | None, budget: float, sets: list[str],
                    min_trial: float = AUTO_MIN_TRIAL) -> AutoPreset:
    """`--auto-presets a,b,...` (default DEFAULT_CANDIDATES) loaded with the run's `--set` (train.* keys
    only: a term key belongs to one preset) and --epochs (already in `sets`), simplest first."""
    listed = [n.strip() for n in (names.split(",") if names is not None else DEFAULT_CANDIDATES)]
    if any(not n for n in listed):
        raise UsageError(f"--auto-presets has an empty name in '{names}'; give names such as kd,dkd,dist")
    if "auto" in listed:
        raise UsageError("--auto-presets cannot list 'auto'; name the presets to try, e.g. kd,dkd,dist")
    term_keys = [s for s in sets if not s.strip().startswith("train.")]
    if term_keys:
        raise UsageError(f"--set {term_keys[0]}: with --preset auto only train.* keys apply (to every candidate); "
                         "a term's key belongs to one preset: give that --preset instead of auto")
    presets = [losses.load_checked_preset(n, sets) for n in listed]
    by_name = {p.name: p for p in presets}
    if len(by_name) < len(presets):
        dup = next(p.name for p in presets if sum(q.name == p.name for q in presets) > 1)
        raise UsageError(f"--auto-presets names preset '{dup}' twice; list each preset once")
    if len(presets) < 2:
        raise UsageError("--auto-presets needs at least 2 presets to rank; with one, give --preset NAME")
    seeds = {p.train.seed for p in presets}
    if len(seeds) > 1:
        raise UsageError(f"the --auto-presets candidates set different train.seed values ({sorted(seeds)}); "
                         "give --set train.seed=N so that their trials are paired")
    auto = AutoPreset(tuple(by_name[n] for n in simplest_first(list(by_name))), budget, min_trial)
    check_budget(auto)
    return auto


def main_epochs(auto: AutoPreset) -> int:
    return max(p.train.epochs for p in auto.candidates)


def min_trial_epochs(auto: AutoPreset) -> int:
    """The shortest first trial in epochs: auto.min_trial of the main training's, at least 1."""
    return max(1, math.ceil(auto.min_trial * main_epochs(auto) - 1e-9))


def check_budget(auto: AutoPreset) -> None:
    """At least 2 trial epochs in all (2 presets at 1 epoch each), refused before any work otherwise."""
    epochs = auto.budget * main_epochs(auto)
    if epochs < 2:
        raise UsageError(f"auto.budget {auto.budget:g} of {main_epochs(auto)} main epoch(s) leaves {epochs:g} "
                         f"trial epoch(s); ranking 2 presets needs at least 2: give --set auto.budget="
                         f"{2 / main_epochs(auto):g} or more")


# ------------------------------------------------------------------------------------------ trials


def feature_skips(auto: AutoPreset, teacher) -> dict[str, str]:
    """Presets this teacher cannot run (a feature-based loss with a logits-only teacher), with the reason."""
    if not teacher.logits_only:
        return {}
    return {p.name: f"needs the teacher's penultimate features; teacher {teacher.path.name} ({teacher.format}) "
                    "gives logits only" for p in auto.candidates if NEED_TEACHER_EMBED in losses.preset_needs(p)}


def trial_preset(preset: Preset, epochs: int) -> Preset:
    """The preset's recipe compressed to `epochs`: milestones and recipe warm-ups rescale with train.epochs."""
    return apply_overrides(preset, [f"train.epochs={epochs}"])


def trainer(cfg: RunConfig, arch: str, fingerprint_of: Callable[[str], dict[str, Any]], teacher, splits: DataSplits,
            run: RunDir, device, ddp, student_init: str | None) -> Callable[[str, int], tuple[float, float]]:
    """train(name, epochs) -> (best validation accuracy, seconds): one paired trial in RUN/preset_trials/."""
    by_name = {p.name: p for p in cfg.auto.candidates}
    spec = teacher.input_spec

    def make_student():
        return students.initialise(students.build_student(arch, splits.num_classes, spec), arch, student_init, spec,
                                   splits.num_classes, download=cfg.download)

    def one(name: str, epochs: int) -> tuple[float, float]:
        preset = trial_preset(by_name[name], epochs)
        fp = {**fingerprint_of(arch), "preset": preset_to_json(preset), "trial": "preset"}
        with process_settings(device):
            res = train(arch=arch, splits=splits, spec=spec, preset=preset, teacher=teacher, device=device,
                        run=RunDir(run.root / TRIALS_DIR / f"{name}-e{epochs}"), fingerprint=fp,
                        console=Console(stderr=True, quiet=True), restart=cfg.restart, dist=ddp,
                        compile=cfg.runtime.compile, make_student=make_student,
                        make_objective=lambda ctx: losses.Objective(preset.terms, ctx))
        return res.best_val_accuracy, res.seconds
    return one


# ------------------------------------------------------------------------------------------ the pipeline's call


def ranking_key(cfg: RunConfig, base: dict[str, Any]) -> dict[str, Any]:
    """Everything that decides the ranking, as JSON: a stored ranking under another key is not reused."""
    key = {"run": base, "candidates": [preset_to_json(p) for p in cfg.auto.candidates], "budget": cfg.auto.budget,
           "min_trial": cfg.auto.min_trial}
    return json.loads(json.dumps(key, default=str))


def stored_ranking(path, key: dict[str, Any]) -> dict[str, Any] | None:
    try:
        kept = json.loads(path.read_text())
        return kept["ranking"] if kept.get("key") == key and isinstance(kept["ranking"]["winner"], str) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def choose_preset(cfg: RunConfig, arch: str, fingerprint_of: Callable[[str], dict[str, Any]], teacher,
                  splits: DataSplits, run: RunDir, device, ddp, console: Console,
                  student_init: str | None = None) -> RunConfig:
    """The run's configuration with `preset` the ranking's winner (cfg.auto.winner and .ranking set):
    the stored ranking when this run finished one under the same key (not with --restart), else the
    trials. A run directory holding another configuration is refused before the first trial."""
    auto = cfg.auto
    base = {k: v for k, v in fingerprint_of(arch).items() if k != "preset"}
    key = ranking_key(cfg, base)
    path = run.root / RANKING_FILE
    if not cfg.restart:
        ddp.on_main(lambda: check_resumable(run, fingerprint_of(arch), ignore=("preset",)))
    ranking = None if cfg.restart else ddp.on_main(lambda: stored_ranking(path, key))
    if ranking is not None:
        console.print(f"preset ranking: [bold]{ranking['winner']}[/] (reused from {path})")
    else:
        skips = feature_skips(auto, teacher)
        names = [p.name for p in auto.candidates if p.name not in skips]
        if not names:
            raise UsageError(f"no --auto-presets candidate can run with teacher {teacher.path}: "
                             f"{next(iter(skips.values()))}; list logit presets such as kd,kd_ls,dkd,dist")
        for name, why in skips.items():
            console.print(f"[yellow]note:[/] --preset auto skips {name}: {why}")
        ddp.on_main(lambda: run.mark("distill"))  # the trials' directory is a run's from now on (a rerun resumes)
        started = time.perf_counter()
        with console.status(f"ranking presets {', '.join(names)} by short trials on the validation split"):
            result = rank_presets(names, auto.budget * main_epochs(auto),
                                  trainer(cfg, arch, fingerprint_of, teacher, splits, run, device, ddp, student_init),
                                  n_val=len(splits.val), skipped=skips, min_epochs=min_trial_epochs(auto))
        ranking = {**result.to_json(), "budget": auto.budget, "min_trial": auto.min_trial,
                   "wall_seconds": round(time.perf_counter() - started, 3)}
        for name, why in result.skipped.items():
            if name not in skips:
                console.print(f"[yellow]warning:[/] --preset auto did not try {name}: {why}")
        ddp.on_main(lambda: atomic_write_json(path, {"key": key, "ranking": ranking}))
        console.print(f"preset ranking: [bold]{ranking['winner']}[/] ({len(result.trials)} trials, "
                      f"{ranking['epochs_spent']} epochs, {ranking['wall_seconds']:.1f} s)")
    winner = next(p for p in auto.candidates if p.name == ranking["winner"])
    return replace(cfg, preset=winner, auto=replace(auto, winner=winner.name, ranking=ranking))
