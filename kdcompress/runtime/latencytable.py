"""Latency measured on the real target: the candidate manifest `select --export-candidates` writes, the
profiler `kdcompress profile` runs on the target, and the latency table (latency.json) it writes.

Everything here imports only the standard library, numpy and onnxruntime (through ortbench and
freshbench): `profile` must run on an edge box that has onnxruntime and numpy but no torch.
tests/test_select_target.py runs it in a subprocess whose `import torch` fails.

manifest.json: {"format": MANIFEST_FORMAT, "input_shape": [C, H, W], "num_classes", "batch",
  "models": [{"key": "resnet8:fp32", "name", "precision", "family", "params", "flops", "file", "sha256"}]}
latency.json: {"format": TABLE_FORMAT, "input_shape", "num_classes", "batch", "provider", "machine",
  "tuned", "processes", "stat", "unstable": {key: slowest/fastest}, "models": {key: {"name", "precision",
  "params", "flops", "sha256", "settings", "latency_ms": {p50, p90, p99, mean, min, iters, batch,
  throughput}, "draws": [the same, per process]}}}. A table from before "processes" existed holds one
  in-process measurement per model and no draws; it is read the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.errors import InputError, UsageError
from ..core.fsguard import file_sha256
from ..core.progress import SILENT, Reporter
from .freshbench import UNSTABLE, draw_file, slowest
from .ortbench import LatencyStats, SessionSettings, sweep_settings
from ..core.runio import atomic_write_json

MANIFEST_FORMAT = "kdcompress-candidates/1"
TABLE_FORMAT = "kdcompress-latency-table/1"
MANIFEST = "manifest.json"
PROCESSES = 5  # fresh processes per model: a process's latency is one draw (runtime.freshbench)
PROCESS_TIME_S = 0.3  # per process and model: profile runs once per target, so each draw may be longer


def model_key(name: str, precision: str) -> str:
    return f"{name}:{precision}"


def _read(path: Path, fmt: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{what} {path} is not readable JSON ({type(e).__name__}); regenerate it") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise InputError(f"{path} is not a {what} (format {fmt!r} expected); regenerate it")
    if not isinstance(data.get("models"), (list, dict)) or not isinstance(data.get("input_shape"), list):
        raise InputError(f"{what} {path} lacks its models or input_shape; regenerate it")
    return data


def read_manifest(directory: Path) -> dict[str, Any]:
    return _read(Path(directory) / MANIFEST, MANIFEST_FORMAT, "candidate manifest")


def read_table(path: Path) -> dict[str, Any]:
    data = _read(path, TABLE_FORMAT, "latency table")
    if not isinstance(data["models"], dict):
        raise InputError(f"latency table {path} has no models object; regenerate it with kdcompress profile")
    return data


def table_stats(entry: dict[str, Any]) -> LatencyStats:
    try:
        lat = entry["latency_ms"]
        return LatencyStats(float(lat["p50"]), float(lat["p90"]), float(lat["p99"]), float(lat["mean"]),
                            float(lat["min"]), int(lat["iters"]), int(lat["batch"]), float(lat["throughput"]))
    except (KeyError, TypeError, ValueError):
        raise InputError("a latency table entry lacks p50/p90/p99/mean/min/iters/batch/throughput; "
                         "regenerate the table with kdcompress profile") from None


def profile_dir(directory: Path, *, provider: str = "cpu", threads: int | None = None, tune: bool = False,
                cpu_limit: int = 1, stat: str = "p50", out: Path | None = None, processes: int = PROCESSES,
                progress: Reporter = SILENT, draw: Callable[..., LatencyStats] | None = None) -> dict[str, Any]:
    """Measure every model of the manifest in `directory` with the one harness, each in `processes` new
    processes, and write latency.json (to `out`, default DIR/latency.json).

    A process's latency is one draw (runtime.freshbench), so the draws go round the models: process 1 of every
    model, then process 2 of every model, ..., and a minute in which the machine runs slow lands on all
    models alike rather than on a block of them. Each model's figure is the slowest of its draws per
    statistic (freshbench.slowest); its draws are kept beside it, and a model whose draws spread by more than
    UNSTABLE in `stat` is listed under "unstable". With `tune`, each model's settings are swept first (in
    this process, short runs); otherwise `threads` (default 1) intra-op threads, sequential, all
    optimisations. `progress` (core.progress) counts the sweeps and the processes x models draws, all known
    before the first is timed. `draw` is a seam for tests (freshbench.draw_file's signature)."""
    from ..core.system import machine_fingerprint

    if processes < 1:
        raise UsageError(f"--processes must be at least 1, got {processes}")
    directory = Path(directory)
    manifest = read_manifest(directory)
    batch = int(manifest.get("batch", 1))
    shape = (batch, *(int(v) for v in manifest["input_shape"]))
    t0 = time.time()
    entries = _checked_entries(directory, manifest)
    progress.plan(len(entries) * (processes + (1 if tune else 0)))
    settings: dict[str, SessionSettings] = {}
    for m, path in entries:
        if tune:
            progress.step(f"tuning {m['key']}")
            settings[m["key"]] = sweep_settings(path, shape, provider, cpu_limit, stat)[0]
            progress.advance()
        else:
            settings[m["key"]] = SessionSettings(threads or 1)
    draws: dict[str, list[LatencyStats]] = {m["key"]: [] for m, _ in entries}
    for i in range(processes):
        for m, path in entries:
            progress.step(f"draw {i + 1}/{processes}: {m['key']}")
            draws[m["key"]].append((draw or draw_file)(path, provider, shape, settings[m["key"]], PROCESS_TIME_S))
            progress.advance()
    models, unstable = _table_models(entries, settings, draws, stat)
    table = {"format": TABLE_FORMAT, "input_shape": manifest["input_shape"], "num_classes": manifest.get("num_classes"),
             "batch": batch, "provider": provider, "tuned": tune, "processes": processes, "stat": stat,
             "machine": machine_fingerprint(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "seconds": round(time.time() - t0, 2), "unstable": unstable, "models": models}
    atomic_write_json(Path(out) if out else directory / "latency.json", table)
    return table


def _checked_entries(directory: Path, manifest: dict[str, Any]) -> list[tuple[dict[str, Any], Path]]:
    """(manifest entry, file) of every model, each file checked against its checksum before anything is timed."""
    entries = []
    for m in manifest["models"]:
        path = directory / str(m["file"])
        if not path.is_file():
            raise InputError(f"{path} (listed in {directory / MANIFEST}) is missing; re-export the candidates")
        if file_sha256(path) != m.get("sha256"):
            raise InputError(f"{path} does not match the checksum in the manifest; re-export the candidates")
        entries.append((m, path))
    return entries


def _table_models(entries, settings: dict[str, SessionSettings], draws: dict[str, list[LatencyStats]],
                  stat: str) -> tuple[dict[str, Any], dict[str, float]]:
    """The table's per-model entries (the slowest draw per statistic, every draw kept) and the models whose
    draws spread by more than UNSTABLE in `stat`."""
    models: dict[str, Any] = {}
    unstable: dict[str, float] = {}
    for m, _ in entries:
        key, got = m["key"], draws[m["key"]]
        models[key] = {k: m[k] for k in ("name", "precision", "family", "params", "flops", "sha256") if k in m}
        models[key].update(settings=settings[key].to_json(), latency_ms=slowest(got).to_json(),
                           draws=[d.to_json() for d in got])
        spread = max(d.stat(stat) for d in got) / min(d.stat(stat) for d in got)
        if spread > UNSTABLE:
            unstable[key] = round(spread, 3)
    return models, unstable


def check_table(table: dict[str, Any], path: Path, *, input_shape: tuple[int, ...], batch: int,
                wanted: dict[str, tuple[int, int]]) -> None:
    """Refuse a table measured for something else: another input shape or batch, or one that lacks a
    candidate or describes it with other params/FLOPs (another class count, another zoo version).
    `wanted`: key -> (params, flops) of each candidate this selection needs."""
    fix = "re-export with `kdcompress select --export-candidates DIR` and run `kdcompress profile DIR` on the target"
    if [int(v) for v in table["input_shape"]] != list(input_shape):
        raise InputError(f"latency table {path} was measured for input {table['input_shape']}, this teacher "
                         f"takes {list(input_shape)}; {fix}")
    if int(table.get("batch", 1)) != batch:
        raise InputError(f"latency table {path} was measured at batch {table.get('batch')}, not {batch}; {fix}")
    models = table["models"]
    missing = [k for k in wanted if k not in models]
    if missing:
        raise InputError(f"latency table {path} has no measurement for {', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''}; {fix}")
    for k, (params, flops) in wanted.items():
        e = models[k]
        if (e.get("params"), e.get("flops")) != (params, flops):
            raise InputError(f"latency table {path} describes {k} with {e.get('params')} params / {e.get('flops')} "
                             f"FLOPs, this selection builds {params} / {flops} (another class count?); {fix}")
