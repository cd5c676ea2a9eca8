"""What one training epoch of a model costs here, measured: the trial ranking's budget is time, and a
model's FLOPs do not predict its training time (a depthwise mobilenet's CPU step costs several times that
of a plain CNN of the same FLOPs: benchmarks/RESULTS.md, "Figures moved out of code comments")."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from ..core.spec import InputSpec

WARMUP_STEPS = 2
TIMED_STEPS = 5


def epoch_seconds(make_student: Callable[[], nn.Module], spec: InputSpec, *, batch_size: int, n_train: int,
                  num_classes: int, teacher: nn.Module | None, device: torch.device) -> float:
    """Seconds of one epoch over `n_train` samples: the median of TIMED_STEPS timed training steps (after
    WARMUP_STEPS untimed ones) at `batch_size`, times the epoch's steps. A step is the teacher's forward
    (no grad; the same for every student, so it weighs the comparison as it weighs real training), the
    student's forward and backward with a cross-entropy, and an SGD step; validation and data loading are
    not counted. Random inputs: the time does not depend on the pixels."""
    student = make_student().to(device).train()
    opt = torch.optim.SGD(student.parameters(), lr=1e-3, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, *spec.shape, generator=gen).to(device)
    y = torch.randint(0, num_classes, (batch_size,), generator=gen).to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step() -> None:
        if teacher is not None:
            with torch.no_grad():
                teacher(x)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(student(x), y).backward()  # a student's forward is its logits (train.step)
        opt.step()

    was = teacher.training if teacher is not None else False
    if teacher is not None:
        teacher.eval()  # a probe must not move a BatchNorm's running statistics
    times = []
    for i in range(WARMUP_STEPS + TIMED_STEPS):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        if i >= WARMUP_STEPS:
            times.append(time.perf_counter() - t0)
    if teacher is not None:
        teacher.train(was)
    return statistics.median(times) * math.ceil(n_train / batch_size)
