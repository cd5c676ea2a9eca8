"""Re-score a select_quality.py --json file under the trial rule with or without its margin, from the
memoised runs alone (nothing is trained): the same successive_halving (select/trial.py) over the pools
of the rule before 2026-12-01 (the top fits by capacity, every epoch of equal cost), each trial's validation
accuracy read from the file. A trial the file lacks (the other rule would have needed a run that was never
made) stops the script with its name.

    python benchmarks/select_quality_rescore.py results.json --val-images 180 [--no-margin] [--trial-top 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Fit:  # what successive_halving reads of a Candidate
    name: str
    precision: str = "fp32"
    flops: int = 0  # here the rank in the row's fits (ascending capacity): the last rung's tie-break order
    params: int = 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", type=Path)
    ap.add_argument("--val-images", type=int, required=True, help="the validation split's size (digits 180)")
    ap.add_argument("--no-margin", action="store_true")
    ap.add_argument("--trial-top", type=int, default=4)
    ap.add_argument("--trial-budget", type=float, default=0.25)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from presets import paired_stats

    from kdcompress.select.trial import successive_halving

    j = json.loads(args.json.read_text())
    runs = {(r["name"], r["epochs"], r["seed"]): (r["val"], r["test"]) for r in j["runs"]}
    epochs, seeds = j["epochs"], j["seeds"]

    def val(name: str, e: int, seed: int) -> float:
        if (name, e, seed) not in runs:
            raise SystemExit(f"the file has no {e}-epoch trial of {name} with seed {seed}: re-run select_quality")
        return runs[(name, e, seed)][0]

    def mean_test(name: str) -> float:
        return statistics.mean(runs[(name, epochs, s)][1] for s in seeds)

    within, regret_t, regret_f = 0.0, [], []
    for r in j["rows"]:
        pool = [Fit(n, flops=i) for i, n in reversed(list(enumerate(r["fits"])))][: args.trial_top]  # ascending
        chosen = []
        for seed in seeds:
            winner, _ = successive_halving(pool, int(args.trial_budget * epochs),
                                           lambda n, e, s=seed: val(n, e, s),
                                           n_val=None if args.no_margin else args.val_images)
            chosen.append(winner.name if winner else r["flops_choice"])
        accs = [mean_test(n) for n in chosen]
        within += statistics.mean(r["best"] - a <= 0.005 for a in accs)
        regret_t += [100 * (r["best"] - a) for a in accs]
        regret_f += [100 * (r["best"] - r["flops_acc"])] * len(seeds)
        print(f"{r['budget_ms']:.4f} ms: trial {', '.join(chosen)}; FLOPs {r['flops_choice']}; best {r['best_name']}")
    diff, lo, hi = paired_stats([f - t for f, t in zip(regret_f, regret_t, strict=True)])
    rule = "without the margin" if args.no_margin else f"with the one-SE margin (n_val {args.val_images})"
    print(f"trial rule {rule}: within 0.5 point {within:.2f}/{len(j['rows'])}; "
          f"mean regret {statistics.mean(regret_t):.2f} "
          f"points (FLOPs rule {statistics.mean(regret_f):.2f}); FLOPs - trial {diff:+.2f} [{lo:+.2f}, {hi:+.2f}]")


if __name__ == "__main__":
    main()
