"""Real dataset formats built tiny on disk: ImageFolder, CSV, CIFAR python batches, MNIST idx files. Pixel
values go through the transform exactly; splits are stratified and fixed; streaming equals in-memory;
bad input is one line."""

from __future__ import annotations

import gzip
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from kdcompress.cli import app
from kdcompress.core.errors import InputError, UsageError
from kdcompress.core.spec import InputSpec
from kdcompress.core.splits import TensorSplit
from kdcompress.data.files import conform_splits
from kdcompress.data.imagesplits import ArraySplit, FileSplit, conform, decode
from kdcompress.data.specs import align_classes, load_data

runner = CliRunner()
RGB8 = InputSpec((3, 8, 8), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
COLOURS = {"cat": (200, 10, 10), "dog": (10, 200, 10), "owl": (10, 10, 200)}


def _png(path, colour, size=(12, 10), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)


def _folder(root, per_class=10, classes=COLOURS):
    for c, col in classes.items():
        for i in range(per_class):
            _png(root / c / f"{i}.png", col)
    return root


def _all(split, bs=7):
    xs, ys, idx = [], [], []
    for b in split.batches(bs):
        xs.append(b.x)
        ys.append(b.y)
        idx.append(b.index)
    return torch.cat(xs), torch.cat(ys), torch.cat(idx)


# ----------------------------------------------------------------------------------------- transform


def test_transform_resize_cover_then_centre_crop_files_and_arrays_agree(tmp_path):
    img = np.zeros((8, 16, 3), np.uint8)
    img[:, 8:] = 255  # left half black, right half white
    Image.fromarray(img).save(tmp_path / "half.png")
    out = decode(str(tmp_path / "half.png"), (3, 8, 8))  # covers at 8x16 already: crop columns 4..11
    assert out.shape == (3, 8, 8)
    assert (out[:, :, :4] == 0).all() and (out[:, :, 4:] == 255).all()
    arr = conform(torch.from_numpy(img.transpose(2, 0, 1).copy())[None], (3, 8, 8))
    assert torch.equal(arr[0], torch.from_numpy(out).float() / 255)
    # a constant image stays exactly constant through any resize
    _png(tmp_path / "c.png", (51, 102, 204), size=(30, 20))
    assert (decode(str(tmp_path / "c.png"), (3, 8, 8)) == np.array([51, 102, 204]).reshape(3, 1, 1)).all()
    # grey -> RGB replicates; RGB -> grey is ITU-R 601 luma (PIL: 255*299/1000 -> 76)
    _png(tmp_path / "g.png", 100, mode="L")
    assert (decode(str(tmp_path / "g.png"), (3, 4, 4)) == 100).all()
    _png(tmp_path / "r.png", (255, 0, 0))
    assert (decode(str(tmp_path / "r.png"), (1, 4, 4)) == 76).all()
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0
    assert torch.allclose(conform(red, (1, 4, 4)), torch.full((1, 1, 4, 4), 0.299))


# ----------------------------------------------------------------------------------------- ImageFolder


def test_imagefolder_single_folder_split_is_stratified_fixed_and_exact(tmp_path):
    root = _folder(tmp_path / "pets")
    s = load_data(f"imagefolder:{root}", RGB8)
    assert s.classes == ("cat", "dog", "owl") and s.shape == (3, 8, 8) and s.name == "imagefolder:pets"
    assert (len(s.train), len(s.val), len(s.test)) == (20, 4, 6)  # sklearn rounds 24 * 0.1/0.8 up to 4
    for split in (s.train, s.val, s.test):
        counts = torch.bincount(split.y, minlength=3)
        assert int(counts.max() - counts.min()) <= 1  # stratified
        x, y, _ = _all(split)
        for k, c in enumerate(COLOURS):  # every pixel is the class colour: labels and images line up
            want = torch.tensor(COLOURS[c], dtype=torch.float32).view(3, 1, 1) / 255
            assert torch.allclose(x[y == k], want.expand(int((y == k).sum()), 3, 8, 8))
    again = load_data(f"imagefolder:{root}", RGB8)
    assert torch.equal(again.test.y, s.test.y)  # the split does not depend on anything but the data
    native = load_data(f"imagefolder:{root}")  # no teacher: the first image's shape
    assert native.shape == (3, 10, 12)


def test_imagefolder_with_split_folders_and_carved_val(tmp_path):
    root = tmp_path / "ds"
    _folder(root / "train", per_class=8)
    _folder(root / "test", per_class=2)
    s = load_data(f"imagefolder:{root}", RGB8)
    assert (len(s.train), len(s.val), len(s.test)) == (21, 3, 6)
    _folder(root / "val", per_class=1)
    s = load_data(f"imagefolder:{root}", RGB8)
    assert (len(s.train), len(s.val), len(s.test)) == (24, 3, 6)
    _png(root / "val" / "emu" / "0.png", (1, 2, 3))
    with pytest.raises(InputError, match="class 'emu' is not in"):
        load_data(f"imagefolder:{root}", RGB8)


def test_stream_mode_equals_memory_mode_with_workers(tmp_path):
    root = _folder(tmp_path / "pets")
    mem = load_data(f"imagefolder:{root},load=memory", RGB8)
    stream = load_data(f"imagefolder:{root},load=stream,workers=2", RGB8)
    assert isinstance(mem.train, TensorSplit) and isinstance(stream.train, FileSplit)
    for a, b in ((mem.train, stream.train), (mem.test, stream.test)):
        xa, ya, ia = _all(a)
        xb, yb, ib = _all(b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
    shuffled = [b.index for b in stream.train.batches(5, shuffle=True, drop_last=True, seed=3, epoch=2)]
    ref = [b.index for b in mem.train.batches(5, shuffle=True, drop_last=True, seed=3, epoch=2)]
    assert all(torch.equal(p, q) for p, q in zip(shuffled, ref, strict=True))
    assert stream.train.num_batches(5, drop_last=True) == len(shuffled) == 4
    assert stream.fitted_input_spec() == mem.fitted_input_spec()


# ----------------------------------------------------------------------------------------- CSV


def test_csv_relative_paths_labels_and_split_column(tmp_path):
    _folder(tmp_path / "img", per_class=10)
    rows = ["path,label"] + [f"img/{c}/{i}.png,{c}" for c in COLOURS for i in range(10)]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    s = load_data(f"csv:{tmp_path / 'list.csv'}", RGB8)
    assert s.classes == ("cat", "dog", "owl") and (len(s.train), len(s.val), len(s.test)) == (20, 4, 6)
    x, y, _ = _all(s.test)
    assert torch.allclose(x[y == 1][:, 1], torch.full((2, 8, 8), 200 / 255))
    sub = tmp_path / "sub"
    sub.mkdir()
    rows = ["Path,Label,Split"] + [f"../img/{c}/{i}.png,{k},{'test' if i < 3 else 'train'}"
                                   for k, c in enumerate(COLOURS) for i in range(10)]
    (sub / "s.csv").write_text("\n".join(rows) + "\n")
    s = load_data(f"csv:{sub / 's.csv'}", RGB8)
    assert s.classes == ("0", "1", "2") and (len(s.train), len(s.val), len(s.test)) == (18, 3, 9)


@pytest.mark.parametrize("text, needle", [
    ("file,label\na.png,x\n", "needs `path` and `label` columns"),
    ("path,label\n", "has no rows"),
    ("path,label\nmissing.png,x\n", "row 2: image not found"),
])
def test_csv_errors(tmp_path, text, needle):
    (tmp_path / "l.csv").write_text(text)
    with pytest.raises(InputError, match=needle):
        load_data(f"csv:{tmp_path / 'l.csv'}", RGB8)


# ----------------------------------------------------------------------------------------- CIFAR / MNIST


def _cifar10(root, n_batches=2, per=40, seed=0):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, n_batches + 1)] + ["test_batch"]:
        data = rng.integers(0, 256, (per, 3072), dtype=np.uint8)
        labels = [i % 10 for i in range(per)] if name != "test_batch" else [i % 10 for i in range(per)][::-1]
        with open(d / name, "wb") as f:  # the python version's layout: a pickled dict per batch
            pickle.dump({"batch_label": name, "labels": labels, "data": data,
                         "filenames": [f"{i}.png" for i in range(per)]}, f, protocol=2)
        batches[name] = (data, labels)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"], "num_vis": 3072}, f, protocol=2)
    return batches


def test_cifar10_python_batches_pixels_and_stream_equivalence(tmp_path):
    batches = _cifar10(tmp_path)
    s = load_data(f"cifar10:{tmp_path}")
    assert s.classes[3] == "cat" and s.shape == (3, 32, 32) and s.default_augment == "crop_flip"
    assert (len(s.train), len(s.val), len(s.test)) == (70, 10, 40)
    x, y, _ = _all(s.test)
    data, labels = batches["test_batch"]
    assert torch.equal(x, torch.from_numpy(data.reshape(-1, 3, 32, 32)).float() / 255)
    assert y.tolist() == labels
    big = load_data(f"cifar10:{tmp_path},load=stream", RGB8)  # resized per batch from the uint8 array
    assert isinstance(big.train, ArraySplit) and big.shape == (3, 8, 8)
    mem = load_data(f"cifar10:{tmp_path},load=memory", RGB8)
    assert torch.equal(_all(big.train)[0], _all(mem.train)[0])


def test_cifar100_and_mnist_idx(tmp_path):
    d = tmp_path / "c100" / "cifar-100-python"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", 40), ("test", 10)):
        with open(d / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "fine_labels": [i % 4 for i in range(n)], "coarse_labels": [0] * n}, f, protocol=2)
    with open(d / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)]}, f, protocol=2)
    s = load_data(f"cifar100:{tmp_path / 'c100'}")
    assert len(s.classes) == 100 and s.classes[2] == "f2" and len(s.test) == 10

    for kind, sub, gz in (("mnist", "MNIST", False), ("fashionmnist", "FashionMNIST", True)):
        raw = tmp_path / kind / sub / "raw"
        raw.mkdir(parents=True)
        imgs = {"train": rng.integers(0, 256, (80, 28, 28), dtype=np.uint8),
                "t10k": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)}
        for split, x in imgs.items():
            y = np.arange(len(x), dtype=np.uint8) % 10
            for stem, arr, code in ((f"{split}-images-idx3-ubyte", x, 3), (f"{split}-labels-idx1-ubyte", y, 1)):
                blob = bytes([0, 0, 8, code]) + b"".join(int(v).to_bytes(4, "big") for v in arr.shape) + arr.tobytes()
                if gz:
                    (raw / f"{stem}.gz").write_bytes(gzip.compress(blob))
                else:
                    (raw / stem).write_bytes(blob)
        s = load_data(f"{kind}:{tmp_path / kind}")
        assert s.shape == (1, 28, 28) and len(s.test) == 10 and (len(s.train), len(s.val)) == (70, 10)
        x, y, _ = _all(s.test)
        assert (torch.equal(x[:, 0], torch.from_numpy(imgs["t10k"]).float() / 255)
                and y.tolist() == [i % 10 for i in range(10)])
        assert s.classes[0] == ("0" if kind == "mnist" else "T-shirt/top")


def test_cifar_pickle_cannot_run_code(tmp_path):
    _cifar10(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": Evil(), "labels": []}, f, protocol=2)
    with pytest.raises(InputError, match="not allowed in a dataset file"):
        load_data(f"cifar10:{tmp_path}")
    assert not marker.exists()


def test_torchvision_root_without_files_needs_download_and_download_is_used(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="data.download=true"):
        load_data(f"cifar10:{tmp_path}")
    import torchvision

    calls = []

    class FakeCIFAR10:  # stands in for torchvision's downloader (no network here)
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            if not (tmp_path / "cifar-10-batches-py").exists():
                _cifar10(tmp_path)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    s = load_data(f"cifar10:{tmp_path}", download=True)
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)] and len(s.test) == 40


# ----------------------------------------------------------------------------------------- classes


def test_align_classes_count_names_and_reordering():
    s = conform_splits(load_data("synthetic:classes=3,size=8,n=60"), (1, 8, 8))
    with pytest.raises(InputError, match="teacher T has 4 classes but data"):
        align_classes(s, ("a", "b", "c", "d"), "T")
    assert align_classes(s, ("0", "1", "2"), "T") is s  # a teacher known only by count: count checked
    rev = align_classes(s, ("class_2", "class_1", "class_0"), "T")
    assert rev.classes == ("class_2", "class_1", "class_0") and torch.equal(rev.train.y, 2 - s.train.y)
    with pytest.raises(InputError, match="does not know the data's class 'class_0'"):
        align_classes(s, ("cat", "class_1", "class_2"), "T")


def test_in_memory_specs_are_conformed_to_the_teacher_shape():
    s = load_data("digits", RGB8)
    assert s.shape == (3, 8, 8) and s.train.x.shape[1:] == (3, 8, 8)
    assert torch.equal(s.train.x[:, 0], s.train.x[:, 2])  # grey replicated
    spec = s.fitted_input_spec()
    x = s.train.x
    assert np.allclose(spec.mean, x.mean(dim=(0, 2, 3)).tolist(), atol=1e-6)
    assert np.allclose(spec.std, x.std(dim=(0, 2, 3)).tolist(), atol=1e-6)


# ----------------------------------------------------------------------------------------- errors


def test_error_cases(tmp_path):
    with pytest.raises(InputError, match="image folder not found"):
        load_data(f"imagefolder:{tmp_path / 'nope'}", RGB8)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir(parents=True)
    with pytest.raises(InputError, match="no images found"):
        load_data(f"imagefolder:{tmp_path / 'empty'}", RGB8)
    _folder(tmp_path / "one", classes={"cat": (1, 2, 3)})
    with pytest.raises(InputError, match="one class only"):
        load_data(f"imagefolder:{tmp_path / 'one'}", RGB8)
    with pytest.raises(UsageError, match="needs a path"):
        load_data("imagefolder:", RGB8)
    with pytest.raises(UsageError, match="load must be"):
        load_data(f"imagefolder:{tmp_path},load=lazy", RGB8)
    bad = _folder(tmp_path / "bad")
    (bad / "dog" / "3.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot read image .*3.png"):
        load_data(f"imagefolder:{bad}", RGB8)
    stream = load_data(f"imagefolder:{bad},load=stream,workers=0", RGB8)  # found when its batch is decoded
    with pytest.raises(InputError, match="cannot read image .*3.png"):
        for _ in stream.train.batches(4):
            pass


def test_cli_distill_on_imagefolder_and_one_line_errors(tmp_path, tiny_teacher):
    # tiny_teacher: 1x8x8 grey input, classes class_0..2; the RGB 12x10 images are converted and resized
    cols = {"class_1": (10, 200, 10), "class_0": (200, 10, 10), "class_2": (10, 10, 200)}
    root = _folder(tmp_path / "img", classes=cols)
    r = runner.invoke(app, ["distill", "--teacher", str(tiny_teacher), "--data", f"imagefolder:{root}",
                            "--student", "tinycnn_w8", "--epochs", "1", "--set", "train.batch_size=8",
                            "--device", "cpu", "--out", str(tmp_path / "run"), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["data"]["sizes"] == {"train": 20, "val": 4, "test": 6}
    assert rep["data"]["classes"] == ["class_0", "class_1", "class_2"]
    for spec, code, needle in ((f"imagefolder:{tmp_path / 'missing'}", InputError.exit_code, "not found"),
                               (f"cifar10:{tmp_path}", InputError.exit_code, "--set data.download=true")):
        r = runner.invoke(app, ["distill", "--teacher", str(tiny_teacher), "--data", spec, "--student",
                                "tinycnn_w8", "--out", str(tmp_path / "r2")])
        assert r.exit_code == code, r.output
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("kdcompress: error:") and needle in lines[0]


def test_auto_load_streams_above_the_memory_limit(tmp_path, monkeypatch):
    from kdcompress.data import files as datasets

    root = _folder(tmp_path / "pets")
    assert isinstance(load_data(f"imagefolder:{root}", RGB8).train, TensorSplit)
    _cifar10(tmp_path / "c")
    # 30 images of 3x8x8 float32 = 23,040 bytes: a limit just below that switches to per-batch decoding
    monkeypatch.setattr(datasets, "MEMORY_LIMIT", 30 * 3 * 8 * 8 * 4 - 1)
    assert isinstance(load_data(f"imagefolder:{root}", RGB8).train, FileSplit)
    assert isinstance(load_data(f"cifar10:{tmp_path / 'c'}", RGB8).train, ArraySplit)
    monkeypatch.setattr(datasets, "MEMORY_LIMIT", 30 * 3 * 8 * 8 * 4)
    assert isinstance(load_data(f"imagefolder:{root}", RGB8).train, TensorSplit)
