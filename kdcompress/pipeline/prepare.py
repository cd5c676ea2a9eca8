"""distill's first phase: the teacher, the data and every check that can refuse the run before --out changes;
and the fit of a model's classes and input shape to a dataset (export and validate check it too)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Console

from .. import losses
from ..core.classes import match_classes
from ..core.config import RunConfig, RuntimeConfig
from ..core.errors import InputError
from ..core.spec import InputSpec
from ..core.splits import DataSplits, images, normalize
from ..data import align_classes, load_data
from ..export import CHECK_BATCHES, ExportOptions
from ..select import SelectOptions
from ..teacher import Teacher, TeacherCheck, input_size_hint, load_teacher, teacher_check
from ..train import Dist, check_training
from ..validate import Gates


@dataclass(frozen=True)
class DistillOptions:
    """What distill is asked beyond its RunConfig: the ONNX variants (`export`), the gates, the selection's
    precision, latency table, ORT tuning and ranking (`select`), --allow-weak-teacher and --student-init."""

    export: ExportOptions
    gates: Gates
    select: SelectOptions
    allow_weak_teacher: bool = False
    student_init: str | None = None
    record: dict[str, Any] | None = None  # the whole job (pipeline.jobspec), written into config.json
    notes: tuple[str, ...] = ()  # warnings about the request, printed once every check passed


@dataclass(frozen=True)
class Prepared:
    """Everything the later phases read: the run's configuration and options, the loaded teacher and the data
    (aligned to it) with what the teacher check found, the device and process group, and the ORT settings
    validation measures with (threads capped)."""

    cfg: RunConfig
    options: DistillOptions
    teacher: Teacher
    splits: DataSplits
    checked: TeacherCheck
    device: Any
    ddp: Dist
    runtime: RuntimeConfig
    console: Console

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/] {message}")


def prepare(cfg: RunConfig, options: DistillOptions, console: Console, ddp: Dist, device,
            runtime: RuntimeConfig) -> Prepared:
    """Load and check the teacher and the data: a logits-only teacher with a feature-based preset, data that
    does not fit the teacher, training settings the data cannot serve and a teacher at chance level (class
    order, normalisation, architecture) are all refused here, in seconds, before --out is touched."""
    teacher = ddp.main_first(lambda: load_teacher(cfg.teacher, trust=cfg.trust_checkpoint, options=cfg.teacher_options))
    teacher.check_needs(losses.preset_needs(cfg.preset), cfg.preset.name)
    splits = ddp.main_first(lambda: load_data(cfg.data, teacher.input_spec, download=cfg.download))
    splits = check_compatible(teacher, splits, console)
    check_training(cfg.preset.train, splits)  # e.g. a mixed teacher cache over streamed files
    checked = teacher_check(teacher, splits, device, allow_weak=options.allow_weak_teacher,
                            warn=lambda m: console.print(f"[yellow]warning:[/] {m}"),
                            shape_hint=input_size_hint(teacher, splits.native_shape or splits.shape,
                                                       cfg.teacher_options.input_shape is not None))
    return Prepared(cfg, options, teacher, splits, checked, device, ddp, runtime, console)


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
    """Test images (normalised) that export checks each file on at batch 1 and 7; None without data."""
    if splits is None or len(splits.test) == 0:
        return None
    return normalize(images(splits.test, max(CHECK_BATCHES)), spec).numpy()
