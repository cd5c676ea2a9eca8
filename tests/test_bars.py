"""Every long command draws the one ETA bar (core.progress) on a terminal, driven through the CLI: select (a
real measured ladder), profile, and distill's own bars; and what one tiny distill run leaves for its user:
per-class accuracy in report.json and report.md, loss-only training curves, and `export --run`'s next steps
that paste back whole at 80 columns. One distill run is shared by the module (the suite runs on 2 cores)."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from kdcompress.cli import app

from .conftest import TINY_DATA
from .test_cli80 import pasted, whole
from .test_profile import ladder, stats

runner = CliRunner()
TERMINAL = {"TTY_COMPATIBLE": "1", "COLUMNS": "80"}  # rich draws its live bars as on an 80-column terminal
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ETA = re.compile(r"\d+:\d\d:\d\d eta \d+:\d\d:\d\d")  # elapsed, then a real estimate of the time remaining
CANDIDATES = "tinycnn_w8,tinycnn_w16,tinycnn_w32"


def frames(stderr: str) -> list[str]:
    """Every line rich drew (each redraw of a live bar is a frame), without the terminal's escape codes."""
    return [f for f in re.split(r"[\r\n]", ANSI.sub("", stderr)) if f.strip()]


def assert_eta_bar(stderr: str, desc: str, last_status: str = "done") -> list[str]:
    """The bar `desc` fits 80 columns, gave an estimate before it was full, and ends full with `last_status`."""
    bars = [f for f in frames(stderr) if f.startswith(desc + " ")]
    assert bars, frames(stderr)
    assert all(len(f) <= 80 for f in bars), max(bars, key=len)
    assert "100%" in bars[-1] and ETA.search(bars[-1]) and last_status in bars[-1], bars[-1]
    assert any(ETA.search(f) and "100%" not in f for f in bars), bars
    return bars


# ------------------------------------------------------------------------------------------ select, profile


def test_select_measures_on_an_eta_bar_and_keeps_json_strict(tiny_teacher):
    args = ["select", "--teacher", str(tiny_teacher), "--candidates", CANDIDATES, "--json"]
    r = runner.invoke(app, args, env=TERMINAL)
    assert r.exit_code == 0, r.output
    sel = json.loads(r.stdout)  # one strict object: the bar went to stderr
    assert sel["search"]["measured"] == 3 and sel["source"] == "measured"
    assert sel["job"]["format"] == "kdcompress.select-job/1" and sel["job"]["budget_ms"] is None  # the typed job
    bars = assert_eta_bar(r.stderr, "select")
    for name in CANDIDATES.split(","):  # the status says what is measured now
        assert any(f.rstrip().endswith(f"measuring {name}") for f in bars), (name, bars)
    assert any(f.rstrip().endswith("measuring the teacher") for f in bars), bars
    # every candidate and the teacher are one unit each, known before the first is measured
    assert [f for f in bars if "%" in f][0].split()[2] == "0%" and any(" 25% " in f for f in bars), bars

    piped = runner.invoke(app, args)  # the same ladder, from the cache, piped: no bar at all
    assert piped.exit_code == 0, piped.output
    assert json.loads(piped.stdout)["search"]["cached"] == 3
    assert "eta" not in piped.stderr and "━" not in piped.stderr, piped.stderr


def test_profile_times_the_ladder_on_an_eta_bar(tmp_path, monkeypatch):
    import kdcompress.runtime.latencytable as lt

    d = ladder(tmp_path, ["a:fp32", "b:int8"])

    def draw(path, provider, shape, settings, min_time_s):
        time.sleep(0.05)  # a draw takes time: the bar has a rate to estimate from
        return stats(1.0)
    monkeypatch.setattr(lt, "draw_file", draw)
    r = runner.invoke(app, ["profile", str(d), "--no-tune", "--processes", "3", "--json"], env=TERMINAL)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["processes"] == 3
    bars = assert_eta_bar(r.stderr, "profile")
    drawn = [f for f in bars if "draw " in f]
    for i in (1, 2, 3):
        for key in ("a:fp32", "b:int8"):
            assert any(f.rstrip().endswith(f"draw {i}/3: {key}") for f in drawn), (i, key, drawn)
    # processes x models draws, all planned before the first: 1 of 6 done is 17%
    assert any(" 17% " in f for f in bars), bars


# ------------------------------------------------------------------------------------------ one distill run


@pytest.fixture(scope="module")
def distilled(tiny_teacher, tmp_path_factory):
    """A tiny distill run through the CLI on an 80-column terminal, with every figure plotted recorded
    (plots._save wrapped: the figure's axes and their lines as the run drew them)."""
    import kdcompress.report.plots as plots

    root = tmp_path_factory.mktemp("bars")
    drawn: dict[str, list[dict[str, list[float]]]] = {}
    save = plots._save

    def recording(fig, path):
        drawn[Path(path).name] = [{ln.get_label(): [float(v) for v in ln.get_ydata()] for ln in ax.get_lines()}
                                  for ax in fig.axes if ax.get_lines()]
        save(fig, path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "_save", recording)
        r = runner.invoke(app, ["distill", "--teacher", str(tiny_teacher), "--data", TINY_DATA, "--student",
                                "tinycnn_w8", "--epochs", "3", "--set", "train.batch_size=8", "--device", "cpu",
                                "--out", str(root / "run")],
                          env={**TERMINAL, "KDCOMPRESS_CACHE": str(root / "cache")})
    assert r.exit_code == 0, r.output
    return root / "run", r, drawn


def test_distill_draws_its_training_bar_with_an_eta(distilled):
    _, r, _ = distilled
    assert_eta_bar(r.stderr, "train tinycnn_w8", last_status="ep 3/3 loss ")
    assert_eta_bar(r.stderr, "select")
    assert_eta_bar(r.stderr, "export, validate")
    assert all(len(line) <= 80 for line in ANSI.sub("", r.stdout).splitlines()), r.stdout


def test_report_keeps_per_class_accuracy_of_student_and_teacher(distilled):
    run, _, _ = distilled
    report = json.loads((run / "report.json").read_text())
    classes = report["data"]["classes"]
    md = (run / "report.md").read_text()
    table = md[md.index("## Per-class test accuracy"):].splitlines()
    header = [c.strip() for c in table[2].strip("|").split("|")]
    models = {"teacher": report["teacher"], **{v["name"]: v for v in report["variants"]}}
    assert header == ["class", "teacher", *[v["name"] for v in report["variants"]]]
    for name, m in models.items():
        matrix = np.asarray(m["confusion"]["matrix"], dtype=float)
        assert matrix.shape == (len(classes), len(classes)) and matrix.sum() == report["data"]["sizes"]["test"]
        expected = np.diag(matrix) / matrix.sum(axis=1)  # every class is in the test split
        got = [m["per_class_accuracy"][c] for c in classes]
        assert got == pytest.approx(expected.tolist(), abs=1e-6), name
        col = header.index(name)
        for c, value in zip(classes, expected, strict=True):  # report.md shows the same numbers, in percent
            row = next(line for line in table if line.startswith(f"| {c} |"))
            assert row.strip("|").split("|")[col].strip() == f"{100 * value:.2f}%", (name, c, row)
    assert report["student"]["per_class_accuracy"] == report["variants"][0]["per_class_accuracy"]


def test_training_plot_draws_loss_curves_only(distilled):
    run, _, drawn = distilled
    history = json.loads((run / "report.json").read_text())["training"]["history"]
    assert len(history) == 3 and {"lr", "train_seconds", "loss", "ce", "kd"} <= set(history[0])
    losses, accuracy = drawn["training.png"]  # the loss panel and the validation-accuracy panel
    assert set(losses) == {"total", "ce", "kd"}, set(losses)  # no learning rate, no seconds
    assert losses["total"] == pytest.approx([h["loss"] for h in history])
    for k in ("ce", "kd"):
        assert losses[k] == pytest.approx([h[k] for h in history])
    assert list(accuracy.values())[0] == pytest.approx([100 * h["val_accuracy"] for h in history])
    assert (run / "plots" / "training.png").is_file()


def test_export_run_prints_next_steps_that_paste_whole_at_80_columns(distilled, tmp_path):
    run, _, _ = distilled
    # a copy (export --run records into the run's report), named so the validate command must wrap
    name = "exported-run-" + "x" * max(1, 60 - len(str(tmp_path)) - len("/exported-run-/student.onnx"))
    copy = tmp_path / name
    shutil.copytree(run, copy)
    r = runner.invoke(app, ["export", "--run", str(copy)], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    onnx = f"{copy}/student.onnx"
    assert all(len(line) <= 80 or whole(onnx, line) for line in lines), lines
    start = next(i for i, line in enumerate(lines) if line.startswith("next:"))
    assert pasted(lines, "kdcompress validate") == f"kdcompress validate --onnx {onnx} --data DATA"
    assert pasted(lines, "kdcompress predict") == f"kdcompress predict {onnx} IMAGES"
    if len(onnx) <= 60:  # short enough to need no line over 80: the long command did wrap
        assert any(line.endswith(" \\") for line in lines[start:]), lines[start:]
