"""Where a CPU distillation step goes: torch.profiler (ops) and cProfile (Python) over kdcompress's step.

    python benchmarks/profile_step.py --setting small --methods kd,dkd,nd,ickd

Same setup as throughput.py (its --setting shapes, random weights, synthetic data). Prints, per method, the
top ops by self CPU time with their share, and the top Python functions by own time (cProfile tottime).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput as tp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setting", choices=tuple(tp.SETTINGS), default="small")
    ap.add_argument("--methods", default=",".join(tp.METHODS))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--top", type=int, default=18)
    args = ap.parse_args()
    tp.S = tp.SETTINGS[args.setting]
    device = torch.device("cpu")
    split = tp.synthetic_split(tp.S.cpu_train_size)
    print(f"profile: {tp.S.title}, batch {tp.S.cpu_batch}, {args.steps} steps, {torch.get_num_threads()} threads")
    for method in args.methods.split(","):
        step = tp.kdcompress_stepper(method, split, device, tp.S.cpu_batch, False)
        for _ in range(5):
            step()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        plain = (time.perf_counter() - t0) / args.steps
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                step()
        ev = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in ev)
        print(f"\n=== {method}: {1000 * plain:.2f} ms/step unprofiled; "
              f"profiled self CPU {total / 1000 / args.steps:.2f} ms/step")
        print(f"{'op':44s} {'calls/step':>10s} {'self ms/step':>12s} {'share':>7s}")
        for e in sorted(ev, key=lambda e: -e.self_cpu_time_total)[:args.top]:
            print(f"{e.key[:44]:44s} {e.count / args.steps:10.1f} {e.self_cpu_time_total / 1000 / args.steps:12.3f} "
                  f"{100 * e.self_cpu_time_total / total:6.1f}%")
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(args.steps):
            step()
        pr.disable()
        out = io.StringIO()
        pstats.Stats(pr, stream=out).sort_stats("tottime").print_stats(args.top)
        lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
        start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
        print("cProfile (tottime, all steps):")
        print("\n".join(lines[start - 2:start + 1 + args.top]))


if __name__ == "__main__":
    main()
