"""`kdcompress predict`: top-k predictions on an image, a folder or a CSV, with the preprocessing the model's
metadata records; checked against plain onnxruntime fed by hand, on a file kdcompress exported and on one
plain torch.onnx.export wrote."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from kdcompress.cli import app
from kdcompress.runtime.onnxio import read_metadata

runner = CliRunner()


def _images(folder: Path, n: int = 7, size: int = 8, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB").save(p)
        paths.append(p)
    return paths


def _by_hand(onnx: Path, paths: list[Path], mean, std) -> np.ndarray:
    """Probabilities from plain onnxruntime: PIL's grey or RGB by the channels of the mean, /255,
    (x - mean) / std, NCHW float32, softmax."""
    mode = "L" if len(mean) == 1 else "RGB"
    x = np.stack([np.asarray(Image.open(p).convert(mode), dtype=np.float32).reshape(8, 8, -1).transpose(2, 0, 1)
                  / 255.0 for p in paths])
    x = (x - np.array(mean, np.float32)[:, None, None]) / np.array(std, np.float32)[:, None, None]
    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    z = sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0].astype(np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def exported(tiny_teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    r = runner.invoke(app, ["export", "--checkpoint", str(tiny_teacher), "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out


def test_predict_a_folder_matches_onnxruntime_by_hand(exported, tmp_path):
    paths = _images(tmp_path / "imgs")
    meta = read_metadata(exported)
    mean, std, classes = json.loads(meta["mean"]), json.loads(meta["std"]), json.loads(meta["classes"])
    r = runner.invoke(app, ["predict", str(exported), str(tmp_path / "imgs"), "--topk", "2", "--json"],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    probs = _by_hand(exported, paths, mean, std)
    assert got["job"] == {"format": "kdcompress.predict-job/1", "model": str(exported),
                          "images": str(tmp_path / "imgs"), "topk": 2, "out": None, "threads": None, "mean": None,
                          "std": None}  # the typed job it ran
    assert got["images"] == len(paths) and [Path(p["path"]).name for p in got["predictions"]] == [p.name for p in paths]
    for row, pr in zip(got["predictions"], probs, strict=True):
        best = np.argsort(-pr, kind="stable")[:2]
        assert [t["class"] for t in row["top"]] == [classes[j] for j in best]
        assert [t["probability"] for t in row["top"]] == pytest.approx(pr[best], abs=1e-5)


def test_predict_from_the_checkpoint_agrees_with_its_onnx(tiny_teacher, exported, tmp_path):
    _images(tmp_path / "imgs", n=5)
    tops = []
    for model in (exported, tiny_teacher):
        r = runner.invoke(app, ["predict", str(model), str(tmp_path / "imgs"), "--topk", "1", "--json"],
                          catch_exceptions=False)
        assert r.exit_code == 0, r.output
        tops.append([(p["top"][0]["class"], p["top"][0]["probability"]) for p in json.loads(r.stdout)["predictions"]])
    assert [c for c, _ in tops[0]] == [c for c, _ in tops[1]]
    assert [p for _, p in tops[0]] == pytest.approx([p for _, p in tops[1]], abs=1e-4)


def test_a_csv_in_and_a_csv_out(exported, tmp_path):
    paths = _images(tmp_path / "imgs", n=3)
    listing = tmp_path / "list.csv"
    listing.write_text("path\n" + "".join(f"imgs/{p.name}\n" for p in reversed(paths)))
    out = tmp_path / "pred.csv"
    r = runner.invoke(app, ["predict", str(exported), str(listing), "--topk", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(out.open()))
    assert [Path(x["path"]).name for x in rows] == [p.name for p in reversed(paths)]
    assert set(rows[0]) == {"path", "class_1", "probability_1", "class_2", "probability_2", "class_3", "probability_3"}
    assert sum(float(rows[0][f"probability_{k}"]) for k in (1, 2, 3)) == pytest.approx(1.0, abs=1e-4)


def test_a_plain_torch_onnx_needs_mean_and_std_and_takes_them(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    onnx = tmp_path / "plain.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 8, 8),), str(onnx), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "n"}})
    paths = _images(tmp_path / "imgs", n=2)
    r = runner.invoke(app, ["predict", str(onnx), str(paths[0])])
    assert r.exit_code == 2 and "--mean" in r.output
    r = runner.invoke(app, ["predict", str(onnx), str(tmp_path / "imgs"), "--mean", "0.5", "--std", "0.25",
                            "--topk", "3", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)["predictions"]
    probs = _by_hand(onnx, paths, [0.5] * 3, [0.25] * 3)
    assert [[t["index"] for t in row["top"]] for row in got] == [list(np.argsort(-p, kind="stable")) for p in probs]
    assert [t["class"] for t in got[0]["top"]] == [str(t["index"]) for t in got[0]["top"]]  # no names: indices


@pytest.mark.parametrize("args, code, words", [
    (["--topk", "0"], 2, "--topk"),
    (["--out", "pred.txt"], 2, ".csv or .json"),
    (["--threads", "0"], 2, "--threads"),
])
def test_bad_flags_are_refused_and_write_nothing(exported, tmp_path, monkeypatch, args, code, words):
    _images(tmp_path / "imgs", n=1)
    monkeypatch.chdir(tmp_path)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.rglob("*") if p.is_file()}
    r = runner.invoke(app, ["predict", str(exported), "imgs", *args])
    assert r.exit_code == code and words in r.output and len(r.output.strip().splitlines()) == 1
    assert before == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.rglob("*") if p.is_file()}


def test_missing_inputs_are_named(exported, tmp_path):
    r = runner.invoke(app, ["predict", str(exported), str(tmp_path / "nope.png")])
    assert r.exit_code == 3 and "nope.png" in r.output
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, ["predict", str(exported), str(tmp_path / "empty")])
    assert r.exit_code == 3 and "holds no images" in r.output
    r = runner.invoke(app, ["predict", str(tmp_path / "none.onnx"), str(tmp_path / "empty")])
    assert r.exit_code == 3 and "none.onnx" in r.output
