"""train.teacher_cache=auto (the default): the teacher-output cache where it pays, off where it does not, and
the report says which ran and why."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

import kdcompress.train.cachechoice as choice_mod
from kdcompress.cli import app
from kdcompress.core.config import TrainConfig
from kdcompress.core.errors import UsageError
from kdcompress.core.splits import TensorSplit
from kdcompress.train import CacheFacts, decide_cache

from .conftest import TINY_DATA

runner = CliRunner()
SPLIT = TensorSplit(torch.zeros(40, 1, 8, 8), torch.zeros(40, dtype=torch.long))
PAYS = CacheFacts(teacher_flops=1_530_000, student_flops=46_000, reads_teacher=True, teacher_file=True)
LONG = TrainConfig(epochs=40, cache_views=8)


def test_auto_uses_the_cache_for_a_big_teacher_over_a_long_run():
    d = decide_cache(LONG, PAYS, SPLIT, 3)
    assert (d.requested, d.used) == ("auto", "views") and "33x" in d.reason


@pytest.mark.parametrize("change, why", [
    ({"teacher_flops": 69_000}, "1.5x the student's FLOPs"),  # below the 2x the cache pays from
    ({"reads_teacher": False}, "does not read the teacher"),
    ({"teacher_file": False}, "not a file"),
    ({"teacher_flops": None}, "unknown"),
])
def test_auto_stays_online_when_the_cache_does_not_pay(change, why):
    d = decide_cache(LONG, replace(PAYS, **change), SPLIT, 3)
    assert d.used == "off" and why in d.reason


def test_a_short_run_stays_online():
    """N views cost N teacher passes: below 2N epochs the online teacher is cheaper or about equal."""
    assert decide_cache(replace(LONG, epochs=15), PAYS, SPLIT, 3).used == "off"
    assert decide_cache(replace(LONG, epochs=16), PAYS, SPLIT, 3).used == "views"


def test_a_cache_that_would_not_fit_on_the_disk_stays_online(monkeypatch):
    monkeypatch.setattr(choice_mod, "_free_bytes", lambda: 10 * 2**20)
    d = decide_cache(LONG, PAYS, SPLIT, 3)
    assert d.used == "off" and "does not fit" in d.reason


def test_what_is_asked_is_what_runs():
    for asked in ("off", "views"):
        d = decide_cache(replace(LONG, teacher_cache=asked), replace(PAYS, teacher_flops=1), SPLIT, 3)
        assert (d.requested, d.used) == (asked, asked)


def test_the_setting_is_validated():
    with pytest.raises(UsageError, match="teacher_cache"):
        TrainConfig(teacher_cache="sometimes")


@pytest.mark.parametrize("extra, used", [([], "views"), (["--set", "train.teacher_cache=off"], "off")])
def test_distill_decides_and_reports_it(tiny_teacher, tmp_path, extra, used):
    """resnet8 teacher -> tinycnn_w8 (33x the FLOPs), 2 epochs of 1 cached view: auto builds the cache."""
    out = tmp_path / "run"
    r = runner.invoke(app, ["distill", "--teacher", str(tiny_teacher), "--data", TINY_DATA, "--student", "tinycnn_w8",
                            "--epochs", "2", "--device", "cpu", "--out", str(out), "--json",
                            "--set", "train.cache_views=1", *extra], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["training"]["teacher_cache"]["used"] == used
    assert (out / "teacher_cache.json").is_file() == (used == "views")
    assert json.loads((out / "config.json").read_text())["preset"]["train"]["teacher_cache"] == used
    assert ("Teacher outputs: " + ("replayed" if used == "views" else "computed online")
            in (out / "report.md").read_text())
