"""`kdcompress distill`: the stages in order, each reading and writing the run directory."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from . import losses, students
from .core.config import RunConfig, RuntimeConfig, preset_to_json
from .core.errors import InputError
from .core.onnxio import build_metadata, read_metadata, stamp_metadata
from .core.runio import RunDir, atomic_write_bytes, atomic_write_json
from .core.spec import InputSpec
from .core.splits import DataSplits, images, normalize
from .core.system import process_settings, resolve_device
from .data import align_classes, load_data
from .export import CHECK_BATCHES, ExportOptions, OnnxArtifact, calibration_images, export_variants
from .report import data_json, header, write_report
from .select import Selection, save_pareto_plot, select
from .teacher import Teacher, load_teacher, teacher_onnx_bytes
from .train import TrainResult, setup_distributed, train
from .validate import (
    THROUGHPUT_BATCH,
    Gates,
    ModelInput,
    Validation,
    describe,
    effective_threads,
    reference_logits,
    validate_models,
)


def check_fit(what: str, classes: tuple[str, ...], spec: InputSpec, splits: DataSplits, warn) -> None:
    if len(classes) != splits.num_classes:
        raise InputError(f"{what} has {len(classes)} classes but data '{splits.name}' has {splits.num_classes}")
    if tuple(spec.shape) != tuple(splits.shape):
        raise InputError(f"{what} expects input {spec.shape} but data '{splits.name}' has images of {splits.shape}")
    if tuple(classes) != tuple(splits.classes) and warn:
        warn(f"class names differ between {what} and the data; assuming the same order")


def probe_batch(splits: DataSplits | None, spec: InputSpec) -> np.ndarray | None:
    if splits is None or len(splits.test) == 0:
        return None
    return normalize(images(splits.test, max(CHECK_BATCHES)), spec).numpy()


def export_and_validate(*, model: torch.nn.Module, spec: InputSpec, splits: DataSplits, fp32_path: Path,
                        opts: ExportOptions, metadata: dict[str, Any], runtime: RuntimeConfig, gates: Gates,
                        teacher: tuple[Path | bytes, ModelInput] | None, batch: int = 1,
                        throughput_batch: int = THROUGHPUT_BATCH,
                        progress=None) -> tuple[list[OnnxArtifact], Validation]:
    """Export fp32 (+ variants), validate each against the PyTorch model and the teacher, then stamp each
    file's test accuracy into its metadata (the report records the stamped files' checksums)."""
    calib = calibration_images(splits.train, spec, opts.calib) if opts.int8 else None
    arts = export_variants(model, spec, fp32_path, opts, metadata, calib=calib, probe=probe_batch(splits, spec))
    inputs = [describe(a.path, data_shape=spec.shape) for a in arts]
    ref = reference_logits(model, splits.test, spec)
    val = validate_models([a.path for a in arts], inputs, splits.test, splits.classes, runtime, gates,
                          reference=ref, teacher=teacher, batch=batch, throughput_batch=throughput_batch,
                          progress=progress)
    return stamp_accuracy(arts, val)


def stamp_accuracy(arts: list[OnnxArtifact], val: Validation) -> tuple[list[OnnxArtifact], Validation]:
    stamped, rows = [], []
    for a, v in zip(arts, val.variants, strict=True):
        sha, size = stamp_metadata(a.path, {"test_accuracy": round(v.eval.accuracy.top1, 6)})
        stamped.append(replace(a, sha256=sha, bytes=size))
        rows.append(replace(v, eval=replace(v.eval, sha256=sha, bytes=size)))
    return stamped, replace(val, variants=tuple(rows))


def check_compatible(teacher: Teacher, splits: DataSplits, console: Console) -> DataSplits:
    """The data's classes against the teacher's (count; names when both name them; the same names in
    another order are renumbered to the teacher's order) and the image shape."""
    aligned = align_classes(splits, teacher.classes, str(teacher.path))
    if aligned.classes != splits.classes:
        console.print("[dim]data classes renumbered to the teacher's order[/]")
    if tuple(teacher.input_spec.shape) != tuple(splits.shape):
        raise InputError(f"teacher {teacher.path} expects input {teacher.input_spec.shape} but data "
                         f"'{splits.name}' has images of {splits.shape}")
    return aligned


def onnx_metadata(*, arch: str, splits: DataSplits, teacher: Teacher, preset: str, val_acc: float) -> dict[str, Any]:
    return build_metadata(arch=arch, classes=splits.classes, spec=teacher.input_spec, preset=preset,
                          teacher_sha256=teacher.sha256, val_accuracy=val_acc)


def distill(cfg: RunConfig, console: Console | None = None, *, export_opts: ExportOptions | None = None,
            gates: Gates | None = None, student_init: str | None = None) -> dict[str, Any]:
    """The whole job. `export_opts` picks the ONNX variants (fp32 only by default); `gates` defaults to
    the parity gate alone; `student_init` (--student-init) is a state_dict path or 'pretrained'. The report says whether the gates passed; the CLI turns a failure into exit 5."""
    console = console or Console(stderr=True)
    export_opts = export_opts or ExportOptions()
    gates = gates or Gates(budget_stat=cfg.budget.stat)
    runtime = effective_threads(cfg.runtime, lambda m: console.print(f"[yellow]warning:[/] {m}"))
    run = RunDir(cfg.out)
    ddp, device = setup_distributed(cfg.runtime.device)  # torchrun: rank 0 writes files, all ranks train
    if not ddp.is_main:
        console = Console(stderr=True, quiet=True)
    teacher = ddp.main_first(lambda: load_teacher(cfg.teacher, trust=cfg.trust_checkpoint, options=cfg.teacher_options))
    # a logits-only teacher with a feature-based preset fails here, in seconds
    teacher.check_needs(losses.preset_needs(cfg.preset), cfg.preset.name)
    splits = ddp.main_first(lambda: load_data(cfg.data, teacher.input_spec, download=cfg.download))
    splits = check_compatible(teacher, splits, console)
    spec = teacher.input_spec
    if ddp.is_main:
        run.prepare()
        atomic_write_json(run.config, cfg.to_json())

    # select: before any training, so an impossible budget costs seconds, not an epoch
    with console.status("measuring student candidates in ONNX Runtime") as status:
        selection: Selection = ddp.on_main(lambda: select(  # measured once, by rank 0
            num_classes=splits.num_classes, spec=spec, budget=cfg.budget, runtime=cfg.runtime,
            teacher_model=teacher.model if teacher.exportable else None, names=(cfg.student,) if cfg.student else cfg.candidates,
            on_measure=lambda n: status.update(f"measuring {n} in ONNX Runtime ({cfg.runtime.provider})")))
    if ddp.is_main:
        atomic_write_json(run.selection, selection.to_json())
        save_pareto_plot(selection, run.root / "selection.png")
    arch = selection.chosen.name
    console.print(f"selected [bold]{arch}[/] ({selection.chosen.flops:,} FLOPs, p50 "
                  f"{selection.chosen.latency.p50:.4f} ms; budget {cfg.budget.ms} ms)")
    if selection.teacher_meets_budget:
        console.print("[yellow]warning:[/] the teacher itself meets this budget")

    fingerprint = {"arch": arch, "data": cfg.data, "teacher": teacher.sha256,
                   "preset": preset_to_json(cfg.preset), "teacher_options": cfg.teacher_options.to_json(),
                   **({"student_init": student_init} if student_init else {})}
    with process_settings(device):
        result: TrainResult = train(
            arch=arch, splits=splits, spec=spec, preset=cfg.preset, teacher=teacher, run=run, device=device,
            fingerprint=fingerprint, console=console, restart=cfg.restart, dist=ddp, compile=cfg.runtime.compile,
            make_student=lambda: students.initialise(students.build_student(arch, splits.num_classes, spec), arch,
                                                     student_init, spec, splits.num_classes, download=cfg.download),
            make_objective=lambda ctx: losses.Objective(cfg.preset.terms, ctx))
    if not ddp.is_main:
        return {}  # export, validation and the report are rank 0's
    atomic_write_json(run.train_result, result.to_json())

    with console.status("exporting to ONNX and validating in ONNX Runtime") as status:
        student, _ = students.load_checkpoint(run.student)
        meta = onnx_metadata(arch=arch, splits=splits, teacher=teacher, preset=cfg.preset.name,
                             val_acc=result.best_val_accuracy)
        if not run.teacher_onnx.exists() or read_metadata(run.teacher_onnx).get("teacher_sha256") != teacher.sha256:
            t_meta = {**onnx_metadata(arch=teacher.arch, splits=splits, teacher=teacher, preset=None, val_acc=None),
                      "role": "teacher"}
            atomic_write_bytes(run.teacher_onnx, teacher_onnx_bytes(teacher, t_meta))
        t_input = describe(run.teacher_onnx, data_shape=spec.shape, mean=spec.mean, std=spec.std)
        artifacts, val = export_and_validate(
            model=student, spec=spec, splits=splits, fp32_path=run.onnx, opts=export_opts, metadata=meta,
            runtime=runtime, gates=gates, teacher=(run.teacher_onnx, t_input), batch=cfg.budget.batch,
            progress=status.update)

    fp32 = val.variant("fp32")
    s_eval, t_eval = fp32.eval, val.teacher
    s_cap = students.capacity(student, spec)
    s_stat = s_eval.latency.stat(cfg.budget.stat)
    report = {
        **header("distill"),
        "run_dir": str(run.root),
        "preset": {k: v for k, v in preset_to_json(cfg.preset).items() if k != "train"},
        "data": data_json(cfg.data, splits),
        "budget_ms": cfg.budget.ms,
        "budget_stat": cfg.budget.stat,
        "teacher": {"path": str(teacher.path), "arch": teacher.arch, "params": teacher.params,
                    "flops": teacher.flops, "format": teacher.format,
                    **t_eval.to_json(), "sha256": teacher.sha256, "onnx_sha256": t_eval.sha256},
        "student": {"arch": arch, "params": s_cap.params, "flops": s_cap.flops, **s_eval.to_json(),
                    "val_accuracy_best": result.best_val_accuracy,
                    "val_accuracy_final": result.final_val_accuracy, "best_epoch": result.best_epoch,
                    "checkpoint": str(run.student),
                    "meets_budget": cfg.budget.ms is None or s_stat <= cfg.budget.ms},
        "parity": fp32.parity.to_json(),
        "speedup": fp32.speedup,
        "accuracy_delta": fp32.accuracy_delta,
        "accuracy_ratio": s_eval.accuracy.top1 / t_eval.accuracy.top1 if t_eval.accuracy.top1 else None,
        "epochs": result.epochs,
        "device": str(device),
        **val.to_json(),
        "artifacts": [a.to_json() for a in artifacts],
        "training": {k: v for k, v in result.to_json().items() if k not in ("arch", "checkpoint")},
        "selection": selection.to_json(),
    }
    report = write_report(json.loads(json.dumps(report)), run.root)
    return report


def train_teacher(*, data: str, arch: str, preset, out, device: str, console: Console) -> dict[str, Any]:
    """Train a reference teacher with CE; save it (with its test accuracy) as a kdcompress checkpoint."""
    from pathlib import Path

    from .core.checkpoint import save_checkpoint
    from .core.infer import accuracy, predict

    out = Path(out)
    if out.exists() and out.is_dir():
        raise InputError(f"--out {out} is a directory; give a file path such as {out / 'teacher.pt'}")
    splits = load_data(data)
    spec = splits.fitted_input_spec()
    run = RunDir(out.parent / f".{out.stem}.run")
    dev = resolve_device(device)
    fingerprint = {"arch": arch, "data": data, "teacher": None, "preset": preset_to_json(preset)}
    with process_settings(dev):
        result = train(arch=arch, splits=splits, spec=spec, preset=preset, teacher=None, run=run, device=dev,
                       fingerprint=fingerprint, console=console,
                       make_student=lambda: students.build_student(arch, splits.num_classes, spec),
                       make_objective=lambda ctx: losses.Objective(preset.terms, ctx))
    model, obj = students.load_checkpoint(run.student)
    test_acc = accuracy(predict(model, splits.test, spec, torch.device("cpu")), splits.test.y)
    metrics = {**obj["metrics"], "test_accuracy": test_acc}
    save_checkpoint(out, model, arch, splits.classes, spec, metrics=metrics)
    return {"path": str(out), "arch": arch, "data": data, "epochs": result.epochs,
            "val_accuracy": result.best_val_accuracy, "test_accuracy": test_acc, "seconds": round(result.seconds, 2)}


DEMO_TEACHER_ARCH = "resnet8x4"
DEMO_TEACHER_EPOCHS = 15
# The demo's candidate ladder: the CIFAR ResNets and TinyCNNs below the teacher. `distill` without
# --student measures the whole zoo (about 30 small-input models, 1-6 s of dynamo export each on 2 cores);
# the demo must finish in a couple of minutes on a fresh machine with a cold latency cache.
DEMO_CANDIDATES = ("tinycnn_w8", "tinycnn_w16", "tinycnn_w32", "resnet8", "resnet14", "resnet20", "resnet32",
                   "resnet44", "resnet56", "resnet8x2", "resnet20x2")


def run_demo(*, out, epochs: int, console: Console) -> dict[str, Any]:
    """Digits, end to end: a teacher (trained once, then reused), a budget of a third of the teacher's own
    measured ORT latency, and the kd preset."""
    from pathlib import Path

    from .core.config import Budget, RuntimeConfig
    from .select import measure_cached

    out = Path(out)
    teacher_path = out / "teacher.pt"
    if not teacher_path.exists():
        console.print(f"training the demo teacher ({DEMO_TEACHER_ARCH}, {DEMO_TEACHER_EPOCHS} epochs on digits)")
        ce = losses.load_checked_preset("ce", [f"train.epochs={DEMO_TEACHER_EPOCHS}", "train.schedule=cosine"])
        train_teacher(data="digits", arch=DEMO_TEACHER_ARCH, preset=ce, out=teacher_path, device="auto",
                      console=console)
    teacher = load_teacher(teacher_path)
    runtime = RuntimeConfig()
    t_lat = measure_cached("__teacher__", teacher.model, teacher.input_spec, teacher.num_classes, runtime, 1)
    budget = round(t_lat.p50 / 3, 4)
    console.print(f"teacher p50 {t_lat.p50:.4f} ms in ONNX Runtime -> budget {budget} ms")
    preset = losses.load_checked_preset("kd", [f"train.epochs={epochs}"])
    cfg = RunConfig(teacher=teacher_path, data="digits", preset=preset, budget=Budget(budget),
                    runtime=runtime, out=out / "distill", candidates=DEMO_CANDIDATES)
    return distill(cfg, console)
