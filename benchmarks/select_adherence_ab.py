"""Compare confirmation rules from select_adherence.py --json files: per rule, how often a deployment (a
fresh process timing the chosen student) was slower than the confirmed figure select promised, or over the
budget, with Wilson 95% CIs, and what the rule cost (budget use, seconds per selection).

Deployments of one chosen student are not independent (they share the minutes they ran in), so the
per-budget counts ("budgets with any deployment above the confirmed figure") are printed beside the
per-deployment ones; Fisher's exact test compares the per-budget counts of the first two rules.

    python benchmarks/select_adherence_ab.py three=benchmarks/results/select-adherence-three-*.json \\
        settled=benchmarks/results/select-adherence-settled-[12]-*.json
"""

from __future__ import annotations

import glob
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from select_adherence import newcombe, wilson  # noqa: F401  (newcombe: for the tests and profile_adherence)


def fisher_two_sided(a: int, n1: int, c: int, n2: int) -> float:
    """Two-sided Fisher exact p for a/n1 against c/n2 (sum of tables no more likely than the observed)."""
    k = a + c
    def p(x: int) -> float:
        return math.comb(n1, x) * math.comb(n2, k - x) / math.comb(n1 + n2, k)
    seen = p(a)
    return min(1.0, sum(p(x) for x in range(max(0, k - n2), min(k, n1) + 1) if p(x) <= seen * (1 + 1e-9)))


def summarise(files: list[str]) -> dict:
    rows = [r for f in files for r in json.loads(Path(f).read_text())["rows"]]
    deps = [(r, v) for r in rows for v in [r["remeasured_ms"], *r["more_deployments_ms"]]]
    def each(r):
        return [r["remeasured_ms"], *r["more_deployments_ms"]]
    return {"runs": len(files), "budgets": len(rows), "deployments": len(deps),
            "first_within": sum(r["remeasured_ms"] <= 1.05 * r["budget_ms"] for r in rows),
            "within": sum(v <= 1.05 * r["budget_ms"] for r, v in deps),
            "above": sum(v > r["selected_ms"] for r, v in deps),
            "above_5": sum(v > 1.05 * r["selected_ms"] for r, v in deps),
            "budgets_above": sum(any(v > r["selected_ms"] for v in each(r)) for r in rows),
            "worst_ratio": max(v / r["selected_ms"] for r, v in deps),
            "worst_budget_use": max(v / r["budget_ms"] for r, v in deps),
            "median_use": statistics.median(r["remeasured_ms"] / r["budget_ms"] for r in rows),
            "median_select_s": statistics.median(r["select_seconds"] for r in rows)}


def main(argv: list[str]) -> None:
    rules = {}
    for arg in argv:
        name, _, pattern = arg.partition("=")
        rules[name] = summarise(sorted(f for p in pattern.split(",") for f in glob.glob(p)))
    print("| rule | runs | first deployment within (+5%) | all deployments within (+5%) "
          "| deployments above the confirmed figure | above it by > 5% | budgets with a deployment above it "
          "| worst deployment / confirmed | worst % of budget | median budget use | median select s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, s in rules.items():
        def pct(k, n=s["deployments"]):
            lo, hi = wilson(k, n)
            return f"{k}/{n} ({100 * k / n:.1f}%, CI {100 * lo:.1f}-{100 * hi:.1f})"
        print(f"| {name} | {s['runs']} | {s['first_within']}/{s['budgets']} | {pct(s['within'])} | {pct(s['above'])} "
              f"| {pct(s['above_5'])} | {s['budgets_above']}/{s['budgets']} | {s['worst_ratio']:.2f} "
              f"| {100 * s['worst_budget_use']:.0f}% | {100 * s['median_use']:.1f}% | {s['median_select_s']:.1f} |")
    if len(rules) >= 2:
        (na, a), (nb, b) = list(rules.items())[:2]
        print(f"\nbudgets with a deployment above the confirmed figure, {na} vs {nb}: Fisher exact two-sided "
              f"p = {fisher_two_sided(a['budgets_above'], a['budgets'], b['budgets_above'], b['budgets']):.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
