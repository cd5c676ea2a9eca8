"""Checks on the teacher before training and on streamed data: a chance-level teacher is refused (exit 3,
--out untouched) unless --allow-weak-teacher; an NHWC ONNX teacher (plain torch.onnx.export) is read as
3 channels and fed transposed by distill and `teacher inspect`; `load=stream` distils to exactly the
accuracy `load=memory` gives. The ImageFolder is written by the test with PIL."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from kdcompress.cli import app
from kdcompress.core.config import TeacherOptions
from kdcompress.core.errors import InputError
from kdcompress.teacher import load_teacher

runner = CliRunner()
COLOURS = ((200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30))


def write_folder(root: Path, per_class: int = 25, size: int = 8) -> Path:
    rng = np.random.default_rng(3)
    for k, c in enumerate(COLOURS):
        d = root / f"c{k}"
        d.mkdir(parents=True)
        for j in range(per_class):
            a = np.clip(np.array(c)[None, None] + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(d / f"{j}.png")
    return root


class NhwcNet(nn.Module):
    """A classifier whose graph input is (N, H, W, C), as TensorFlow-born models are."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = torch.relu(self.conv(x.permute(0, 3, 1, 2)))
        return self.fc(x.mean(dim=(2, 3)))


def export_nhwc(path: Path, seed: int = 0) -> NhwcNet:
    torch.manual_seed(seed)
    m = NhwcNet().eval()
    torch.onnx.export(m, (torch.zeros(2, 8, 8, 3),), str(path), dynamo=False, input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}}, opset_version=17)
    return m


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("folder") / "imgs")


def _distill(teacher: Path, data: str, out: Path, *extra: str, epochs: int = 1):
    return runner.invoke(app, ["distill", "--teacher", str(teacher), "--data", data, "--student", "tinycnn_w8",
                               "--epochs", str(epochs), "--set", "train.batch_size=16", "--device", "cpu",
                               "--out", str(out), "--json", "--mean", "0", "--std", "1", *extra],
                         catch_exceptions=False)


def test_nhwc_onnx_teacher_is_read_as_three_channels_and_fed_transposed(tmp_path):
    m = export_nhwc(tmp_path / "nhwc.onnx")
    t = load_teacher(tmp_path / "nhwc.onnx", options=TeacherOptions(mean=(0.0,), std=(1.0,)))
    assert t.input_spec.shape == (3, 8, 8) and t.num_classes == 4
    x = torch.rand(5, 3, 8, 8)  # the (N, C, H, W) batch every stage hands a teacher
    with torch.no_grad():
        ref = m(x.permute(0, 2, 3, 1))
    assert torch.allclose(t.outputs(x).logits, ref, atol=1e-5)
    r = runner.invoke(app, ["teacher", "inspect", str(tmp_path / "nhwc.onnx"), "--mean", "0", "--std", "1", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["input_spec"]["shape"] == [3, 8, 8] and info["layout"] == "NHWC" and info["latency_ms"]["p50"] > 0


def test_chance_level_teacher_is_refused_and_allowed_with_the_flag(tmp_path, folder):
    """A random-weight NHWC ONNX teacher: no better than chance on the validation split."""
    export_nhwc(tmp_path / "random.onnx")
    out = tmp_path / "run"
    r = _distill(tmp_path / "random.onnx", f"imagefolder:{folder}", out, "--classes", "c0,c1,c2,c3")
    assert r.exit_code == InputError.exit_code, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("kdcompress: error:") and "no better than chance" in lines[0]
    for needle in ("--classes", "--mean/--std", "--teacher-arch", "--set teacher.allow_weak=true"):
        assert needle in lines[0]
    assert not out.exists()  # refused before anything was written
    r = _distill(tmp_path / "random.onnx", f"imagefolder:{folder}", out, "--allow-weak-teacher")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["teacher"]["format"] == "onnx" and 0.0 <= rep["teacher"]["val_accuracy"] <= 0.5
    assert "distilling anyway" in r.stderr


def test_teacher_strength_rule(folder):
    """The rule itself: p0 = max(1/C, largest class share), refuse at or below p0 + 3 sqrt(p0 (1-p0) / n)."""
    from kdcompress.data import load_data
    from kdcompress.teacher import teacher_strength

    class Fixed(nn.Module):  # right on a chosen share of the validation images, wrong on the rest
        def __init__(self, labels, right):
            super().__init__()
            self.labels, self.right = labels, right

        def forward(self, x):
            n = len(x)
            y = self.labels[:n].clone()
            y[self.right:] = (y[self.right:] + 1) % 4
            return nn.functional.one_hot(y, 4).float()

    splits = load_data(f"imagefolder:{folder}")
    n = len(splits.val)
    p0 = max(0.25, float(torch.bincount(splits.val.y).max()) / n)
    bar = p0 + 3 * np.sqrt(p0 * (1 - p0) / n)
    from kdcompress.core.spec import InputSpec
    from kdcompress.teacher.model import Teacher

    def teacher(right: int) -> Teacher:
        return Teacher(model=Fixed(splits.val.y, right), arch="fixed", classes=splits.classes,
                       input_spec=InputSpec((3, 8, 8), (0.0,) * 3, (1.0,) * 3), embed_dim=None, params=0,
                       path=Path("fixed"), sha256="0" * 64)

    just_below = int(np.floor(bar * n))
    with pytest.raises(InputError, match="no better than chance"):
        teacher_strength(teacher(just_below), splits, torch.device("cpu"), allow_weak=False, warn=print)
    acc = teacher_strength(teacher(just_below + 1), splits, torch.device("cpu"), allow_weak=False, warn=print)
    assert acc == pytest.approx((just_below + 1) / n)


def test_streamed_imagefolder_distils_to_the_same_accuracy_as_in_memory(tmp_path, folder):
    export_nhwc(tmp_path / "t.onnx")
    reps = {}
    for load in ("memory", "stream"):
        r = _distill(tmp_path / "t.onnx", f"imagefolder:{folder},load={load},workers=0", tmp_path / load,
                     "--allow-weak-teacher", epochs=2)
        assert r.exit_code == 0, r.output
        reps[load] = json.loads(r.stdout)
    a, b = reps["memory"], reps["stream"]
    assert a["student"]["accuracy"] == b["student"]["accuracy"]
    assert a["student"]["val_accuracy_best"] == b["student"]["val_accuracy_best"]
    assert a["teacher"]["accuracy"] == b["teacher"]["accuracy"]
    assert a["training"]["history"] == b["training"]["history"] or _same_history(a, b)


def _same_history(a: dict, b: dict) -> bool:
    """The per-epoch numbers (losses, val accuracy), leaving out wall-clock times."""
    def strip(h):
        return [{k: v for k, v in e.items() if "time" not in k and "second" not in k} for e in h]
    return strip(a["training"]["history"]) == strip(b["training"]["history"])
