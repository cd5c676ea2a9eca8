"""What people read of a run: the training plot draws losses only, report.json carries each model's test
confusion (and report.md its most frequent confusions, plots/confusion.png the heatmaps), and metrics.csv holds
the per-epoch history."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from kdcompress.cli import app
from kdcompress.report.plots import loss_columns
from kdcompress.validate import accuracy_metrics
from kdcompress.validate.models import confusion_json

from .conftest import TINY_DATA

runner = CliRunner()


def test_the_training_plot_draws_losses_not_seconds():
    row = {"epoch": 1, "lr": 0.05, "val_accuracy": 0.5, "loss": 1.2, "ce": 0.4, "kd": 0.8, "train_seconds": 150.0}
    assert loss_columns([row]) == ["loss", "ce", "kd"]


def test_confusion_counts_by_hand():
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 1, 0])
    logits = np.eye(3)[pred]
    acc = accuracy_metrics(logits, y, ("a", "b", "c"))
    assert acc.confusion.tolist() == [[1, 2, 0], [0, 2, 0], [1, 0, 0]]
    assert acc.per_class == {"a": 1 / 3, "b": 1.0, "c": 0.0}
    j = acc.to_json()["confusion"]
    assert j["matrix"] == [[1, 2, 0], [0, 2, 0], [1, 0, 0]]
    assert j["top"] == [{"true": "a", "predicted": "b", "count": 2}, {"true": "c", "predicted": "a", "count": 1}]


def test_a_large_confusion_keeps_only_its_top_cells():
    m = np.eye(101, dtype=np.int64)
    m[3, 7] = 5
    j = confusion_json(m, tuple(str(i) for i in range(101)))
    assert j["matrix"] is None and j["top"] == [{"true": "3", "predicted": "7", "count": 5}]


def test_a_run_carries_confusions_metrics_csv_and_plots(tiny_teacher, tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["distill", "--teacher", str(tiny_teacher), "--data", TINY_DATA, "--student", "tinycnn_w8",
                            "--epochs", "2", "--device", "cpu", "--out", str(out), "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    n_test = report["data"]["sizes"]["test"]
    for model in (report["shipped"], report["teacher"], *report["variants"]):
        m = np.array(model["confusion"]["matrix"])
        assert m.shape == (3, 3)
        assert np.trace(m) / m.sum() == pytest.approx(model["accuracy"], abs=1e-6)  # the accuracy's own counts
        assert m.sum() == n_test
    assert "plots/confusion.png" in report["plots"] and (out / "plots" / "confusion.png").stat().st_size > 1000
    history = report["training"]["history"]
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [h["epoch"] for h in history]
    assert {"lr", "val_accuracy", "loss", "train_seconds"} <= set(rows[0])
    assert [float(r["val_accuracy"]) for r in rows] == [h["val_accuracy"] for h in history]


def test_tensorboard_logs_each_epoch_when_asked(tiny_teacher, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    r = runner.invoke(app, ["distill", "--teacher", str(tiny_teacher), "--data", TINY_DATA, "--student", "tinycnn_w8",
                            "--epochs", "2", "--device", "cpu", "--out", str(out), "--json",
                            "--set", "train.tensorboard=true"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    history = json.loads((out / "report.json").read_text())["training"]["history"]
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    vals = acc.Scalars("val_accuracy")
    assert [e.step for e in vals] == [1, 2]
    assert [e.value for e in vals] == pytest.approx([h["val_accuracy"] for h in history], abs=1e-6)
    assert {"lr", "loss", "train_seconds"} <= set(acc.Tags()["scalars"])


def test_tensorboard_without_the_package_is_refused_before_any_file(tiny_teacher, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorboard" else real(n, *a))
    out = tmp_path / "run"
    r = runner.invoke(app, ["distill", "--teacher", str(tiny_teacher), "--data", TINY_DATA, "--student", "tinycnn_w8",
                            "--epochs", "1", "--device", "cpu", "--out", str(out), "--set", "train.tensorboard=true"])
    assert r.exit_code == 7 and "pip install tensorboard" in r.output and not out.exists()


def test_turning_tensorboard_on_for_a_resumed_run_resumes_it(tiny_teacher, tmp_path, monkeypatch):
    """train.tensorboard changes what is logged, not what is trained: a run stopped without it resumes with it,
    and its TensorBoard log holds every epoch, those before the resume included."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from kdcompress.train.step import StepEngine

    from .helpers import sigterm_at_step

    out = tmp_path / "run"
    args = ["distill", "--teacher", str(tiny_teacher), "--data", TINY_DATA, "--student", "tinycnn_w8",
            "--epochs", "3", "--device", "cpu", "--out", str(out), "--json"]
    orig = sigterm_at_step(monkeypatch, epoch=1, step=1)  # the trainer stops after epoch 1
    r = runner.invoke(app, args)
    assert r.exit_code == 143, r.output
    monkeypatch.setattr(StepEngine, "step", orig)
    r = runner.invoke(app, [*args, "--set", "train.tensorboard=true"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    history = json.loads(r.stdout)["training"]["history"]
    assert json.loads(r.stdout)["training"]["resumed_from_epoch"] == 1
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("val_accuracy")] == [
        (h["epoch"], h["val_accuracy"]) for h in history] and len(history) == 3
