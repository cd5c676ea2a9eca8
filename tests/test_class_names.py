"""One class-naming rule for every data kind (core.classes), mapping by name in distill, export and
validate, and 16-bit greyscale images. Every file here is written by the test: PIL images, CSVs, ONNX
files from plain torch.onnx.export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from kdcompress.cli import app
from kdcompress.core.classes import class_order, match_classes
from kdcompress.core.errors import InputError
from kdcompress.data.specs import align_classes, load_data

runner = CliRunner()
NUMERIC = tuple(str(i) for i in range(12))
PALETTE = np.random.default_rng(0).integers(0, 256, size=(12, 3))


def write_numeric_folder(root: Path, per_class: int = 10, size: int = 8) -> Path:
    """An ImageFolder with class folders 0..11 (a distinct colour each, plus noise) and the same images
    listed in a CSV with the folder name as label."""
    rng = np.random.default_rng(1)
    rows = ["path,label"]
    for k in range(12):
        d = root / "imgs" / str(k)
        d.mkdir(parents=True)
        for j in range(per_class):
            a = np.clip(PALETTE[k][None, None, :] + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(d / f"{j}.png")
            rows.append(f"imgs/{k}/{j}.png,{k}")
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    return root


def test_class_order_rule():
    assert class_order(["10", "2", "0", "1", "11"]) == ("0", "1", "2", "10", "11")
    assert class_order(["b", "a", "10", "2"]) == ("10", "2", "a", "b")  # not all integers: string order
    assert class_order(["-1", "3", "01", "1"]) == ("-1", "01", "1", "3")  # by value, ties by string
    assert match_classes(("a", "b"), ("b", "a"), "m") == ([1, 0], None)
    cols, note = match_classes(("0", "1"), ("cat", "dog"), "m")
    assert cols is None and "--classes" in note  # index-only model: positional, and said so
    with pytest.raises(ValueError, match="does not know the data's class 'dog'"):
        match_classes(("cat", "cow"), ("cat", "dog"), "m")


def test_numeric_folder_names_give_the_same_labels_through_imagefolder_and_csv(tmp_path):
    root = write_numeric_folder(tmp_path)
    a = load_data(f"imagefolder:{root / 'imgs'}")
    b = load_data(f"csv:{root / 'list.csv'}")
    assert a.classes == b.classes == NUMERIC  # numeric order, not '0','1','10','11','2',...
    for s in ("train", "val", "test"):
        sa, sb = getattr(a, s), getattr(b, s)
        assert torch.equal(sa.y, sb.y) and torch.equal(sa.x, sb.x)
    # the label of every image is its folder's number
    x0 = a.train.x[a.train.y == 10][0]
    assert np.allclose(x0.mean(dim=(1, 2)).numpy() * 255, PALETTE[10], atol=8)


def test_numeric_names_in_string_order_are_remapped_by_name():
    """A teacher that recorded its classes in torchvision's string order ('0','1','10','11','2',...) is
    mapped by name: the data's labels are renumbered, although the names look like indices."""
    from dataclasses import replace

    from kdcompress.core.splits import DataSplits, TensorSplit

    y = torch.arange(24) % 12
    split = TensorSplit(torch.zeros(24, 1, 4, 4), y)
    s = DataSplits("d", split, split, split, NUMERIC, (1, 4, 4), "none")
    t = tuple(sorted(NUMERIC))  # '0','1','10','11','2',...
    notes = []
    out = align_classes(s, t, "T", warn=notes.append)
    assert out.classes == t and not notes
    assert [t[i] for i in out.train.y.tolist()] == [NUMERIC[i] for i in y.tolist()]
    # index-only teacher vs named data: positional, with a warning naming --classes
    named = replace(s, classes=tuple(f"c{i}" for i in range(12)))
    assert align_classes(named, NUMERIC, "T", warn=notes.append) is named
    assert len(notes) == 1 and "--classes" in notes[0] and "records no class names" in notes[0]
    with pytest.raises(InputError, match="does not know the data's class"):
        align_classes(named, tuple(f"d{i}" for i in range(12)), "T")


def _distill(teacher: Path, data: str, out: Path, *extra: str) -> dict:
    r = runner.invoke(app, ["distill", "--teacher", str(teacher), "--data", data, "--student", "tinycnn_w8",
                            "--epochs", "2", "--set", "train.batch_size=16", "--device", "cpu", "--out", str(out),
                            "--json", *extra], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def numeric_run(tmp_path_factory):
    """A teacher trained on the ImageFolder, distilled once with the folder and once with the CSV."""
    from rich.console import Console

    from kdcompress.losses import load_checked_preset
    from kdcompress.pipeline import train_teacher

    root = write_numeric_folder(tmp_path_factory.mktemp("numeric"))
    teacher = root / "teacher.pt"
    preset = load_checked_preset("ce", ["train.epochs=20", "train.batch_size=16", "train.schedule=cosine"])
    train_teacher(data=f"imagefolder:{root / 'imgs'}", arch="tinycnn_w8", preset=preset, out=teacher,
                  device="cpu", console=Console(stderr=True, quiet=True))
    a = _distill(teacher, f"imagefolder:{root / 'imgs'}", root / "run_folder")
    b = _distill(teacher, f"csv:{root / 'list.csv'}", root / "run_csv")
    return root, teacher, a, b


def test_teacher_trained_on_the_folder_distils_the_same_with_the_csv(numeric_run):
    _, _, a, b = numeric_run
    assert a["teacher"]["accuracy"] == b["teacher"]["accuracy"] > 0.5
    assert a["teacher"]["val_accuracy"] == b["teacher"]["val_accuracy"] > 0.5
    assert a["student"]["accuracy"] == b["student"]["accuracy"]


def _permuted_onnx(src: Path, dst: Path, perm: list[int]) -> None:
    """Rewrite an ONNX classifier so output j is the source's output perm[j] (a Gather on the class axis)
    and record the permuted class names in its metadata, as another tool's export would."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(src))
    out = m.graph.output[0]
    old = out.name
    for node in m.graph.node:
        node.output[:] = [f"{o}__pre" if o == old else o for o in node.output]
    m.graph.initializer.append(numpy_helper.from_array(np.array(perm, dtype=np.int64), "perm__idx"))
    m.graph.node.append(helper.make_node("Gather", [f"{old}__pre", "perm__idx"], [old], axis=1))
    meta = {p.key: p.value for p in m.metadata_props}
    classes = json.loads(meta["classes"])
    for p in m.metadata_props:
        if p.key == "classes":
            p.value = json.dumps([classes[i] for i in perm])
    onnx.save(m, str(dst))


def test_validate_scores_by_the_names_in_the_onnx_metadata(numeric_run, tmp_path):
    root, _, a, _ = numeric_run
    student = Path(a["artifacts"][0]["onnx"])
    perm = [(i * 5 + 3) % 12 for i in range(12)]  # a full permutation of the 12 outputs
    moved = tmp_path / "moved.onnx"
    _permuted_onnx(student, moved, perm)
    for data in (f"imagefolder:{root / 'imgs'}", f"csv:{root / 'list.csv'}"):
        for f in (student, moved):
            r = runner.invoke(app, ["validate", "--onnx", str(f), "--data", data, "--json"], catch_exceptions=False)
            assert r.exit_code == 0, r.output
            rep = json.loads(r.stdout)
            assert rep["variants"][0]["accuracy"] == a["student"]["accuracy"], (f, data)


def test_validate_refuses_data_classes_the_model_lacks(numeric_run, tmp_path):
    root, _, a, _ = numeric_run
    student = Path(a["artifacts"][0]["onnx"])
    other = tmp_path / "other"
    for k in range(12):  # same images, one folder renamed: class '11' becomes 'eleven'
        src = root / "imgs" / str(k)
        dst = other / ("eleven" if k == 11 else str(k))
        dst.mkdir(parents=True)
        for p in src.iterdir():
            (dst / p.name).write_bytes(p.read_bytes())
    r = runner.invoke(app, ["validate", "--onnx", str(student), "--data", f"imagefolder:{other}"])
    assert r.exit_code == InputError.exit_code, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "'eleven'" in lines[0], r.output


def test_sixteen_bit_grey_png_is_scaled_not_clipped(tmp_path):
    from kdcompress.data.imagesplits import decode, image_shape

    a = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(a).save(p)
    with Image.open(p) as im:
        assert im.mode.startswith("I")  # PIL reads it as 16-bit
    assert image_shape(p) == (1, 8, 8)
    got = decode(str(p), (1, 8, 8))[0]
    assert np.array_equal(got, np.rint(a / 257.0).astype(np.uint8))  # value / 257, rounded
    assert got.max() == round(63000 / 257) and len(np.unique(got)) > 32  # not 0/255 only
    rgb = decode(str(p), (3, 8, 8))
    assert np.array_equal(rgb[0], got) and np.array_equal(rgb[2], got)


def test_index_only_teacher_trained_in_string_order_is_refused_then_fixed_with_classes(numeric_run, tmp_path):
    """A plain state_dict (no class names) whose outputs are in torchvision's string order of the folders
    ('0','1','10','11','2',...): assumed positional, it scores near chance and is refused with the exact
    --classes that fixes it; with that flag it is mapped by name and scores what the named teacher does."""
    from kdcompress.students.checkpoint import load_checkpoint

    root, _, a, _ = numeric_run
    model, obj = load_checkpoint(root / "teacher.pt")
    string_order = sorted(NUMERIC)
    rows = torch.tensor([NUMERIC.index(c) for c in string_order])  # output j carries class string_order[j]
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["fc.weight"], sd["fc.bias"] = sd["fc.weight"][rows], sd["fc.bias"][rows]
    torch.save(sd, tmp_path / "sd.pt")
    spec = obj["input_spec"]
    flags = ["--teacher-arch", "tinycnn_w8", "--num-classes", "12", "--input-shape", "3,8,8",
             "--mean", ",".join(map(str, spec["mean"])), "--std", ",".join(map(str, spec["std"]))]
    data = f"imagefolder:{root / 'imgs'}"
    r = runner.invoke(app, ["distill", "--teacher", str(tmp_path / "sd.pt"), "--data", data, "--student",
                            "tinycnn_w8", "--device", "cpu", "--out", str(tmp_path / "run"), *flags])
    assert r.exit_code == InputError.exit_code, r.output
    assert f"--classes {','.join(string_order)}" in r.stderr and "no better than chance" in r.stderr
    # (index names '0'..'11' coincide with the folder names, so the positional assumption is not warned
    # about here; the weak-teacher refusal is what keeps it from being a silent wrong answer)
    assert not (tmp_path / "run").exists()
    rep = _distill(tmp_path / "sd.pt", data, tmp_path / "run", *flags, "--classes", ",".join(string_order))
    assert rep["teacher"]["val_accuracy"] == a["teacher"]["val_accuracy"]
    assert rep["teacher"]["accuracy"] == a["teacher"]["accuracy"]


def test_export_and_validate_map_a_checkpoint_in_another_class_order(numeric_run, tmp_path):
    """The distilled student saved with its outputs (and recorded names) in string order: export checks
    parity and accuracy against the numeric-order data by name, and validate --checkpoint agrees."""
    from kdcompress.core.checkpoint import save_checkpoint
    from kdcompress.core.spec import InputSpec
    from kdcompress.students.checkpoint import load_checkpoint

    root, _, a, _ = numeric_run
    model, obj = load_checkpoint(root / "run_folder" / "student.pt")
    string_order = tuple(sorted(NUMERIC))
    rows = torch.tensor([NUMERIC.index(c) for c in string_order])
    with torch.no_grad():
        model.fc.weight.copy_(model.fc.weight[rows].clone())
        model.fc.bias.copy_(model.fc.bias[rows].clone())
    ck = tmp_path / "moved.pt"
    save_checkpoint(ck, model, str(obj["arch"]), string_order, InputSpec.from_json(obj["input_spec"]))
    data = f"imagefolder:{root / 'imgs'}"
    r = runner.invoke(app, ["export", "--checkpoint", str(ck), "--data", data, "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout)["artifacts"][0]
    assert row["accuracy"] == a["student"]["accuracy"] and row["parity"]["passed"]
    r = runner.invoke(app, ["validate", "--onnx", row["onnx"], "--checkpoint", str(ck), "--data", data, "--json"],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    v = json.loads(r.stdout)["variants"][0]
    assert v["accuracy"] == a["student"]["accuracy"] and v["parity"]["top1_agreement"] == 1.0
