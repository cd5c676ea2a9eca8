"""distill's rarely used options as `--set` job keys (commands/jobkeys.py): each key builds the same job as the
flag it replaced (still accepted, hidden), bad keys and values are one line and exit 2, the old flag and its
key cannot disagree, `--config` replays job keys per key, and `--help` fits 80 columns with ~15 flags."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import kdcompress.commands.distill as distill_cmd
from kdcompress.cli import app
from kdcompress.commands.flags import TEACHER_PANEL
from kdcompress.commands.jobkeys import JOB_KEYS, job_key, split_sets
from kdcompress.core.errors import UsageError

from .conftest import TINY_DATA
from .helpers import tree_hash

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
BASE = ("--teacher", "t.pt", "--data", "digits", "--student", "tinycnn_w8")

# every job key: a value other than its default, as --set text and as the old flag's arguments
SAMPLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "select.rank": ("trial", ("--rank", "trial")),
    "select.trial_top": ("3", ("--trial-top", "3")),
    "select.trial_budget": ("0.5", ("--trial-budget", "0.5")),
    "select.tune": ("false", ("--no-tune",)),
    "select.max_precision_drop": ("0.05", ("--max-precision-drop", "0.05")),
    "select.threads": ("2", ("--threads", "2")),
    "select.stat": ("p90", ("--stat", "p90")),
    "export.fp16": ("true", ("--fp16",)),
    "export.int8": ("1", ("--int8",)),
    "export.calib": ("8", ("--calib", "8")),
    "export.simplify": ("true", ("--simplify",)),
    "gate.min_agreement": ("0.5", ("--min-agreement", "0.5")),
    "gate.max_accuracy_drop": ("0.1", ("--max-accuracy-drop", "0.1")),
    "auto.presets": ("kd,dkd", ("--auto-presets", "kd,dkd")),
    "auto.budget": ("0.5", ("--auto-budget", "0.5")),
    "auto.min_trial": ("0.5", ("--auto-min-trial", "0.5")),
    "student.init": ("pretrained", ("--student-init", "pretrained")),
    "data.download": ("true", ("--download",)),
    "runtime.compile": ("true", ("--compile",)),
    "teacher.allow_weak": ("true", ("--allow-weak-teacher",)),
}


@pytest.fixture
def jobs(monkeypatch):
    """distill through the real CLI up to the job it would run: run_job records the job instead of running it."""
    seen: list = []
    monkeypatch.setattr(distill_cmd, "run_job", lambda job, console=None: seen.append(job) or {})
    return seen


def _distill(*args: str):
    return runner.invoke(app, ["distill", *args])


def _built(jobs, *args: str):
    r = _distill(*args)
    assert r.exit_code == 0, r.output
    return jobs.pop()


def test_every_job_key_builds_the_job_its_old_flag_built(jobs):
    assert set(SAMPLES) == {k.key for k in JOB_KEYS}
    default = _built(jobs, *BASE)
    for jk in JOB_KEYS:
        raw, flag = SAMPLES[jk.key]
        extra = ("--preset", "auto") if jk.key.startswith("auto.") else ()
        by_flag = _built(jobs, *BASE, *extra, *flag)
        by_key = _built(jobs, *BASE, *extra, "--set", f"{jk.key}={raw}")
        assert by_key == by_flag, jk.key
        assert dict(by_key.flags)[jk.param] == jk.parse(raw) != jk.default, jk.key
        assert dict(by_key.flags)["set_"] is None  # config.json records the key as its flag
        if not extra:
            assert by_key != default, jk.key


def test_job_keys_land_in_the_job_beside_preset_keys(jobs):
    job = _built(jobs, *BASE, "--set", "export.fp16=true", "--set", "train.lr=0.05", "--set", "kd.T=2",
                 "--set", "gate.min_agreement=0.9", "--set", "select.stat=p99", "--set", "select.threads=2")
    assert job.export.fp16 and not job.export.int8
    assert job.gates.min_agreement == 0.9 and job.gates.budget_stat == "p99" and job.run.budget.stat == "p99"
    assert job.run.runtime.threads == 2
    assert job.run.preset.train.lr == 0.05 and job.run.preset.terms[1].params["T"] == 2
    assert dict(job.flags)["set_"] == ["train.lr=0.05", "kd.T=2"]


def test_parsing_is_strict_by_type():
    assert split_sets(["train.lr=0.1", "export.calib=8", "kd.T=2", "export.calib=16"]) == (
        ["train.lr=0.1", "kd.T=2"], {"calib": (job_key("export.calib=1")[0], 16)})
    assert job_key("select.tune=0")[1] is False and job_key("export.fp16=TRUE")[1] is True
    assert job_key("gate.min_agreement=none")[1] is None and job_key("select.threads=none")[1] is None
    for bad, accepted in (("export.fp16=yes", "true or false"), ("export.calib=1.5", "an integer"),
                          ("export.calib=none", "an integer"), ("select.rank=best", "flops or trial"),
                          ("gate.min_agreement=nan", "a number or none"), ("select.stat=p95", "p50 or p90 or p99")):
        with pytest.raises(UsageError, match=re.escape(accepted)) as e:
            job_key(bad)
        assert bad.split("=")[0] in e.value.message


@pytest.mark.parametrize(("args", "says"), [
    (("--set", "export.fp17=true"), "--set export.fp17: unknown job key; export.* keys are export.fp16"),
    (("--set", "export.fp16=yes"), "export.fp16 takes true or false (1 or 0)"),
    (("--set", "select.trial_top=1"), "--set select.trial_top must be >= 2"),  # the flag's own check, key named
    (("--set", "gate.min_agreement=2"), "--set gate.min_agreement must be in [0, 1]"),
    (("--set", "auto.presets=kd,dkd"), "--set auto.presets needs --preset auto"),
    (("--fp16", "--set", "export.fp16=false"), "--set export.fp16=false disagrees with --fp16 (true)"),
    (("--rank", "trial", "--set", "select.rank=flops"), "--set select.rank=flops disagrees with --rank (trial)"),
    (("--no-tune", "--set", "select.tune=true"), "--set select.tune=true disagrees with --tune (false)"),
])
def test_bad_job_keys_are_one_line_exit_2_and_write_nothing(tmp_path, args, says):
    out = tmp_path / "run"
    before = tree_hash(tmp_path)
    r = _distill(*BASE, "--out", str(out), *args)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdcompress: error: ") and says in lines[0], lines
    assert tree_hash(tmp_path) == before


def test_the_same_value_twice_is_not_a_conflict(jobs):
    job = _built(jobs, *BASE, "--fp16", "--set", "export.fp16=true", "--rank", "trial", "--set", "select.rank=trial")
    assert job.export.fp16 and job.select.rank == "trial"


def test_config_replays_job_keys_and_a_set_beside_it_wins_per_key(jobs, tmp_path):
    first = _built(jobs, *BASE, "--set", "export.fp16=true", "--set", "gate.min_agreement=0.5",
                   "--set", "train.lr=0.02")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"job": first.to_json()}))
    again = _built(jobs, "--config", str(config))
    assert again == first
    changed = _built(jobs, "--config", str(config), "--set", "gate.min_agreement=0.7")
    assert changed.gates.min_agreement == 0.7 and changed.export.fp16  # the other job key is still replayed
    assert dict(changed.flags)["set_"] == ["train.lr=0.02"]  # and so are the recorded preset keys
    assert changed.run.preset.train.lr == 0.02
    unset = _built(jobs, "--config", str(config), "--set", "gate.min_agreement=none", "--set", "export.fp16=0")
    assert unset.gates.min_agreement is None and not unset.export.fp16
    flag = _built(jobs, "--config", str(config), "--min-agreement", "0.6")  # an old flag beside --config too
    assert flag.gates.min_agreement == 0.6 and flag.export.fp16


def _visible_options() -> tuple[list[str], list[str]]:
    """distill's options --help shows: (outside the teacher panel, in it), as their long names."""
    cmd = typer.main.get_command(app).commands["distill"]
    shown = [p for p in cmd.params if not getattr(p, "hidden", False) and p.opts[0].startswith("--")]
    panel = [p.opts[0] for p in shown if getattr(p, "rich_help_panel", None) == TEACHER_PANEL]
    return [p.opts[0] for p in shown if p.opts[0] not in panel] + ["--help"], panel


def test_distill_help_fits_80_columns_with_about_15_flags():
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "kdcompress", "distill", "--help"], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert max(len(ln) for ln in lines) <= 80
    main, teacher = _visible_options()
    assert len(main) <= 17 and len(teacher) == 7, main
    head, _, panel = r.stdout.partition(TEACHER_PANEL)
    opt = re.compile(r"^[│|] (--[a-z][\w-]*)", flags=re.M)  # a name starts its row
    assert opt.findall(head) == main and opt.findall(panel) == teacher  # every name whole, none cut
    assert not {jk.main_flag for jk in JOB_KEYS} & set(opt.findall(r.stdout))  # accepted, not shown


def test_a_tiny_distill_run_with_job_keys(tiny_teacher, tmp_path):
    out = tmp_path / "run"
    r = _distill("--teacher", str(tiny_teacher), "--data", TINY_DATA, "--student", "tinycnn_w8", "--epochs", "1",
                 "--device", "cpu", "--out", str(out), "--set", "train.batch_size=16",
                 "--set", "export.fp16=true", "--set", "gate.min_agreement=0.5", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert (out / "student.fp16.onnx").is_file()
    assert [v["name"] for v in report["variants"]] == ["fp32", "fp16"]
    assert report["gates"]["thresholds"]["min_agreement"] == 0.5
    job = json.loads((out / "config.json").read_text())["job"]
    assert job["export"]["fp16"] is True and job["gates"]["min_agreement"] == 0.5
    assert job["flags"]["fp16"] is True and job["flags"]["set_"] == ["train.batch_size=16"]


def test_a_preset_may_not_key_a_term_like_a_job_section(tmp_path):
    """`--set data.x=...` is a job key, so a user's preset whose term is keyed `data` could never be overridden:
    the preset is refused in one line that says to rename the term; every job section is reserved in core."""
    from kdcompress.commands.jobkeys import JOB_SECTIONS
    from kdcompress.core import config
    from kdcompress.losses import load_checked_preset

    assert set(JOB_SECTIONS) <= set(config.JOB_SECTIONS)
    p = tmp_path / "mine.toml"
    p.write_text('name = "mine"\n[[loss]]\nkind = "ce"\n[[loss]]\nkind = "kd"\nname = "data"\n')
    with pytest.raises(UsageError, match="may not be keyed 'data'.*distill job key.*another `name`"):
        load_checked_preset(str(p))
    r = CliRunner().invoke(app, ["presets", "show", str(p)])
    assert r.exit_code == UsageError.exit_code and "'data'" in r.output, r.output
    p.write_text('name = "mine"\n[[loss]]\nkind = "ce"\n[[loss]]\nkind = "kd"\nname = "kd_data"\n')
    assert [t.key for t in load_checked_preset(str(p)).terms] == ["ce", "kd_data"]
