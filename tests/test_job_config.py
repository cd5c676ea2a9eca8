"""One typed job: distill writes the whole job into config.json (`job`: export, gates, selection options and the
flags), and `distill --config RUN/config.json` redoes the run from its directory; a flag given beside it wins."""

from __future__ import annotations

import hashlib
import json

from typer.testing import CliRunner

from kdcompress.cli import app

from .conftest import TINY_DATA

runner = CliRunner()


def _distill(*args):
    return runner.invoke(app, ["distill", *args, "--json"], catch_exceptions=False)


def test_config_json_records_the_whole_job_and_redoes_it(tiny_teacher, tmp_path):
    a = tmp_path / "a"
    r = _distill("--teacher", str(tiny_teacher), "--data", TINY_DATA, "--student", "tinycnn_w8", "--epochs", "1",
                 "--device", "cpu", "--out", str(a), "--min-agreement", "0.5", "--set", "train.lr=0.02")
    assert r.exit_code == 0, r.output
    job = json.loads((a / "config.json").read_text())["job"]
    assert job["gates"]["min_agreement"] == 0.5 and job["select"]["precision"] == "fp32"
    assert job["export"]["int8"] is False and job["flags"]["set_"] == ["train.lr=0.02"]
    assert "out" not in job["flags"] and job["flags"]["teacher"] == str(tiny_teacher)

    b = tmp_path / "b"
    r = _distill("--config", str(a / "config.json"), "--out", str(b))
    assert r.exit_code == 0, r.output
    ca, cb = (json.loads((d / "config.json").read_text()) for d in (a, b))
    assert ca["job"] == cb["job"] and ca["preset"] == cb["preset"] and ca["student"] == cb["student"]
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (a, b))
    assert ra["student"]["arch"] == rb["student"]["arch"] and ra["training"]["epochs"] == rb["training"]["epochs"]
    # the same seed, data and job: the same trained weights, so the same test accuracy
    assert ra["student"]["accuracy"] == rb["student"]["accuracy"]

    c = tmp_path / "c"
    r = _distill("--config", str(a / "config.json"), "--out", str(c), "--epochs", "2")  # a flag given here wins
    assert r.exit_code == 0, r.output
    cc = json.loads((c / "config.json").read_text())
    assert cc["job"]["flags"]["epochs"] == 2 and cc["preset"]["train"]["epochs"] == 2
    assert cc["job"]["flags"]["set_"] == ["train.lr=0.02"]


def test_a_config_without_a_job_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"preset": {}}))
    before = hashlib.sha256(bad.read_bytes()).hexdigest()
    r = runner.invoke(app, ["distill", "--config", str(bad), "--out", str(tmp_path / "x")])
    assert r.exit_code == 3 and "records no distill job" in r.output and not (tmp_path / "x").exists()
    assert hashlib.sha256(bad.read_bytes()).hexdigest() == before
    r = runner.invoke(app, ["distill", "--config", str(tmp_path / "nope.json")])
    assert r.exit_code == 3 and "nope.json" in r.output
    r = runner.invoke(app, ["distill", "--student", "tinycnn_w8"])
    assert r.exit_code == 2 and "--teacher and --data" in r.output


def test_a_long_recipe_without_epochs_is_warned_about():
    from kdcompress.commands.distill import distill_job, recipe_length_warning

    base = {"teacher": "t.pt", "data": "digits", "budget_ms": None, "student": "tinycnn_w8", "preset": "dkd",
            "auto_presets": None, "auto_budget": 1.0, "stat": "p50", "device": "cpu", "provider": "cpu",
            "threads": None, "compile_": False, "out": "runs/x", "trust_checkpoint": False, "restart": False,
            "download": False, "teacher_arch": None, "num_classes": None, "classes": None, "input_shape": None,
            "mean": None, "std": None, "fp16": False, "int8": False, "calib": 64, "simplify": False,
            "min_agreement": None, "max_accuracy_drop": None, "precision": "fp32", "max_precision_drop": 0.01,
            "latency_table": None, "tune": True, "rank": "flops", "trial_top": 4, "trial_budget": 0.25,
            "student_init": None, "force": False, "allow_weak_teacher": False}
    for flags, warned in (({"epochs": None, "set_": None}, True), ({"epochs": 5, "set_": None}, False),
                          ({"epochs": None, "set_": ["train.epochs=7"]}, False)):
        f = {**base, **flags}
        w = recipe_length_warning(f, distill_job(f))
        assert (w is not None) == warned and (not warned or "240 epochs" in w and "--epochs N" in w)


def test_teacher_train_runs_one_typed_job_and_reports_it(tmp_path):
    out = tmp_path / "t.pt"
    r = CliRunner().invoke(app, ["teacher", "train", "--data", TINY_DATA, "--arch", "tinycnn_w8", "--epochs", "1",
                                 "--device", "cpu", "--out", str(out), "--set", "train.lr=0.02", "--json"])
    assert r.exit_code == 0, r.output
    job = json.loads(r.stdout)["job"]
    assert (job["format"], job["data"], job["arch"], job["out"], job["device"]) == (
        "kdcompress.teacher-train-job/1", TINY_DATA, "tinycnn_w8", str(out), "cpu")
    assert job["preset"]["train"]["epochs"] == 1 and job["preset"]["train"]["lr"] == 0.02 and out.is_file()
    (tmp_path / "dir").mkdir()  # a directory as --out: refused when the job is built, nothing written
    r = CliRunner().invoke(app, ["teacher", "train", "--data", TINY_DATA, "--epochs", "1",
                                 "--out", str(tmp_path / "dir")])
    assert r.exit_code == 3 and "is a directory" in r.output and not any((tmp_path / "dir").iterdir())
