"""Bad class names, broken idx files and malformed recorded normalisation end in one line and the right
exit code (issue 24), never exit 70 or a silent acceptance. Every file is written here by plain
PyTorch, torch.onnx, gzip or the csv module, as a user's tools would write it."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from kdcompress.cli import app
from kdcompress.core.errors import InputError, UsageError

from .helpers import tree_hash

runner = CliRunner()
SYNTH = "synthetic:classes=3,size=8,n=90"  # classes class_0, class_1, class_2; 1x8x8




def one_error_line(r, code: int) -> str:
    assert r.exit_code == code, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("kdcompress: error:"), r.stderr
    return lines[0]


class Net(nn.Module):
    def __init__(self, classes: int = 3, channels: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.fc = nn.Linear(4, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def zoo_weights() -> dict[str, torch.Tensor]:
    """A state_dict of the zoo's tinycnn_w8 layout for 3 classes of 1x8x8 images, as torch.save writes it."""
    from kdcompress.students.tiny import TinyCNN

    torch.manual_seed(0)
    return TinyCNN(3, in_channels=1, width=8).state_dict()


def _inspect(teacher: Path, *extra: str):
    return runner.invoke(app, ["teacher", "inspect", str(teacher), "--json", *extra])


# ------------------------------------------------------------------------------------------ class names


@pytest.fixture
def scripted(tmp_path) -> Path:
    """A TorchScript teacher (records nothing: every flag is the user's)."""
    torch.manual_seed(0)
    p = tmp_path / "net.pt"
    torch.jit.script(Net().eval()).save(str(p))
    return p


SPEC = ["--input-shape", "1,8,8", "--mean", "0.5", "--std", "0.25"]


def test_classes_file_with_a_bom_is_read_without_it(scripted, tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("class_0\nclass_1\nclass_2\n", encoding="utf-8-sig")  # Notepad's "UTF-8 with BOM"
    assert f.read_bytes()[:3] == b"\xef\xbb\xbf"
    r = _inspect(scripted, "--classes", str(f), *SPEC)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["classes"] == ["class_0", "class_1", "class_2"]


def test_duplicate_class_names_flag_is_2_file_is_3(scripted, tmp_path):
    line = one_error_line(_inspect(scripted, "--classes", "a,b,a", *SPEC), UsageError.exit_code)
    assert "'a' twice" in line
    f = tmp_path / "classes.txt"
    f.write_text("a\nb\na\n")
    line = one_error_line(_inspect(scripted, "--classes", str(f), *SPEC), InputError.exit_code)
    assert str(f) in line and "'a' twice" in line and "lines 1 and 3" in line
    f.write_bytes(b"\xff\xfe\x00a\n")  # UTF-16 from another editor: not UTF-8 text
    line = one_error_line(_inspect(scripted, "--classes", str(f), *SPEC), InputError.exit_code)
    assert str(f) in line and "UTF-8" in line


def test_duplicate_class_names_in_a_teacher_file_are_refused(tmp_path):
    """A checkpoint dict whose classes name one class twice: refused at load (exit 3) naming the file and
    --classes; the flag overrides it."""
    torch.manual_seed(0)
    ck = tmp_path / "ck.pth"
    torch.save({"state_dict": zoo_weights(), "classes": ["cat", "dog", "cat"], "input_spec":
                {"shape": [1, 8, 8], "mean": [0.5], "std": [0.25]}}, ck)
    to_idx = tmp_path / "to_idx.pth"
    torch.save({"state_dict": zoo_weights(), "class_to_idx": {"cat": 0, "dog": 0, "cow": 2}}, to_idx)
    arch = ["--teacher-arch", "zoo:tinycnn_w8"]
    for f, needle in ((ck, "'cat' twice"), (to_idx, "indices [0, 0, 2]")):
        line = one_error_line(_inspect(f, *arch, *SPEC), InputError.exit_code)
        assert str(f) in line and needle in line and "--classes" in line
    r = _inspect(ck, *arch, *SPEC, "--classes", "cat,dog,cow")  # the flag names the outputs instead
    assert r.exit_code == 0 and json.loads(r.stdout)["classes"] == ["cat", "dog", "cow"], r.output
    # the same names from an ONNX file's metadata: refused where its outputs are matched by name
    onnx_path = tmp_path / "dup.onnx"
    torch.onnx.export(Net().eval(), (torch.zeros(1, 1, 8, 8),), str(onnx_path), dynamo=False,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    import onnx

    m = onnx.load(str(onnx_path))
    for k, v in (("classes", json.dumps(["class_0", "class_1", "class_0"])), ("mean", "[0.5]"), ("std", "[0.25]")):
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(onnx_path))
    r = runner.invoke(app, ["validate", "--onnx", str(onnx_path), "--data", SYNTH])
    line = one_error_line(r, InputError.exit_code)
    assert "'class_0' twice" in line


def _png(p: Path, v: int) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), v, np.uint8)).save(p)
    return p


def test_csv_listing_an_image_under_two_labels_or_two_label_columns_is_refused(tmp_path):
    for k in range(2):
        for j in range(6):
            _png(tmp_path / f"c{k}" / f"{j}.png", 40 + 100 * k + j)
    rows = [f"c{k}/{j}.png,c{k}" for k in range(2) for j in range(6)]
    bad = tmp_path / "two_labels.csv"
    bad.write_text("path,label\n" + "\n".join(rows + ["c0/3.png,c1"]) + "\n")
    cols = tmp_path / "two_cols.csv"
    cols.write_text("path,label,Label\n" + "\n".join(f"{r},x" for r in rows) + "\n")
    for csv_file, needle in ((bad, "row 14 labels 3.png 'c1' but row 5 labels it 'c0'"),
                             (cols, "two `label` columns")):
        before = tree_hash(tmp_path)
        r = runner.invoke(app, ["teacher", "train", "--data", f"csv:{csv_file}", "--arch", "tinycnn_w8",
                                "--out", str(tmp_path / "t.pt"), "--epochs", "1", "--device", "cpu"])
        line = one_error_line(r, InputError.exit_code)
        assert str(csv_file) in line and needle in line
        assert tree_hash(tmp_path) == before


# ------------------------------------------------------------------------------------------ idx files


def _idx(dims: tuple[int, ...], body: bytes | None = None) -> bytes:
    head = bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
    return head + (bytes(int(np.prod(dims))) if body is None else body)


def _mnist_root(root: Path, **replace: bytes) -> Path:
    rng = np.random.default_rng(0)
    files = {"train-images-idx3-ubyte": _idx((200, 8, 8), rng.integers(0, 256, 200 * 64, dtype=np.uint8).tobytes()),
             "train-labels-idx1-ubyte": _idx((200,), (np.arange(200) % 10).astype(np.uint8).tobytes()),
             "t10k-images-idx3-ubyte": _idx((50, 8, 8)),
             "t10k-labels-idx1-ubyte": _idx((50,), (np.arange(50) % 10).astype(np.uint8).tobytes())}
    root.mkdir(parents=True)
    for name, data in files.items():
        if name + ".gz" in replace:
            (root / (name + ".gz")).write_bytes(replace[name + ".gz"])
        else:
            (root / name).write_bytes(replace.get(name, data))
    return root


BAD_IDX = {
    "empty file": ("train-labels-idx1-ubyte", b"", "is empty"),
    "no items": ("t10k-labels-idx1-ubyte", _idx((0,)), "holds no items"),
    "truncated": ("train-images-idx3-ubyte", _idx((300, 8, 8), bytes(200 * 64)), "is truncated"),
    "overflowing": ("train-labels-idx1-ubyte", _idx((100,), bytes(200)), "longer than its header says"),
    "wrapping header": ("train-images-idx3-ubyte", _idx((2**32 - 1,) * 3, bytes(64)), "is truncated"),
    "255 dimensions": ("train-images-idx3-ubyte", bytes([0, 0, 8, 255]) + bytes(8), "header is broken"),
    "cut header": ("train-images-idx3-ubyte", bytes([0, 0, 8, 3, 0, 0, 0, 200, 0, 0]), "header is broken"),
    "empty gzip": ("train-labels-idx1-ubyte.gz", gzip.compress(b""), "is empty"),
    "gzip of no items": ("t10k-images-idx3-ubyte.gz", gzip.compress(_idx((0, 8, 8))), "holds no items"),
    "corrupt gzip": ("train-labels-idx1-ubyte.gz", gzip.compress(_idx((200,), bytes(200)))[:12] + b"\xff" * 40,
                     "cannot read"),
}


@pytest.mark.parametrize("case", sorted(BAD_IDX))
def test_broken_mnist_idx_file_is_refused_naming_it(tmp_path, case):
    name, data, needle = BAD_IDX[case]
    root = _mnist_root(tmp_path / "mnist", **{name: data})
    before = tree_hash(tmp_path)
    r = runner.invoke(app, ["teacher", "train", "--data", f"mnist:{root}", "--arch", "tinycnn_w8",
                            "--out", str(tmp_path / "t.pt"), "--epochs", "1", "--device", "cpu"])
    line = one_error_line(r, InputError.exit_code)
    assert str(root / name) in line and needle in line
    assert tree_hash(tmp_path) == before


def test_a_good_mnist_root_still_loads(tmp_path):
    from kdcompress.data import load_data

    s = load_data(f"mnist:{_mnist_root(tmp_path / 'mnist')}")
    assert s.shape == (1, 8, 8) and len(s.test) == 50


# ------------------------------------------------------------------------------ recorded normalisation


BAD_MEAN = {"a JSON string": "0.5", "a list of strings": ["a", "b"], "a bool": True, "an empty list": []}


@pytest.mark.parametrize("case", sorted(BAD_MEAN))
def test_malformed_mean_in_a_checkpoint_is_refused_naming_field_and_file(tmp_path, case):
    torch.manual_seed(0)
    ck = tmp_path / "ck.pth"
    torch.save({"state_dict": zoo_weights(), "classes": ["class_0", "class_1", "class_2"],
                "input_spec": {"shape": [1, 8, 8], "mean": BAD_MEAN[case], "std": [0.25]}}, ck)
    line = one_error_line(_inspect(ck, "--teacher-arch", "zoo:tinycnn_w8"), InputError.exit_code)
    assert str(ck) in line and "malformed mean" in line and "--mean" in line
    r = _inspect(ck, "--teacher-arch", "zoo:tinycnn_w8", "--mean", "0.5")  # the flag wins over the file
    assert r.exit_code == 0, r.output


def test_malformed_mean_in_a_kdcompress_checkpoint_is_refused_not_read_per_character(tmp_path, tiny_teacher):
    obj = torch.load(tiny_teacher, weights_only=True)
    obj["input_spec"]["mean"] = "5"  # iterated character by character, this string was read as (5.0,)
    bad = tmp_path / "bad.pt"
    torch.save(obj, bad)
    line = one_error_line(_inspect(bad), InputError.exit_code)
    assert str(bad) in line and "mean is '5'" in line


@pytest.mark.parametrize("value", ['"0.5"', "[a,b]", '["0.5"]'])
def test_malformed_mean_in_onnx_metadata_is_refused_by_teacher_and_validate(tmp_path, value):
    import onnx

    p = tmp_path / "m.onnx"
    torch.onnx.export(Net().eval(), (torch.zeros(1, 1, 8, 8),), str(p), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    m = onnx.load(str(p))
    for k, v in (("mean", value), ("std", "[0.25]"), ("classes", json.dumps(["class_0", "class_1", "class_2"]))):
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(p))
    line = one_error_line(_inspect(p), InputError.exit_code)
    assert str(p) in line and "mean" in line and "--mean" in line
    line = one_error_line(runner.invoke(app, ["validate", "--onnx", str(p), "--data", SYNTH]), InputError.exit_code)
    assert str(p) in line and "'mean'" in line and "--mean" in line
    r = runner.invoke(app, ["validate", "--onnx", str(p), "--data", SYNTH, "--mean", "0.5", "--json"])
    assert r.exit_code == 0, r.output  # the flag wins over the file


# ------------------------------------------------------------------------------------------ validate


class Brightness(nn.Module):
    """A fixed 3-channel classifier: class 'bright' when the mean over all channels is above 0.5."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))[:, None] - 0.5
        return torch.cat([m, -m], dim=1) * 10  # output 0 is class "bright"


def test_validate_converts_grey_and_16_bit_images_for_an_rgb_model_as_distill_does(tmp_path):
    rng = np.random.default_rng(0)
    for name, level in (("bright", 215), ("dark", 40)):  # class order: bright, dark
        d = tmp_path / "imgs" / name
        d.mkdir(parents=True)
        for j in range(20):
            a = np.clip(level + rng.normal(0, 10, (8, 8)), 0, 255)
            if j % 2:  # 16-bit grey ('I;16'), as scanners and medical images come
                Image.fromarray((a * 257).astype(np.uint16)).save(d / f"{j}.png")
            else:
                Image.fromarray(a.astype(np.uint8), mode="L").save(d / f"{j}.png")
    with Image.open(tmp_path / "imgs" / "dark" / "1.png") as im:
        assert im.mode.startswith("I")
    p = tmp_path / "rgb.onnx"
    torch.onnx.export(Brightness(), (torch.zeros(2, 3, 8, 8),), str(p), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    r = runner.invoke(app, ["validate", "--onnx", str(p), "--data", f"imagefolder:{tmp_path / 'imgs'}",
                            "--mean", "0", "--std", "1", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)["variants"][0]
    # the model puts 'bright' (output 0) on bright images and 'dark' (output 1) on dark ones: perfect only
    # when every grey and 16-bit image reached it as three equal channels in [0, 1]
    assert rep["accuracy"] == 1.0 and rep["per_class_accuracy"] == {"bright": 1.0, "dark": 1.0}


def test_validate_resizes_images_to_a_model_of_another_size_as_distill_does(tmp_path, monkeypatch):
    """A plain torch.onnx file taking 3x12x12, data of 8x8 grey images: validate feeds the model what distill
    would (grey -> RGB, resized to 12x12), says so in one warning, and scores it; before, it refused. The
    folder's images are decoded once, at the model's shape (its own shape is read from its first image)."""
    from kdcompress.data import files

    shapes = []
    real_split = files.file_split
    monkeypatch.setattr(files, "file_split", lambda paths, y, shape, *a, **k: shapes.append(tuple(shape))
                        or real_split(paths, y, shape, *a, **k))
    rng = np.random.default_rng(1)
    for name, level in (("bright", 215), ("dark", 40)):
        d = tmp_path / "imgs" / name
        d.mkdir(parents=True)
        for j in range(12):
            a = np.clip(level + rng.normal(0, 10, (8, 8)), 0, 255)
            Image.fromarray(a.astype(np.uint8), mode="L").save(d / f"{j}.png")
    p = tmp_path / "big.onnx"
    torch.onnx.export(Brightness(), (torch.zeros(2, 3, 12, 12),), str(p), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    r = runner.invoke(app, ["validate", "--onnx", str(p), "--data", f"imagefolder:{tmp_path / 'imgs'}",
                            "--mean", "0", "--std", "1"])
    assert r.exit_code == 0, r.output
    assert "8x8 images are resized and centre-cropped to the model's 12x12" in " ".join(r.output.split())
    assert shapes == [(3, 12, 12)] * 3  # train, val, test: each read once, converted
    r = runner.invoke(app, ["validate", "--onnx", str(p), "--data", f"imagefolder:{tmp_path / 'imgs'}",
                            "--mean", "0", "--std", "1", "--json"])
    rep = json.loads(r.stdout)
    assert rep["variants"][0]["accuracy"] == 1.0 and rep["data"]["shape"] == [3, 12, 12], rep["data"]


class FeaturesThenLogits(nn.Module):
    """Two outputs, as a classifier exported with its embedding: features (N, 5) first, then Brightness's logits."""

    def forward(self, x):
        return x.flatten(1)[:, :5] * 7, Brightness()(x)


def _bright_dark(root: Path, n: int = 6) -> str:
    rng = np.random.default_rng(2)
    for name, level in (("bright", 215), ("dark", 40)):
        (root / name).mkdir(parents=True)
        for j in range(n):
            a = np.clip(level + rng.normal(0, 10, (8, 8)), 0, 255)
            Image.fromarray(a.astype(np.uint8), mode="L").save(root / name / f"{j}.png")
    return f"imagefolder:{root}"


def test_validate_reads_the_logits_output_of_a_graph_with_several(tmp_path):
    """A plain torch.onnx file whose first output is an embedding: validate reads the (batch, 2) output for
    the data's two classes, where reading the first scored features as logits; what cannot be told apart is
    refused in one line."""
    data = _bright_dark(tmp_path / "imgs")
    p = tmp_path / "two.onnx"
    torch.onnx.export(FeaturesThenLogits(), (torch.zeros(2, 3, 8, 8),), str(p), dynamo=False, input_names=["x"],
                      output_names=["emb", "logits"], dynamic_axes={"x": {0: "n"}, "emb": {0: "n"}, "logits": {0: "n"}})
    r = runner.invoke(app, ["validate", "--onnx", str(p), "--data", data, "--mean", "0", "--std", "1", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["variants"][0]["accuracy"] == 1.0
    # predict has no data to count classes by, and the file names none: two rank-2 outputs are refused
    r = runner.invoke(app, ["predict", str(p), str(tmp_path / "imgs" / "dark"), "--mean", "0", "--std", "1"])
    assert r.exit_code == InputError.exit_code and "'emb'" in r.output and "'logits'" in r.output, r.output
    # the class count cannot tell them apart: refused in one line naming the outputs
    p3 = tmp_path / "three.onnx"
    torch.onnx.export(FeaturesThenLogits(), (torch.zeros(2, 3, 8, 8),), str(p3), dynamo=False, input_names=["x"],
                      output_names=["emb", "logits"])  # static (2, 5) and (2, 2): a 3-class dataset fits neither
    three = tmp_path / "three"
    _bright_dark(three, 12)
    (three / "grey").mkdir()
    for j in range(12):
        Image.fromarray(np.full((8, 8), 128, np.uint8), mode="L").save(three / "grey" / f"{j}.png")
    r = runner.invoke(app, ["validate", "--onnx", str(p3), "--data", f"imagefolder:{three}", "--mean", "0",
                            "--std", "1"])
    assert r.exit_code == InputError.exit_code, r.output
    line = " ".join(r.output.split())
    assert "has 2 outputs ('emb' [2, 5], 'logits' [2, 2])" in line and "(batch, 3)" in line, line
