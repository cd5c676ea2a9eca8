"""`kdcompress teacher train`: a reference teacher trained with CE, saved as a kdcompress checkpoint."""

from __future__ import annotations

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


def train_teacher(*, data: str, arch: str, preset, out, device: str, console: Console) -> dict[str, Any]:
    """Train a reference teacher with CE; save it (with its test accuracy) as a kdcompress checkpoint."""
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
