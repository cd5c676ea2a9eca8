"""`kdcompress distill`: the stages in order, each reading and writing the run directory."""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

import torch
from rich.console import Console

from . import __version__
from .config import RunConfig, preset_to_json
from .data import DataSplits, load_data
from .errors import InputError
from .export import export_onnx, read_metadata
from .ortbench import machine_fingerprint
from .report import SCHEMA_VERSION, write_report
from .runio import RunDir, atomic_write_json
from .select import Selection, select
from .selection_view import save_pareto_plot
from .students import capacity
from .teacher import Teacher, load_checkpoint, load_teacher
from .train import TrainResult, resolve_device, train
from .validate import evaluate_onnx, parity


def check_compatible(teacher: Teacher, splits: DataSplits, console: Console) -> None:
    if teacher.num_classes != splits.num_classes:
        raise InputError(f"teacher {teacher.path} has {teacher.num_classes} classes but data "
                         f"'{splits.name}' has {splits.num_classes}")
    if tuple(teacher.input_spec.shape) != tuple(splits.shape):
        raise InputError(f"teacher {teacher.path} expects input {teacher.input_spec.shape} but data "
                         f"'{splits.name}' has images of {splits.shape}")
    if teacher.classes != splits.classes:
        console.print(f"[yellow]warning:[/] class names differ between teacher and data; "
                      f"assuming the same order ({teacher.classes[:3]}... vs {splits.classes[:3]}...)")


def onnx_metadata(*, arch: str, splits: DataSplits, teacher: Teacher, preset: str, val_acc: float) -> dict[str, Any]:
    spec = teacher.input_spec
    return {"kdcompress_version": __version__, "arch": arch, "classes": list(splits.classes),
            "mean": list(spec.mean), "std": list(spec.std), "input_shape": list(spec.shape),
            "layout": "NCHW", "preset": preset, "teacher_sha256": teacher.sha256,
            "val_accuracy": round(val_acc, 6)}


def distill(cfg: RunConfig, console: Console | None = None) -> dict[str, Any]:
    console = console or Console(stderr=True)
    run = RunDir(cfg.out)
    device = resolve_device(cfg.runtime.device)
    teacher = load_teacher(cfg.teacher, trust=cfg.trust_checkpoint)
    splits = load_data(cfg.data)
    check_compatible(teacher, splits, console)
    spec = teacher.input_spec
    run.prepare()
    atomic_write_json(run.config, cfg.to_json())

    # select: before any training, so an impossible budget costs seconds, not an epoch
    with console.status("measuring student candidates in ONNX Runtime") as status:
        selection: Selection = select(
            num_classes=splits.num_classes, spec=spec, budget=cfg.budget, runtime=cfg.runtime,
            teacher_model=teacher.model, names=(cfg.student,) if cfg.student else cfg.candidates,
            on_measure=lambda n: status.update(f"measuring {n} in ONNX Runtime ({cfg.runtime.provider})"))
    atomic_write_json(run.selection, selection.to_json())
    save_pareto_plot(selection, run.root / "selection.png")
    arch = selection.chosen.name
    console.print(f"selected [bold]{arch}[/] ({selection.chosen.flops:,} FLOPs, p50 "
                  f"{selection.chosen.latency.p50:.4f} ms; budget {cfg.budget.ms} ms)")
    if selection.teacher_meets_budget:
        console.print("[yellow]warning:[/] the teacher itself meets this budget")

    fingerprint = {"arch": arch, "data": cfg.data, "teacher": teacher.sha256,
                   "preset": preset_to_json(cfg.preset)}
    result: TrainResult = train(arch=arch, splits=splits, spec=spec, preset=cfg.preset, teacher=teacher, run=run,
                                device=device, fingerprint=fingerprint, console=console, restart=cfg.restart)
    atomic_write_json(run.train_result, result.to_json())

    with console.status("exporting to ONNX and validating in ONNX Runtime"):
        student, _ = load_checkpoint(run.student)
        meta = onnx_metadata(arch=arch, splits=splits, teacher=teacher, preset=cfg.preset.name,
                             val_acc=result.best_val_accuracy)
        export_onnx(student, spec, run.onnx, metadata=meta)
        if not run.teacher_onnx.exists() or read_metadata(run.teacher_onnx).get("teacher_sha256") != teacher.sha256:
            export_onnx(teacher.model, spec, run.teacher_onnx,
                        metadata={"arch": teacher.arch, "teacher_sha256": teacher.sha256, "role": "teacher"})
        s_eval = evaluate_onnx(run.onnx, splits.test, spec, cfg.runtime, cfg.budget.batch)
        t_eval = evaluate_onnx(run.teacher_onnx, splits.test, spec, cfg.runtime, cfg.budget.batch)
        par = parity(s_eval.logits, student, splits.test, spec)

    s_cap, t_cap = capacity(student, spec), capacity(teacher.model, spec)
    s_stat = s_eval.latency.stat(cfg.budget.stat)
    report = {
        "schema_version": SCHEMA_VERSION,
        "kdcompress_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "run_dir": str(run.root),
        "preset": {k: v for k, v in preset_to_json(cfg.preset).items() if k != "train"},
        "data": {"spec": cfg.data, "name": splits.name, "classes": list(splits.classes),
                 "sizes": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}},
        "budget_ms": cfg.budget.ms,
        "budget_stat": cfg.budget.stat,
        "teacher": {"path": str(teacher.path), "sha256": teacher.sha256, "arch": teacher.arch,
                    "params": t_cap.params, "flops": t_cap.flops, "accuracy": t_eval.accuracy,
                    "latency_ms": t_eval.latency.to_json(), "onnx": str(run.teacher_onnx)},
        "student": {"arch": arch, "params": s_cap.params, "flops": s_cap.flops, "accuracy": s_eval.accuracy,
                    "val_accuracy_best": result.best_val_accuracy,
                    "val_accuracy_final": result.final_val_accuracy, "best_epoch": result.best_epoch,
                    "latency_ms": s_eval.latency.to_json(), "onnx": str(run.onnx),
                    "checkpoint": str(run.student),
                    "meets_budget": cfg.budget.ms is None or s_stat <= cfg.budget.ms},
        "parity": par.to_json(),
        "speedup": t_eval.latency.p50 / s_eval.latency.p50,
        "accuracy_delta": s_eval.accuracy - t_eval.accuracy,
        "accuracy_ratio": s_eval.accuracy / t_eval.accuracy if t_eval.accuracy else None,
        "epochs": result.epochs,
        "device": str(device),
        "provider": cfg.runtime.provider,
        "threads": cfg.runtime.threads or 1,
        "training": {k: v for k, v in result.to_json().items() if k not in ("arch", "checkpoint")},
        "selection": selection.to_json(),
        "machine": machine_fingerprint() | {"torch": torch.__version__},
    }
    write_report(report, run.report_json, run.report_md)
    return json.loads(json.dumps(report))


def train_teacher(*, data: str, arch: str, preset, out, device: str, console: Console) -> dict[str, Any]:
    """Train a reference teacher with CE; save it (with its test accuracy) as a kdcompress checkpoint."""
    from pathlib import Path

    from .infer import accuracy, predict
    from .teacher import save_checkpoint

    out = Path(out)
    if out.exists() and out.is_dir():
        raise InputError(f"--out {out} is a directory; give a file path such as {out / 'teacher.pt'}")
    splits = load_data(data)
    spec = splits.fitted_input_spec()
    run = RunDir(out.parent / f".{out.stem}.run")
    dev = resolve_device(device)
    fingerprint = {"arch": arch, "data": data, "teacher": None, "preset": preset_to_json(preset)}
    result = train(arch=arch, splits=splits, spec=spec, preset=preset, teacher=None, run=run, device=dev,
                   fingerprint=fingerprint, console=console)
    model, obj = load_checkpoint(run.student)
    test_acc = accuracy(predict(model, splits.test, spec, torch.device("cpu")), splits.test.y)
    metrics = {**obj["metrics"], "test_accuracy": test_acc}
    save_checkpoint(out, model, arch, splits.classes, spec, metrics=metrics)
    return {"path": str(out), "arch": arch, "data": data, "epochs": result.epochs,
            "val_accuracy": result.best_val_accuracy, "test_accuracy": test_acc, "seconds": round(result.seconds, 2)}


DEMO_TEACHER_ARCH = "resnet8x4"
DEMO_TEACHER_EPOCHS = 15


def run_demo(*, out, epochs: int, console: Console) -> dict[str, Any]:
    """Digits, end to end: a teacher (trained once, then reused), a budget of a third of the teacher's own
    measured ORT latency, and the kd preset."""
    from pathlib import Path

    from .config import Budget, RuntimeConfig, apply_overrides, load_preset
    from .select import measure_cached

    out = Path(out)
    teacher_path = out / "teacher.pt"
    if not teacher_path.exists():
        console.print(f"training the demo teacher ({DEMO_TEACHER_ARCH}, {DEMO_TEACHER_EPOCHS} epochs on digits)")
        ce = apply_overrides(load_preset("ce"), [f"train.epochs={DEMO_TEACHER_EPOCHS}", "train.schedule=cosine"])
        train_teacher(data="digits", arch=DEMO_TEACHER_ARCH, preset=ce, out=teacher_path, device="auto",
                      console=console)
    teacher = load_teacher(teacher_path)
    runtime = RuntimeConfig()
    t_lat = measure_cached("__teacher__", teacher.model, teacher.input_spec, teacher.num_classes, runtime, 1)
    budget = round(t_lat.p50 / 3, 4)
    console.print(f"teacher p50 {t_lat.p50:.4f} ms in ONNX Runtime -> budget {budget} ms")
    preset = apply_overrides(load_preset("kd"), [f"train.epochs={epochs}"])
    cfg = RunConfig(teacher=teacher_path, data="digits", preset=preset, budget=Budget(budget),
                    runtime=runtime, out=out / "distill")
    return distill(cfg, console)
