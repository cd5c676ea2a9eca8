"""The Split protocol and the in-memory split, the batch they yield, and DataSplits (the data stage's output).

A split is anything with `y`, `len()`, `batches(...)` and `num_batches(...)`: TensorSplit holds the images
in memory; the data stage adds splits that decode or resize per batch (data too big to hold). Every
consumer (training, validation, export calibration, the IC-KD bank) reads splits through `batches`,
never through an attribute only one kind has. Images are float32 in [0, 1]; normalisation with the
model's InputSpec happens per batch on the device.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from .spec import InputSpec


@dataclass(frozen=True)
class Batch:
    x: Tensor
    y: Tensor
    index: Tensor

    def to(self, device: torch.device, channels_last: bool = False) -> Batch:
        nb = device.type == "cuda"  # asynchronous only from pinned memory (see pin())
        x = self.x.to(device, non_blocking=nb)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return Batch(x, self.y.to(device, non_blocking=nb), self.index.to(device, non_blocking=nb))

    def pin(self) -> Batch:
        """Page-locked copies, so that to(cuda) neither blocks the host nor synchronises the stream."""
        return Batch(*(t if t.is_pinned() else t.pin_memory() for t in (self.x, self.y, self.index)))


@dataclass(frozen=True)
class TensorSplit:
    """One split held in memory: images (N, C, H, W) float32 in [0, 1], labels int64."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def batches(self, batch_size: int, *, shuffle: bool = False, drop_last: bool = False, seed: int = 0,
                epoch: int = 0, rank: int = 0, world: int = 1, skip: int = 0) -> Iterator[Batch]:
        """Index-sliced batches (no per-sample collate). `skip` leaves out the first batches of the same
        order (a run resumed mid-epoch)."""
        for idx in batch_indices(len(self), batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                                 epoch=epoch, rank=rank, world=world)[skip:]:
            yield Batch(self.x[idx], self.y[idx], idx)

    def num_batches(self, batch_size: int, drop_last: bool = False, world: int = 1) -> int:
        return count_batches(len(self), batch_size, drop_last, world)

    def take(self, index: Tensor) -> Tensor:
        """The images of samples `index` (RandomAccess)."""
        return self.x[index]


@runtime_checkable
class RandomAccess(Protocol):
    """Optional beside Split: the images of any samples by index, cheaply (the split is held in memory).
    TensorSplit and the uint8 ArraySplit offer it; a split decoded from image files per batch does not.
    Its one consumer is mixing partners in replayed views (train.mix with train.teacher_cache=views)."""

    def take(self, index: Tensor) -> Tensor: ...


@runtime_checkable
class Split(Protocol):
    """One split of a dataset; every split kind implements it and every consumer uses only this."""

    y: Tensor  # (N,) int64 labels, always in memory

    def __len__(self) -> int: ...

    def batches(self, batch_size: int, *, shuffle: bool = False, drop_last: bool = False, seed: int = 0,
                epoch: int = 0, rank: int = 0, world: int = 1, skip: int = 0) -> Iterator[Batch]: ...

    def num_batches(self, batch_size: int, drop_last: bool = False, world: int = 1) -> int: ...


def images(split: Split, n: int | None = None, batch_size: int = 512) -> Tensor:
    """The first `n` images of a split (all when None) as one (n, C, H, W) tensor, for any split kind."""
    out, have = [], 0
    for b in split.batches(batch_size):
        take = b.x if n is None else b.x[: n - have]
        out.append(take)
        have += len(take)
        if n is not None and have >= n:
            break
    return torch.cat(out) if out else torch.zeros(0)


def batch_indices(n: int, batch_size: int, *, shuffle: bool = False, drop_last: bool = False, seed: int = 0,
                  epoch: int = 0, rank: int = 0, world: int = 1) -> list[Tensor]:
    """The sample indices of each batch, shared by every kind of split. With world > 1 each rank takes a
    disjoint, equal-sized shard of the same permutation, as DistributedSampler does (padding by wrap-around)."""
    if shuffle:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=g)
    else:
        order = torch.arange(n)
    if world > 1:
        per_rank = -(-n // world)
        order = torch.cat([order, order[: per_rank * world - n]]) if per_rank * world > n else order
        order = order[rank::world]
    m = len(order)
    stop = m - (m % batch_size) if drop_last and m >= batch_size else m
    return [order[start:start + batch_size] for start in range(0, stop, batch_size)]


def count_batches(n: int, batch_size: int, drop_last: bool = False, world: int = 1) -> int:
    m = -(-n // world)
    if drop_last and m >= batch_size:
        return m // batch_size
    return -(-m // batch_size)


@dataclass(frozen=True)
class DataSplits:
    name: str
    train: Split
    val: Split
    test: Split
    classes: tuple[str, ...]
    shape: tuple[int, int, int]
    default_augment: str
    # the images' own (C, H, W) before they were converted to `shape` (the first image's, for files);
    # None where unknown. The teacher check names it when a teacher at another size scores at chance.
    native_shape: tuple[int, int, int] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fitted_input_spec(self) -> InputSpec:
        """Per-channel mean/std of the training images (for a teacher trained here), streamed over batches
        in float64 so splits that are not held in memory work too; std is the unbiased (n-1) estimate."""
        c = self.shape[0]
        s = torch.zeros(c, dtype=torch.float64)
        s2 = torch.zeros(c, dtype=torch.float64)
        n = 0
        for b in self.train.batches(512):
            x = b.x.double()
            s += x.sum(dim=(0, 2, 3))
            s2 += (x * x).sum(dim=(0, 2, 3))
            n += x.shape[0] * x.shape[2] * x.shape[3]
        mean = s / max(n, 1)
        std = ((s2 - n * mean * mean) / max(n - 1, 1)).clamp_min(0).sqrt().clamp_min(1e-6)
        return InputSpec(self.shape, tuple(round(m, 6) for m in mean.tolist()),
                         tuple(round(v, 6) for v in std.tolist()))


def normalize(x: Tensor, spec: InputSpec) -> Tensor:
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std
