"""Is the fast TorchScript screening export faithful to the dynamo graph that ships?

For every zoo student that suits the digits input (1x8x8, 10 classes; random init: latency does not depend
on the weights) this exports the model both ways (runtime.onnxio.screen_bytes and onnx_bytes), times each
export, and measures the ORT p50 at batch 1 of both graphs with the same session settings (the select
defaults: CPU provider, 1 intra-op thread; the screening graph has a static batch of 1, as select exports it
at the budget's batch), in interleaved rounds (screen, ship, ship, screen, ...: a
drift of the machine's load hits both alike). Printed: export seconds, the median over rounds of each
graph's p50, their ratio (screen / ship) and the largest |logit difference| between the graphs.

    nice -n 10 python benchmarks/select_screen_fidelity.py [--rounds 4] [--only a,b]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--only", default="", help="comma-separated student names (default: all that suit 1x8x8)")
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from kdcompress.runtime.onnxio import onnx_bytes, screen_bytes
    from kdcompress.runtime.ortbench import make_session, measure_latency
    from kdcompress.core.spec import InputSpec
    from kdcompress.core.system import cpu_limit, machine_fingerprint
    from kdcompress.students.registry import STUDENTS

    spec = InputSpec((1, 8, 8), (0.5,), (0.25,))
    names = [n.strip() for n in args.only.split(",") if n.strip()] or [
        n for n in STUDENTS.names() if STUDENTS.get(n).suits(spec)]
    print(f"{len(names)} students; cpu limit {cpu_limit()}; load average {os.getloadavg()[0]:.2f}; "
          f"{args.rounds} interleaved rounds", flush=True)
    print()
    print("| student | TorchScript export s | dynamo export s | screen graph | p50 screen ms | p50 ship ms | "
          "ratio screen/ship | max abs logit diff |")
    print("|---|---:|---:|---|---:|---:|---:|---:|", flush=True)
    ratios, t_screen, t_ship = [], 0.0, 0.0
    x = np.random.default_rng(0).standard_normal((1, *spec.shape)).astype(np.float32)
    for name in names:
        model = STUDENTS.get(name).build(10, spec).eval()
        t0 = time.perf_counter()
        screen, graph = screen_bytes(model, spec)
        t1 = time.perf_counter()
        ship = onnx_bytes(model, spec)
        t2 = time.perf_counter()
        t_screen, t_ship = t_screen + t1 - t0, t_ship + t2 - t1
        sessions = {"screen": make_session(screen, "cpu", 1), "ship": make_session(ship, "cpu", 1)}
        diff = float(np.abs(sessions["screen"].run(None, {"input": x})[0]
                            - sessions["ship"].run(None, {"input": x})[0]).max())
        p50 = {"screen": [], "ship": []}
        for r in range(args.rounds):
            for g in (("screen", "ship") if r % 2 == 0 else ("ship", "screen")):
                p50[g].append(measure_latency(sessions[g], (1, *spec.shape)).p50)
        a, b = statistics.median(p50["screen"]), statistics.median(p50["ship"])
        ratios.append(a / b)
        print(f"| {name} | {t1 - t0:.2f} | {t2 - t1:.2f} | {graph} | {a:.4f} | {b:.4f} | {a / b:.3f} | {diff:.1e} |",
              flush=True)
    print()
    print(f"exports in all: TorchScript {t_screen:.1f} s, dynamo {t_ship:.1f} s; ratio screen/ship: median "
          f"{statistics.median(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}")
    fp = machine_fingerprint()
    print(f"machine: {fp['cpu']}, {fp['cpus']} usable CPUs, Python {fp['python']}, onnxruntime {fp['onnxruntime']}, "
          f"torch {torch.__version__}; load average after {os.getloadavg()[0]:.2f} (shared with other jobs); "
          f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')}")


if __name__ == "__main__":
    main()
