"""benchmarks/presets.py: the paired statistics by hand, and a `--quick` smoke run whose table carries the
protocol's columns (paired difference with a 95% CI, gap closed, agreement with the teacher)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench(name: str):
    """benchmarks/NAME.py as a module (registered, so that its dataclasses resolve their own module)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench():
    return _bench("presets")


def test_paired_t_interval_by_hand(bench):
    # diffs 1, 2, 3: mean 2, sd 1, t_{0.975, 2} = 4.302653, half-width 4.302653 / sqrt(3) = 2.484138
    m, lo, hi = bench.paired_stats([1.0, 2.0, 3.0])
    assert m == 2.0 and lo == pytest.approx(2 - 2.484138, abs=1e-5) and hi == pytest.approx(2 + 2.484138, abs=1e-5)
    assert bench.t_quantile_975(4) == pytest.approx(2.776445, abs=1e-5)
    m, lo, hi = bench.paired_stats([0.5])
    assert m == 0.5 and math.isinf(lo) and math.isinf(hi)


def test_quick_run_prints_the_protocol_table(bench, tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    text = bench.main(["--quick", "--cache-dir", str(tmp_path / "cache"), "--json", str(out_json)])
    header = next(line for line in text.splitlines() if line.startswith("| preset"))
    for col in ("paired diff vs ce, points [95% CI]", "gap closed", "agreement with teacher %", "wins / seeds",
                "effective warm-up"):
        assert col in header
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert {"ce", "kd", "kd_ls"} <= set(rows)
    assert "machine:" in text and "UTC" in text and "digits" in text
    data = json.loads(out_json.read_text())
    assert len(data["runs"]) == 6 and {r["seed"] for r in data["runs"]} == {0, 1}
    by = {r["preset"]: r for r in data["summary"]}
    assert by["ce"]["diff"] == 0.0 and 0.0 <= by["kd"]["agreement"] <= 1.0
    # the table can be rebuilt from the per-seed file (also from the .partial.json of an interrupted grid)
    assert bench.from_json([out_json]).strip() in text
    # a grid split over two processes (each with its own ce runs) merges into the same table
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    runs = data["runs"]
    a.write_text(json.dumps({"teacher_test_acc": data["teacher_test_acc"],
                             "runs": [r for r in runs if r["preset"] in ("ce", "kd")]}))
    b.write_text(json.dumps({"teacher_test_acc": data["teacher_test_acc"],
                             "runs": [r for r in runs if r["preset"] in ("ce", "kd_ls")]}))
    assert bench.from_json([a, b]) == bench.from_json([out_json])
    b.write_text(json.dumps({"teacher_test_acc": 0.5, "runs": runs}))
    with pytest.raises(SystemExit, match="different teachers"):
        bench.from_json([a, b])
    partial = json.loads(out_json.with_suffix(".partial.json").read_text())
    assert len(partial["runs"]) == 6
    # the teacher is cached: a second run does not train it again
    assert list((tmp_path / "cache").glob("teacher-digits-resnet8-1ep.pt"))


def test_tune_table_ranks_configurations_by_validation_only(tmp_path):
    tune = _bench("tune_presets")
    runs = [{"preset": "ickd", "config": "default", "seed": 100, "val_acc": 0.80},
            {"preset": "ickd", "config": "default", "seed": 101, "val_acc": 0.84},
            {"preset": "ickd", "config": "picd.k=4,nicd.k=4", "seed": 100, "val_acc": 0.86},
            {"preset": "ickd", "config": "picd.k=4,nicd.k=4", "seed": 101, "val_acc": 0.86}]
    (tmp_path / "t.json").write_text(json.dumps({"runs": runs}))
    text = tune.main(["--merge", str(tmp_path / "t.json")])
    lines = [line for line in text.splitlines() if line.startswith("| ickd")]
    # best mean validation accuracy first: 86.00 ± 0.00, then 82.00 ± 2.83 (sd of 80 and 84)
    assert "picd.k=4,nicd.k=4 | 2 | 86.00 ± 0.00" in lines[0] and "default | 2 | 82.00 ± 2.83" in lines[1]
    assert "test" not in text.lower()  # the tuning table never shows test accuracy


def test_no_ce_part_of_a_split_grid(bench):
    assert bench.parse(["--presets", "ickd"]).presets == ["ce", "ickd"]
    assert bench.parse(["--no-ce", "--presets", "ickd"]).presets == ["ickd"]


def test_adherence_ab_statistics_by_hand(tmp_path, capsys):
    """benchmarks/select_adherence_ab.py: Wilson and Fisher against textbook values, and the per-rule
    counts of two hand-made --json files."""
    ab = _bench("select_adherence_ab")
    lo, hi = ab.wilson(48, 50)
    assert (round(lo, 3), round(hi, 3)) == (0.865, 0.989)
    assert round(ab.fisher_two_sided(10, 20, 3, 20), 4) == 0.0407  # R: fisher.test(matrix(c(10,10,3,17),2))
    assert ab.fisher_two_sided(5, 10, 5, 10) == 1.0
    # Newcombe (1998), Statistics in Medicine 17:873, method 10: 56/70 - 48/80 and 9/10 - 3/10
    assert tuple(round(v, 4) for v in ab.newcombe(56, 70, 48, 80)) == (0.0524, 0.3339)
    assert tuple(round(v, 4) for v in ab.newcombe(9, 10, 3, 10)) == (0.1705, 0.8090)
    row = {"budget_ms": 1.0, "selected_ms": 0.9, "remeasured_ms": 0.95, "more_deployments_ms": [0.8, 1.06],
           "select_seconds": 2.0}
    (tmp_path / "a.json").write_text(json.dumps({"rows": [row, {**row, "remeasured_ms": 1.2}]}))
    s = ab.summarise([str(tmp_path / "a.json")])
    assert (s["first_within"], s["within"], s["deployments"], s["above"], s["above_5"],
            s["budgets_above"]) == (1, 3, 6, 4, 4, 2)
    ab.main([f"x={tmp_path / 'a.json'}"])
    assert "| x | 1 | 1/2 | 3/6 (50.0%" in capsys.readouterr().out


def test_profile_adherence_report_on_the_recorded_run(capsys):
    """benchmarks/profile_adherence.py's table and A/B line, from the rows of the run in RESULTS.md."""
    pa = _bench("profile_adherence")
    rec = json.loads((ROOT / "benchmarks" / "results" / "profile-adherence-2026-12-02.json").read_text())
    seconds = {int(k): v["profile_seconds"] for k, v in rec["summary"].items()}
    summary = pa.report(rec["rows"], seconds, 2)
    out = capsys.readouterr().out
    assert (summary[1]["within"], summary[1]["deployments"],
            summary[5]["within"], summary[5]["first_within"]) == (96, 120, 117, 19)
    assert "| 1 | all | 20 | 0 | 16/20 | 96/120 (80.0%, CI 72.0-86.2)" in out
    assert "| 5 | all | 20 | 0 | 19/20 | 117/120 (97.5%, CI 92.9-99.1)" in out
    assert "+17.5 points, Newcombe 95% CI [+9.8, +25.7]" in out and "p = 0.342" in out


def test_kd_protocol_quick_run_compares_with_the_plateau_and_equal_compute_baselines(tmp_path):
    proto = _bench("kd_protocol")
    out = tmp_path / "p.json"
    cache_before = os.environ.get("KDCOMPRESS_CACHE")
    text = proto.main(["--quick", "--cache-dir", str(tmp_path / "cache"), "--json", str(out)])
    assert os.environ.get("KDCOMPRESS_CACHE") == cache_before  # each run's private cache is undone after it
    assert "vs ce (its ladder), points [95% CI]" in text and "vs ce at equal compute" in text and "machine:" in text
    runs = json.loads(out.read_text())["runs"]
    # the ladder is 1x and 2x in --quick; an equal-compute ce run of 1 or 2 epochs is the ladder's own run
    assert {"ce1", "ce2", "kd"} <= {r["label"] for r in runs} <= {"ce1", "ce2", "ce@kd", "kd"}
    assert all(r["epochs"] == 2 and len(r["curve"]) == 2 for r in runs if r["label"] == "ce2")
    assert "last doubling 1 -> 2 epochs: validation" in text
    ladder = {(r["label"], r["seed"]): r for r in runs}
    rows = []
    for s in (0, 1):  # the baseline of each seed is the ladder run validation prefers
        ce = proto.chosen_on_val([ladder[("ce1", s)], ladder[("ce2", s)]])
        assert ce["val_acc"] == max(ladder[("ce1", s)]["val_acc"], ladder[("ce2", s)]["val_acc"])
        kd = ladder[("kd", s)]
        n = max(1, round(kd["cpu_seconds"] / ladder[("ce1", s)]["cpu_seconds"]))  # ce@kd: kd's CPU seconds
        eq = next(r for r in runs if (r["spec"], r["seed"], r["epochs"]) == ("ce", s, n))
        rows += [ce, kd, {**eq, "label": "ce@kd"}]
    # --resume keeps every finished run: nothing is trained again
    again = proto.main(["--quick", "--cache-dir", str(tmp_path / "cache"), "--json", str(out), "--resume"])
    assert json.loads(out.read_text())["runs"] == runs and "last doubling" in again
    assert all(r["epochs"] >= 1 for r in runs if r["label"] == "ce@kd")
    # the paired statistics of the table, by hand from the runs
    summary = proto.summarise(rows, json.loads(out.read_text())["teacher_test_acc"], [0, 1], ["kd"])
    by = {(r["label"], r["seed"]): r["test_acc"] for r in rows}
    assert summary[1]["diff"] == pytest.approx(sum(by[("kd", s)] - by[("ce", s)] for s in (0, 1)) / 2)
    # several --epochs: the preset's own ladder (kd1, kd2), chosen per seed on validation; ce@kd has its CPU time
    text = proto.main(["--quick", "--epochs", "1", "2", "--cache-dir", str(tmp_path / "cache"), "--json", str(out),
                       "--resume"])
    kd = sorted((r["label"], r["epochs"], r["seed"]) for r in json.loads(out.read_text())["runs"] if r["spec"] == "kd")
    # a run is what it trained: the ladder's kd1 is the earlier "kd" (1 epoch), not trained again; kd2 is new
    assert kd == [("kd", 1, 0), ("kd", 1, 1), ("kd2", 2, 0), ("kd2", 2, 1)]
    assert "| kd (" in text and " ep " in text
    # --from-json prints the same tables from the file alone (runs split over processes are merged so)
    again = proto.main(["--quick", "--epochs", "1", "2", "--from-json", str(out)])
    assert again.split("## student")[1] == text.split("## student")[1]
    with pytest.raises(SystemExit, match=r"no run kd3 \(kd, 3 epochs\) of tinycnn_w8, seed 0"):
        proto.main(["--quick", "--epochs", "1", "3", "--from-json", str(out)])
    with pytest.raises(SystemExit, match="no run ce1"):  # runs under another --set are other runs
        proto.main(["--quick", "--from-json", str(out), "--set", "train.batch_size=16"])


TINY_SETTING = ["--data", "digits", "--student", "tinycnn_w8", "--teacher-arch", "resnet8", "--teacher-epochs", "1",
                "--epochs", "1"]


def test_dkd_sweep_and_fm_check_run_end_to_end_on_tiny_settings(tmp_path, capsys):
    """The two studies of issue 26 run and print one row per configuration (tiny: not a measurement)."""
    cache = ["--cache-dir", str(tmp_path / "cache")]
    text = _bench("dkd_sweep").main([*TINY_SETTING, *cache, "--seeds", "0", "--threads", "1",
                                     "--only", "kd", "dkd beta=8 (default)", "dkd beta=2"])
    rows = [line for line in text.splitlines() if line.startswith("| ") and "config" not in line]
    assert [r.split(" | ")[0] for r in rows] == ["| kd", "| dkd beta=8 (default)", "| dkd beta=2"]
    assert "teacher mean 1 - p_t at T=4" in text
    fm = _bench("fm_check")
    fm.ROWS = fm.ROWS[4:6]  # fm online and on cached views: the pair the cache's replay must keep alike
    fm.main([*TINY_SETTING, *cache])
    out = capsys.readouterr().out
    assert "| fm, online teacher |" in out and "| fm, 4 views |" in out


def test_auto_vs_best_reads_auto_runs_against_the_protocols_full_length_runs(tmp_path_factory):
    """The arithmetic of auto_vs_best on two hand-made runs: seed 0's pick (kd) is the best, seed 1's (kd) is 0.5
    points behind nd; runs are matched to protocol runs by (student, preset, epochs, seed, --set). The run
    directories hold only the report.json keys the script reads (outside tmp_path: they are not reports)."""
    tmp_path = tmp_path_factory.mktemp("auto_vs_best")
    proto = {"args": {"set": "['train.cache_views=8']"}, "runs": []}
    accs = {0: {"kd": 0.90, "dkd": 0.88, "nd": 0.895}, 1: {"kd": 0.85, "dkd": 0.84, "nd": 0.855}}
    for seed, by in accs.items():
        proto["runs"] += [{"label": n, "preset": n, "student": "tinycnn_w8", "seed": seed, "epochs": 40,
                           "test_acc": a} for n, a in by.items()]
    (tmp_path / "p.json").write_text(json.dumps(proto))
    runs = []
    for seed in (0, 1):
        run = tmp_path / f"auto-{seed}"
        run.mkdir()
        ranking = {"winner": "kd", "candidates": ["kd", "dkd", "nd"], "seconds_spent": 100.0, "epochs_spent": 40,
                   "rounds": [{"epochs": 8, "val_accuracy": {"kd": 0.8, "dkd": 0.7, "nd": 0.79}}]}
        (run / "report.json").write_text(json.dumps({
            "preset_ranking": ranking, "student": {"arch": "tinycnn_w8", "accuracy": accs[seed]["kd"]},
            "training": {"epochs": 40, "seconds": 500.0}}))
        (run / "config.json").write_text(json.dumps({"preset": {"train": {"seed": seed}}}))
        runs.append(str(run))
    text = _bench("auto_vs_best").main(["--runs", *runs, "--protocol-json", str(tmp_path / "p.json"),
                                        "--set", "train.cache_views=8"])
    assert "| tinycnn_w8 | 0 | kd | 90.00 / 90.00 | 90.00 | 88.00 | 89.50 | kd | 0.00 | 100 / 40 |" in text
    assert "| tinycnn_w8 | 1 | kd | 85.00 / 85.00 | 85.00 | 84.00 | 85.50 | nd | 0.50 | 100 / 40 |" in text
    assert "auto within 0.3 points of the best preset (protocol test accuracy): 1/2 runs (50%" in text
    with pytest.raises(SystemExit, match="no protocol run of kd"):  # runs made under another --set are others
        _bench("auto_vs_best").main(["--runs", *runs, "--protocol-json", str(tmp_path / "p.json")])


def test_kd_protocol_pairs_two_presets_seed_by_seed():
    """--pair A B: B - A per seed in test and validation accuracy, with the t interval, and B's CPU share."""
    proto = _bench("kd_protocol")
    rows = [{"label": "kd", "seed": 0, "test_acc": 0.90, "val_acc": 0.91, "cpu_seconds": 200.0},
            {"label": "kd", "seed": 1, "test_acc": 0.92, "val_acc": 0.90, "cpu_seconds": 100.0},
            {"label": "kdv", "seed": 0, "test_acc": 0.91, "val_acc": 0.91, "cpu_seconds": 150.0},
            {"label": "kdv", "seed": 1, "test_acc": 0.95, "val_acc": 0.89, "cpu_seconds": 50.0}]
    text = proto.pair_table(rows, [0, 1], "kd", "kdv")
    # diffs +1 and +3 points: mean +2, sd sqrt(2), half-width t(0.975, 1) = 12.706 * sqrt(2) / sqrt(2) = 12.71
    assert "test: +2.00 points [-10.71, +14.71] (per seed +1.00, +3.00)" in text
    assert "val: -0.50 points" in text and "(per seed +0.00, -1.00)" in text
    assert "CPU seconds: 0.62x (per seed 0.75, 0.50)" in text
    with pytest.raises(SystemExit):  # a label --presets does not have: argparse's one-line error, exit 2
        proto.parse(["--presets", "kd", "dist", "--pair", "kd", "nd"])


def test_trial_length_judges_ranking_rules_by_the_full_length_test_accuracy(tmp_path):
    """benchmarks/trial_length.py: trial scores from a --preset auto run directory (unfinished trials ignored)
    and from protocol runs; each rule's pick and its distance to the best preset at full length."""
    runs = [{"label": n, "preset": n, "student": "tinycnn_w8", "seed": 0, "epochs": e, "val_acc": v, "test_acc": t,
             "teacher_cache": c}
            for n, e, v, t, c in [("kd", 40, 0.90, 0.89, "views"), ("dist", 40, 0.93, 0.92, "views"),
                                  ("nd", 40, 0.91, 0.905, "views"), ("nd", 8, 0.99, 0.99, "off"),
                                  ("nd,nd.T=2,train.teacher_cache=views", 8, 0.98, 0.98, "views"),  # another nd
                                  ("dist,train.teacher_cache=views", 8, 0.85, 0.84, "views"),
                                  ("nd,train.teacher_cache=views", 8, 0.84, 0.83, "views")]]
    (tmp_path / "p.json").write_text(json.dumps({"args": {"set": "[]"}, "runs": runs}))
    run = tmp_path / "auto-0"
    for name, epochs, vals in [("kd", 2, [0.70, 0.76]), ("dist", 2, [0.71, 0.75]), ("nd", 2, [0.60, 0.74]),
                               ("kd", 8, [0.80] * 8), ("kd", 4, [0.78])]:  # kd-e4 stopped after one epoch
        (run / "preset_trials" / f"{name}-e{epochs}").mkdir(parents=True)
        (run / "preset_trials" / f"{name}-e{epochs}" / "metrics.csv").write_text(
            "epoch,val_accuracy\n" + "".join(f"{i + 1},{v}\n" for i, v in enumerate(vals)))
    (run / "preset_ranking.json").write_text(json.dumps({"ranking": {"winner": "kd"}}))
    text = _bench("trial_length").main(["--protocol-json", str(tmp_path / "p.json"), "--trials", f"0={run}",
                                        "--student", "tinycnn_w8", "--presets", "kd", "dist", "nd",
                                        "--trial-cache", "views"])  # nd at 8 with the teacher online is no trial
    assert "| kd | 76.00 |  | 80.00 | 90.00 | 89.00 |" in text  # the unfinished 4-epoch trial is no score
    assert "auto as run: kd, 3.00 points behind the best" in text
    assert "one rung at 2 ep: kd, 3.00 points behind" in text  # 76 beats dist's 75 and nd's 74
    assert "one rung at 8 ep: dist, 0.00 points behind" in text  # 85 beats nd's 84 and kd's 80
    assert "one rung at 4 ep" not in text  # not every preset has a 4-epoch score
    assert "one rung at 40: 1/1 seeds, mean 0.00 points behind" in text
