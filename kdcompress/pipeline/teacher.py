"""`kdcompress teacher train`: a reference teacher trained with CE, saved as a kdcompress checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from .. import losses, students
from ..core.checkpoint import save_checkpoint
from ..core.config import preset_to_json
from ..core.errors import InputError
from ..core.infer import accuracy, predict
from ..core.runio import RunDir
from ..core.system import process_settings, resolve_device
from ..data import load_data
from ..train import train


@dataclass(frozen=True)
class TeacherTrainJob:
    """`kdcompress teacher train`: the data spec, the zoo architecture, the CE preset (epochs and --set applied),
    the checkpoint file to write and the training device."""

    data: str
    arch: str
    preset: Any  # losses.Preset
    out: Path
    device: str = "auto"

    def __post_init__(self) -> None:
        if Path(self.out).exists() and Path(self.out).is_dir():
            raise InputError(f"--out {self.out} is a directory; give a file path such as "
                             f"{Path(self.out) / 'teacher.pt'}")

    def to_json(self) -> dict[str, Any]:
        return {"format": "kdcompress.teacher-train-job/1", "data": self.data, "arch": self.arch,
                "preset": preset_to_json(self.preset), "out": str(self.out), "device": self.device}


def train_teacher(*, data: str, arch: str, preset, out, device: str, console: Console) -> dict[str, Any]:
    """train_teacher_job by keywords (the library call tests and benchmarks make)."""
    return train_teacher_job(TeacherTrainJob(data=data, arch=arch, preset=preset, out=Path(out), device=device),
                             console)


def train_teacher_job(job: TeacherTrainJob, console: Console) -> dict[str, Any]:
    """Train a reference teacher with CE; save it (with its test accuracy) as a kdcompress checkpoint."""
    data, arch, preset, out, device = job.data, job.arch, job.preset, Path(job.out), job.device
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
    return {"path": str(out), "arch": arch, "data": data, "epochs": result.epochs, "job": job.to_json(),
            "val_accuracy": result.best_val_accuracy, "test_accuracy": test_acc, "seconds": round(result.seconds, 2)}
