"""One distillation step and the batches that feed it: what the trainer runs, and what
benchmarks/throughput.py times.

On CUDA (none of this changes the maths):
  * student and teacher in channels_last; forward passes under bf16 autocast over fp32 master weights (no
    GradScaler: bf16 has fp32's exponent range); every loss computed in fp32 (the Objective casts its inputs);
  * the teacher under inference_mode;
  * no host-device synchronisation inside a step: loss parts stay on the device (Objective.forward(host_parts=False)),
    the normalisation constants live on the device, augmentation draws travel through pinned memory;
  * the training split resident on the GPU when it fits (RESIDENT_FRACTION of free memory), so a batch is a
    device-side gather; otherwise batches are sliced (or decoded by the split's DataLoader workers) and
    pinned in a background thread, then copied asynchronously.
With a teacher-output cache (teacher_cache.py, `train.teacher_cache=views`) the step runs no teacher: the batch
is augmented into this epoch's cached view of each sample and the teacher's outputs on it are looked up. With
`train.mix` the batch is mixed after the crop (augment.py): online with a permutation of the batch, cached with
each view's own partner, whose image `take` fetches from the training split (a gather on the device when the
split is resident; else a host read, one synchronisation per step).
`compile=True` wraps the student's training forward in torch.compile; the student module itself is what the
trainer saves, so checkpoints and export never see the compiled wrapper. Under torchrun the forward is
wrapped in DDP, and trainable parts of the losses (ND's projector) have their gradients averaged explicitly.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..core.spec import InputSpec
from ..core.splits import Batch, TensorSplit, batch_indices
from ..core.types import NEED_STUDENT_EMBED, NEED_TEACHER_EMBED, NEED_TEACHER_LOGITS, ModelOut, logits_and_embed
from .augment import augment
from .distributed import SINGLE, Dist
from .teacher_cache import TeacherCache

RESIDENT_FRACTION = 0.25  # of the GPU's free memory a training split may take to live on the device
PREFETCH_DEPTH = 3
COMPILE_BACKEND_ENV = "KDCOMPRESS_COMPILE_BACKEND"  # inductor (default); aot_eager where no C compiler exists

TeacherFn = Callable[[Tensor, bool], ModelOut]


class StudentForward(nn.Module):
    """The student's training forward as one module call (logits, or logits and the pooled embedding), so
    that DDP's gradient hooks and torch.compile see the whole forward."""

    def __init__(self, student: nn.Module, want_embed: bool):
        super().__init__()
        self.student = student
        self.want_embed = want_embed

    def forward(self, x: Tensor) -> Any:
        if self.want_embed:
            return logits_and_embed(self.student, x)
        return self.student(x)


class StepEngine:
    """augment -> normalise -> teacher (inference) + student forward (autocast) -> fp32 objective ->
    backward -> optimizer step. `step` returns the detached loss and parts, still on the device."""

    def __init__(self, *, student: nn.Module, objective: nn.Module, opt: torch.optim.Optimizer,
                 teacher: TeacherFn | None, spec: InputSpec, device: torch.device, aug_mode: str,
                 dist: Dist = SINGLE, compile: bool = False, amp: bool | None = None,
                 channels_last: bool | None = None, cache: TeacherCache | None = None, mixing: str = "none",
                 take: Callable[[Tensor], Tensor] | None = None):
        cuda = device.type == "cuda"
        self.device = device
        self.amp = cuda if amp is None else amp
        self.channels_last = cuda if channels_last is None else channels_last
        self.objective, self.opt, self.teacher, self.dist = objective, opt, teacher, dist
        self.aug_mode, self.mixing, self.take = aug_mode, mixing, take
        needs = objective.needs
        self.s_embed = NEED_STUDENT_EMBED in needs
        self.t_embed = NEED_TEACHER_EMBED in needs
        wants_teacher = bool(needs & {NEED_TEACHER_LOGITS, NEED_TEACHER_EMBED})
        self.cache = cache if wants_teacher else None  # the teacher's outputs are read, not computed
        self.t_needed = teacher is not None and wants_teacher and self.cache is None
        net: nn.Module = StudentForward(student, self.s_embed)
        if dist.enabled:
            net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if cuda else None)
        if compile:
            net = torch.compile(net, backend=os.environ.get(COMPILE_BACKEND_ENV, "inductor"))
        self.net = net
        self.mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.extra_params = [p for p in objective.parameters() if p.requires_grad]

    def inputs(self, batch: Batch, gen: torch.Generator | None) -> Tensor:
        x = (augment(batch.x, self.aug_mode, gen, self.mixing) - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def cached_inputs(self, batch: Batch, epoch: int) -> tuple[Tensor, ModelOut]:
        """This epoch's view of each sample (the one the cached teacher saw) and the teacher's outputs on it."""
        assert self.cache is not None
        view = self.cache.epoch_views(batch.index, epoch)
        px = None
        if self.cache.mixing != "none":
            assert self.take is not None, "a mixed cache needs the training images by index (take)"
            px = self.take(self.cache.partners(batch.index, view))
        x = (self.cache.inputs(batch.x, batch.index, view, px) - self.mean) / self.std
        x = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        return x, self.cache.lookup(batch.index, view)

    def step(self, batch: Batch, epoch: int, gen: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
        t_out = None
        if self.cache is not None:
            x, t_out = self.cached_inputs(batch, epoch)
        else:
            x = self.inputs(batch, gen)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            if self.t_needed:
                assert self.teacher is not None
                with torch.inference_mode():
                    t_raw = self.teacher(x, self.t_embed)
                # inference tensors cannot enter autograd; these copies are ordinary (and small)
                t_out = ModelOut(t_raw.logits.clone(), None if t_raw.embed is None else t_raw.embed.clone())
            raw = self.net(x)
        s_out = ModelOut(*raw) if self.s_embed else ModelOut(raw)
        loss, parts = self.objective(s_out, t_out, batch, epoch, host_parts=False)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.dist.average_grads(self.extra_params)
        self.opt.step()
        return loss.detach(), parts


class Feeder:
    """The training batches of one epoch on the device: this rank's shard of the epoch's permutation, the
    first `skip` batches left out (a resumed run)."""

    def __init__(self, split: Any, device: torch.device, batch_size: int, seed: int, dist: Dist = SINGLE):
        self.split, self.device, self.bs, self.seed, self.dist = split, device, batch_size, seed, dist
        self.resident: tuple[Tensor, Tensor] | None = None
        if device.type == "cuda" and isinstance(split, TensorSplit):
            free, _ = torch.cuda.mem_get_info(device)
            if split.x.nbytes + split.y.nbytes <= RESIDENT_FRACTION * free:
                self.resident = (split.x.to(device), split.y.to(device))

    def take(self, index: Tensor) -> Tensor:
        """The images of training samples `index` on the device (mixing partners of cached views): a gather
        from the resident copy, else read from the split (core.splits.RandomAccess) and copied."""
        if self.resident is not None:
            return self.resident[0][index.to(self.device)]
        x = self.split.take(index.cpu())
        return x.to(self.device) if self.device.type != "cuda" else x.pin_memory().to(self.device, non_blocking=True)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        kw = dict(shuffle=True, drop_last=True, seed=self.seed, epoch=epoch, rank=self.dist.rank,
                  world=self.dist.world)
        if self.device.type != "cuda":
            return self.split.batches(self.bs, skip=skip, **kw)
        if self.resident is not None:
            return self._resident(batch_indices(len(self.split), self.bs, **kw)[skip:])
        return (b.to(self.device) for b in prefetch(self.split.batches(self.bs, skip=skip, **kw), pin=True))

    def _resident(self, chunks: list[Tensor]) -> Iterator[Batch]:
        assert self.resident is not None
        x, y = self.resident
        if not chunks:
            return
        # one asynchronous copy of the epoch's order; batches are then slices of it, gathered on the device
        order = torch.cat(chunks).pin_memory().to(self.device, non_blocking=True)
        start = 0
        for c in chunks:
            idx = order[start:start + len(c)]
            start += len(c)
            yield Batch(x[idx], y[idx], idx)


_DONE = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def prefetch(batches: Iterator[Batch], depth: int = PREFETCH_DEPTH, pin: bool = False) -> Iterator[Batch]:
    """Produce (and pin) the next batches in a background thread while the device computes. An error in
    the producer (an unreadable image) is re-raised here, in the consumer."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for b in batches:
                if not put(b.pin() if pin else b):
                    return
            put(_DONE)
        except BaseException as e:  # handed to the consumer, which raises it
            put(_Failed(e))

    worker = threading.Thread(target=work, name="kdcompress-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
