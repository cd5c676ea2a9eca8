"""`distill --preset auto` against the best preset at full length, per (student, seed): issue 26's goal that auto
lands within 0.3 points of the best preset in at least 80% of cases.

Inputs are runs already made, nothing is trained here:
- distill run directories made with `--preset auto --student S --epochs E --set train.seed=N` (their report.json
  gives the winner, its ONNX test accuracy and the ranking's cost; config.json the seed);
- kd_protocol.py --json files holding each candidate preset's full-length run for the same student, seed, epochs
  and data (matched as kd_protocol matches runs: student, preset, epochs, seed, --set).

Usage:
    .venv/bin/python benchmarks/auto_vs_best.py --runs RUN0 RUN1 RUN2 --protocol-json a.json b.json \\
        --set train.cache_views=8

Prints, per run: the winner, its test accuracy (distill's ONNX figure, and the protocol's run of the same
preset as a check that the two trainings agree), each candidate's protocol test accuracy, the best, and the
distance to it; then how many runs land within --within points of the best.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kd_protocol import Ledger


def one_run(run: Path, ledger: Ledger, sets: list[str]) -> dict:
    rep = json.loads((run / "report.json").read_text())
    cfg = json.loads((run / "config.json").read_text())
    ranking = rep["preset_ranking"]
    student, seed, epochs = rep["student"]["arch"], cfg["preset"]["train"]["seed"], rep["training"]["epochs"]
    protocol = {}
    for name in ranking["candidates"]:
        row = ledger.get(student, name, epochs, seed, sets)
        if row is None:
            raise SystemExit(f"auto_vs_best: no protocol run of {name} for {student}, seed {seed}, {epochs} "
                             f"epochs, --set {sets} in those files")
        protocol[name] = row["test_acc"]
    best = max(protocol, key=protocol.get)
    winner = ranking["winner"]
    return {"run": str(run), "student": student, "seed": seed, "epochs": epochs, "winner": winner,
            "auto_test": rep["student"]["accuracy"], "protocol": protocol, "best": best,
            "behind_best": protocol[best] - protocol[winner], "ranking_seconds": ranking["seconds_spent"],
            "ranking_epochs": ranking["epochs_spent"], "training_seconds": rep["training"]["seconds"],
            "rounds": ranking["rounds"]}


def table(rows: list[dict], within: float) -> str:
    names = list(rows[0]["protocol"])
    lines = ["| student | seed | auto's pick | its test % (distill / protocol) | "
             + " | ".join(f"{n} test %" for n in names) + " | best | behind best, points | ranking s / epochs |",
             "|---|---:|---|---|" + "---:|" * len(names) + "---|---:|---|"]
    for r in rows:
        cells = " | ".join(f"{100 * r['protocol'][n]:.2f}" for n in names)
        lines.append(f"| {r['student']} | {r['seed']} | {r['winner']} | {100 * r['auto_test']:.2f} / "
                     f"{100 * r['protocol'][r['winner']]:.2f} | {cells} | {r['best']} | "
                     f"{100 * r['behind_best']:.2f} | {r['ranking_seconds']:.0f} / {r['ranking_epochs']} |")
    hit = sum(r["behind_best"] <= within / 100 for r in rows)
    lines.append(f"\nauto within {within:g} points of the best preset (protocol test accuracy): {hit}/{len(rows)} "
                 f"runs ({100 * hit / len(rows):.0f}%; the goal is 80%)")
    for r in rows:
        rounds = "; ".join(", ".join(f"{k} {100 * v:.1f}" for k, v in rd["val_accuracy"].items()) + f" at "
                           f"{rd['epochs']} ep" for rd in r["rounds"])
        lines.append(f"- seed {r['seed']}: validation in the trials: {rounds}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="distill --preset auto run directories")
    ap.add_argument("--protocol-json", type=Path, nargs="+", required=True, help="kd_protocol.py --json files")
    ap.add_argument("--set", nargs="*", default=[], help="the --set the protocol runs were made with")
    ap.add_argument("--within", type=float, default=0.3, help="points")
    args = ap.parse_args(argv)
    ledger = Ledger(None, False, {}, args.protocol_json)
    text = table([one_run(r, ledger, args.set) for r in args.runs], args.within)
    print(text)
    return text


if __name__ == "__main__":
    main()
