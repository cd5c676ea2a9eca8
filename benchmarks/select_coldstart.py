"""How long does `kdcompress select` take over the whole small-input zoo at the demo's budget?

The demo's setting: a resnet8x4 teacher on digits (1x8x8, 10 classes; random init here: latency does not
depend on the weights), budget = a third of the teacher's own measured ORT p50. Each configuration runs
as a fresh `kdcompress select` process (imports included) with its own empty latency cache:

  cold, pruned (the default: screening on the TorchScript export, confirmation on the dynamo one)
                                                    goal < 45 s on 2 cores
  warm (the same command again)                     goal < 2 s
  exhaustive on the pruned run's cache (--no-prune) pruning alone: measures only what was pruned
  cold, --no-prune (every candidate screened)       for comparison (skip with --quick)

and the chosen student of each is printed. Pruned must equal the exhaustive search on the same
measurements; the cold exhaustive run measures everything again in another process, so on a noisy machine
it can choose differently for reasons that are not pruning.

    python benchmarks/select_coldstart.py [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(args: list[str], cache: str) -> tuple[float, float, dict]:
    """(wall s, CPU s of the whole process tree: the select process and any children, user + sys)."""
    env = {**os.environ, "KDCOMPRESS_CACHE": cache}
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "kdcompress", "select", *args, "--json"], capture_output=True,
                       text=True, env=env)
    wall = time.time() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if p.returncode != 0:
        raise SystemExit(f"select failed ({p.returncode}): {p.stderr[-2000:]}")
    return wall, cpu, json.loads(p.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the exhaustive sequential baseline")
    ap.add_argument("--no-tune", action="store_true", help="pass --no-tune (no settings sweep at confirmation)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from kdcompress.core.checkpoint import save_checkpoint
    from kdcompress.core.config import RuntimeConfig
    from kdcompress.core.spec import InputSpec
    from kdcompress.core.system import cpu_limit, machine_fingerprint
    from kdcompress.select import measure_cached
    from kdcompress.select.cache import LatencyCache
    from kdcompress.students.registry import build_student

    tmp = Path(tempfile.mkdtemp(prefix="kdc-coldstart-"))
    spec = InputSpec((1, 8, 8), (0.5,), (0.25,))
    teacher = build_student("resnet8x4", 10, spec).eval()
    ckpt = tmp / "teacher.pt"
    save_checkpoint(ckpt, teacher, "resnet8x4", tuple(str(i) for i in range(10)), spec)
    t_lat = measure_cached("__teacher__", teacher, spec, 10, RuntimeConfig(), 1,
                           LatencyCache(tmp / "teacher-cache.json"))
    budget = round(t_lat.p50 / 3, 4)
    base = ["--teacher", str(ckpt), "--budget-ms", str(budget)] + (["--no-tune"] if args.no_tune else [])
    print(f"teacher resnet8x4 p50 {t_lat.p50:.4f} ms -> budget {budget} ms; cpu limit {cpu_limit()}; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)

    print()
    print("| configuration | wall s (whole process) | CPU s (process tree) | in select() s | measured | cached | "
          "skipped (pruned) | chosen |")
    print("|---|---:|---:|---:|---:|---:|---:|---|", flush=True)

    def row(name: str, wall: float, cpu: float, j: dict) -> None:
        s = j["search"]
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {s['seconds']:.1f} | {s['measured']} | {s['cached']} | "
              f"{s['skipped']} | {j['chosen']['name']} |", flush=True)

    cache = str(tmp / "c1")
    row("cold, pruned", *run(base, cache))
    for i in range(3):  # a warm selection imports no torch (select.warm): its time is mostly imports
        row(f"warm (same command again, {i + 1} of 3)", *run(base, cache))
    # pruning alone: the exhaustive search on the pruned run's measurements (it measures only what was
    # pruned), so a different choice can only come from pruning, not from another process's noise
    row("exhaustive on the pruned run's cache (--no-prune)", *run([*base, "--no-prune"], cache))
    if not args.quick:
        row("cold, exhaustive (--no-prune, own cache)", *run([*base, "--no-prune"], str(tmp / "c2")))
    fp = machine_fingerprint()
    print()
    print(f"machine: {fp['cpu']}, {fp['cpus']} usable CPUs, Python {fp['python']}, onnxruntime {fp['onnxruntime']}, "
          f"torch {torch.__version__}; load average after {os.getloadavg()[0]:.2f} (shared with other jobs); "
          f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')}")


if __name__ == "__main__":
    main()
