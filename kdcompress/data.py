"""Dataset specs -> DataSplits, and the batch iterator the trainer uses.

Specs: `digits` (scikit-learn's bundled handwritten digits, 1,797 8x8 grey images, 10 classes),
`synthetic:classes=C,size=S,n=N[,channels=K][,seed=R]` (learnable random data for tests), and the
datasets of datasets.py: `imagefolder:/path`, `csv:/path/file.csv`, `cifar10:/root`, `cifar100:/root`,
`mnist:/root`, `fashionmnist:/root`.
Images are kept in [0, 1]; normalisation with the model's InputSpec happens per batch on the device.
Every Batch carries the dataset index of each sample within its split (the IC-KD bank is keyed by it).

A split is anything with `y`, `len()`, `batches(...)` and `num_batches(...)`: TensorSplit holds the images
in memory; datasets.py adds splits that decode or resize per batch, for data too big to hold.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

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
    train: TensorSplit  # or any split of datasets.py (same interface)
    val: TensorSplit
    test: TensorSplit
    classes: tuple[str, ...]
    shape: tuple[int, int, int]
    default_augment: str

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


def is_index_names(classes: tuple[str, ...]) -> bool:
    """"0".."K-1": classes known only by number (a teacher given --num-classes, MNIST, digits)."""
    return tuple(classes) == tuple(str(i) for i in range(len(classes)))


def align_classes(splits: DataSplits, teacher_classes: tuple[str, ...], teacher: str) -> DataSplits:
    """Check the data's classes against the teacher's: the count always, the names when both sides name
    them. The same names in another order are mapped onto the teacher's order (labels renumbered)."""
    t, d = tuple(teacher_classes), tuple(splits.classes)
    if len(t) != len(d):
        raise InputError(f"teacher {teacher} has {len(t)} classes but data '{splits.name}' has {len(d)}")
    if t == d or is_index_names(t) or is_index_names(d):
        return splits
    if set(t) != set(d):
        extra = [c for c in d if c not in set(t)]
        raise InputError(
            f"class names differ between teacher {teacher} and data '{splits.name}': the data has "
            f"{', '.join(repr(c) for c in extra[:3])}{' ...' if len(extra) > 3 else ''} that the teacher lacks "
            f"(teacher: {', '.join(repr(c) for c in t[:3])}{' ...' if len(t) > 3 else ''}); if they are the "
            "same classes, name the teacher's outputs with --classes")
    perm = torch.tensor([t.index(c) for c in d], dtype=torch.long)  # data label -> teacher label

    def remap(split):
        return replace(split, y=perm[split.y])

    return replace(splits, train=remap(splits.train), val=remap(splits.val), test=remap(splits.test), classes=t)


# --------------------------------------------------------------------------------------------- specs

DATASETS = ("digits", "synthetic", "imagefolder", "csv", "cifar10", "cifar100", "mnist", "fashionmnist")


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


def load_data(spec: str, input_spec: InputSpec | None = None, *, download: bool = False) -> DataSplits:
    """Load a dataset spec. With `input_spec` (the teacher's), images are converted to its channel count
    and resized + centre-cropped to its size; without it, each dataset keeps its own shape."""
    from . import datasets

    kind = spec.partition(":")[0]
    shape = tuple(input_spec.shape) if input_spec is not None else None
    if kind in datasets.KINDS:
        return datasets.load(spec, shape, download=download)  # type: ignore[arg-type]
    if kind not in DATASETS:
        raise UsageError(f"unknown data spec '{spec}'{did_you_mean(kind, list(DATASETS))}; "
                         "use digits, synthetic:classes=C,size=S,n=N, imagefolder:/path, csv:/path/file.csv, "
                         "cifar10:/root, cifar100:/root, mnist:/root or fashionmnist:/root")
    kind, opts = parse_spec(spec)
    if kind == "digits":
        if opts:
            raise UsageError(f"data spec 'digits' takes no options, got '{spec}'")
        splits = _digits()
    elif kind == "synthetic":
        splits = _synthetic(spec, opts)
    else:
        raise UsageError(f"unknown data spec '{spec}'{did_you_mean(kind, list(DATASETS))}; "
                         "use digits, synthetic:classes=C,size=S,n=N, imagefolder:/path, csv:/path/file.csv, "
                         "cifar10:/root, cifar100:/root, mnist:/root or fashionmnist:/root")
    if shape is not None and shape != splits.shape:
        splits = datasets.conform_splits(splits, shape)  # type: ignore[arg-type]
    return splits


def carve(idx: np.ndarray, y: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of `idx` (labels y[idx]) into (kept, carved off `fraction`) with the fixed seed."""
    from sklearn.model_selection import train_test_split

    try:
        keep, take = train_test_split(idx, test_size=fraction, stratify=y[idx], random_state=SPLIT_SEED)
    except ValueError as e:
        raise InputError(f"dataset too small to split into train/val/test: {e}") from None
    return keep, take


def split_indices(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified train/val/test indices in SPLIT_FRACTIONS, independent of the training seed."""
    f_train, f_val, f_test = SPLIT_FRACTIONS
    trval, test = carve(np.arange(len(y)), y, f_test)
    train, val = carve(trval, y, f_val / (f_train + f_val))
    return train, val, test


def _split(x: np.ndarray, y: np.ndarray) -> tuple[TensorSplit, TensorSplit, TensorSplit]:
    train, val, test = split_indices(y)

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
    # The draws come from a CPU generator (one checkpointable state whatever the device) and reach a GPU
    # through pinned memory without blocking: a plain .to(cuda) would synchronise the stream every step.
    oy = _to(torch.randint(0, 2 * pad + 1, (b,), generator=generator), dev)
    ox = _to(torch.randint(0, 2 * pad + 1, (b,), generator=generator), dev)
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = (oy[:, None] + torch.arange(h, device=dev)[None, :])[:, None, :, None].expand(b, c, h, w + 2 * pad)
    xp = xp.gather(2, rows)
    cols = (ox[:, None] + torch.arange(w, device=dev)[None, :])[:, None, None, :].expand(b, c, h, w)
    out = xp.gather(3, cols)
    if mode == "crop_flip":
        flip = _to(torch.rand((b,), generator=generator) < 0.5, dev).view(b, 1, 1, 1)
        out = torch.where(flip, out.flip(3), out)
    return out


def _to(t: Tensor, device: torch.device) -> Tensor:
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
