"""Images per second of one distillation step, resnet32x4 -> resnet8x4 on CIFAR-shaped data (or, with
`--setting small`, resnet8 -> tinycnn_w8 on mnist5k-shaped data).

    python benchmarks/throughput.py                  # CPU: a small batch and a few steps (minutes)
    python benchmarks/throughput.py --setting small  # CPU: mnist5k's shape, batch 64, 40 timed steps
    python benchmarks/throughput.py --device cuda    # GPU: batch 128, 100 timed steps, a 50,000-image bank

Rows: kdcompress's own training step (train.step.StepEngine, exactly what `kdcompress distill` runs: on-device
crop+flip augmentation, normalisation, teacher under inference_mode, bf16 autocast + channels_last on CUDA,
losses in fp32, loss parts kept on the device) for the kd, dkd, nd and ickd presets, beside a plain fp32 loop
written the way mdistiller's trainer works: fp32 NCHW models, teacher forward under no_grad, a separate CE
term and KD term summed, the loss read back to the host every step for its running average meter. The
baseline is given its batches already augmented, normalised and pinned (mdistiller's DataLoader workers do
that off the training thread), so its data cost is not counted while kdcompress's augmentation is.

`--cache` adds a row per method with the teacher-output cache (train.teacher_cache=views): the same step with
the teacher's outputs read from the cache instead of computed (its one-off build is not timed).

Synthetic data: uniform random 3x32x32 images, 100 classes (CIFAR-100's shape), crop+flip; `--setting small`:
1x28x28, 10 classes, shift augmentation, teacher resnet8, student tinycnn_w8, batch 64 (the mnist5k benchmark's
shapes: a CPU step of a few ms, where per-step overhead outside the maths is a visible share). Weights are random: speed
does not depend on them. ND and IC-KD run their prepare() (class centres, the memory bank) over the
synthetic training split first; that one-off cost is not timed. Timing: `--warmup` untimed steps, then
`--steps` steps between two device synchronisations. The loops run one after another, and the whole round
is repeated `--rounds` times (first-use costs of kernels and allocators otherwise favour whichever loop
runs later); each loop's figure is its median step time over the rounds, img/s = batch / step time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console

from kdcompress.core.config import load_preset
from kdcompress.core.spec import InputSpec
from kdcompress.core.splits import TensorSplit, normalize
from kdcompress.core.types import LossContext, PrepareContext
from kdcompress.losses.base import Objective
from kdcompress.students.registry import build_student
from kdcompress.teacher.model import EMBED_TIMM, Teacher
from kdcompress.train.loop import _optimizer
from kdcompress.core.types import NEED_TEACHER_EMBED
from kdcompress.train.step import Feeder, StepEngine
from kdcompress.train.teacher_cache import build, stored_k


@dataclass(frozen=True)
class Setting:
    """The shapes one run times: data, models, augmentation and the CPU defaults."""
    title: str
    classes: int
    spec: InputSpec
    student: str
    teacher: str
    aug: str
    cpu_batch: int
    cpu_steps: int
    cpu_train_size: int


SETTINGS = {
    # CIFAR-100's shape (statistics of CIFAR-100)
    "default": Setting("resnet32x4 -> resnet8x4, synthetic 3x32x32", 100,
                       InputSpec((3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
                       "resnet8x4", "resnet32x4", "crop_flip", 16, 4, 512),
    # the mnist5k benchmark's shape (1x28x28 grey, 10 classes, teacher resnet8, student tinycnn_w8,
    # batch 64, shift augmentation): a step of a few ms, where per-step overhead is a visible share
    "small": Setting("resnet8 -> tinycnn_w8, synthetic 1x28x28 (mnist5k-shaped)", 10,
                     InputSpec((1, 28, 28), (0.1307,), (0.3081,)),
                     "tinycnn_w8", "resnet8", "shift", 64, 40, 1024),
}
S = SETTINGS["default"]  # set by main() from --setting
METHODS = ("kd", "dkd", "nd", "ickd")
EPOCH = 300  # past every preset's warm-up: each term at its full weight, as in most of a run


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def synthetic_split(n: int, seed: int = 0) -> TensorSplit:
    g = torch.Generator().manual_seed(seed)
    return TensorSplit(torch.rand((n, *S.spec.shape), generator=g), torch.randint(0, S.classes, (n,), generator=g))


def models(device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    return (build_student(S.student, S.classes, S.spec).to(device),
            build_student(S.teacher, S.classes, S.spec).to(device).eval())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kdcompress_step_time(method: str, split: TensorSplit, device: torch.device, batch: int, warmup: int,
                         steps: int, compile: bool, cached: bool = False) -> float:
    step = kdcompress_stepper(method, split, device, batch, compile, cached)
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - t0) / steps


def kdcompress_stepper(method: str, split: TensorSplit, device: torch.device, batch: int, compile: bool,
                       cached: bool = False) -> Callable[[], tuple[torch.Tensor, dict]]:
    """One call = one kdcompress training step of `method` on the next batch (what profile_step.py profiles)."""
    student, t_model = models(device)
    if device.type == "cuda":
        student = student.to(memory_format=torch.channels_last)
        t_model = t_model.to(memory_format=torch.channels_last)
    teacher = Teacher(t_model, S.teacher, tuple(map(str, range(S.classes))), S.spec, t_model.embed_dim,
                      sum(p.numel() for p in t_model.parameters()), Path("synthetic"), "0" * 64,
                      embed_via=EMBED_TIMM)
    preset = load_preset(method)
    objective = Objective(preset.terms, LossContext(S.classes, student.embed_dim, t_model.embed_dim)).to(device)
    if objective.needs_prepare:
        objective.prepare(PrepareContext(teacher, split, S.spec, device, S.classes, Console(file=io.StringIO()), 256))
    opt = _optimizer(preset.train, list(student.parameters()) + list(objective.parameters()))
    cache = None
    if cached:  # train.teacher_cache=views: the teacher's outputs read, not computed (the build is not timed;
        # one view slot: a step's cost does not depend on how many slots there are to pick from)
        cache = build(teacher.outputs, split, S.spec, device, mode=S.aug, views=1, seed=0,
                      k=stored_k(S.classes, 0), num_classes=S.classes, batch_size=256, amp=device.type == "cuda",
                      embed_dim=t_model.embed_dim if NEED_TEACHER_EMBED in objective.needs else None)
        cache = cache.to(device)
    engine = StepEngine(student=student, objective=objective, opt=opt, teacher=teacher.outputs, spec=S.spec,
                        device=device, aug_mode=S.aug, compile=compile, cache=cache)
    feeder = Feeder(split, device, batch, seed=0)
    gen = torch.Generator().manual_seed(0)
    student.train()
    objective.train()

    def batches():
        epoch = 1
        while True:
            yield from feeder.epoch(epoch)
            epoch += 1

    it = batches()
    return lambda: engine.step(next(it), EPOCH, gen)


def kd_loss_mdistiller_style(z_s: torch.Tensor, z_t: torch.Tensor, T: float) -> torch.Tensor:
    log_p_s = F.log_softmax(z_s / T, dim=1)
    p_t = F.softmax(z_t / T, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="none").sum(1).mean() * T * T


def baseline_step_time(split: TensorSplit, device: torch.device, batch: int, warmup: int, steps: int) -> float:
    """fp32, NCHW, teacher under no_grad, CE and KD as separate terms, loss read back every step."""
    student, teacher = models(device)
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    ready = []  # what a pinned-memory DataLoader would hand over: normalised batches in page-locked memory
    for b in split.batches(batch, shuffle=True, drop_last=True, seed=0, epoch=1):
        x, y = normalize(b.x, S.spec), b.y
        ready.append((x.pin_memory(), y.pin_memory()) if device.type == "cuda" else (x, y))
    student.train()
    meter = []

    def step(i: int) -> None:
        image, target = ready[i % len(ready)]
        image, target = image.to(device, non_blocking=True), target.to(device, non_blocking=True)
        logits_student = student(image)
        with torch.no_grad():
            logits_teacher = teacher(image)
        losses = {"loss_ce": 0.1 * F.cross_entropy(logits_student, target),
                  "loss_kd": 0.9 * kd_loss_mdistiller_style(logits_student, logits_teacher, 4.0)}
        loss = sum(v.mean() for v in losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        meter.append(float(loss.cpu().data.numpy().mean()))

    for i in range(warmup):
        step(i)
    sync(device)
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    sync(device)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--setting", choices=tuple(SETTINGS), default="default",
                    help="default: resnet32x4 -> resnet8x4 on 3x32x32, 100 classes; small: resnet8 -> tinycnn_w8 on "
                         "1x28x28, 10 classes, batch 64, shift augmentation (mnist5k's shape)")
    ap.add_argument("--batch", type=int, default=None, help="images per step (default: 16 on CPU, 128 on CUDA)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default: 4 on CPU, 100 on CUDA)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 2 on CPU, 20 on CUDA)")
    ap.add_argument("--train-size", type=int, default=None,
                    help="synthetic training images; the IC-KD bank holds them all (default: 512 CPU, 50000 CUDA)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--rounds", type=int, default=3, help="repeat every loop this often; report the median")
    ap.add_argument("--compile", action="store_true", help="also time kdcompress's steps with torch.compile")
    ap.add_argument("--cache", action="store_true",
                    help="also time each method with the teacher-output cache (train.teacher_cache=views)")
    args = ap.parse_args()
    global S
    S = SETTINGS[args.setting]
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("throughput.py: --device cuda requested but no CUDA GPU is available")
    batch = args.batch or (128 if cuda else S.cpu_batch)
    steps = args.steps or (100 if cuda else S.cpu_steps)
    warmup = args.warmup if args.warmup is not None else (20 if cuda else 2)
    n = args.train_size or (50_000 if cuda else S.cpu_train_size)
    if n < batch * 2:
        raise SystemExit("throughput.py: --train-size must hold at least two batches")
    if cuda:
        torch.backends.cudnn.benchmark = True  # both loops alike: fixed shapes
    split = synthetic_split(n)

    print(f"throughput: distill step, {S.title}, {S.classes} classes ({S.aug} augmentation)")
    print(f"date: {dt.datetime.now().isoformat(timespec='seconds')}")
    print(f"device: {torch.cuda.get_device_name(device) if cuda else 'cpu'}; CPU: {cpu_model()} "
          f"({torch.get_num_threads()} torch threads)")
    print(f"torch {torch.__version__}; batch {batch}, {warmup} warm-up + {steps} timed steps, {n} training "
          f"images; median of {args.rounds} rounds")
    loops: list[tuple[str, Callable[[], float]]] = [
        ("baseline: fp32 loop, mdistiller-style (kd)", lambda: baseline_step_time(split, device, batch, warmup, steps))]
    for compiled in ((False, True) if args.compile else (False,)):
        for method in args.methods.split(","):
            loops.append((f"kdcompress {method}{' + compile' if compiled else ''}",
                          lambda m=method, c=compiled: kdcompress_step_time(m, split, device, batch, warmup, steps, c)))
    if args.cache:
        for method in args.methods.split(","):
            loops.append((f"kdcompress {method} + teacher cache",
                          lambda m=method: kdcompress_step_time(m, split, device, batch, warmup, steps, False, True)))
    times: dict[str, list[float]] = {name: [] for name, _ in loops}
    for _ in range(args.rounds):
        for name, fn in loops:
            times[name].append(fn())
    rows = [(name, statistics.median(t)) for name, t in times.items()]
    base = rows[0][1]
    print()
    print(f"| {'loop':44s} | {'img/s':>9s} | {'step ms':>9s} | {'x baseline':>10s} |")
    print(f"|{'-' * 46}|{'-' * 11}|{'-' * 11}|{'-' * 12}|")
    for name, s in rows:
        print(f"| {name:44s} | {batch / s:9.1f} | {1000 * s:9.2f} | {base / s:10.2f} |")
    print()
    for suffix in ("", " + compile", " + teacher cache"):
        kd, ickd = dict(rows).get(f"kdcompress kd{suffix}"), dict(rows).get(f"kdcompress ickd{suffix}")
        if kd and ickd:
            print(f"IC-KD / KD step time{suffix}: {ickd / kd:.3f}")


if __name__ == "__main__":
    main()
