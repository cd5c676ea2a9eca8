"""How long must `--preset auto`'s trials be to rank presets as their full-length runs rank?

A trial of N epochs is the preset's recipe compressed to N epochs, the same training as kd_protocol.py's run of
that preset at N epochs (same student, seed, data and --set: RESULTS.md, "Issue 26, stop 31" found the scores
equal). So a ranking rule can be judged from runs already made, nothing is trained here:
- kd_protocol.py --json files: each preset's runs at the trial lengths and at full length (test accuracy);
- `distill --preset auto` run directories (SEED=DIR): their trials (DIR/preset_trials/NAME-eN/metrics.csv,
  best validation accuracy) and their ranking's winner (DIR/preset_ranking.json).

Prints per seed each preset's validation accuracy at each length and its test accuracy at full length; then per
rule the pick and how far its full-length test accuracy is behind the best preset's: "auto as run" (the
successive halving the run made) and "one rung at N" (every preset for N epochs, the best on validation wins,
a tie to the simpler preset as `--preset auto` breaks it).

Usage:
    .venv/bin/python benchmarks/trial_length.py --protocol-json a.json b.json --trials 0=auto-s0 1=auto-s1 \\
        --student tinycnn_w16 --presets kd kd_ls dist dkd nd --full 40 --set train.cache_views=8 --trial-cache views
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kd_protocol import Ledger

from kdcompress.select.presetrank import best_or_simplest, simplest_first


def trial_scores(run: Path) -> dict[tuple[str, int], float]:
    """{(preset, epochs): best validation accuracy} of a --preset auto run's finished trials."""
    out = {}
    for d in sorted((run / "preset_trials").glob("*-e*")):
        name, _, epochs = d.name.rpartition("-e")
        rows = list(csv.DictReader((d / "metrics.csv").open())) if (d / "metrics.csv").exists() else []
        if rows and len(rows) == int(epochs):  # an unfinished trial is no score
            out[name, int(epochs)] = max(float(r["val_accuracy"]) for r in rows)
    return out


def same_training(spec: str, name: str) -> bool:
    """Whether a protocol spec trains preset `name` as it is: the preset itself, or a variant that only says where
    the teacher's outputs come from ("NAME,train.teacher_cache=views"); a variant of any other key (dkd.beta=2,
    say) is another training."""
    base, *extra = spec.split(",")
    return base == name and all(e.strip().startswith("train.teacher_cache=") for e in extra)


def trial_run(ledger: Ledger, name: str, epochs: int, seed: int, args) -> dict | None:
    """A protocol run that trained as a trial of `name` would: that training (same_training) at `epochs`, with the
    teacher outputs --trial-cache says the trials read (auto's trials read the cache the main run decides on,
    where a short run alone would run the teacher online)."""
    return next((r for r in ledger.rows if same_training(r["spec"], name) and
                 (r["student"], r["epochs"], r["seed"], r["set"]) == (args.student, epochs, seed, list(args.set))
                 and args.trial_cache in (None, r.get("teacher_cache"))), None)


def seed_table(seed: int, ledger: Ledger, trials: dict, args) -> tuple[dict, dict, dict]:
    """({(preset, epochs): val}, {preset: full-length test}, {preset: full-length val}) for one seed."""
    val, test, full_val = dict(trials), {}, {}
    for name in args.presets:
        for n in args.lengths:
            row = trial_run(ledger, name, n, seed, args)
            if row is not None:
                val.setdefault((name, n), row["val_acc"])
        row = ledger.get(args.student, name, args.full, seed, args.set)
        if row is None:
            raise SystemExit(f"trial_length: no {args.full}-epoch run of {name} for {args.student}, seed {seed}")
        test[name], full_val[name] = row["test_acc"], row["val_acc"]
    return val, test, full_val


def pick(scores: dict[str, float], n_val: int) -> str:
    names = simplest_first(list(scores))
    return best_or_simplest(n_val)(names, scores)


def report(seed: int, run: Path | None, ledger: Ledger, args) -> tuple[list[str], dict[str, float]]:
    trials = trial_scores(run) if run else {}
    val, test, full_val = seed_table(seed, ledger, trials, args)
    lines = [f"seed {seed}", "| preset | " + " | ".join(f"val % at {n} ep" for n in args.lengths)
             + f" | val % at {args.full} ep | test % at {args.full} ep |",
             "|---|" + "---:|" * (len(args.lengths) + 2)]
    for name in simplest_first(args.presets):
        cells = " | ".join(f"{100 * val[name, n]:.2f}" if (name, n) in val else "" for n in args.lengths)
        lines.append(f"| {name} | {cells} | {100 * full_val[name]:.2f} | {100 * test[name]:.2f} |")
    best = max(test.values())
    behind = {}
    if run and (run / "preset_ranking.json").exists():
        winner = json.loads((run / "preset_ranking.json").read_text())["ranking"]["winner"]
        behind["auto as run"] = best - test[winner]
        lines.append(f"auto as run: {winner}, {100 * (best - test[winner]):.2f} points behind the best")
    for n in args.lengths + [args.full]:
        scores = {p: (full_val[p] if n == args.full else val.get((p, n))) for p in args.presets}
        if all(v is not None for v in scores.values()):
            w = pick(scores, args.val_images)
            behind[f"one rung at {n}"] = best - test[w]
            lines.append(f"one rung at {n} ep: {w}, {100 * (best - test[w]):.2f} points behind the best")
    return lines, behind


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--protocol-json", type=Path, nargs="+", required=True)
    ap.add_argument("--trials", nargs="*", default=[], help="SEED=DIR: a --preset auto run of that seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the seeds of --trials")
    ap.add_argument("--student", default="tinycnn_w16")
    ap.add_argument("--presets", nargs="+", default=["kd", "kd_ls", "dist", "dkd", "nd"])
    ap.add_argument("--lengths", type=int, nargs="+", default=[2, 4, 8], help="trial lengths, epochs")
    ap.add_argument("--full", type=int, default=40, help="the full run's epochs")
    ap.add_argument("--val-images", type=int, default=7500, help="for the tie rule: half an image")
    ap.add_argument("--within", type=float, default=0.3, help="points")
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--trial-cache", default=None, help="only protocol runs at a trial length whose teacher outputs "
                    "were this (views: as auto's trials read them)")
    args = ap.parse_args(argv)
    runs = {int(k): Path(v) for k, _, v in (t.partition("=") for t in args.trials)}
    ledger = Ledger(None, False, {}, args.protocol_json)
    out, tally = [], {}
    for seed in args.seeds or sorted(runs):
        lines, behind = report(seed, runs.get(seed), ledger, args)
        out += lines + [""]
        for rule, b in behind.items():
            tally.setdefault(rule, []).append(b)
    out.append(f"within {args.within:g} points of the best preset (full-length test accuracy), per rule:")
    for rule, bs in tally.items():
        hit = sum(b <= args.within / 100 + 1e-9 for b in bs)
        out.append(f"  {rule}: {hit}/{len(bs)} seeds, mean {100 * sum(bs) / len(bs):.2f} points behind")
    text = "\n".join(out)
    print(text)
    return text


if __name__ == "__main__":
    main()
