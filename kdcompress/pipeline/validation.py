"""`kdcompress validate`: any ONNX classifier on a dataset's test split, gated, with a report."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config import RuntimeConfig, TeacherOptions
from ..core.errors import UsageError
from ..core.progress import Reporter, eta_bar
from ..core.runio import RunDir
from ..core.spec import InputSpec
from ..core.splits import DataSplits
from ..data import load_data, native_shape
from ..report import validate_report, write_report
from ..validate import (THROUGHPUT_BATCH, Gates, ModelInput, describe, effective_threads, input_shape, map_classes,
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


def load_images_for(data: str, shape: tuple[int | None, int | None, int | None], warn) -> DataSplits:
    """The dataset as distill hands it to a model taking `shape` (C, H, W; None: any). Where it differs from the
    data's own shape (grey or 16-bit grey images for an RGB model, another image size), it is read through the
    conversion distill uses (load_data with the model's shape: grey -> RGB by replication, 16-bit by value /
    257, resize and centre-crop), saying so. An image folder's own shape is read from its first image, so its
    images are decoded once; the other datasets are loaded at their own shape first."""
    native, splits = native_shape(data), None
    if native is None:
        splits = load_data(data)
        native = splits.shape
    want = tuple(m or d for m, d in zip(shape, native, strict=True))
    if want == tuple(native):
        return splits if splits is not None else load_data(data)
    if want[1:] != tuple(native[1:]):
        warn(f"the data's {native[1]}x{native[2]} images are resized and centre-cropped to the model's "
             f"{want[1]}x{want[2]}, as distill feeds them")
    c = want[0]
    return load_data(data, InputSpec(want, (0.0,) * c, (1.0,) * c))  # type: ignore[arg-type]


VALIDATE_JOB_FORMAT = "kdcompress.validate-job/1"


@dataclass(frozen=True)
class ValidateJob:
    """`kdcompress validate`: the ONNX files, the data, the references (the teacher, read with
    `teacher_options` and `trust_checkpoint`; the student's PyTorch checkpoint), ORT settings, gates, how
    to feed every file (the options' mean/std override each file's metadata, as the teacher's; layout), the
    latency and throughput batches, and where the report goes (`force`: into a non-empty directory that is
    not kdcompress's)."""

    files: tuple[Path, ...]
    data: str
    runtime: RuntimeConfig
    gates: Gates
    teacher: Path | None = None
    checkpoint: Path | None = None
    teacher_options: TeacherOptions = TeacherOptions()
    trust_checkpoint: bool = False
    layout: str | None = None
    batch: int = 1
    throughput_batch: int = THROUGHPUT_BATCH
    out: Path | None = None
    force: bool = False

    def __post_init__(self) -> None:
        if self.throughput_batch < 1:
            raise UsageError(f"--throughput-batch must be >= 1, got {self.throughput_batch}")
        if not self.files:
            raise UsageError("give at least one --onnx FILE")
        self.gates.require(has_reference=self.checkpoint is not None, has_teacher=self.teacher is not None)

    def to_json(self) -> dict[str, Any]:
        def text(p: Path | None) -> str | None:
            return None if p is None else str(p)

        return {"format": VALIDATE_JOB_FORMAT, "onnx": [str(f) for f in self.files], "data": self.data,
                "teacher": text(self.teacher), "checkpoint": text(self.checkpoint),
                "provider": self.runtime.provider, "threads": self.runtime.threads, "gates": self.gates.to_json(),
                "teacher_options": self.teacher_options.to_json(), "trust_checkpoint": self.trust_checkpoint,
                "layout": self.layout, "batch": self.batch, "throughput_batch": self.throughput_batch,
                "out": text(self.out), "force": self.force}


def validate_job(job: ValidateJob, console) -> dict[str, Any]:
    """`kdcompress validate`: measure ONNX classifiers (any, including third-party) on a dataset's test
    split, gate them and write report.json/report.md/plots into `out` when given (the job recorded in it).
    Returns the report; the caller raises GateError (gates.raise_for_gates) after printing it."""
    out = None if job.out is None else Path(job.out)
    if out is not None:  # before any work: an --out that cannot take the report is refused in seconds
        with RunDir(out).claim(force=job.force):
            pass

    def warn(m: str) -> None:
        console.print(f"[yellow]warning:[/] {m}")

    runtime = effective_threads(job.runtime, warn)
    files = [Path(f) for f in job.files]
    mean, std = job.teacher_options.mean, job.teacher_options.std
    splits = load_images_for(job.data, input_shape(files[0], job.layout), warn)
    # every model is scored against the data by class NAME (its metadata's classes -> the data's order)
    inputs = [map_classes(describe(f, data_shape=splits.shape, mean=mean, std=std, layout=job.layout,
                                   num_classes=len(splits.classes)),
                          splits.classes, str(f), warn) for f in files]
    with eta_bar(console, "validate") as bar:  # its work is known once the references are ready
        reference = _reference(job.checkpoint, splits, warn, bar)
        t_src, t_info = (None, None)
        if job.teacher is not None:
            bar.step("reading the teacher")
            t_src, t_info = _teacher_source(Path(job.teacher), splits, job.teacher_options, job.trust_checkpoint,
                                            job.layout, warn)
        val = validate_models(files, inputs, splits.test, splits.classes, runtime, job.gates, reference=reference,
                              teacher=t_src, batch=job.batch, throughput_batch=job.throughput_batch, report=bar)
    report = validate_report(data_spec=job.data, splits=splits, checkpoint=job.checkpoint, val=val,
                             teacher_info=t_info)
    report = {**report, "job": job.to_json()}
    if out is not None:
        with RunDir(out).claim(force=job.force):
            RunDir(out).mark("validate")
            report = write_report(report, out)
    return report


def _reference(checkpoint: Path | None, splits: DataSplits, warn, report: Reporter) -> np.ndarray | None:
    """The student's PyTorch logits on the test split (in the data's class order), with the normalisation
    it was trained on; None without --checkpoint."""
    from ..students import load_checkpoint

    if checkpoint is None:
        return None
    report.step("PyTorch on the test split")
    model, obj = load_checkpoint(Path(checkpoint))
    ck_spec = InputSpec.from_json(obj["input_spec"])
    cols = check_fit(str(checkpoint), tuple(str(c) for c in obj["classes"]), ck_spec, splits, warn)
    reference = reference_logits(model, splits.test, ck_spec)
    return reference if cols is None else reference[:, cols]  # the checkpoint's class order -> the data's
