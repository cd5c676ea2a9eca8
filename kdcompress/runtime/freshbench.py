"""Latency measured in fresh processes: how select confirms the student it is about to choose.

On a shared machine a model's latency can be drawn once per process (benchmarks/RESULTS.md, "Latency is a
per-process draw on this VM"): every session of one process ran at the same one of two speeds, far apart,
pinned to either CPU, with address randomisation on or off. A figure from the selecting process is
therefore one draw, and a deployment is another process: the choice is confirmed on several processes, and
the slowest counts.

Each child imports only onnxruntime, numpy and this module (no torch, so it starts quickly), times the
model for at least FRESH_MIN_TIME_S (and 100 runs) and prints its LatencyStats as one line of JSON. What is
being sampled is the process, not the runs inside it, so a child's run is short and select can afford many.

    python -m kdcompress.runtime.freshbench MODEL.onnx PROVIDER SETTINGS_JSON 1,1,8,8 [MIN_TIME_S]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from ..core.errors import EnvironmentProblem
from .ortbench import LatencyStats, SessionSettings, make_session, measure_latency

CHILD_TIMEOUT_S = 600  # min 100 runs of the slowest plausible candidate, plus start-up
FRESH_MIN_TIME_S = 0.15  # per child: thousands of runs of a tiny model, 100+ of a 1.5 ms one


# Draws further apart than this (slowest / fastest, in one statistic) make a warning: the same model can
# measure far apart in different processes, and a pure-Python loop varies as much (benchmarks/RESULTS.md,
# "Issue 14, stop 22"). select's confirmation and `kdcompress profile` both use it.
UNSTABLE = 1.25


def draw_file(path: Path, provider: str, shape: tuple[int, ...], settings: SessionSettings,
              min_time_s: float = FRESH_MIN_TIME_S) -> LatencyStats:
    """One measurement of the ONNX file at `path` in a new Python process (this module's main)."""
    args = [sys.executable, "-m", "kdcompress.runtime.freshbench", str(path), provider, json.dumps(settings.to_json()),
            ",".join(str(v) for v in shape), repr(float(min_time_s))]
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise EnvironmentProblem(f"a latency measurement in a fresh process took over {CHILD_TIMEOUT_S} s") from None
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        why = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
        raise EnvironmentProblem(f"a latency measurement in a fresh process failed: {why}")
    return LatencyStats(**json.loads(lines[-1]))


def fresh_draws(model: bytes, provider: str, shape: tuple[int, ...], settings: SessionSettings,
                processes: int, min_time_s: float = FRESH_MIN_TIME_S) -> Iterator[LatencyStats]:
    """Up to `processes` measurements of `model`, one after another, each in a new Python process,
    yielded as they come: the caller stops drawing once it knows enough (select.confirm.settled)."""
    with tempfile.TemporaryDirectory(prefix="kdc-fresh-") as d:
        path = Path(d) / "model.onnx"
        path.write_bytes(model)
        for _ in range(processes):
            yield draw_file(path, provider, shape, settings, min_time_s)


def slowest(draws: list[LatencyStats]) -> LatencyStats:
    """Per statistic, the slowest of several processes' measurements (each of p50, p90, p99, mean and min
    at its maximum, throughput at the slowest mean): a figure that every draw met."""
    worst_mean = max(d.mean for d in draws)
    batch = draws[0].batch
    return LatencyStats(max(d.p50 for d in draws), max(d.p90 for d in draws), max(d.p99 for d in draws), worst_mean,
                        max(d.min for d in draws), sum(d.iters for d in draws), batch, batch * 1000.0 / worst_mean)


def measure_fresh(model: bytes, provider: str, shape: tuple[int, ...], settings: SessionSettings,
                  processes: int, min_time_s: float = FRESH_MIN_TIME_S) -> list[LatencyStats]:
    """`processes` measurements of `model`, each in a new Python process (fresh_draws, all of them)."""
    return list(fresh_draws(model, provider, shape, settings, processes, min_time_s))


def main(argv: list[str] | None = None) -> None:
    path, provider, settings, shape, *rest = argv or sys.argv[1:]
    sess = make_session(Path(path).read_bytes(), provider, settings=SessionSettings.from_json(json.loads(settings)))
    stats = measure_latency(sess, tuple(int(v) for v in shape.split(",")),
                            min_time_s=float(rest[0]) if rest else FRESH_MIN_TIME_S)
    print(json.dumps(asdict(stats)))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # one line for the parent's error message
        print(f"{type(e).__name__}: {' '.join(str(e).split())[:300]}", file=sys.stderr)
        sys.exit(1)
