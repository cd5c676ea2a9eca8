"""`distill --preset auto`: short paired trials on the validation split rank the candidate presets
(select/presetrank.py, trial.run_rungs) and the winner is trained as if it had been given."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from kdcompress.cli import app
from kdcompress.core.errors import UsageError
from kdcompress.select.presetrank import rank_presets, simplest_first
from kdcompress.students import load_checkpoint

from .conftest import TINY_DATA
from .helpers import tree_hash

runner = CliRunner()


def _fake_train(scores: dict[tuple[str, int], float], calls: list):
    def train(name, epochs):
        calls.append((name, epochs))
        return scores[name, epochs], 0.5
    return train


# ------------------------------------------------------------------------------------------ the ranking


def test_halving_drops_the_worst_and_a_tie_goes_to_the_simpler_preset():
    # given in no particular order: the pool is simplest first (kd, kd_ls, dist, dkd)
    assert simplest_first(["dkd", "kd", "dist", "kd_ls", "mine"]) == ["kd", "kd_ls", "dist", "dkd", "mine"]
    scores = {("kd", 1): 0.80, ("kd_ls", 1): 0.80, ("dist", 1): 0.50, ("dkd", 1): 0.90,
              ("kd", 2): 0.85, ("dkd", 2): 0.85}
    calls = []
    r = rank_presets(["dkd", "kd", "dist", "kd_ls"], 8, _fake_train(scores, calls), n_val=100)
    # 4 presets x 1 epoch + 2 x 2 epochs = 8; dist (the worst) and kd_ls (tied with kd, less simple) drop
    assert r.plan == ((4, 1), (2, 2))
    assert calls == [("kd", 1), ("kd_ls", 1), ("dist", 1), ("dkd", 1), ("kd", 2), ("dkd", 2)]
    assert r.winner == "kd"  # dkd ties kd in the last rung: the simpler preset wins
    j = r.to_json()
    assert j["rounds"][1] == {"rung": 1, "epochs": 2, "val_accuracy": {"kd": 0.85, "dkd": 0.85}}
    assert j["epochs_spent"] == 8 and j["seconds_spent"] == 3.0 and j["split"] == "val"
    # one validation image more for dkd (1/100) is not a tie: the better preset wins
    calls.clear()
    scores["dkd", 2] = 0.86
    assert rank_presets(["dkd", "kd", "dist", "kd_ls"], 8, _fake_train(scores, calls), n_val=100).winner == "dkd"


def test_a_floor_on_the_first_trial_drops_rounds_not_presets():
    """Five presets and 40 trial epochs: halving gives 2-epoch first trials (5 x 2, 3 x 4, 2 x 8); a floor of 8
    epochs (auto.min_trial 0.2 of 40) makes it one round of 5 x 8, the best on validation wins. A floor the
    budget cannot meet with every preset still tries every preset, for as long as it affords."""
    names = ["kd", "kd_ls", "dist", "dkd", "nd"]
    scores = {(n, e): 0.80 + e / 100 for n in names for e in (2, 4, 8)}
    scores["dist", 2], scores["dist", 8] = 0.79, 0.89  # dist: the slowest starter, the best at 8 epochs
    calls = []
    halving = rank_presets(names, 40, _fake_train(scores, calls), n_val=100)
    assert halving.plan == ((5, 2), (3, 4), (2, 8)) and ("dist", 4) not in calls and halving.winner == "kd"
    calls.clear()
    r = rank_presets(names, 40, _fake_train(scores, calls), n_val=100, min_epochs=8)
    assert r.plan == ((5, 8),) and calls == [(n, 8) for n in simplest_first(names)] and r.winner == "dist"
    assert rank_presets(names, 20, _fake_train({(n, 4): 0.8 for n in names}, []), n_val=100,
                        min_epochs=8).plan == ((5, 4),)


def test_a_small_budget_tries_the_simplest_presets_and_says_which_it_left_out():
    scores = {(n, 1): a for n, a in (("kd", 0.7), ("kd_ls", 0.9), ("dist", 0.8))}
    calls = []
    r = rank_presets(["kd", "kd_ls", "dist", "dkd", "nd"], 3, _fake_train(scores, calls), n_val=50)
    assert r.plan == ((3, 1),) and r.winner == "kd_ls" and [n for n, _ in calls] == ["kd", "kd_ls", "dist"]
    assert set(r.skipped) == {"dkd", "nd"} and "--set auto.budget=X" in r.skipped["nd"]
    one = rank_presets(["dkd"], 3, _fake_train({}, calls), n_val=50, skipped={"nd": "no features"})
    assert one.winner == "dkd" and one.trials == () and one.skipped == {"nd": "no features"}


# ------------------------------------------------------------------------------------------ the command


def _distill(teacher, out, *extra):
    return ["distill", "--teacher", str(teacher), "--data", TINY_DATA, "--student", "tinycnn_w8", "--epochs", "2",
            "--set", "train.batch_size=16", "--device", "cpu", "--out", str(out), "--preset", "auto", *extra]


def test_auto_trains_the_winner_and_reports_the_ranking(tiny_teacher, tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, _distill(tiny_teacher, out, "--auto-presets", "dist,kd,dkd", "--auto-budget", "3.5",
                                    "--json"))
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    rk = rep["preset_ranking"]
    assert rk["candidates"] == ["kd", "dist", "dkd"] and rk["plan"] == [[3, 1], [2, 2]]
    assert [(t["preset"], t["epochs"]) for t in rk["trials"]][:3] == [("kd", 1), ("dist", 1), ("dkd", 1)]
    assert rk["epochs_spent"] == 7 and 0 < rk["seconds_spent"] <= rk["wall_seconds"] and rk["skipped"] == []
    assert rk["budget"] == 3.5 and rk["min_trial"] == 0.2  # 0.2 of 2 epochs: no floor above 1 epoch
    # the winner is the last rung's best (ties: simplest first) and is the preset actually trained
    last = [t for t in rk["trials"] if t["rung"] == 1]
    top = max(t["val_accuracy"] for t in last)
    assert rk["winner"] == next(t["preset"] for t in last if t["val_accuracy"] == top)
    assert rep["preset"]["name"] == rk["winner"]
    # scored on the validation split: each trial's accuracy is its own run's best validation accuracy
    n_val = rep["data"]["sizes"]["val"]
    assert rk["val_images"] == n_val
    for t in rk["trials"]:
        _, ckpt = load_checkpoint(out / "preset_trials" / f"{t['preset']}-e{t['epochs']}" / "student.pt")
        assert ckpt["metrics"]["val_accuracy"] == t["val_accuracy"]
        assert t["val_accuracy"] * n_val == pytest.approx(round(t["val_accuracy"] * n_val))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["auto_preset"] == {"requested": "auto", "candidates": ["kd", "dist", "dkd"], "budget": 3.5,
                                  "min_trial": 0.2, "winner": rk["winner"]}
    assert cfg["preset"]["name"] == rk["winner"] and cfg["preset"]["train"]["epochs"] == 2
    md = (out / "report.md").read_text()
    assert "Preset ranking" in md and f"**{rk['winner']}**" in md


def test_a_rerun_after_an_interrupt_reuses_the_finished_ranking(tiny_teacher, tmp_path, monkeypatch):
    import kdcompress.pipeline.autopreset as ap
    import kdcompress.pipeline.job as pl

    out = tmp_path / "run"
    args = _distill(tiny_teacher, out, "--auto-presets", "kd,dist", "--json")

    def interrupted(**kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(pl, "train", interrupted)  # the main training: stopped once the ranking is done
    r = runner.invoke(app, args)
    assert r.exit_code == 130, r.output
    kept = json.loads((out / "preset_ranking.json").read_text())["ranking"]
    assert kept["plan"] == [[2, 1]] and len(kept["trials"]) == 2
    monkeypatch.undo()

    def no_trials(**kw):
        raise AssertionError("the finished ranking was not reused: a trial ran again")
    monkeypatch.setattr(ap, "train", no_trials)
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["preset_ranking"] == kept and rep["preset"]["name"] == kept["winner"]
    assert "reused" in r.stderr
    # --restart ranks again: every trial trains anew (its old checkpoints discarded)
    monkeypatch.undo()
    real, calls = ap.train, []

    def counted(**kw):
        calls.append((kw["preset"].name, kw["restart"]))
        return real(**kw)
    monkeypatch.setattr(ap, "train", counted)
    assert runner.invoke(app, [*args, "--restart"]).exit_code == 0
    assert sorted(calls) == [("dist", True), ("kd", True)]




def test_the_trials_read_the_teacher_outputs_as_the_winner_will_from_one_cache_build(tiny_teacher, tmp_path):
    """resnet8 teacher, tinycnn_w8 (33x the FLOPs), 2 epochs of 1 cached view: the full run uses the cache, so
    each candidate's trial does too, and one build (the first trial's) serves the other trial and the winner."""
    out = tmp_path / "run"
    r = runner.invoke(app, _distill(tiny_teacher, out, "--auto-presets", "kd,dist", "--set", "train.cache_views=1",
                                    "--json"))
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    decision = rep["training"]["teacher_cache"]
    assert decision["used"] == "views" and decision["requested"] == "auto" and "FLOPs" in decision["reason"]
    records = [json.loads((d / "teacher_cache.json").read_text())
               for d in [*(out / "preset_trials").iterdir(), out]]
    assert len(records) == 3 and len({r["path"] for r in records}) == 1
    assert [r["built_seconds"] is not None for r in records].count(True) == 1  # built once, read twice
    # (a trial directory holds teacher_cache.json only when that trial read the cache)


@pytest.mark.parametrize("extra, needles", [
    (["--auto-presets", "kd,kdd"], ["unknown preset 'kdd'", "did you mean 'kd'"]),
    (["--auto-presets", "kd"], ["at least 2 presets"]),
    (["--auto-presets", "kd,kd"], ["'kd' twice"]),
    (["--set", "dkd.beta=2"], ["dkd.beta", "only train.* keys"]),
    (["--auto-budget", "0.5"], ["auto.budget 0.5", "give --set auto.budget=1 or more"]),
    (["--set", "auto.min_trial=1.5"], ["auto.min_trial must be a fraction from 0 to 1", "got 1.5"]),
])
def test_bad_auto_flags_are_one_line_and_change_nothing(tiny_teacher, tmp_path, extra, needles):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = tree_hash(tmp_path, dirs=False)
    r = runner.invoke(app, _distill(tiny_teacher, out, *extra))
    assert r.exit_code == UsageError.exit_code, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("kdcompress: error:") and "Traceback" not in r.output
    for n in needles:
        assert n in lines[0], lines[0]
    assert tree_hash(tmp_path, dirs=False) == before


def test_auto_with_rank_trial_is_refused_before_any_work(tiny_teacher, tmp_path):
    args = [a for a in _distill(tiny_teacher, tmp_path / "r") if a not in ("--student", "tinycnn_w8")]
    r = runner.invoke(app, [*args, "--budget-ms", "1", "--rank", "trial"])
    assert r.exit_code == UsageError.exit_code and "cannot be combined with --rank trial" in r.stderr
    assert not (tmp_path / "r").exists()


def test_auto_presets_without_auto_is_refused(tiny_teacher, tmp_path):
    args = [a for a in _distill(tiny_teacher, tmp_path / "r") if a != "auto"]
    args[args.index("--preset")] = "--auto-presets"
    r = runner.invoke(app, [*args, "kd,dkd"])
    assert r.exit_code == UsageError.exit_code and "--auto-presets needs --preset auto" in r.stderr
    assert not (tmp_path / "r").exists()


def test_a_feature_preset_is_skipped_with_an_onnx_teacher(tmp_path):
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 3)).eval()
    torch.onnx.export(model, (torch.zeros(2, 1, 8, 8),), str(tmp_path / "t.onnx"), dynamo=True,
                      input_names=["input"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    out = tmp_path / "run"
    r = runner.invoke(app, _distill(tmp_path / "t.onnx", out, "--auto-presets", "nd,kd", "--mean", "0.5", "--std",
                                    "0.25", "--allow-weak-teacher", "--json"))  # an untrained teacher: plumbing only
    assert r.exit_code == 0, r.output
    rk = json.loads(r.stdout)["preset_ranking"]
    assert rk["winner"] == "kd" and rk["trials"] == [] and rk["candidates"] == ["kd"]
    assert [s["preset"] for s in rk["skipped"]] == ["nd"] and "logits only" in rk["skipped"][0]["reason"]
    assert "skips nd" in r.stderr
