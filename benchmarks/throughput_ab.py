"""Interleaved A/B of throughput.py between two kdcompress checkouts (and optional environment variants):
the rounds alternate A, B, A, B, ... so that a shared machine's load changes hit both alike.

    python benchmarks/throughput_ab.py --a /tmp/before --b . --setting small --rounds 5
    python benchmarks/throughput_ab.py --a /tmp/before --b . --b-env OMP_WAIT_POLICY=PASSIVE ...

Each arm runs this checkout's benchmarks/throughput.py (one round per call, `nice -n 10`) with PYTHONPATH
set to the arm's checkout, so only the kdcompress package differs. Prints per loop and arm the median img/s
over the rounds with its min-max, B / A of the medians, and per arm the median of each round's "x baseline"
(the loop's img/s over the unchanged baseline loop's in the same call: a ratio less exposed to load drift).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROW = re.compile(r"^\|\s*(baseline[^|]*?|kdcompress [^|]*?)\s*\|\s*([\d.]+)\s*\|\s*[\d.]+\s*\|\s*([\d.]+)\s*\|")


def run_once(checkout: Path, env_extra: dict[str, str], args: list[str]) -> dict[str, tuple[float, float]]:
    """{loop: (img/s, x baseline of the same run)}"""
    env = dict(os.environ, PYTHONPATH=str(checkout.resolve()), **env_extra)
    out = subprocess.run(["nice", "-n", "10", sys.executable, str(HERE / "throughput.py"), "--rounds", "1", *args],
                         env=env, capture_output=True, text=True, check=True).stdout
    return {m.group(1): (float(m.group(2)), float(m.group(3))) for line in out.splitlines() if (m := ROW.match(line))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", type=Path, required=True, help="checkout A (e.g. a worktree of the base commit)")
    ap.add_argument("--b", type=Path, required=True, help="checkout B")
    ap.add_argument("--b-env", action="append", default=[], help="NAME=VALUE for arm B only (repeatable)")
    ap.add_argument("--c-env", action="append", default=None,
                    help="NAME=VALUE: add a third arm C = checkout B with these variables (repeatable)")
    ap.add_argument("--rounds", type=int, default=5)
    args, rest = ap.parse_known_args()
    arms = {"A": (args.a, {}), "B": (args.b, dict(e.split("=", 1) for e in args.b_env))}
    if args.c_env:
        arms["C"] = (args.b, dict(e.split("=", 1) for e in args.c_env))
    for name, (path, env) in arms.items():
        print(f"arm {name}: {path} {env or ''}")
    print(f"throughput.py args: {' '.join(rest)}; {args.rounds} interleaved rounds; load average "
          f"{os.getloadavg()[0]:.2f} at start")
    res: dict[str, dict[str, list[float]]] = {a: {} for a in arms}
    rel: dict[str, dict[str, list[float]]] = {a: {} for a in arms}
    for r in range(args.rounds):
        for name, (path, env) in arms.items():
            for loop, (v, x) in run_once(path, env, rest).items():
                res[name].setdefault(loop, []).append(v)
                rel[name].setdefault(loop, []).append(x)
        print(f"round {r + 1} done, load average {os.getloadavg()[0]:.2f}", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}\n")
    head = " | ".join(f"{a} img/s median [min-max]" for a in arms)
    ratios = " | ".join(f"{a}/A" for a in arms if a != "A")
    xb = " | ".join(f"{a} x baseline (same run) median" for a in arms)
    print(f"| loop | {head} | {ratios} | {xb} |")
    print("|---|" + "---|" * (len(arms) * 3 - 1))
    for loop in res["A"]:
        cells, med = [], {}
        for a in arms:
            v = res[a].get(loop, [])
            med[a] = statistics.median(v) if v else float("nan")
            cells.append(f"{med[a]:.1f} [{min(v):.1f}-{max(v):.1f}]" if v else "-")
        rs = " | ".join(f"{med[a] / med['A']:.3f}" for a in arms if a != "A")
        xs = " | ".join(f"{statistics.median(rel[a][loop]):.2f}" if rel[a].get(loop) else "-" for a in arms)
        print(f"| {loop} | {' | '.join(cells)} | {rs} | {xs} |")


if __name__ == "__main__":
    main()
