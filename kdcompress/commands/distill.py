"""`kdcompress distill`, `demo` and `teacher train`: the flags become one typed job for the pipeline
(pipeline.DistillJob); `--config RUN/config.json` replays the flags a run recorded."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..core.config import AUTO_MIN_TRIAL, AutoPreset, Budget, RunConfig, RuntimeConfig
from ..core.errors import InputError, KdError, UsageError
from ..export import ExportOptions
from ..losses import load_checked_preset
from ..pipeline import DistillJob, TeacherTrainJob, auto_from_flags, run_job, train_teacher_job
from ..pipeline import run_demo as demo
from ..select import SelectOptions
from ..validate import Gates, raise_for_gates
from . import Outcome, render
from .flags import teacher_options
from .jobkeys import apply_job_keys, is_job_key, name_set_keys


def preset_from_flags(name: str, epochs: int | None, overrides: list[str] | None):
    sets = list(overrides or [])
    if epochs is not None:
        sets.append(f"train.epochs={epochs}")
    return load_checked_preset(name, sets)


def auto_preset(f: dict[str, Any]) -> AutoPreset | None:
    """--preset auto (and its flags) as an AutoPreset; None for a named preset."""
    if f["preset"] != "auto":
        if f.get("auto_presets") is not None:
            raise UsageError("--auto-presets needs --preset auto")
        return None
    if f.get("rank") == "trial" and f["student"] is None:
        raise UsageError("--preset auto cannot be combined with --rank trial (both rank by trials); "
                         "choose the student first (--rank trial with --preset kd), then rank presets with --student")
    sets = [*(f["set_"] or []), *([f"train.epochs={f['epochs']}"] if f["epochs"] is not None else [])]
    return auto_from_flags(f.get("auto_presets"), f.get("auto_budget", 1.0), sets,
                           f.get("auto_min_trial", AUTO_MIN_TRIAL))


def run_config(f: dict[str, Any]) -> RunConfig:
    if f["student"] is not None and not f["student"].strip():
        raise UsageError("--student is empty; give a student name (kdcompress students) or leave it out")
    if f["budget_ms"] is None and f["student"] is None:
        raise UsageError("give --budget-ms (to select a student) or --student NAME")
    auto = auto_preset(f)
    preset = auto.candidates[0] if auto else preset_from_flags(f["preset"], f["epochs"], f["set_"])
    return RunConfig(teacher=f["teacher"], data=f["data"], preset=preset, auto=auto,
                     budget=Budget(f["budget_ms"], f["stat"]),
                     runtime=RuntimeConfig(f["device"], f["provider"], f["threads"], f["compile_"]),
                     out=f["out"], student=f["student"], trust_checkpoint=f["trust_checkpoint"], restart=f["restart"],
                     teacher_options=teacher_options(f), download=f["download"])


# flags that say where and how to run, not what: never replayed by --config
NOT_REPLAYED = frozenset({"config", "out", "restart", "force", "json_", "_given"})
PATH_FLAGS = ("teacher", "latency_table")


def recorded_flags(path: Path) -> dict[str, Any]:
    """The flags a run's config.json recorded (its `job.flags`), read strictly; one line when it holds none."""
    try:
        doc = json.loads(Path(path).read_text())
        flags = doc["job"]["flags"]
    except FileNotFoundError:
        raise InputError(f"--config {path}: file not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"--config {path}: cannot read it as JSON ({e})") from None
    except (KeyError, TypeError):
        raise InputError(f"--config {path} records no distill job (a config.json that distill wrote before "
                         "jobs were recorded, or another file); rerun the command itself") from None
    if not isinstance(flags, dict):
        raise InputError(f"--config {path}: job.flags is not an object")
    return {k: (Path(v) if k in PATH_FLAGS and v is not None else v) for k, v in flags.items()}


def with_config(f: dict[str, Any]) -> dict[str, Any]:
    """The flags of this command line over those --config recorded: a flag given here wins. config.json
    records job keys as their flags, so a `--set` job key given here wins per key; preset keys given here
    replace the recorded ones, which a `--set` of job keys only keeps."""
    if f.get("config") is None:
        if f.get("teacher") is None or f.get("data") is None:
            raise UsageError("give --teacher and --data (or --config RUN/config.json to redo a run)")
        return f
    given = f.get("_given") or frozenset()
    old = recorded_flags(Path(f["config"]))
    merged = {**f, **{k: v for k, v in old.items() if k in f and k not in given and k not in NOT_REPLAYED}}
    if "set_" in given and all(is_job_key(s) for s in f["set_"] or ()):
        merged["set_"] = [*(old.get("set_") or ()), *(f["set_"] or ())]
    return merged


def distill_job(f: dict[str, Any]) -> DistillJob:
    """Every distill flag as one frozen, validated job."""
    cfg = run_config(f)
    record = tuple(sorted((k, str(v) if isinstance(v, Path) else v) for k, v in f.items() if k not in NOT_REPLAYED))
    return DistillJob(
        run=cfg, export=ExportOptions(fp16=f["fp16"], int8=f["int8"], calib=f["calib"], simplify=f["simplify"]),
        gates=Gates(f["min_agreement"], f["max_accuracy_drop"], f["budget_ms"], f["stat"]),
        select=SelectOptions(precision=f["precision"], max_precision_drop=f["max_precision_drop"],
                             latency_table=f["latency_table"], tune=f["tune"], rank=f["rank"],
                             trial_top=f["trial_top"], trial_budget=f["trial_budget"]),
        student_init=f["student_init"], force=f["force"], allow_weak_teacher=bool(f.get("allow_weak_teacher")),
        flags=record)


LONG_RECIPE = 100  # epochs: a recipe this long was written for CIFAR/ImageNet runs, not a quick distillation


def recipe_length_warning(f: dict[str, Any], job: DistillJob) -> str | None:
    """A warning when no --epochs (or train.epochs) was given and the preset's recipe trains for long."""
    asked = f.get("epochs") is not None or any(str(s).startswith("train.epochs=") for s in f.get("set_") or [])
    epochs = job.run.preset.train.epochs
    if asked or epochs < LONG_RECIPE:
        return None
    return (f"no --epochs given: training for the {job.run.preset.name} recipe's {epochs} epochs; "
            "give --epochs N for a shorter run")


def run_distill(f: dict[str, Any], console) -> Outcome:
    f, set_keys = apply_job_keys(with_config(f))
    try:
        job = distill_job(f)
        if (w := recipe_length_warning(f, job)) is not None:  # printed by the pipeline once every check passed
            job = replace(job, notes=(*job.notes, w))
        report = run_job(job, console)
    except KdError as e:  # a value given as `--set KEY` is named so, not as the flag it replaced
        name_set_keys(e, set_keys)
        raise
    if not report:  # a torchrun process other than rank 0: rank 0 reports
        return Outcome(None)
    return Outcome(report, lambda: render.distill_summary(report), lambda: raise_for_gates(report))


def run_demo(f: dict[str, Any], console) -> Outcome:
    report = demo(out=f["out"], epochs=f["epochs"], console=console)
    return Outcome(report, lambda: render.distill_summary(report))


def run_teacher_train(f: dict[str, Any], console) -> Outcome:
    preset = preset_from_flags("ce", f["epochs"], ["train.schedule=cosine", *(f["set_"] or [])])
    job = TeacherTrainJob(data=f["data"], arch=f["arch"], preset=preset, out=Path(f["out"]), device=f["device"])
    info = train_teacher_job(job, console)
    return Outcome(info, lambda: render.teacher_trained(info))
