"""A shipped ONNX file describes itself: docs/examples/plain_onnxruntime.py, which reads nothing but the
file (onnxruntime, numpy, Pillow), reproduces the test accuracy report.json gives the shipped file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from kdcompress.cli import app
from kdcompress.runtime.onnxio import read_metadata

runner = CliRunner()
EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "plain_onnxruntime.py"


def _imagefolder(root: Path, per_class: int = 6, seed: int = 0) -> None:
    """train/val/test of classes 0, 1, 2: 12x10 RGB PNGs (resized and cropped to the teacher's 8x8 grey)."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val", "test"):
        for k in range(3):
            d = root / split / str(k)
            d.mkdir(parents=True)
            for i in range(per_class):
                a = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
                a[..., k] = 255 - a[..., k] // 4  # a class shows in its channel
                Image.fromarray(a, "RGB").save(d / f"{i}.png")


def test_plain_onnxruntime_reproduces_the_report_accuracy(tiny_teacher, tmp_path):
    data = tmp_path / "data"
    _imagefolder(data)
    out = tmp_path / "run"
    r = runner.invoke(app, ["distill", "--teacher", str(tiny_teacher), "--data", f"imagefolder:{data}",
                            "--student", "tinycnn_w8", "--epochs", "2", "--device", "cpu", "--out", str(out),
                            "--allow-weak-teacher", "--set", "train.augment=none", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    shipped = out / report["shipped"]["path"]
    meta = read_metadata(shipped)
    pre = json.loads(meta["preprocess"])
    assert pre["color"] == "L" and pre["resize"]["rule"] == "cover" and pre["crop"]["rule"] == "center"
    p = subprocess.run([sys.executable, str(EXAMPLE), str(shipped), str(data / "test")], capture_output=True,
                       text=True, check=True)
    got = json.loads(p.stdout)
    assert got["images"] == report["data"]["sizes"]["test"] == 18
    assert got["confusion"] == report["shipped"]["confusion"]["matrix"]  # image for image, the same answers
    assert round(got["accuracy"], 6) == report["shipped"]["accuracy"]


def test_the_examples_preprocessing_is_kdcompress_own(tmp_path):
    """Image for image, the example's input tensor equals the data stage's decode + normalize (grey, RGB with
    alpha, 16-bit grey; upscaled, downscaled, cropped), for a grey and an RGB model."""
    import importlib.util

    import torch

    from kdcompress.core.spec import InputSpec
    from kdcompress.core.splits import normalize
    from kdcompress.data.imagesplits import decode
    from kdcompress.runtime.onnxio import build_metadata, encode_value

    spec_ = importlib.util.spec_from_file_location("plain_onnxruntime", EXAMPLE)
    example = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(example)
    rng = np.random.default_rng(1)
    files = {"rgba.png": Image.fromarray(rng.integers(0, 256, (13, 29, 4), dtype=np.uint8)),
             "grey.png": Image.fromarray(rng.integers(0, 256, (5, 7), dtype=np.uint8)),
             "grey16.png": Image.fromarray(rng.integers(0, 65536, (20, 11)).astype(np.uint16))}
    for name, im in files.items():
        im.save(tmp_path / name)
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I") and files["rgba.png"].mode == "RGBA"
    for spec in (InputSpec((1, 8, 8), (0.5,), (0.25,)), InputSpec((3, 9, 6), (0.4, 0.5, 0.6), (0.2, 0.3, 0.4))):
        meta = {k: encode_value(v) for k, v in build_metadata(arch="x", classes=["a"], spec=spec, preset=None,
                                                              teacher_sha256=None).items()}
        for name in files:
            ours = normalize(torch.from_numpy(decode(str(tmp_path / name), spec.shape)).float()[None] / 255, spec)[0]
            theirs = example.load_image(tmp_path / name, meta)
            assert theirs.shape == tuple(spec.shape)
            np.testing.assert_allclose(theirs, ours.numpy(), atol=1e-6, err_msg=f"{name} for {spec.shape}")
