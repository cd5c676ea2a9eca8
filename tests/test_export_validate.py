"""ONNX export variants, validation with gates, reports: via the CLI on tiny data, and the pure pieces."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from kdcompress.cli import app
from kdcompress.core.errors import GateError, InputError, UsageError
from kdcompress.runtime.onnxio import TOLERANCES

from .conftest import TINY_DATA, assert_valid_report

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(r, code: int, *needles: str) -> str:
    assert r.exit_code == code, (r.exit_code, r.output)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("kdcompress: error:"), r.stderr
    assert "Traceback" not in r.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A resnet8 trained on TINY_DATA well enough that wrong normalisation visibly changes its answers."""
    from rich.console import Console

    from kdcompress.losses import load_checked_preset
    from kdcompress.pipeline import train_teacher

    out = tmp_path_factory.mktemp("student") / "student.pt"
    old = os.environ.get("KDCOMPRESS_CACHE")
    os.environ["KDCOMPRESS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        preset = load_checked_preset("ce", ["train.epochs=6", "train.batch_size=16"])
        info = train_teacher(data=TINY_DATA, arch="resnet8", preset=preset, out=out, device="cpu",
                             console=Console(stderr=True, quiet=True))
    finally:
        if old is None:
            os.environ.pop("KDCOMPRESS_CACHE")
        else:
            os.environ["KDCOMPRESS_CACHE"] = old
    assert info["test_accuracy"] >= 0.9, info
    return out


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """`kdcompress export --checkpoint ... --fp16 --int8` (calibrated on 8 images), its JSON and files."""
    d = tmp_path_factory.mktemp("export")
    r = invoke("export", "--checkpoint", trained, "--out", d / "student.onnx", "--data", TINY_DATA,
               "--teacher", trained, "--fp16", "--int8", "--calib", "8", "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout), d


def _torch_logits(ck, x01):
    from kdcompress.core.splits import normalize
    from kdcompress.students.checkpoint import load_checkpoint

    model, obj = load_checkpoint(ck)
    from kdcompress.core.spec import InputSpec

    spec = InputSpec.from_json(obj["input_spec"])
    with torch.no_grad():
        return model(normalize(x01, spec)).numpy(), spec


# ------------------------------------------------------------------------------------------ export


def test_export_writes_three_checked_variants(exported):
    result, d = exported
    assert [a["variant"] for a in result["artifacts"]] == ["fp32", "fp16", "int8"]
    for a, name in zip(result["artifacts"], ("student.onnx", "student.fp16.onnx", "student.int8.onnx"), strict=True):
        path = d / name
        assert a["onnx"] == str(path) and path.stat().st_size == a["bytes"]
        onnx.checker.check_model(str(path), full_check=True)
        assert a["checks"]["batches"] == [1, 7]
        assert a["checks"]["batch_consistency_max_abs_diff"] < 1e-4
    ops = {n.op_type for n in onnx.load(str(d / "student.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    half = onnx.load(str(d / "student.fp16.onnx"))
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # io kept float32
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer)
    assert (d / "student.fp16.onnx").stat().st_size < 0.7 * (d / "student.onnx").stat().st_size


@pytest.mark.parametrize("name", ["student.onnx", "student.fp16.onnx", "student.int8.onnx"])
def test_dynamic_batch_really_works(exported, trained, name):
    from kdcompress.runtime.ortbench import make_session
    from kdcompress.data.specs import load_data

    _, d = exported
    x01 = load_data(TINY_DATA).test.x[:7]
    ref, spec = _torch_logits(trained, x01)
    from kdcompress.core.splits import normalize

    x = normalize(x01, spec).numpy()
    sess = make_session(d / name)
    assert sess.get_inputs()[0].shape[0] == "batch"
    variant = "fp32" if name == "student.onnx" else name.split(".")[1]
    limit = TOLERANCES[variant].max_abs_diff_rel * max(1.0, float(np.abs(ref).max()))
    for b in (1, 7):
        out = sess.run(None, {"input": x[:b]})[0]
        assert out.shape == (b, 3)
        assert np.abs(out - ref[:b]).max() <= limit
    if variant == "fp32":
        assert np.abs(sess.run(None, {"input": x})[0] - ref).max() < 1e-4


def test_metadata_round_trip(exported, trained):
    from kdcompress import __version__
    from kdcompress.core.fsguard import file_sha256
    from kdcompress.runtime.onnxio import read_metadata
    from kdcompress.students.checkpoint import load_checkpoint

    result, d = exported
    _, obj = load_checkpoint(trained)
    for a in result["artifacts"]:
        meta = read_metadata(a["onnx"])
        assert json.loads(meta["classes"]) == ["class_0", "class_1", "class_2"]
        assert json.loads(meta["mean"]) == pytest.approx(obj["input_spec"]["mean"])
        assert json.loads(meta["std"]) == pytest.approx(obj["input_spec"]["std"])
        assert json.loads(meta["input_shape"]) == [1, 8, 8] and meta["layout"] == "NCHW"
        assert meta["variant"] == a["variant"] and meta["kdcompress_version"] == __version__
        assert meta["preset"] == "ce" and meta["teacher_sha256"] == file_sha256(trained)
        assert float(meta["test_accuracy"]) == pytest.approx(a["accuracy"], abs=1e-6)
        assert int(meta["opset"]) == 20 and meta["input_name"] == "input" and meta["output_name"] == "logits"
    # the checksum in the JSON is that of the stamped file
    import hashlib

    assert hashlib.sha256((d / "student.onnx").read_bytes()).hexdigest() == result["artifacts"][0]["sha256"]


def test_parity_within_each_variants_tolerance(exported, trained):
    result, _ = exported
    by = {a["variant"]: a for a in result["artifacts"]}
    for v, a in by.items():
        p = a["parity"]
        assert p["passed"], (v, p)
        assert p["samples"] == 18  # the whole test split of TINY_DATA (20% of 90)
        assert p["top1_agreement"] >= TOLERANCES[v].min_agreement
        assert p["max_abs_diff"] <= p["max_abs_diff_limit"]
    assert by["fp32"]["parity"]["max_abs_diff"] < 1e-4
    assert (by["fp32"]["parity"]["max_abs_diff"] < by["fp16"]["parity"]["max_abs_diff"]
            < by["int8"]["parity"]["max_abs_diff"])


def test_export_flags_are_checked(trained, tmp_path):
    one_line_error(invoke("export", "--checkpoint", trained, "--out", tmp_path / "s.onnx", "--opset", "17"),
                   UsageError.exit_code, "--opset 17")
    one_line_error(invoke("export", "--checkpoint", trained, "--out", tmp_path / "s.onnx", "--int8"),
                   UsageError.exit_code, "--int8", "--data")
    one_line_error(invoke("export", "--out", tmp_path / "s.onnx"), UsageError.exit_code, "--run", "--checkpoint")


def test_simplify_with_onnxslim_keeps_contract(trained, tmp_path):
    r = invoke("export", "--checkpoint", trained, "--out", tmp_path / "s.onnx", "--simplify", "--opset", "18",
               "--data", TINY_DATA, "--json")
    assert r.exit_code == 0, r.output
    a = json.loads(r.stdout)["artifacts"][0]
    m = onnx.load(a["onnx"])
    assert [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] == [18]
    assert {p.key: p.value for p in m.metadata_props}["simplified"] == "true"
    assert a["parity"]["max_abs_diff"] < 1e-4 and a["checks"]["batches"] == [1, 7]


# ------------------------------------------------------------------------------------------ validate


def test_validate_variants_with_teacher_writes_schema_valid_report(exported, trained, tmp_path):
    _, d = exported
    out = tmp_path / "val"
    r = invoke("validate", "--onnx", d / "student.onnx", "--onnx", d / "student.fp16.onnx",
               "--onnx", d / "student.int8.onnx", "--data", TINY_DATA, "--checkpoint", trained,
               "--teacher", trained, "--min-agreement", "0.9", "--max-accuracy-drop", "0.2", "--budget-ms", "1000",
               "--throughput-batch", "8", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report == assert_valid_report(out / "report.json")
    assert report["kind"] == "validate" and report["gates"]["passed"] and report["gates"]["failed"] == []
    names = [v["name"] for v in report["variants"]]
    assert names == ["fp32", "fp16", "int8"]
    lat = {v["name"]: v["latency_ms"]["p50"] for v in report["variants"]}
    rec = report["recommended"]
    assert rec in names and lat[rec] <= lat["fp32"] and lat[rec] == min(lat.values())
    for v in report["variants"]:
        assert {g["gate"] for g in v["gates"]} == {"finite", "parity", "min_agreement", "max_accuracy_drop",
                                                   "budget_ms"}
        assert v["latency_ms"]["batch"] == 1 and v["throughput"]["batch"] == 8
        assert v["latency_ms"]["p50"] <= v["latency_ms"]["p90"] <= v["latency_ms"]["p99"]
        assert v["accuracy_top5"] is None  # 3 classes
        assert set(v["per_class_accuracy"]) == {"class_0", "class_1", "class_2"}
        t = report["teacher"]
        # JSON rounds ms
        assert v["speedup_vs_teacher"] == pytest.approx(t["latency_ms"]["p50"] / v["latency_ms"]["p50"], rel=2e-3)
        assert v["accuracy_delta_vs_teacher"] == pytest.approx(v["accuracy"] - t["accuracy"])
    # the same checkpoint as teacher: its exported fp32 twin has the same accuracy
    assert report["variants"][0]["accuracy"] == pytest.approx(report["teacher"]["accuracy"])
    assert (out / "report.md").is_file()
    assert sorted(report["plots"]) == ["plots/accuracy_latency.png", "plots/confusion.png"]
    assert (out / "plots" / "accuracy_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_wrong_normalisation_fails_agreement_gate(exported, trained, tmp_path):
    _, d = exported
    out = tmp_path / "bad"
    r = runner.invoke(app, ["validate", "--onnx", str(d / "student.onnx"), "--data", TINY_DATA, "--checkpoint",
                            str(trained), "--mean", "1.0", "--std", "0.05", "--min-agreement", "0.9",
                            "--out", str(out)])
    line = one_line_error(r, GateError.exit_code, "fp32:min_agreement", "fp32:parity")
    assert str(out) not in line or "report.json" in line
    report = assert_valid_report(out / "report.json")  # written before the non-zero exit
    assert report["gates"]["passed"] is False and report["recommended"] is None
    failed = {(f["variant"], f["gate"]) for f in report["gates"]["failed"]}
    assert failed == {("fp32", "parity"), ("fp32", "min_agreement")}
    assert report["variants"][0]["parity"]["top1_agreement"] < 0.9


def test_model_with_wrong_metadata_mean_fails_gate(exported, trained, tmp_path):
    from kdcompress.runtime.onnxio import stamp_metadata

    _, d = exported
    bad = tmp_path / "bad.onnx"
    shutil.copy(d / "student.onnx", bad)
    stamp_metadata(bad, {"mean": [1.0], "std": [0.05]})
    r = runner.invoke(app, ["validate", "--onnx", str(bad), "--data", TINY_DATA, "--checkpoint", str(trained),
                            "--min-agreement", "0.9", "--json"])
    assert r.exit_code == GateError.exit_code, r.output
    report = json.loads(r.stdout)  # the JSON report is printed before the gate error
    assert {f["gate"] for f in report["gates"]["failed"]} == {"parity", "min_agreement"}
    assert "min_agreement" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_third_party_nhwc_static_batch_without_metadata(trained, tmp_path):
    """A foreign file: NHWC input, batch fixed at 1, no metadata. Flags supply the normalisation."""
    import contextlib
    import io
    import warnings

    from kdcompress.data.specs import load_data
    from kdcompress.students.checkpoint import load_checkpoint

    model, obj = load_checkpoint(trained)

    class Nhwc(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return torch.softmax(self.m(x.permute(0, 3, 1, 2)), dim=1)

    path = tmp_path / "foreign.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(Nhwc(model).eval(), (torch.zeros(1, 8, 8, 1),), str(path), dynamo=True,
                          external_data=False, verbose=False)
    assert not onnx.load(str(path)).metadata_props
    one_line_error(invoke("validate", "--onnx", path, "--data", TINY_DATA), UsageError.exit_code, "--mean", "--std")
    mean, std = obj["input_spec"]["mean"][0], obj["input_spec"]["std"][0]
    r = invoke("validate", "--onnx", path, "--data", TINY_DATA, "--mean", mean, "--std", std, "--checkpoint", trained,
               "--json")
    assert r.exit_code == 0, r.output
    v = json.loads(r.stdout)["variants"][0]
    test = load_data(TINY_DATA).test
    ref, _ = _torch_logits(trained, test.x)
    assert v["accuracy"] == pytest.approx(float((ref.argmax(1) == test.y.numpy()).mean()))
    assert v["parity"]["top1_agreement"] == 1.0 and v["parity"]["outputs"] == "probabilities"
    assert v["parity"]["max_abs_diff"] < 1e-5 and v["passed"]
    assert v["latency_ms"]["batch"] == 1 and v["throughput"]["batch"] == 1  # the graph's fixed batch


def test_gate_flags_need_their_reference(exported):
    _, d = exported
    one_line_error(invoke("validate", "--onnx", d / "student.onnx", "--data", TINY_DATA, "--min-agreement", "0.9"),
                   UsageError.exit_code, "--checkpoint")
    one_line_error(invoke("validate", "--onnx", d / "student.onnx", "--data", TINY_DATA, "--max-accuracy-drop",
                          "0.01"), UsageError.exit_code, "--teacher")
    one_line_error(invoke("validate", "--onnx", d / "student.onnx", "--data", TINY_DATA, "--min-agreement", "2"),
                   UsageError.exit_code, "--min-agreement")


@pytest.mark.parametrize("kind", ["truncated", "text", "empty", "missing"])
def test_broken_onnx_files_give_one_line(exported, tmp_path, kind):
    _, d = exported
    path = tmp_path / "model.onnx"
    data = (d / "student.onnx").read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("this is not an ONNX model\n")
    elif kind == "empty":
        path.write_bytes(b"")
    line = one_line_error(invoke("validate", "--onnx", path, "--data", TINY_DATA), InputError.exit_code, str(path))
    assert len(line) < 500


# ------------------------------------------------------------------------------------------ distill + report


def test_distill_with_variants_gates_and_rerender(trained, tmp_path):
    out = tmp_path / "run"
    r = invoke("distill", "--teacher", trained, "--data", TINY_DATA, "--student", "tinycnn_w8", "--epochs", "2",
               "--set", "train.batch_size=16", "--device", "cpu", "--out", out, "--fp16", "--int8", "--calib", "8",
               "--min-agreement", "0.5", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report == assert_valid_report(out / "report.json")
    assert [v["name"] for v in report["variants"]] == ["fp32", "fp16", "int8"]
    assert [a["variant"] for a in report["artifacts"]] == ["fp32", "fp16", "int8"]
    for name in ("student.onnx", "student.fp16.onnx", "student.int8.onnx", "plots/accuracy_latency.png",
                 "plots/training.png", "report.md"):
        assert (out / name).is_file(), name
    fp32 = report["variants"][0]
    assert report["student"]["latency_ms"] == fp32["latency_ms"] and report["parity"] == fp32["parity"]
    lat = {v["name"]: v["latency_ms"]["p50"] for v in report["variants"]}
    assert report["recommended"] is not None and lat[report["recommended"]] <= lat["fp32"]
    assert report["gates"]["thresholds"]["min_agreement"] == 0.5
    # re-render: report.md and the plots come back from report.json alone
    md = (out / "report.md").read_text()
    (out / "report.md").unlink()
    shutil.rmtree(out / "plots")
    r = invoke("report", out)
    assert r.exit_code == 0, r.output
    assert (out / "report.md").read_text() == md
    assert (out / "plots" / "training.png").is_file() and (out / "plots" / "accuracy_latency.png").is_file()


def test_distill_gate_failure_exits_5_after_writing_report(trained, tmp_path):
    out = tmp_path / "run"
    # a student that cannot learn (lr ~ 0) against a teacher at >= 90%: an accuracy drop beyond 10 points
    r = invoke("distill", "--teacher", trained, "--data", TINY_DATA, "--student", "tinycnn_w8", "--epochs", "1",
               "--set", "train.batch_size=16", "--set", "train.lr=1e-9", "--device", "cpu", "--out", out,
               "--max-accuracy-drop", "0.1")
    assert r.exit_code == GateError.exit_code, r.output
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln]  # distill also logs progress to stderr
    assert len(errors) == 1 and errors[0].startswith("kdcompress: error:") and "Traceback" not in r.output
    assert "fp32:max_accuracy_drop" in errors[0] and str(out / "report.json") in errors[0]
    report = assert_valid_report(out / "report.json")
    assert report["teacher"]["accuracy"] - report["student"]["accuracy"] > 0.1
    assert report["gates"]["passed"] is False
    assert report["gates"]["failed"][0]["gate"] == "max_accuracy_drop"


def test_report_rerender_errors(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("bad-report")  # not tmp_path: its report.json is invalid on purpose
    one_line_error(invoke("report", tmp_path), InputError.exit_code, "report.json")
    (tmp_path / "report.json").write_text(json.dumps({"schema_version": 99}))
    one_line_error(invoke("report", tmp_path), InputError.exit_code, "schema_version 99")


# ------------------------------------------------------------------------------------------ pure pieces


def test_accuracy_metrics_hand_computed():
    from kdcompress.validate.models import accuracy_metrics

    classes = tuple(str(i) for i in range(10))
    logits = np.tile(np.arange(10, dtype=np.float32)[::-1], (4, 1))  # ranking: 0 > 1 > ... > 9
    y = np.array([0, 4, 5, 0])  # top-1 right for rows 0 and 3; top-5 (classes 0-4) right for rows 0, 1, 3
    acc = accuracy_metrics(logits, y, classes)
    assert acc.top1 == 0.5 and acc.top5 == 0.75
    assert acc.per_class["0"] == 1.0 and acc.per_class["4"] == 0.0 and acc.per_class["9"] is None
    assert accuracy_metrics(logits[:, :3], np.array([0, 1, 2, 0]), ("a", "b", "c")).top5 is None


@pytest.mark.parametrize("rows, expected", [
    ([("fp32", "fp32", 1.0, True), ("fp16", "fp16", 1.1, True), ("int8", "int8", 0.4, True)], "int8"),
    ([("fp32", "fp32", 1.0, True), ("int8", "int8", 1.3, True)], "fp32"),  # int8 slower: never chosen
    ([("fp32", "fp32", 1.0, False), ("fp16", "fp16", 0.9, True)], "fp16"),
    ([("fp32", "fp32", 1.0, False), ("int8", "int8", 1.2, True)], None),  # slower than fp32 even if fp32 fails
    ([("fp32", "fp32", 1.0, True), ("int8", "int8", 0.5, False)], "fp32"),
    ([("fp32", "fp32", 1.0, False)], None),
    ([("int8", "int8", 2.0, True), ("fp16", "fp16", 3.0, True)], "int8"),  # no fp32 given: fastest passing
])
def test_recommend(rows, expected):
    from kdcompress.validate.gates import recommend

    assert recommend(rows) == expected


def test_topological_sort_repairs_fp16_graph():
    from kdcompress.runtime.onnxio import onnx_proto
    from kdcompress.core.spec import InputSpec
    from kdcompress.export.variants import to_fp16
    from kdcompress.students.registry import build_student

    spec = InputSpec((1, 8, 8), (0.5,), (0.25,))
    half = to_fp16(onnx_proto(build_student("tinycnn_w8", 3, spec), spec))
    onnx.checker.check_model(half, full_check=True)  # the raw converter output fails this check
