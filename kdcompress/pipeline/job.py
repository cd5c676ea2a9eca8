"""`kdcompress distill`: the phases in order, each reading and writing the run directory.

    prepare (teacher, data, checks; prepare.py) -> choose (one Decision; choose.py) -> train -> deliver
    (export + validate + stamp; deliver.py) -> report

When the reduced-precision file fails its accuracy gate and the best fp32 fit is another student, that
student is chosen and trained by the same phases into RUN/fallback/, and the run's report is its report."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from .. import losses, students
from ..core.config import RunConfig
from ..core.errors import KdError
from ..core.progress import eta_bar
from ..core.runio import RunDir, atomic_write_bytes, atomic_write_json
from ..core.splits import DataSplits
from ..core.system import process_settings
from ..export import ExportOptions
from ..report import add_shipped, distill_report, intended_variant, write_report
from ..runtime import build_metadata, read_metadata
from ..select import SelectOptions, Selection, save_pareto_plot
from ..teacher import Teacher, teacher_onnx_bytes
from ..train import TrainResult, check_resumable, setup_distributed, train
from ..validate import Gates, accuracy_drop_warning, describe, effective_threads, teacher_not_ahead_warning
from .choose import Decision, choose, fallback_prepared, fallback_selection, fingerprint, gate_precision
from .deliver import Checks, Delivered, Delivery, deliver
from .prepare import DistillOptions, Prepared, prepare


@dataclass(frozen=True)
class Trained:
    """A trained student (train.json's result, the model as saved) and its delivered files."""

    result: TrainResult
    student: torch.nn.Module
    delivered: Delivered


def distill(cfg: RunConfig, console: Console | None = None, *, export_opts: ExportOptions | None = None,
            gates: Gates | None = None, select_opts: SelectOptions | None = None, force: bool = False,
            allow_weak_teacher: bool = False, student_init: str | None = None,
            record: dict[str, Any] | None = None, notes: tuple[str, ...] = ()) -> dict[str, Any]:
    """The whole job. `export_opts` picks the ONNX variants (fp32 only by default); `gates` defaults to
    the parity gate alone; `select_opts` the precision, latency table, ORT tuning and ranking of the
    selection. The report says whether the gates passed; the CLI turns a failure into exit 5.
    `force`: write into a non-empty --out that is not a kdcompress run (its files stay untouched).
    `allow_weak_teacher`: distil from a teacher that scores near chance on the validation split.
    `student_init` (--student-init): a state_dict path or 'pretrained'. `record`: the whole job
    (pipeline.jobspec.DistillJob), written into config.json beside the run configuration. `notes`: warnings
    about the request, printed once every check passed (beside select's)."""
    console = console or Console(stderr=True)
    options = DistillOptions(export_opts or ExportOptions(), gates or Gates(budget_stat=cfg.budget.stat),
                             select_opts or SelectOptions(), allow_weak_teacher, student_init, record,
                             tuple(notes))
    runtime = effective_threads(cfg.runtime, lambda m: console.print(f"[yellow]warning:[/] {m}"))
    run = RunDir(cfg.out)
    ddp, device = setup_distributed(cfg.runtime.device)  # torchrun: rank 0 writes files, all ranks train
    if not ddp.is_main:
        console = Console(stderr=True, quiet=True)
    with contextlib.ExitStack() as held:
        # --out is checked and locked before any work; nothing in it changes until every check passed
        ddp.on_main(lambda: held.enter_context(run.claim(force=force)))
        p = prepare(cfg, options, console, ddp, device, runtime)
        d = choose(p, run)
        trained = train_and_deliver(p, d, run)
        return ship(p, d, run, trained, held)


def ship(p: Prepared, d: Decision, run: RunDir, trained: Trained | None, held: contextlib.ExitStack) -> dict[str, Any]:
    """After training: rank 0 gates the file it validated, and every rank learns whether it ships or the fp32
    fallback trains instead (under torchrun every rank trains that too: DDP needs them all). The report is
    rank 0's; {} on the others."""
    made: dict[str, Any] = {}

    def decide() -> str | None:
        made["report"], fallback = student_report(p, d, run, trained)  # type: ignore[arg-type]  # rank 0's
        return fallback
    fallback = p.ddp.on_main(decide)
    if fallback is None:
        if not p.ddp.is_main:
            return {}
        return finish(made["report"], p, run, announce=True, distilled=d.cfg.preset.needs_teacher)
    # the reduced-precision choice failed its gate; another student ships
    fb_run = RunDir(run.root / "fallback")
    p.ddp.on_main(lambda: held.enter_context(fb_run.claim()))
    report = with_fallback(made.get("report"), fallback_prepared(p, d, fallback, fb_run), fallback_selection(d),
                           fb_run)
    if not p.ddp.is_main:
        return {}
    return finish(report, p, run, announce=False, distilled=d.cfg.preset.needs_teacher)  # announced by the fallback


def train_and_deliver(p: Prepared, d: Decision, run: RunDir) -> Trained | None:
    """The first writes, training, then the one export-and-validate; None on a torchrun rank other than 0."""
    p.ddp.on_main(lambda: begin(p, d, run))
    announce(p, d)
    result = train_student(p, d, run)
    if not p.ddp.is_main:
        return None
    atomic_write_json(run.train_result, result.to_json())
    with eta_bar(p.console, "export, validate") as bar:
        student, _ = students.load_checkpoint(run.student)
        meta = {**onnx_metadata(arch=d.arch, splits=p.splits, teacher=p.teacher, preset=d.cfg.preset.name,
                                val_acc=result.best_val_accuracy),
                "ort_settings": d.student.to_json()["settings"], "precision": d.precision}
        spec = p.teacher.input_spec
        t_input = describe(run.teacher_onnx, data_shape=spec.shape, mean=spec.mean, std=spec.std)
        done = deliver(Delivery(student, spec, run.onnx, d.export, meta, p.splits),
                       Checks(p.runtime, p.options.gates, (run.teacher_onnx, t_input), d.cfg.budget.batch),
                       report=bar)
    return Trained(result, student, done)


def begin(p: Prepared, d: Decision, run: RunDir) -> None:
    """The first writes, once every check passed: a different configuration in the run directory is
    refused before anything in it changes; --restart first removes every output of the old run. The
    teacher's ONNX copy is made here, so a teacher that cannot be measured fails before training."""
    cfg, teacher = d.cfg, p.teacher
    if cfg.restart:
        run.discard_previous()
    else:
        check_resumable(run, fingerprint(cfg, teacher, d.arch, p.options.student_init))
    t_onnx = None
    if not run.teacher_onnx.exists() or read_metadata(run.teacher_onnx).get("teacher_sha256") != teacher.sha256:
        t_meta = {**onnx_metadata(arch=teacher.arch, splits=p.splits, teacher=teacher, preset=None, val_acc=None),
                  "role": "teacher",  # an ONNX teacher keeps its own graph, so its own layout (NHWC too)
                  "layout": getattr(teacher.model, "layout", "NCHW")}
        t_onnx = teacher_onnx_bytes(teacher, t_meta)
    run.mark("distill")
    run.prepare()
    atomic_write_json(run.config, {**cfg.to_json(), **({"job": p.options.record} if p.options.record else {})})
    atomic_write_json(run.selection, d.selection.to_json())
    save_pareto_plot(d.selection, run.root / "selection.png")
    if t_onnx is not None:
        atomic_write_bytes(run.teacher_onnx, t_onnx)


def announce(p: Prepared, d: Decision) -> None:
    """The choice, and select's own warnings (unstable latency, capped threads, the teacher fits ...)."""
    c, budget = d.student, d.cfg.budget
    said = "no budget set" if budget.ms is None else f"budget {budget.ms:g} ms {budget.stat}"
    p.console.print(f"selected [bold]{d.arch}[/] {d.precision} ({c.flops:,} FLOPs, p50 {c.latency.p50:.4f} ms; "
                    f"{said})")
    for w in (*d.selection.warnings, *p.options.notes):
        p.warn(w)


def train_student(p: Prepared, d: Decision, run: RunDir) -> TrainResult:
    cfg, arch, spec, splits = d.cfg, d.arch, p.teacher.input_spec, p.splits
    init = p.options.student_init
    try:
        with process_settings(p.device):
            return train(
                arch=arch, splits=splits, spec=spec, preset=cfg.preset, teacher=p.teacher, run=run, device=p.device,
                fingerprint=fingerprint(cfg, p.teacher, arch, init), console=p.console, restart=False, dist=p.ddp,
                compile=cfg.runtime.compile,
                make_student=lambda: students.initialise(students.build_student(arch, splits.num_classes, spec), arch,
                                                         init, spec, splits.num_classes, download=cfg.download),
                make_objective=lambda ctx: losses.Objective(cfg.preset.terms, ctx))
    except KdError as e:
        if cfg.restart:  # the old run is gone already: rerunning with --restart would discard the new one
            e.message = e.message.replace("rerun the same command", "rerun the same command without --restart")
        raise


def student_report(p: Prepared, d: Decision, run: RunDir, t: Trained) -> tuple[dict[str, Any], str | None]:
    """report.json's content for this student (before `shipped` and the warnings), and the fp32 student to
    train instead when the reduced-precision file failed its gate (None: this one ships)."""
    precision, val, fallback = gate_precision(d, t.delivered.validation, p)
    cfg = d.cfg
    report = distill_report(run_root=run.root, preset=cfg.preset, data_spec=cfg.data, splits=p.splits,
                            budget=cfg.budget, teacher=p.teacher, teacher_val=p.checked.accuracy, arch=d.arch,
                            capacity=students.capacity(t.student, p.teacher.input_spec), result=t.result,
                            checkpoint=run.student, val=val, artifacts=list(t.delivered.artifacts), device=p.device,
                            selection=d.selection)
    report["precision"] = precision
    report["training"]["teacher_cache"] = d.cache.to_json()
    if cfg.auto is not None:
        report["preset_ranking"] = cfg.auto.ranking
    return report, fallback


def with_fallback(report: dict[str, Any] | None, fp: Prepared, measured: Selection, run: RunDir) -> dict[str, Any]:
    """The fp32 fallback (`measured`: the first selection, the fallback its choice) trained (by every torchrun
    rank) and delivered into `run` (RUN/fallback/) by the same phases, its report written there; the run's
    report is that report, with the first choice's selection and precision (and where the fallback ran). {} on
    ranks other than 0 (`report` None there)."""
    fd = choose(fp, run, measured)
    trained = train_and_deliver(fp, fd, run)
    if trained is None or report is None:
        return {}
    fb = finish(student_report(fp, fd, run, trained)[0], fp, run, announce=True,
                distilled=fd.cfg.preset.needs_teacher)
    return {**fb, "run_dir": str(report["run_dir"]), "selection": report["selection"],
            "precision": {**report["precision"], "fallback_run": str(fp.cfg.out)}}


def finish(report: dict[str, Any], p: Prepared, run: RunDir, *, announce: bool, distilled: bool) -> dict[str, Any]:
    """What the teacher check saw (accepted with --allow-weak-teacher), `shipped` and the warnings; written.
    `distilled`: the preset read the teacher (Preset.needs_teacher)."""
    if p.checked.class_order is not None:
        report["teacher"] = {**report["teacher"], "class_order": p.checked.class_order.to_json()}
    report = finish_report(report, run.root, p.options.gates, p.console, announce=announce, distilled=distilled)
    return write_report(json.loads(json.dumps(report)), run.root)


def finish_report(report: dict[str, Any], root: Path, gates: Gates, console: Console, *,
                  announce: bool, distilled: bool) -> dict[str, Any]:
    """The `shipped` block (report.add_shipped) and the report's own warnings: the file that ships scoring
    far below the teacher with no --max-accuracy-drop gate, or, when `distilled` (its preset read the
    teacher), at or above that teacher. `announce`: print them (a fallback run did)."""
    report = add_shipped(report, root)
    v = intended_variant(report)
    t_top1 = (report.get("teacher") or {}).get("accuracy")
    what = v and f"the shipped {v['variant']} student ({v['path']})"
    warnings = [v and accuracy_drop_warning(what, v.get("accuracy"), t_top1, gates),
                v and distilled and teacher_not_ahead_warning(what, v.get("accuracy"), t_top1)]
    report["warnings"] = [w for w in warnings if w]
    for w in report["warnings"] if announce else ():
        console.print(f"[yellow]warning:[/] {w}")
    return report


def onnx_metadata(*, arch: str, splits: DataSplits, teacher: Teacher, preset: str | None,
                  val_acc: float | None) -> dict[str, Any]:
    return build_metadata(arch=arch, classes=splits.classes, spec=teacher.input_spec, preset=preset,
                          teacher_sha256=teacher.sha256, val_accuracy=val_acc)
