"""`kdcompress distill`: the stages in order, each reading and writing the run directory."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from . import losses, students
from .core.classes import match_classes
from .commands.autopreset import choose_preset
from .core.config import RunConfig, RuntimeConfig, preset_to_json
from .core.errors import BudgetError, InputError, KdError, UsageError
from .runtime.onnxio import build_metadata, read_metadata, stamp_metadata
from .core.runio import RunDir, atomic_write_bytes, atomic_write_json
from .core.spec import InputSpec
from .core.splits import DataSplits, images, normalize
from .core.system import process_settings, resolve_device
from .data import align_classes, load_data
from .export import CHECK_BATCHES, ExportOptions, OnnxArtifact, calibration_images, export_variants
from .export.variants import timing_variant
from .report import add_shipped, distill_report, intended_variant, write_report
from .select import Selection, save_pareto_plot, select
from .select.precision import apply_precision_gate, export_options_for, selection_kwargs
from .select.result import SelectOptions
from .select.trial import halving_plan, plan_cost, successive_halving, trial_pool
from .teacher import Teacher, input_size_hint, load_teacher, teacher_check, teacher_onnx_bytes
from .train import (CacheDecision, CacheFacts, TrainResult, check_resumable, check_training, decide_cache,
                    setup_distributed, train)
from .train.probe import epoch_seconds
from .validate import (
    THROUGHPUT_BATCH,
    Gates,
    ModelInput,
    Validation,
    accuracy_drop_warning,
    describe,
    effective_threads,
    reference_logits,
    validate_models,
)


def check_fit(what: str, classes: tuple[str, ...], spec: InputSpec, splits: DataSplits, warn, *,
              recorded: bool = True) -> list[int] | None:
    """A model's classes and input shape against the data. Classes are matched by NAME (core.classes):
    returns, for each data class, the model output that carries it (None: the same order). `recorded`:
    the names come from a file kdcompress wrote (a student checkpoint), so "0".."K-1" are names too;
    otherwise (a teacher perhaps known by its count only) index names are taken positionally, said in
    `warn`."""
    if len(classes) != splits.num_classes:
        raise InputError(f"{what} has {len(classes)} classes but data '{splits.name}' has {splits.num_classes}")
    if tuple(spec.shape) != tuple(splits.shape):
        raise InputError(f"{what} expects input {spec.shape} but data '{splits.name}' has images of {splits.shape}")
    try:
        cols, note = match_classes(tuple(classes), tuple(splits.classes), what, positional_ok=not recorded,
                                   fix="use data whose classes carry its names")
    except ValueError as e:
        raise InputError(str(e)) from None
    if note and warn:
        warn(note)
    return cols


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
    aligned = align_classes(splits, teacher.classes, str(teacher.path),
                            warn=lambda m: console.print(f"[yellow]warning:[/] {m}"))
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
            gates: Gates | None = None, select_opts: SelectOptions | None = None, force: bool = False,
            allow_weak_teacher: bool = False, student_init: str | None = None) -> dict[str, Any]:
    """The whole job. `export_opts` picks the ONNX variants (fp32 only by default); `gates` defaults to
    the parity gate alone; `select_opts` the precision, latency table, ORT tuning and ranking of the
    selection. The report says whether the gates passed; the CLI turns a failure into exit 5.
    `force`: write into a non-empty --out that is not a kdcompress run (its files stay untouched).
    `allow_weak_teacher`: distil from a teacher that scores near chance on the validation split.
    `student_init` (--student-init): a state_dict path or 'pretrained'."""
    console = console or Console(stderr=True)
    select_opts = select_opts or SelectOptions()
    export_opts = export_opts or ExportOptions()
    gates = gates or Gates(budget_stat=cfg.budget.stat)
    runtime = effective_threads(cfg.runtime, lambda m: console.print(f"[yellow]warning:[/] {m}"))
    run = RunDir(cfg.out)
    ddp, device = setup_distributed(cfg.runtime.device)  # torchrun: rank 0 writes files, all ranks train
    if not ddp.is_main:
        console = Console(stderr=True, quiet=True)
    with contextlib.ExitStack() as held:
        # --out is checked and locked before any work; nothing in it changes until every check passed
        ddp.on_main(lambda: held.enter_context(run.claim(force=force)))
        return _distill(cfg, console, run, ddp, device, runtime, export_opts, gates, allow_weak_teacher, select_opts,
                        student_init)


def _distill(cfg: RunConfig, console: Console, run: RunDir, ddp, device, runtime: RuntimeConfig,
             export_opts: ExportOptions, gates: Gates, allow_weak_teacher: bool,
             select_opts: SelectOptions, student_init: str | None) -> dict[str, Any]:
    teacher = ddp.main_first(lambda: load_teacher(cfg.teacher, trust=cfg.trust_checkpoint, options=cfg.teacher_options))
    # a logits-only teacher with a feature-based preset fails here, in seconds
    teacher.check_needs(losses.preset_needs(cfg.preset), cfg.preset.name)
    splits = ddp.main_first(lambda: load_data(cfg.data, teacher.input_spec, download=cfg.download))
    splits = check_compatible(teacher, splits, console)
    check_training(cfg.preset.train, splits)  # e.g. a mixed teacher cache over streamed files: before --out changes
    spec = teacher.input_spec
    # a teacher at chance level (class order, normalisation, architecture) is refused before --out is touched
    checked = teacher_check(teacher, splits, device, allow_weak=allow_weak_teacher,
                            warn=lambda m: console.print(f"[yellow]warning:[/] {m}"),
                            shape_hint=input_size_hint(teacher, splits.native_shape or splits.shape,
                                                       cfg.teacher_options.input_shape is not None))
    t_val = checked.accuracy

    # select: before any training, so an impossible budget costs seconds, not an epoch
    with console.status("measuring student candidates in ONNX Runtime") as status:
        selection: Selection = ddp.on_main(lambda: select(  # measured once, by rank 0
            num_classes=splits.num_classes, spec=spec, budget=cfg.budget, runtime=cfg.runtime,
            teacher_model=teacher.model if teacher.exportable else None, names=(cfg.student,) if cfg.student else cfg.candidates,
            on_measure=lambda n: status.update(f"measuring {n} in ONNX Runtime ({cfg.runtime.provider})"),
            **selection_kwargs(select_opts, timing_variant)))
    if selection.chosen is None:
        raise UsageError("nothing was chosen: give --budget-ms (to select a student) or --student NAME")
    def fingerprint_of(arch: str) -> dict[str, Any]:
        return {"arch": arch, "data": cfg.data, "teacher": teacher.sha256,
                "preset": preset_to_json(cfg.preset), "teacher_options": cfg.teacher_options.to_json(),
                **({"student_init": student_init} if student_init else {})}

    if select_opts.rank == "trial" and not cfg.student and cfg.budget.ms is not None:
        # trials train into RUN/trials/: a run directory holding another configuration is refused first
        # (its architecture is the trials' to decide: everything else must match)
        if not cfg.restart:
            ddp.on_main(lambda: check_resumable(run, fingerprint_of(selection.chosen.name), ignore=("arch",)))
        selection = rank_by_trial(selection, cfg, select_opts, teacher, splits, run, device, ddp, console)
    if cfg.auto is not None and cfg.auto.winner is None:  # --preset auto: paired short trials pick the preset
        cfg = choose_preset(cfg, selection.chosen.name, fingerprint_of, teacher, splits, run, device, ddp, console,
                            student_init)
    arch = selection.chosen.name
    cfg, cache_choice = with_teacher_cache(cfg, teacher, selection, splits)  # before the fingerprint records it
    fingerprint = fingerprint_of(arch)

    def begin() -> None:
        """The first writes, once every check passed: a different configuration in the run directory is
        refused before anything in it changes; --restart first removes every output of the old run. The
        teacher's ONNX copy is made here, so a teacher that cannot be measured fails before training."""
        if cfg.restart:
            run.discard_previous()
        else:
            check_resumable(run, fingerprint)
        t_onnx = None
        if not run.teacher_onnx.exists() or read_metadata(run.teacher_onnx).get("teacher_sha256") != teacher.sha256:
            t_meta = {**onnx_metadata(arch=teacher.arch, splits=splits, teacher=teacher, preset=None, val_acc=None),
                      "role": "teacher",  # an ONNX teacher keeps its own graph, so its own layout (NHWC too)
                      "layout": getattr(teacher.model, "layout", "NCHW")}
            t_onnx = teacher_onnx_bytes(teacher, t_meta)
        run.mark("distill")
        run.prepare()
        atomic_write_json(run.config, cfg.to_json())
        atomic_write_json(run.selection, selection.to_json())
        save_pareto_plot(selection, run.root / "selection.png")
        if t_onnx is not None:
            atomic_write_bytes(run.teacher_onnx, t_onnx)

    ddp.on_main(begin)
    budget = "no budget set" if cfg.budget.ms is None else f"budget {cfg.budget.ms:g} ms {cfg.budget.stat}"
    console.print(f"selected [bold]{arch}[/] {selection.chosen.precision} ({selection.chosen.flops:,} FLOPs, p50 "
                  f"{selection.chosen.latency.p50:.4f} ms; {budget})")
    export_opts = export_options_for(export_opts, selection.chosen.precision)
    for w in selection.warnings:  # select's own (unstable latency, capped threads, the teacher fits ...)
        console.print(f"[yellow]warning:[/] {w}")

    try:
        with process_settings(device):
            result: TrainResult = train(
                arch=arch, splits=splits, spec=spec, preset=cfg.preset, teacher=teacher, run=run, device=device,
                fingerprint=fingerprint, console=console, restart=False, dist=ddp, compile=cfg.runtime.compile,
                make_student=lambda: students.initialise(students.build_student(arch, splits.num_classes, spec), arch,
                                                         student_init, spec, splits.num_classes,
                                                         download=cfg.download),
                make_objective=lambda ctx: losses.Objective(cfg.preset.terms, ctx))
    except KdError as e:
        if cfg.restart:  # the old run is gone already: rerunning with --restart would discard the new one
            e.message = e.message.replace("rerun the same command", "rerun the same command without --restart")
        raise
    if not ddp.is_main:
        return {}  # export, validation and the report are rank 0's
    atomic_write_json(run.train_result, result.to_json())

    with console.status("exporting to ONNX and validating in ONNX Runtime") as status:
        student, _ = students.load_checkpoint(run.student)
        meta = {**onnx_metadata(arch=arch, splits=splits, teacher=teacher, preset=cfg.preset.name,
                                val_acc=result.best_val_accuracy),
                "ort_settings": selection.chosen.to_json()["settings"], "precision": selection.chosen.precision}
        t_input = describe(run.teacher_onnx, data_shape=spec.shape, mean=spec.mean, std=spec.std)
        artifacts, val = export_and_validate(
            model=student, spec=spec, splits=splits, fp32_path=run.onnx, opts=export_opts, metadata=meta,
            runtime=runtime, gates=gates, teacher=(run.teacher_onnx, t_input), batch=cfg.budget.batch,
            progress=status.update)

    precision, fallback = apply_precision_gate(selection, val, select_opts, console)
    if precision["fell_back"] and fallback is None:  # the reduced-precision file is not to be recommended
        fp32_ok = all(g.passed for g in val.variant("fp32").gates)
        val = replace(val, recommended="fp32" if fp32_ok else None)
    report = distill_report(run_root=run.root, preset=cfg.preset, data_spec=cfg.data, splits=splits,
                            budget=cfg.budget, teacher=teacher, teacher_val=t_val, arch=arch,
                            capacity=students.capacity(student, spec), result=result, checkpoint=run.student,
                            val=val, artifacts=artifacts, device=device, selection=selection)
    report["precision"] = precision
    report["training"]["teacher_cache"] = cache_choice.to_json()
    if cfg.auto is not None:
        report["preset_ranking"] = cfg.auto.ranking
    if fallback is not None:  # the reduced-precision choice failed its gate; another student ships
        fb_cfg = replace(cfg, student=fallback, out=run.root / "fallback", candidates=())
        fb = distill(fb_cfg, console, export_opts=replace(export_opts, int8=False, fp16=False), gates=gates,
                     select_opts=replace(select_opts, precision="fp32", rank="flops", latency_table=None))
        report = {**fb, "run_dir": str(run.root), "selection": report["selection"],
                  "precision": {**report["precision"], "fallback_run": str(fb_cfg.out)}}
    if checked.class_order is not None:  # accepted with --allow-weak-teacher: the report says what was seen
        report["teacher"] = {**report["teacher"], "class_order": checked.class_order.to_json()}
    report = finish_report(report, run.root, gates, console, announce=fallback is None)
    return write_report(json.loads(json.dumps(report)), run.root)


def finish_report(report: dict[str, Any], root: Path, gates: Gates, console: Console, *,
                  announce: bool) -> dict[str, Any]:
    """The `shipped` block (report.add_shipped) and the report's own warnings: the file that ships scoring
    far below the teacher with no --max-accuracy-drop gate. `announce`: print them (a fallback run did)."""
    report = add_shipped(report, root)
    v = intended_variant(report)
    warning = v and accuracy_drop_warning(f"the shipped {v['variant']} student ({v['path']})", v.get("accuracy"),
                                          (report.get("teacher") or {}).get("accuracy"), gates)
    report["warnings"] = [warning] if warning else []
    for w in report["warnings"] if announce else ():
        console.print(f"[yellow]warning:[/] {w}")
    return report


def with_teacher_cache(cfg: RunConfig, teacher: Teacher, selection: Selection,
                       splits: DataSplits) -> tuple[RunConfig, CacheDecision]:
    """train.teacher_cache=auto decided for this teacher, student and run (train.cachechoice), written into the
    preset's training settings so config.json and the resume fingerprint record what runs."""
    from .core.types import NEED_TEACHER_EMBED, NEED_TEACHER_LOGITS

    needs = losses.preset_needs(cfg.preset)
    t_flops = selection.teacher.flops if selection.teacher is not None else (
        students.capacity(teacher.model, teacher.input_spec).flops if teacher.exportable else None)
    facts = CacheFacts(teacher_flops=t_flops, student_flops=selection.chosen.flops,
                       reads_teacher=bool(needs & {NEED_TEACHER_LOGITS, NEED_TEACHER_EMBED}),
                       teacher_file=bool(teacher.sha256),
                       embed_dim=teacher.embed_dim if NEED_TEACHER_EMBED in needs else None)
    decision = decide_cache(cfg.preset.train, facts, splits.train, splits.num_classes)
    train_cfg = replace(cfg.preset.train, teacher_cache=decision.used)
    return replace(cfg, preset=replace(cfg.preset, train=train_cfg)), decision


def rank_by_trial(selection: Selection, cfg: RunConfig, opts: SelectOptions, teacher: Teacher, splits: DataSplits,
                  run: RunDir, device, ddp, console: Console) -> Selection:
    """--rank trial: successive halving over the pool (select.trial, the wide plan: as many candidates as the
    budget allows, dropping the last rungs before shrinking the pool), each trial a short distillation into
    run/trials/NAME-eEPOCHS (reused on a rerun), within --trial-budget of the main training's time (each
    candidate's epoch measured by train.probe, kept in run/trials/epoch_seconds.json so that a rerun makes
    the same plan); the winner is confirmed against the budget like any choice."""
    spec = teacher.input_spec
    budget_epochs = opts.trial_budget * cfg.preset.train.epochs

    def trial(name: str, epochs: int) -> float:
        preset = replace(cfg.preset, train=replace(cfg.preset.train, epochs=epochs))
        fp = {"arch": name, "data": cfg.data, "teacher": teacher.sha256, "preset": preset_to_json(preset), "trial": True}
        console.print(f"trial: {name} for {epochs} epoch(s)")
        with process_settings(device):
            res = train(arch=name, splits=splits, spec=spec, preset=preset, teacher=teacher, device=device,
                        run=RunDir(run.root / "trials" / f"{name}-e{epochs}"), fingerprint=fp,
                        console=Console(stderr=True, quiet=True), dist=ddp,
                        make_student=lambda: students.build_student(name, splits.num_classes, spec),
                        make_objective=lambda ctx: losses.Objective(cfg.preset.terms, ctx))
        return res.best_val_accuracy

    pool = trial_pool(selection, opts.trial_top)
    with console.status("timing a few training steps of each trial candidate"):
        seconds = ddp.on_main(lambda: trial_epoch_seconds([c.name for c in pool] + [selection.chosen.name], cfg,
                                                          teacher, splits, run, device))
    main = seconds[selection.chosen.name]
    costs = [seconds[c.name] / main for c in pool]
    winner, log = successive_halving(pool, budget_epochs, trial, n_val=len(splits.val), costs=costs, wide=True)
    plan = halving_plan(costs, budget_epochs, wide=True)
    info = {"rank": "trial", "pool": [c.name for c in pool], "trial_epochs_budget": budget_epochs,
            "epoch_seconds": {c.name: round(seconds[c.name], 4) for c in pool}, "main_epoch_seconds": round(main, 4),
            "plan": [list(r) for r in plan], "plan_bound_epochs": round(plan_cost(plan, costs), 3), "trials": log,
            "val_images": len(splits.val), "flops_choice": selection.chosen.name}
    if winner is not None and winner.name != selection.chosen.name:
        try:
            again = ddp.on_main(lambda: select(
                num_classes=splits.num_classes, spec=spec, budget=cfg.budget, runtime=cfg.runtime,
                names=(winner.name,), **selection_kwargs(replace(opts, precision=winner.precision), timing_variant)))
            chosen = again.chosen
        except BudgetError:
            info["note"] = f"{winner.name} did not meet the budget on confirmation; the FLOPs choice stands"
            chosen = selection.chosen
    else:
        chosen = selection.chosen
        if winner is None:
            info["note"] = (f"a trial budget of {budget_epochs:g} main epoch(s) is too small for 2 of the "
                            f"{len(pool)} candidates at one epoch each")
    console.print(f"trial ranking: {chosen.name} (FLOPs rule: {selection.chosen.name})")
    fp32_fits = sorted((c for c in selection.candidates if c.fits and c.precision == "fp32"),
                       key=lambda c: (c.flops, c.params), reverse=True)
    fallback = (selection.fallback or next(iter(fp32_fits), None)) if chosen.precision != "fp32" else None
    return replace(selection, chosen=chosen, fallback=fallback, stats={**selection.stats, "trial": info})


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
            known[name] = epoch_seconds(lambda name=name: students.build_student(name, splits.num_classes, teacher.input_spec),
                                        teacher.input_spec, batch_size=cfg.preset.train.batch_size,
                                        n_train=len(splits.train), num_classes=splits.num_classes,
                                        device=device,  # with the teacher-output cache no step runs the teacher
                                        teacher=None if cfg.preset.train.teacher_cache == "views" else teacher.model)
    if missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"setting": setting, "seconds": known})
    return {n: float(known[n]) for n in names}


def train_teacher(*, data: str, arch: str, preset, out, device: str, console: Console) -> dict[str, Any]:
    """Train a reference teacher with CE; save it (with its test accuracy) as a kdcompress checkpoint."""
    from pathlib import Path

    from .core.checkpoint import save_checkpoint
    from .core.infer import accuracy, predict

    out = Path(out)
    if out.exists() and out.is_dir():
        raise InputError(f"--out {out} is a directory; give a file path such as {out / 'teacher.pt'}")
    # the hidden run directory beside `out` (resume state) is claimed like any run: checked and locked
    # before the data is read, held until the checkpoint is written
    run = RunDir(out.parent / f".{out.stem}.run")
    with run.claim():
        splits = load_data(data)
        spec = splits.fitted_input_spec()
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
