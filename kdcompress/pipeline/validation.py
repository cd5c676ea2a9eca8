"""`kdcompress validate`: any ONNX classifier on a dataset's test split, gated, with a report."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..core.config import RuntimeConfig, TeacherOptions
from ..core.errors import UsageError
from ..core.runio import RunDir
from ..core.spec import InputSpec
from ..core.splits import DataSplits
from ..data import load_data
from ..report import validate_report, write_report
from ..validate import (THROUGHPUT_BATCH, Gates, ModelInput, describe, effective_threads, input_channels, map_classes,
                        reference_logits, validate_models)
from .prepare import check_fit


def _teacher_source(teacher: Path, splits: DataSplits, options: TeacherOptions, trust: bool, layout, warn):
    """The teacher as validate measures it: an ONNX file as it is (its metadata, or --mean/--std, which win as
    for every --onnx file; --classes names its outputs), any other format read with the teacher flags."""
    from ..runtime import INPUT_NAME, onnx_bytes
    from ..teacher import load_teacher

    if Path(teacher).suffix.lower() == ".onnx":
        mi = describe(teacher, data_shape=splits.shape, mean=options.mean, std=options.std, layout=layout)
        if options.classes is not None:
            mi = replace(mi, classes=options.classes)
        mi = map_classes(mi, splits.classes, f"teacher {teacher}", warn)
        info = {"path": str(teacher)}
        return (Path(teacher), mi), info
    t = load_teacher(Path(teacher), trust=trust, options=options)
    cols = check_fit(f"teacher {teacher}", t.classes, t.input_spec, splits, warn, recorded=False)
    data = onnx_bytes(t.model, t.input_spec)
    mi = ModelInput(INPUT_NAME, "NCHW", t.input_spec, "tensor(float)", None, t.classes, "fp32", {},
                    None if cols is None else tuple(cols))
    return (data, mi), {"path": str(teacher), "arch": t.arch, "sha256_checkpoint": t.sha256, "params": t.params}


def load_images_for(data: str, channels: int | None) -> DataSplits:
    """The dataset as distill hands it to a model of `channels` channels: read at its own size, then, where
    its channels differ (grey or 16-bit grey images, an RGB model), read again through the same conversion
    distill uses (load_data with the model's shape: grey -> RGB by replication, 16-bit by value / 257)."""
    splits = load_data(data)
    if channels is None or channels == splits.shape[0]:
        return splits
    c = channels
    return load_data(data, InputSpec((c, *splits.shape[1:]), (0.0,) * c, (1.0,) * c))  # type: ignore[arg-type]


def validate_job(*, files: list[Path], data: str, teacher: Path | None, checkpoint: Path | None,
                 runtime: RuntimeConfig, gates: Gates, teacher_options: TeacherOptions | None = None,
                 trust_checkpoint: bool = False, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None, layout: str | None = None, batch: int = 1,
                 throughput_batch: int = THROUGHPUT_BATCH, out: Path | None = None, console,
                 force: bool = False) -> dict[str, Any]:
    """`kdcompress validate`: measure ONNX classifiers (any, including third-party) on a dataset's test
    split, gate them and write report.json/report.md/plots into `out` when given. Returns the report;
    the caller raises GateError (gates.raise_for_gates) after printing it."""
    from ..students import load_checkpoint

    if not files:
        raise UsageError("give at least one --onnx FILE")
    gates.require(has_reference=checkpoint is not None, has_teacher=teacher is not None)
    if out is not None:  # before any work: an --out that cannot take the report is refused in seconds
        with RunDir(Path(out)).claim(force=force):
            pass

    def warn(m: str) -> None:
        console.print(f"[yellow]warning:[/] {m}")

    runtime = effective_threads(runtime, warn)
    splits = load_images_for(data, input_channels(Path(files[0]), layout))
    # every model is scored against the data by class NAME (its metadata's classes -> the data's order)
    inputs = [map_classes(describe(Path(f), data_shape=splits.shape, mean=mean, std=std, layout=layout),
                          splits.classes, str(f), warn) for f in files]
    reference = None
    if checkpoint is not None:
        model, obj = load_checkpoint(Path(checkpoint))
        ck_spec = InputSpec.from_json(obj["input_spec"])
        cols = check_fit(str(checkpoint), tuple(str(c) for c in obj["classes"]), ck_spec, splits, warn)
        reference = reference_logits(model, splits.test, ck_spec)  # with the normalisation it was trained on
        if cols is not None:
            reference = reference[:, cols]  # the checkpoint's class order -> the data's
    t_src, t_info = (None, None)
    if teacher is not None:
        opts = teacher_options or TeacherOptions(mean=mean, std=std)
        t_src, t_info = _teacher_source(Path(teacher), splits, opts, trust_checkpoint, layout, warn)
    with console.status("validating in ONNX Runtime") as status:
        val = validate_models([Path(f) for f in files], inputs, splits.test, splits.classes, runtime, gates,
                              reference=reference, teacher=t_src, batch=batch, throughput_batch=throughput_batch,
                              progress=status.update)
    report = validate_report(data_spec=data, splits=splits, checkpoint=checkpoint, val=val, teacher_info=t_info)
    if out is not None:
        with RunDir(Path(out)).claim(force=force):
            RunDir(Path(out)).mark("validate")
            report = write_report(report, Path(out))
    return report
