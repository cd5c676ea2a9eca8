"""`export` and `validate` as typed jobs (ExportJob, ValidateJob: built from the flags, refused as before,
recorded in validate's report.json) and their progress: a bar with an ETA on a terminal's stderr, nothing on
piped stderr, and --json's stdout one strict JSON object either way. Driven through the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kdcompress.cli import app
from kdcompress.core.errors import UsageError

from .conftest import TINY_DATA
from .helpers import tree_hash

runner = CliRunner()
TERMINAL = {"TTY_COMPATIBLE": "1", "COLUMNS": "80"}  # rich draws its live bars as on an 80-column terminal
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ETA = re.compile(r"\d+:\d\d:\d\d eta \d+:\d\d:\d\d")  # elapsed, then the time remaining


def invoke(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def frames(stderr: str) -> list[str]:
    """Every line rich drew (each redraw of a live bar is a frame), without the terminal's escape codes."""
    return [f for f in re.split(r"[\r\n]", ANSI.sub("", stderr)) if f.strip()]


def assert_eta_bar(stderr: str, desc: str) -> None:
    bars = [f for f in frames(stderr) if f.startswith(desc + " ")]
    assert bars, stderr
    assert all(len(f) <= 80 for f in bars), max(bars, key=len)
    last = bars[-1]
    assert "100%" in last and ETA.search(last) and last.rstrip().endswith("done"), last
    assert any(ETA.search(f) and "100%" not in f for f in bars), bars  # a real estimate while it ran


def one_line_error(r, code: int, *needles: str) -> None:
    assert r.exit_code == code, (r.exit_code, r.output)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("kdcompress: error:") and "Traceback" not in r.output, r.stderr
    assert all(n in lines[0] for n in needles), lines[0]


@pytest.fixture(scope="module")
def onnx_file(tiny_teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "student.onnx"
    r = invoke("export", "--checkpoint", tiny_teacher, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    assert r.stderr.strip() == "", r.stderr  # piped stderr: no bar, no spinner frames
    return out


# ------------------------------------------------------------------------------------------ progress


def test_export_draws_an_eta_bar_on_a_terminal_and_keeps_json_strict(tiny_teacher, tmp_path):
    r = invoke("export", "--checkpoint", tiny_teacher, "--out", tmp_path / "s.onnx", "--data", TINY_DATA, "--fp16",
               "--json", env=TERMINAL)
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)  # one strict object: the bar went to stderr
    assert [a["variant"] for a in result["artifacts"]] == ["fp32", "fp16"]
    assert result["job"]["format"] == "kdcompress.export-job/1" and result["job"]["export"]["fp16"] is True
    assert result["job"]["checkpoint"] == str(tiny_teacher) and result["job"]["data"] == TINY_DATA
    assert_eta_bar(r.stderr, "export")
    assert any("checking fp16 against PyTorch" in f for f in frames(r.stderr)), frames(r.stderr)


def test_validate_draws_an_eta_bar_and_records_its_job(onnx_file, tiny_teacher, tmp_path):
    out = tmp_path / "val"
    r = invoke("validate", "--onnx", onnx_file, "--data", TINY_DATA, "--checkpoint", tiny_teacher,
               "--min-agreement", "0.5", "--throughput-batch", "4", "--out", out, "--json", env=TERMINAL)
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert_eta_bar(r.stderr, "validate")
    assert any("measuring fp32" in f for f in frames(r.stderr)), frames(r.stderr)
    written = json.loads((out / "report.json").read_text())  # schema-checked by conftest's autouse fixture
    job = written["job"]
    assert job == report["job"]
    assert job["format"] == "kdcompress.validate-job/1" and job["onnx"] == [str(onnx_file)]
    assert job["data"] == TINY_DATA and job["checkpoint"] == str(tiny_teacher) and job["out"] == str(out)
    assert job["throughput_batch"] == 4 and job["provider"] == "cpu" and job["teacher"] is None
    assert job["gates"]["min_agreement"] == 0.5 and job["gates"]["budget_stat"] == "p50"
    assert written["variants"][0]["throughput"]["batch"] == 4  # the job recorded is the job measured


def test_validate_without_out_and_piped_carries_its_job_and_draws_no_bar(onnx_file):
    r = invoke("validate", "--onnx", onnx_file, "--data", TINY_DATA, "--throughput-batch", "2", "--json")
    assert r.exit_code == 0, r.output
    job = json.loads(r.stdout)["job"]  # like every command's --json result: the typed job it ran
    assert job["format"] == "kdcompress.validate-job/1" and job["throughput_batch"] == 2 and job["out"] is None
    assert "eta" not in r.stderr, r.stderr


# ------------------------------------------------------------------------------------------ the jobs


def test_export_job_from_the_flags_is_refused_as_before(tiny_teacher, tmp_path):
    from kdcompress.export import ExportOptions
    from kdcompress.pipeline import ExportJob

    with pytest.raises(UsageError, match="--run runs/NAME or --checkpoint"):
        ExportJob(ExportOptions())
    with pytest.raises(UsageError, match="--run runs/NAME or --checkpoint"):
        ExportJob(ExportOptions(), run=tmp_path, checkpoint=tiny_teacher)
    job = ExportJob(ExportOptions(fp16=True), checkpoint=tiny_teacher, data=TINY_DATA)
    assert json.loads(json.dumps(job.to_json())) == {
        "format": "kdcompress.export-job/1", "run": None, "checkpoint": str(tiny_teacher), "out": None,
        "data": TINY_DATA, "teacher": None,
        "export": {"opset": job.opts.opset, "fp16": True, "int8": False, "calib": 64, "simplify": False}}
    before = tree_hash(tmp_path)
    one_line_error(invoke("export", "--run", tmp_path, "--checkpoint", tiny_teacher), UsageError.exit_code,
                   "--run", "--checkpoint")
    one_line_error(invoke("export", "--checkpoint", tiny_teacher, "--calib", "0", "--out", tmp_path / "s.onnx"),
                   UsageError.exit_code, "--calib")
    assert tree_hash(tmp_path) == before


def test_validate_job_from_the_flags_is_refused_as_before(onnx_file, tmp_path):
    from kdcompress.core.config import RuntimeConfig
    from kdcompress.pipeline import ValidateJob
    from kdcompress.validate import Gates

    def job(**kw):
        return ValidateJob(**{"files": (onnx_file,), "data": TINY_DATA, "runtime": RuntimeConfig(),
                              "gates": Gates(), **kw})

    with pytest.raises(UsageError, match="at least one --onnx"):
        job(files=())
    with pytest.raises(UsageError, match="--throughput-batch must be >= 1"):
        job(throughput_batch=0)
    with pytest.raises(UsageError, match="--checkpoint"):
        job(gates=Gates(min_agreement=0.9))
    with pytest.raises(UsageError, match="--teacher"):
        job(gates=Gates(max_accuracy_drop=0.01))
    out = tmp_path / "val"
    for args, needle in ((("--throughput-batch", "0"), "--throughput-batch"),
                         (("--classes", "a,b,c"), "--teacher FILE"),
                         (("--max-accuracy-drop", "0.1"), "--teacher")):
        one_line_error(invoke("validate", "--onnx", onnx_file, "--data", TINY_DATA, "--out", out, *args),
                       UsageError.exit_code, needle)
        assert not out.exists()  # refused before --out is touched
