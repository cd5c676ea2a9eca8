"""Dataset specs -> DataSplits of in-memory image tensors, and the batch iterator the trainer uses.

Specs: `digits` (scikit-learn's bundled handwritten digits, 1,797 8x8 grey images, 10 classes) and
`synthetic:classes=C,size=S,n=N[,channels=K][,seed=R]` (learnable random data for tests).
Images are kept in [0, 1]; normalisation with the model's InputSpec happens per batch on the device.
Every Batch carries the dataset index of each sample within its split (the IC-KD bank is keyed by it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .config import InputSpec
from .errors import InputError, UsageError
from .registry import did_you_mean

SPLIT_SEED = 0  # the train/val/test split never depends on the training seed
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)


@dataclass(frozen=True)
class Batch:
    x: Tensor
    y: Tensor
    index: Tensor

    def to(self, device: torch.device, channels_last: bool = False) -> Batch:
        nb = device.type == "cuda"
        x = self.x.to(device, non_blocking=nb)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return Batch(x, self.y.to(device, non_blocking=nb), self.index.to(device, non_blocking=nb))


@dataclass(frozen=True)
class TensorSplit:
    """One split held in memory: images (N, C, H, W) float32 in [0, 1], labels int64."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def batches(self, batch_size: int, *, shuffle: bool = False, drop_last: bool = False, seed: int = 0,
                epoch: int = 0, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """Index-sliced batches (no per-sample collate). With world > 1 each rank takes a disjoint,
        equal-sized shard of the same permutation, as DistributedSampler does (padding by wrap-around)."""
        n = len(self)
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
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size]
            yield Batch(self.x[idx], self.y[idx], idx)

    def num_batches(self, batch_size: int, drop_last: bool = False, world: int = 1) -> int:
        m = -(-len(self) // world)
        if drop_last and m >= batch_size:
            return m // batch_size
        return -(-m // batch_size)


@dataclass(frozen=True)
class DataSplits:
    name: str
    train: TensorSplit
    val: TensorSplit
    test: TensorSplit
    classes: tuple[str, ...]
    shape: tuple[int, int, int]
    default_augment: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fitted_input_spec(self) -> InputSpec:
        """Per-channel mean/std of the training images (for a teacher trained here)."""
        x = self.train.x
        mean = x.mean(dim=(0, 2, 3)).tolist()
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()
        return InputSpec(self.shape, tuple(round(m, 6) for m in mean), tuple(round(s, 6) for s in std))


# --------------------------------------------------------------------------------------------- specs

DATASETS = ("digits", "synthetic")


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    kind, _, rest = spec.partition(":")
    opts: dict[str, str] = {}
    if rest:
        for item in rest.split(","):
            k, eq, v = item.partition("=")
            if not eq:
                raise UsageError(f"data spec '{spec}': expected key=value, got '{item}'")
            opts[k.strip()] = v.strip()
    return kind, opts


def load_data(spec: str) -> DataSplits:
    kind, opts = parse_spec(spec)
    if kind == "digits":
        if opts:
            raise UsageError(f"data spec 'digits' takes no options, got '{spec}'")
        return _digits()
    if kind == "synthetic":
        return _synthetic(spec, opts)
    raise UsageError(f"unknown data spec '{spec}'{did_you_mean(kind, list(DATASETS))}; "
                     "use digits or synthetic:classes=C,size=S,n=N")


def _split(x: np.ndarray, y: np.ndarray) -> tuple[TensorSplit, TensorSplit, TensorSplit]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    f_train, f_val, f_test = SPLIT_FRACTIONS
    try:
        trval, test = train_test_split(idx, test_size=f_test, stratify=y, random_state=SPLIT_SEED)
        train, val = train_test_split(trval, test_size=f_val / (f_train + f_val), stratify=y[trval],
                                      random_state=SPLIT_SEED)
    except ValueError as e:
        raise InputError(f"dataset too small to split into train/val/test: {e}") from None

    def mk(i: np.ndarray) -> TensorSplit:
        return TensorSplit(torch.from_numpy(x[i]).float().contiguous(), torch.from_numpy(y[i]).long())

    return mk(train), mk(val), mk(test)


def _digits() -> DataSplits:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    tr, va, te = _split(x, y)
    return DataSplits("digits", tr, va, te, tuple(str(c) for c in d.target_names), (1, 8, 8), "shift")


def _int_opt(spec: str, opts: dict[str, str], key: str, default: int, lo: int) -> int:
    try:
        v = int(opts.get(key, default))
    except ValueError:
        raise UsageError(f"data spec '{spec}': {key} must be an integer") from None
    if v < lo:
        raise UsageError(f"data spec '{spec}': {key} must be >= {lo}")
    return v


def _synthetic(spec: str, opts: dict[str, str]) -> DataSplits:
    known = {"classes", "size", "n", "channels", "seed"}
    for k in opts:
        if k not in known:
            raise UsageError(f"data spec '{spec}': unknown option '{k}'{did_you_mean(k, sorted(known))}")
    c = _int_opt(spec, opts, "classes", 4, 2)
    size = _int_opt(spec, opts, "size", 8, 4)
    n = _int_opt(spec, opts, "n", 200, 5 * c)
    ch = _int_opt(spec, opts, "channels", 1, 1)
    seed = _int_opt(spec, opts, "seed", 0, 0)
    rng = np.random.default_rng(seed)
    # Each class is a smooth random prototype; samples are prototypes plus noise, so models can learn them.
    protos = rng.random((c, ch, 4, 4)).astype(np.float32)
    protos = F.interpolate(torch.from_numpy(protos), size=(size, size), mode="bilinear",
                           align_corners=False).numpy()
    y = np.arange(n) % c
    rng.shuffle(y)
    x = np.clip(protos[y] + 0.15 * rng.standard_normal((n, ch, size, size)).astype(np.float32), 0, 1)
    tr, va, te = _split(x.astype(np.float32), y.astype(np.int64))
    return DataSplits(f"synthetic-{c}c-{size}px", tr, va, te, tuple(f"class_{i}" for i in range(c)),
                      (ch, size, size), "none")


# --------------------------------------------------------------------------------------------- transforms


def normalize(x: Tensor, spec: InputSpec) -> Tensor:
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def augment(x: Tensor, mode: str, generator: torch.Generator | None = None) -> Tensor:
    """Batch-wise random translation (zero padding, then a random crop back to size) and optional
    horizontal flip, vectorised with gathers so it runs on the GPU too. `shift`: pad 1 (small images such
    as digits; no flip, digits are not mirror-symmetric). `crop_flip`: pad 4 + flip (CIFAR recipe)."""
    if mode == "none":
        return x
    b, c, h, w = x.shape
    pad = 1 if mode == "shift" else 4
    dev = x.device
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(dev)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(dev)
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = (oy[:, None] + torch.arange(h, device=dev)[None, :])[:, None, :, None].expand(b, c, h, w + 2 * pad)
    xp = xp.gather(2, rows)
    cols = (ox[:, None] + torch.arange(w, device=dev)[None, :])[:, None, None, :].expand(b, c, h, w)
    out = xp.gather(3, cols)
    if mode == "crop_flip":
        flip = (torch.rand((b,), generator=generator) < 0.5).to(dev).view(b, 1, 1, 1)
        out = torch.where(flip, out.flip(3), out)
    return out
