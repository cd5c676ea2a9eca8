"""`kdcompress distill` with the feature presets (nd, ickd, dkd_nd) on teachers saved the way people save
them: a torchvision resnet18 state_dict, a scripted (torch.jit.script) torchvision resnet18, and a timm
model as a state_dict and as safetensors, each on a small ImageFolder of PNGs written here with PIL.
Each run must finish with exit 0 and a report.json (issue 10: nd/ickd/dkd_nd died with exit 70 on these)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kdcompress.cli import app

runner = CliRunner()
CLASSES = ("ant", "bee", "cat")
INPUT = ["--input-shape", "3,32,32", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes x 12 RGB PNGs of 32x32: each class a different dominant colour plus noise."""
    from PIL import Image

    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(12):
            img = rng.integers(0, 90, (32, 32, 3), dtype=np.uint8)
            img[..., c] += 150
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


def _tv_resnet18():
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=len(CLASSES)).eval()


@pytest.fixture(scope="module")
def tv_state_dict(tmp_path_factory):
    path = tmp_path_factory.mktemp("tv") / "resnet18.pth"
    torch.save(_tv_resnet18().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def tv_scripted(tmp_path_factory):
    path = tmp_path_factory.mktemp("ts") / "resnet18_scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(_tv_resnet18()).save(str(path))
    return path


def _timm_model():
    import timm

    torch.manual_seed(0)
    return timm.create_model("resnet10t", pretrained=False, num_classes=len(CLASSES)).eval()


@pytest.fixture(scope="module")
def timm_files(tmp_path_factory):
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("timm")
    m = _timm_model()
    torch.save(m.state_dict(), d / "resnet10t.pth")
    save_file(m.state_dict(), str(d / "resnet10t.safetensors"))
    return d


def _distill(tmp_path, teacher, folder, preset, *extra):
    out = tmp_path / f"run_{preset}"
    r = runner.invoke(app, ["distill", "--teacher", str(teacher), "--data", f"imagefolder:{folder}",
                            "--preset", preset, "--student", "tinycnn_w8", "--epochs", "1",
                            "--set", "train.batch_size=8", "--device", "cpu", "--out", str(out), "--json",
                            *INPUT, *extra])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report == json.loads(r.stdout)
    assert report["preset"]["name"] == preset and report["student"]["arch"] == "tinycnn_w8"
    assert 0.0 <= report["teacher"]["accuracy"] <= 1.0 and (out / "student.onnx").is_file()
    return report


@pytest.mark.parametrize("preset", ["nd", "ickd", "dkd_nd"])
def test_torchvision_state_dict_with_feature_presets(tmp_path, folder, tv_state_dict, preset):
    report = _distill(tmp_path, tv_state_dict, folder, preset, "--teacher-arch", "resnet18")
    assert report["teacher"]["arch"] == "torchvision:resnet18" and report["teacher"]["format"] == "state_dict"


@pytest.mark.parametrize("preset", ["nd", "ickd", "dkd_nd"])
def test_scripted_torchscript_teacher_with_feature_presets(tmp_path, folder, tv_scripted, preset):
    report = _distill(tmp_path, tv_scripted, folder, preset)
    assert report["teacher"]["format"] == "torchscript"


# the two files hold the same tensors (test_teacher_libraries checks they load to the same logits): the
# safetensors runs of kd and nd repeat the state_dict ones and stay under -m slow
SLOW = pytest.mark.slow


@pytest.mark.parametrize(("kind", "preset"), [("pth", "kd"), ("pth", "nd"), ("pth", "ickd"), ("safetensors", "ickd"),
                                              pytest.param("safetensors", "kd", marks=SLOW),
                                              pytest.param("safetensors", "nd", marks=SLOW)])
def test_timm_teacher_as_state_dict_and_safetensors(tmp_path, folder, timm_files, preset, kind):
    report = _distill(tmp_path, timm_files / f"resnet10t.{kind}", folder, preset, "--teacher-arch", "timm:resnet10t")
    assert report["teacher"]["arch"] == "timm:resnet10t"
    assert report["teacher"]["format"] == ("state_dict" if kind == "pth" else "safetensors")
