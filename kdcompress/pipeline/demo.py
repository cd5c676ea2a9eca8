"""`kdcompress demo`: digits, end to end, on a fresh machine in a couple of minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from .. import losses
from ..core.config import Budget, RunConfig, RuntimeConfig
from ..select import measure_cached
from ..teacher import load_teacher
from .job import distill
from .teacher import train_teacher

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
