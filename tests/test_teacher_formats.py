"""Teacher formats: every format gives the same logits as the model it was saved from, features where they
can be reached, logits-only where not, the flags the file lacks are named, and pickles never run unasked."""

from __future__ import annotations

import json
import pickle
import warnings

import pytest
import torch
from typer.testing import CliRunner

from kdcompress.cli import app
from kdcompress.core.checkpoint import save_checkpoint
from kdcompress.core.config import TeacherOptions
from kdcompress.core.errors import InputError, UsageError
from kdcompress.core.spec import InputSpec
from kdcompress.core.types import NEED_TEACHER_EMBED, NEED_TEACHER_LOGITS, logits_and_embed
from kdcompress.export.onnx import export_onnx
from kdcompress.students.registry import build_student, capacity
from kdcompress.teacher.formats import load_teacher
from kdcompress.teacher.model import teacher_onnx_bytes

from .helpers import randomize_bn_stats

from .conftest import TINY_DATA

runner = CliRunner()
SPEC = InputSpec((1, 8, 8), (0.5,), (0.25,))
CLASSES = ("class_0", "class_1", "class_2")  # TINY_DATA's names
FLAGS = TeacherOptions(arch="tinycnn_w8", num_classes=3, input_shape=(1, 8, 8), mean=(0.5,), std=(0.25,))
META = {"classes": list(CLASSES), "mean": [0.5], "std": [0.25], "input_shape": [1, 8, 8]}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_bn_stats(build_student("tinycnn_w8", 3, SPEC).eval())


@pytest.fixture(scope="module")
def x():
    return torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _ref(model, x):
    with torch.no_grad():
        return logits_and_embed(model, x)


def _one_line(r, code, *needles):
    assert r.exit_code == code, (r.exit_code, r.output)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("kdcompress: error:"), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


# ----------------------------------------------------------------------------------------- torch formats


def test_kdcompress_checkpoint_gives_logits_and_features(tmp_path, model, x):
    save_checkpoint(tmp_path / "t.pt", model, "tinycnn_w8", CLASSES, SPEC)
    t = load_teacher(tmp_path / "t.pt")
    logits, emb = _ref(model, x)
    out = t.outputs(x, want_embed=True)
    assert t.format == "kdcompress" and t.classes == CLASSES and t.input_spec == SPEC
    assert t.embed_dim == 16 and not t.logits_only
    assert torch.equal(out.logits, logits) and torch.equal(out.embed, emb)
    assert t.params == sum(p.numel() for p in model.parameters()) and t.flops > 0


def test_plain_state_dict_needs_arch_and_input_flags_and_infers_the_class_count(tmp_path, model, x):
    path = tmp_path / "sd.pt"
    torch.save(model.state_dict(), path)
    t = load_teacher(path, options=FLAGS)
    assert t.format == "state_dict" and t.arch == "tinycnn_w8" and t.classes == ("0", "1", "2")
    assert torch.equal(t.outputs(x).logits, _ref(model, x)[0])
    cases = [
        (TeacherOptions(num_classes=3, input_shape=(1, 8, 8), mean=(0.5,), std=(0.25,)), "--teacher-arch"),
        (TeacherOptions(arch="tinycnn_w8", num_classes=3, mean=(0.5,), std=(0.25,)), "--input-shape"),
        (TeacherOptions(arch="tinycnn_w8", num_classes=3, input_shape=(1, 8, 8), std=(0.25,)), "--mean"),
        (TeacherOptions(arch="tinycnn_w8", num_classes=3, input_shape=(1, 8, 8), mean=(0.5,)), "--std"),
    ]
    for opts, flag in cases:
        with pytest.raises(UsageError, match=flag):
            load_teacher(path, options=opts)
    # no --num-classes: the count is the classifier weight's rows, confirmed by loading
    t = load_teacher(path, options=TeacherOptions(arch="tinycnn_w8", input_shape=(1, 8, 8), mean=(0.5,), std=(0.25,)))
    assert t.num_classes == 3 and torch.equal(t.outputs(x).logits, _ref(model, x)[0])
    with pytest.raises(InputError, match="do not fit the kdcompress zoo's tinycnn_w16"):
        load_teacher(path, options=TeacherOptions(**{**FLAGS.__dict__, "arch": "tinycnn_w16"}))
    with pytest.raises(UsageError, match="did you mean 'tinycnn_w8'"):
        load_teacher(path, options=TeacherOptions(**{**FLAGS.__dict__, "arch": "tinycnn_w88"}))


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict"])
def test_dict_checkpoint_with_ddp_prefix_and_recorded_metadata(tmp_path, model, x, key):
    path = tmp_path / "ck.pth"
    torch.save({key: {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 90,
                "arch": "tinycnn_w8", "class_to_idx": {c: i for i, c in enumerate(CLASSES)},
                "mean": [0.5], "std": [0.25], "input_size": [1, 8, 8]}, path)
    t = load_teacher(path)  # everything it needs is in the file
    assert t.format == "checkpoint" and t.classes == CLASSES and t.input_spec == SPEC
    assert torch.equal(t.outputs(x).logits, _ref(model, x)[0])
    # flags win over the file
    t2 = load_teacher(path, options=TeacherOptions(classes=("a", "b", "c"), mean=(0.4,)))
    assert t2.classes == ("a", "b", "c") and t2.input_spec.mean == (0.4,)
    with pytest.raises(UsageError, match="--num-classes gives 4 classes but the file names 3"):
        load_teacher(path, options=TeacherOptions(num_classes=4))


def test_torchvision_state_dict_features_come_from_the_classifier_input(tmp_path):
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.get_model("resnet18", weights=None, num_classes=4).eval()
    path = tmp_path / "r18.pth"
    torch.save(tv.state_dict(), path)
    opts = TeacherOptions(arch="resnet18", num_classes=4, input_shape=(3, 32, 32), mean=(0.5,), std=(0.2,))
    t = load_teacher(path, options=opts)
    assert t.arch == "torchvision:resnet18" and t.embed_via == "classifier_hook" and t.head == "fc"
    assert t.embed_dim == 512 and t.input_spec.mean == (0.5, 0.5, 0.5)
    xb = torch.randn(2, 3, 32, 32)
    out = t.outputs(xb, want_embed=True)
    with torch.no_grad():
        f = tv.maxpool(tv.relu(tv.bn1(tv.conv1(xb))))
        pooled = torch.flatten(tv.avgpool(tv.layer4(tv.layer3(tv.layer2(tv.layer1(f))))), 1)
        ref_logits = tv(xb)
    assert torch.allclose(out.embed, pooled, atol=1e-6) and torch.allclose(out.logits, ref_logits, atol=1e-6)
    with pytest.raises(UsageError, match="3-channel"):
        load_teacher(path, options=TeacherOptions(arch="resnet18", num_classes=4, input_shape=(1, 32, 32),
                                                  mean=(0.5,), std=(0.2,)))


# ----------------------------------------------------------------------------------------- TorchScript


def test_torchscript_scripted_and_traced_keep_features_through_their_children(tmp_path, model, x):
    logits, emb = _ref(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(model)
        traced = torch.jit.trace(model, x)
    torch.jit.save(scripted, tmp_path / "s.pt")
    torch.jit.save(traced, tmp_path / "t.pt")
    with pytest.raises(UsageError, match="--input-shape C,H,W and --mean and --std"):
        load_teacher(tmp_path / "s.pt")
    s = load_teacher(tmp_path / "s.pt", options=TeacherOptions(input_shape=(1, 8, 8), mean=(0.5,), std=(0.25,)))
    assert s.format == "torchscript" and s.embed_dim == 16 and s.classes == ("0", "1", "2")
    out = s.outputs(x, want_embed=True)
    assert torch.equal(out.logits, logits) and torch.equal(out.embed, emb)
    with pytest.raises(InputError, match="outputs 3 logits but --num-classes gives 4"):
        load_teacher(tmp_path / "s.pt", options=TeacherOptions(num_classes=4, input_shape=(1, 8, 8), mean=(0.5,),
                                                               std=(0.25,)))
    t = load_teacher(tmp_path / "t.pt", options=TeacherOptions(input_shape=(1, 8, 8), mean=(0.5,), std=(0.25,)))
    # scripting keeps forward_features/forward_head; the traced one has only forward, and hooks cannot run
    # in TorchScript: its embedding comes from running its children in order
    assert s.embed_via == "forward_head" and t.embed_via == "children" and t.embed_dim == 16
    out_t = t.outputs(x, want_embed=True)
    assert torch.allclose(out_t.logits, logits, atol=1e-6) and torch.allclose(out_t.embed, emb, atol=1e-6)
    # the TorchScript file exports to ONNX (the dynamo exporter cannot take a ScriptModule)
    import onnxruntime as ort

    sess = ort.InferenceSession(teacher_onnx_bytes(s), providers=["CPUExecutionProvider"])
    assert abs(sess.run(None, {"input": x.numpy()})[0] - logits.numpy()).max() < 1e-5


def test_torchscript_metadata_in_extra_file(tmp_path, model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(model), tmp_path / "m.pt",
                       _extra_files={"kdcompress.json": json.dumps({"classes": list(CLASSES),
                                                                    "input_spec": {"shape": [1, 8, 8], "mean": [0.5],
                                                                                   "std": [0.25]}})})
    t = load_teacher(tmp_path / "m.pt")
    assert t.classes == CLASSES and t.input_spec == SPEC


# ----------------------------------------------------------------------------------------- ONNX


def test_onnx_teacher_is_logits_only_and_matches_torch(tmp_path, model, x):
    export_onnx(model, SPEC, tmp_path / "t.onnx", metadata=META)
    t = load_teacher(tmp_path / "t.onnx")
    # FLOPs counted on the graph, as torch's counter counts the same model (not 0, which ORT's run shows torch)
    assert t.format == "onnx" and t.logits_only and t.flops == capacity(model, SPEC).flops > 0 and t.classes == CLASSES
    assert t.input_spec == SPEC and t.params > 0
    assert torch.allclose(t.outputs(x).logits, _ref(model, x)[0], atol=1e-5)
    with pytest.raises(UsageError, match="logits only"):
        t.outputs(x, want_embed=True)
    t.check_needs({NEED_TEACHER_LOGITS}, "kd")  # fine
    with pytest.raises(UsageError, match="preset 'ickd' needs the teacher's penultimate features"):
        t.check_needs({NEED_TEACHER_LOGITS, NEED_TEACHER_EMBED}, "ickd")


def test_onnx_without_metadata_needs_normalisation_flags_and_fixed_batch_is_chunked(tmp_path, model, x):
    import io

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), buf, dynamo=False, input_names=["img"],
                          output_names=["out"])  # static batch of 1, no metadata
    (tmp_path / "b1.onnx").write_bytes(buf.getvalue())
    with pytest.raises(UsageError, match="normalisation; give --mean and --std"):
        load_teacher(tmp_path / "b1.onnx")  # the shape comes from the graph, mean/std cannot
    t = load_teacher(tmp_path / "b1.onnx", options=TeacherOptions(mean=(0.5,), std=(0.25,)))
    assert t.input_spec.shape == (1, 8, 8) and t.classes == ("0", "1", "2")
    assert torch.allclose(t.outputs(x).logits, _ref(model, x)[0], atol=1e-5)  # 5 images through batch-1 model
    # the copy used for validation (batches of 256) gets a symbolic batch axis and still computes the same
    import onnxruntime as ort

    sess = ort.InferenceSession(teacher_onnx_bytes(t, {"role": "teacher"}), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[0] == "batch"
    assert abs(sess.run(None, {"img": x.numpy()})[0] - _ref(model, x)[0].numpy()).max() < 1e-5


def test_corrupt_onnx_is_one_line(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage")
    r = runner.invoke(app, ["teacher", "inspect", str(tmp_path / "bad.onnx")])
    _one_line(r, InputError.exit_code, "bad.onnx", "not a valid ONNX model")


# ----------------------------------------------------------------------------------------- pickles


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # unpickling this opens (creates) the marker file: code execution
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_does_not_run_without_trust(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "teacher.pt"
    if writer == "torch.save":
        torch.save({"state_dict": _Evil(marker)}, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(_Evil(marker), f)
    r = runner.invoke(app, ["distill", "--teacher", str(path), "--data", TINY_DATA, "--student", "tinycnn_w8",
                            "--out", str(tmp_path / "r")])
    _one_line(r, InputError.exit_code, "--trust-checkpoint")
    assert not marker.exists()
    # the same file with the flag does run its code: the check above is what kept it from running
    r = runner.invoke(app, ["teacher", "inspect", str(path), "--trust-checkpoint"])
    assert marker.exists() and r.exit_code == InputError.exit_code


def test_pickled_module_loads_only_with_trust(tmp_path, model, x):
    path = tmp_path / "full.pt"
    torch.save(model, path)
    with pytest.raises(InputError, match="--trust-checkpoint"):
        load_teacher(path, options=FLAGS)
    t = load_teacher(path, trust=True, options=TeacherOptions(input_shape=(1, 8, 8), mean=(0.5,), std=(0.25,)))
    assert t.format == "pickle" and t.arch == "TinyCNN" and t.embed_dim == 16
    assert torch.equal(t.outputs(x).logits, _ref(model, x)[0])


# ----------------------------------------------------------------------------------------- CLI


def test_teacher_inspect_json_and_table(tmp_path, model):
    export_onnx(model, SPEC, tmp_path / "t.onnx", metadata=META)
    r = runner.invoke(app, ["teacher", "inspect", str(tmp_path / "t.onnx"), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["format"] == "onnx" and info["logits_only"] and info["classes"] == list(CLASSES)
    assert info["input_spec"]["shape"] == [1, 8, 8] and info["num_classes"] == 3
    lat = info["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] and lat["iters"] >= 100 and lat["batch"] == 1
    r = runner.invoke(app, ["teacher", "inspect", str(tmp_path / "t.onnx")])
    assert r.exit_code == 0 and "logits only" in r.stdout and "onnx" in r.stdout
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    r = runner.invoke(app, ["teacher", "inspect", str(tmp_path / "sd.pt"), "--teacher-arch", "tinycnn_w8",
                            "--classes", "a,b,c", "--input-shape", "1x8x8", "--mean", "0.5", "--std", "0.25", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["arch"] == "tinycnn_w8" and info["embed_dim"] == 16 and info["classes"] == ["a", "b", "c"]
    assert info["params"] == sum(p.numel() for p in model.parameters())
    r = runner.invoke(app, ["teacher", "inspect", str(tmp_path / "sd.pt"), "--teacher-arch", "tinycnn_w8",
                            "--num-classes", "3", "--input-shape", "1,8,8"])
    _one_line(r, UsageError.exit_code, "--mean and --std")


def test_distill_from_onnx_teacher_trains_on_ort_logits(tmp_path, tiny_teacher):
    from kdcompress.students.checkpoint import load_checkpoint

    m, obj = load_checkpoint(tiny_teacher)
    onnx_path = tmp_path / "teacher.onnx"
    spec = obj["input_spec"]
    export_onnx(m, InputSpec.from_json(spec), onnx_path,
                metadata={"classes": obj["classes"], "mean": spec["mean"], "std": spec["std"],
                          "input_shape": spec["shape"]})
    out = tmp_path / "run"
    r = runner.invoke(app, ["distill", "--teacher", str(onnx_path), "--data", TINY_DATA, "--student", "tinycnn_w8",
                            "--epochs", "1", "--set", "train.batch_size=16", "--device", "cpu", "--out", str(out),
                            "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert (rep["teacher"]["format"] == "onnx"
            and rep["teacher"]["flops"] == capacity(m, InputSpec.from_json(spec)).flops)
    assert rep["training"]["history"][0]["kd"] > 0  # the KD term was computed from the ORT teacher's logits
    assert (out / "teacher.onnx").read_bytes() != b"" and "| – |" in (out / "report.md").read_text()


def test_feature_preset_refuses_logits_only_teacher_before_training(tmp_path, tiny_teacher, monkeypatch, model):
    from kdcompress.losses.base import LOSSES

    export_onnx(model, SPEC, tmp_path / "t.onnx", metadata=META)
    kd = LOSSES.get("kd")
    monkeypatch.setattr(kd, "NEEDS", kd.NEEDS | {NEED_TEACHER_EMBED})  # stands in for a feature-based loss
    r = runner.invoke(app, ["distill", "--teacher", str(tmp_path / "t.onnx"), "--data", TINY_DATA,
                            "--student", "tinycnn_w8", "--out", str(tmp_path / "r")])
    _one_line(r, UsageError.exit_code, "preset 'kd' needs the teacher's penultimate features", "logits only")
    assert not (tmp_path / "r").exists()
