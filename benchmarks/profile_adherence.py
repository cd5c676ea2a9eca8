"""Does a latency table from `kdcompress profile` keep select's promise, and do more processes per model help?

For one exported ladder (`kdcompress select --export-candidates DIR`), profile it twice on this machine:
with `--processes 1` and with `--processes N` (default 5), alternating the two A TIMES. For 10 budgets
between the fastest and the slowest model (midpoints of equal bins on a log scale), `kdcompress select
--latency-table` picks a student from each table, as a user would; each pick is then deployed in K fresh
processes (onnxruntime only, 0.3 s each, with the table's settings) and compared with the budget (+5%).

    python benchmarks/profile_adherence.py --teacher teacher.pt --ladder DIR [--processes 5] [--deploy-draws 6]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from select_adherence import newcombe, wilson
from select_adherence_ab import fisher_two_sided


def kdc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdcompress", *args], capture_output=True, text=True)


def report(rows: list[dict], seconds: dict[int, list[float]], rounds: int) -> dict[int, dict]:
    """Print the table (per --processes and round, then all rounds) and the A/B line; return the summary."""
    print()
    print("| --processes | round | budgets chosen | refused | first deployment within (+5%) "
          "| all deployments within (+5%) | deployments above the table's figure | median budget use | profile s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    summary = {}
    for procs in sorted(seconds):
        for rnd in [*range(rounds), "all"]:
            sel = [r for r in rows if r["processes"] == procs and (rnd == "all" or r["round"] == rnd)]
            ok = [r for r in sel if r["chosen"]]
            first = sum(r["deployments_ms"][0] <= 1.05 * r["budget_ms"] for r in ok)
            k = sum(v <= 1.05 * r["budget_ms"] for r in ok for v in r["deployments_ms"])
            n = sum(len(r["deployments_ms"]) for r in ok)
            above = sum(v > r["table_ms"] for r in ok for v in r["deployments_ms"])
            use = (statistics.median([statistics.median(r["deployments_ms"]) / r["budget_ms"] for r in ok])
                   if ok else 0.0)
            lo, hi = wilson(k, n)
            secs = statistics.median(seconds[procs]) if rnd == "all" else seconds[procs][rnd]
            print(f"| {procs} | {rnd} | {len(ok)} | {len(sel) - len(ok)} | {first}/{len(ok)} | {k}/{n} "
                  f"({100 * k / max(n, 1):.1f}%, CI {100 * lo:.1f}-{100 * hi:.1f}) | {above}/{n} | {100 * use:.1f}% "
                  f"| {secs:.0f} |")
            if rnd == "all":
                summary[procs] = {"first_within": first, "chosen": len(ok), "within": k, "deployments": n,
                                  "above_table": above, "median_use": use, "profile_seconds": seconds[procs]}
    if len(summary) == 2:
        (p1, a), (pn, b) = sorted(summary.items())
        lo, hi = newcombe(b["within"], b["deployments"], a["within"], a["deployments"])
        print(f"\ndeployments within budget (+5%), --processes {pn} minus --processes {p1}: "
              f"{100 * (b['within'] / b['deployments'] - a['within'] / a['deployments']):+.1f} points, Newcombe 95% CI "
              f"[{100 * lo:+.1f}, {100 * hi:+.1f}] (deployments of one pick share their minutes: optimistic); first "
              f"deployments within, Fisher exact two-sided p = "
              f"{fisher_two_sided(b['first_within'], b['chosen'], a['first_within'], a['chosen']):.3f}")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--ladder", required=True, help="a directory from select --export-candidates")
    ap.add_argument("--processes", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2, help="profile both ways this many times, alternating")
    ap.add_argument("--budgets", type=int, default=10)
    ap.add_argument("--deploy-draws", type=int, default=6)
    ap.add_argument("--json", help="write the rows and the summary here")
    args = ap.parse_args()

    from kdcompress.runtime.freshbench import measure_fresh
    from kdcompress.runtime.latencytable import read_manifest
    from kdcompress.runtime.ortbench import SessionSettings
    from kdcompress.core.system import machine_fingerprint

    t0 = time.time()
    ladder = Path(args.ladder)
    manifest = read_manifest(ladder)
    files = {m["name"]: ladder / m["file"] for m in manifest["models"] if m["precision"] == "fp32"}
    shape = (int(manifest.get("batch", 1)), *manifest["input_shape"])
    rows, seconds = [], {}
    for rnd in range(args.rounds):
        for procs in ((1, args.processes) if rnd % 2 == 0 else (args.processes, 1)):
            table_path = ladder / f"latency-p{procs}-r{rnd}.json"
            t = time.time()
            p = kdc("profile", str(ladder), "--no-tune", "--processes", str(procs), "--out", str(table_path), "--json")
            if p.returncode != 0:
                sys.exit(f"profile failed: {p.stderr.strip().splitlines()[-1:]}")
            seconds.setdefault(procs, []).append(time.time() - t)
            table = json.loads(table_path.read_text())
            lat = {m["name"]: m["latency_ms"]["p50"] for m in table["models"].values() if m["precision"] == "fp32"}
            lo, hi = min(lat.values()), max(lat.values())
            budgets = [lo * (hi / lo) ** ((i + 0.5) / args.budgets) for i in range(args.budgets)]
            print(f"round {rnd}, --processes {procs}: {len(lat)} models, p50 {lo:.4f} .. {hi:.4f} ms, "
                  f"profiled in {seconds[procs][-1]:.0f} s", file=sys.stderr, flush=True)
            for b in budgets:
                s = kdc("select", "--teacher", args.teacher, "--budget-ms", f"{b:.5f}", "--latency-table",
                        str(table_path), "--precision", "fp32", "--json")
                if s.returncode != 0:
                    rows.append({"round": rnd, "processes": procs, "budget_ms": b, "chosen": None,
                                 "refused": s.stderr.strip().splitlines()[-1:]})
                    continue
                chosen = json.loads(s.stdout)["chosen"]
                name = chosen["name"]
                settings = SessionSettings.from_json(table["models"][f"{name}:fp32"]["settings"])
                dep = [r.p50 for r in measure_fresh(files[name].read_bytes(), table["provider"], shape, settings,
                                                    args.deploy_draws, min_time_s=0.3)]
                rows.append({"round": rnd, "processes": procs, "budget_ms": b, "chosen": name,
                             "table_ms": lat[name], "deployments_ms": dep})

    summary = report(rows, seconds, args.rounds)
    fp = machine_fingerprint()
    print(f"\nmachine: {fp['cpu']}, {fp['cpus']} usable CPUs, {fp['system']} {fp['machine']}, Python {fp['python']}, "
          f"onnxruntime {fp['onnxruntime']}; load average {os.getloadavg()[0]:.2f}; "
          f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')}; total {time.time() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary, "machine": fp,
                                               "date": dt.datetime.now().isoformat(timespec="minutes")}, indent=1))


if __name__ == "__main__":
    main()
