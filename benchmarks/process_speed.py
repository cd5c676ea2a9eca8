"""Is a process's latency ONNX Runtime's, or the machine's? Time three workloads in each of N new processes.

Each child (onnxruntime and numpy only) times, p50 in µs (20 warm-up runs, then at least 200 runs and
0.15 s): a 48x48 float32 numpy matmul, `sum()` over a 200-element list, the student's shipping graph in
one ORT session (1 thread), then the same graph in a second session. If all three move together from
process to process, the per-process speed is the machine's (the host under a VM), not ORT's.

    python benchmarks/process_speed.py [--models tinycnn_w16,vgg11_x0_5] [--processes 20] [--no-arena]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKLOADS = ("ort", "ort2", "numpy", "python")


def p50_us(fn, min_runs: int = 200, min_time_s: float = 0.15) -> float:
    import numpy as np

    for _ in range(20):
        fn()
    times, t0 = [], time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - t0 < min_time_s:
        a = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - a)
        if len(times) > 20000:
            break
    return float(np.percentile(times, 50)) / 1e3


def child(path: str, arena: bool) -> None:
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.enable_cpu_mem_arena = arena
    sessions = [ort.InferenceSession(path, so, providers=["CPUExecutionProvider"]) for _ in range(2)]
    inp = sessions[0].get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([1, *inp.shape[1:]]).astype(np.float32)
    out = [sessions[0].get_outputs()[0].name]
    a = np.random.default_rng(1).standard_normal((48, 48)).astype(np.float32)
    values = list(range(200))
    res = {"numpy": p50_us(lambda: a @ a), "python": p50_us(lambda: sum(values))}
    res["ort"] = p50_us(lambda: sessions[0].run(out, {inp.name: x}))
    res["ort2"] = p50_us(lambda: sessions[1].run(out, {inp.name: x}))
    print(json.dumps(res))


def corr(a: list[float], b: list[float]) -> float:
    import numpy as np

    return float(np.corrcoef(a, b)[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tinycnn_w16,vgg11_x0_5")
    ap.add_argument("--shape", default="1x8x8")
    ap.add_argument("--processes", type=int, default=20)
    ap.add_argument("--no-arena", action="store_true", help="children turn ORT's CPU memory arena off")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1] == "1")
        return

    from kdcompress.runtime.onnxio import onnx_bytes
    from kdcompress.core.spec import InputSpec
    from kdcompress.core.system import machine_fingerprint
    from kdcompress.students.registry import build_student

    shape = tuple(int(v) for v in args.shape.split("x"))
    spec = InputSpec(shape, (0.5,) * shape[0], (0.25,) * shape[0])
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="kdc-speed-") as d:
        files = {}
        for n in names:
            files[n] = Path(d) / f"{n}.onnx"
            files[n].write_bytes(onnx_bytes(build_student(n, 10, spec).eval(), spec))
        runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
        steal0 = _steal()
        for _ in range(args.processes):  # round the models, one process each
            for n in names:
                p = subprocess.run([sys.executable, __file__, "--child", str(files[n]), "0" if args.no_arena else "1"],
                                   capture_output=True, text=True, check=True)
                runs[n].append(json.loads(p.stdout.strip().splitlines()[-1]))
        steal = _steal() - steal0
    print("| model | workload | p50 µs per process, in order | max/min |")
    print("|---|---|---|---:|")
    for n in names:
        for w in WORKLOADS:
            v = [r[w] for r in runs[n]]
            print(f"| {n} | {w} | {' '.join(f'{x:.1f}' for x in v)} | {max(v) / min(v):.2f} |")
    print()
    for n in names:
        col = {w: [r[w] for r in runs[n]] for w in WORKLOADS}
        print(f"{n}: correlation across processes, ORT with numpy {corr(col['ort'], col['numpy']):.2f}, ORT with "
              f"Python {corr(col['ort'], col['python']):.2f}, "
              f"numpy with Python {corr(col['numpy'], col['python']):.2f}, "
              f"the two ORT sessions {corr(col['ort'], col['ort2']):.2f}")
    fp = machine_fingerprint()
    print(f"\nsteal time during the run: {steal} ticks (/proc/stat); ORT CPU arena {'off' if args.no_arena else 'on'}")
    print(f"machine: {fp['cpu']}, {fp['cpus']} usable CPUs, {fp['system']} {fp['machine']}, Python {fp['python']}, "
          f"onnxruntime {fp['onnxruntime']}; load average {os.getloadavg()[0]:.2f}; "
          f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')}; total {time.time() - t0:.0f} s")


def _steal() -> int:
    try:
        return int(Path("/proc/stat").read_text().split("\n")[0].split()[8])
    except (OSError, IndexError, ValueError):
        return -1


if __name__ == "__main__":
    main()
