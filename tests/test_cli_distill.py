"""End-to-end CLI runs on tiny data (typer's CliRunner), and the one-line error paths."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from kdcompress.cli import app
from kdcompress.core.errors import BudgetError, InputError, UsageError
from kdcompress.students.registry import STUDENTS

from .conftest import TINY_DATA

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_help_is_fast_and_lists_commands():
    r = invoke("--help")
    assert r.exit_code == 0
    for cmd in ("distill", "demo", "teacher", "presets"):
        assert cmd in r.output


def test_distill_end_to_end_json(tiny_teacher, tmp_path):
    out = tmp_path / "run"
    r = invoke("distill", "--teacher", str(tiny_teacher), "--data", TINY_DATA, "--student", "tinycnn_w8",
               "--epochs", "2", "--set", "train.batch_size=16", "--device", "cpu", "--out", str(out), "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)  # stdout holds the JSON object and nothing else
    for f in ("config.json", "student.pt", "student.onnx", "report.json", "report.md"):
        assert (out / f).is_file(), f
    assert report == json.loads((out / "report.json").read_text())
    assert report["schema_version"] == 2
    assert report["student"]["arch"] == "tinycnn_w8"
    assert report["epochs"] == 2 and report["preset"]["name"] == "kd"
    assert set(report["student"]["latency_ms"]) >= {"p50", "p90", "p99"}
    assert report["student"]["latency_ms"]["p50"] <= report["student"]["latency_ms"]["p99"]
    for k in ("path", "arch", "params", "accuracy", "latency_ms"):
        assert k in report["teacher"]
    assert report["parity"]["max_abs_diff"] < 1e-4
    assert report["parity"]["top1_agreement"] == 1.0
    assert report["parity"]["samples"] == report["data"]["sizes"]["test"]
    assert 0.0 <= report["student"]["accuracy"] <= 1.0
    assert report["machine"]["cpus"] >= 1 and report["device"] == "cpu"
    assert len(report["training"]["history"]) == 2


def test_rerun_resumes_instead_of_retraining(tiny_teacher, tmp_path):
    args = ["distill", "--teacher", str(tiny_teacher), "--data", TINY_DATA, "--student", "tinycnn_w8",
            "--epochs", "2", "--set", "train.batch_size=16", "--device", "cpu", "--out", str(tmp_path), "--json"]
    first = json.loads(invoke(*args).stdout)
    second = json.loads(invoke(*args).stdout)
    assert first["training"]["resumed_from_epoch"] == 0
    assert second["training"]["resumed_from_epoch"] == 2  # nothing left to train
    assert second["student"]["val_accuracy_best"] == first["student"]["val_accuracy_best"]
    # a different configuration in the same directory is refused, not silently mixed
    r = runner.invoke(app, [*args[:-1], "--set", "kd.T=2"])
    assert r.exit_code == UsageError.exit_code and "--restart" in r.stderr


def _one_line_error(r, code: int, *needles: str) -> None:
    assert r.exit_code == code, (r.exit_code, r.output)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("kdcompress: error:")
    assert "Traceback" not in r.output
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize(
    "extra, code, needles",
    [
        (["--preset", "kdd"], UsageError.exit_code, ["'kdd'", "did you mean 'kd'"]),
        (["--student", "resnet9"], UsageError.exit_code, ["'resnet9'", "did you mean"]),
        (["--set", "kd.TT=3"], UsageError.exit_code, ["kd.TT", "did you mean 'T'"]),
        (["--set", "kdd.T=3"], UsageError.exit_code, ["'kdd'", "did you mean 'kd'"]),
        (["--set", "train.lrr=0.1"], UsageError.exit_code, ["train.lrr", "did you mean 'lr'"]),
        (["--set", "kd.T=hot"], UsageError.exit_code, ["kd.T", "number"]),
        (["--set", "kd.T=-1"], UsageError.exit_code, ["T must be > 0"]),
        (["--epochs", "0"], UsageError.exit_code, ["epochs"]),
    ],
)
def test_bad_flags_give_one_line(tiny_teacher, tmp_path, extra, code, needles):
    base = ["distill", "--teacher", str(tiny_teacher), "--data", TINY_DATA, "--student", "tinycnn_w8",
            "--device", "cpu", "--out", str(tmp_path / "r")]
    _one_line_error(runner.invoke(app, base + extra), code, *needles)
    assert not (tmp_path / "r" / "student.pt").exists()


def test_bad_data_spec(tiny_teacher, tmp_path):
    r = runner.invoke(app, ["distill", "--teacher", str(tiny_teacher), "--data", "digitz", "--student",
                            "tinycnn_w8", "--out", str(tmp_path)])
    _one_line_error(r, UsageError.exit_code, "'digitz'", "did you mean 'digits'")


@pytest.mark.parametrize("content", [None, b"", b"not a checkpoint at all", b"PK\x03\x04broken zip"])
def test_missing_or_corrupt_teacher(tmp_path, content):
    path = tmp_path / "teacher.pt"
    if content is not None:
        path.write_bytes(content)
    r = runner.invoke(app, ["distill", "--teacher", str(path), "--data", TINY_DATA, "--student", "tinycnn_w8",
                            "--out", str(tmp_path / "r")])
    _one_line_error(r, InputError.exit_code, str(path))


def test_teacher_data_class_mismatch(tiny_teacher, tmp_path):
    r = runner.invoke(app, ["distill", "--teacher", str(tiny_teacher), "--data", "synthetic:classes=5,n=100",
                            "--student", "tinycnn_w8", "--out", str(tmp_path)])
    _one_line_error(r, InputError.exit_code, "3 classes", "5")


def test_impossible_budget_names_fastest_before_training(tiny_teacher, tmp_path):
    r = runner.invoke(app, ["distill", "--teacher", str(tiny_teacher), "--data", TINY_DATA,
                            "--budget-ms", "0.000001", "--out", str(tmp_path / "r")])
    _one_line_error(r, BudgetError.exit_code, "no student meets", "fastest candidate")
    assert not (tmp_path / "r" / "checkpoints" / "last.pt").exists()
    # the named candidate and figure are the minimum of what was measured (and cached) for this run
    m = re.search(r"fastest candidate, (\S+), measured ([0-9.]+) ms", r.stderr)
    assert m, r.stderr
    from kdcompress.select.cache import cache_path

    cached = json.loads(cache_path().read_text())
    fastest = min(v["p50"] for v in cached.values())
    assert float(m.group(2)) == pytest.approx(fastest, abs=1e-4)
    assert m.group(1) in STUDENTS


def test_presets_list_and_show():
    r = invoke("presets", "list", "--json")
    names = [p["name"] for p in json.loads(r.stdout)["presets"]]
    assert "kd" in names and "ce" in names
    r = invoke("presets", "show", "kd")
    assert r.exit_code == 0 and "T=4.0" in r.stdout and "0.9" in r.stdout
    _one_line_error(runner.invoke(app, ["presets", "show", "dkk"]), UsageError.exit_code, "'dkk'")
