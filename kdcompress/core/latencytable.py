"""Latency measured on the real target: the candidate manifest `select --export-candidates` writes, the
profiler `kdcompress profile` runs on the target, and the latency table (latency.json) it writes.

Everything here imports only the standard library, numpy and onnxruntime (through ortbench): `profile`
must run on an edge box that has onnxruntime and numpy but no torch. tests/test_latency_table.py runs it
in a subprocess whose `import torch` fails.

manifest.json: {"format": MANIFEST_FORMAT, "input_shape": [C, H, W], "num_classes", "batch",
  "models": [{"key": "resnet8:fp32", "name", "precision", "family", "params", "flops", "file", "sha256"}]}
latency.json: {"format": TABLE_FORMAT, "input_shape", "num_classes", "batch", "provider", "machine",
  "tuned", "models": {key: {"name", "precision", "params", "flops", "sha256", "settings", "latency_ms":
  {p50, p90, p99, mean, min, iters, batch, throughput}}}}
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import InputError
from .fsguard import file_sha256
from .ortbench import LatencyStats, SessionSettings, make_session, measure_latency, sweep_settings
from .runio import atomic_write_json

MANIFEST_FORMAT = "kdcompress-candidates/1"
TABLE_FORMAT = "kdcompress-latency-table/1"
MANIFEST = "manifest.json"


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
                cpu_limit: int = 1, stat: str = "p50", out: Path | None = None,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every model of the manifest in `directory` with the one harness and write latency.json
    (to `out`, default DIR/latency.json). With `tune`, each model gets the settings sweep and its best
    settings; otherwise `threads` (default 1) intra-op threads, sequential, all optimisations."""
    from .system import machine_fingerprint

    directory = Path(directory)
    manifest = read_manifest(directory)
    batch = int(manifest.get("batch", 1))
    shape = (batch, *(int(v) for v in manifest["input_shape"]))
    models: dict[str, Any] = {}
    t0 = time.time()
    for m in manifest["models"]:
        path = directory / str(m["file"])
        if not path.is_file():
            raise InputError(f"{path} (listed in {directory / MANIFEST}) is missing; re-export the candidates")
        if file_sha256(path) != m.get("sha256"):
            raise InputError(f"{path} does not match the checksum in the manifest; re-export the candidates")
        if progress:
            progress(f"{m['key']} ({provider})")
        if tune:
            settings, stats, _ = sweep_settings(path, shape, provider, cpu_limit, stat)
        else:
            settings = SessionSettings(threads or 1)
            stats = measure_latency(make_session(path, provider, settings=settings), shape)
        models[m["key"]] = {k: m[k] for k in ("name", "precision", "family", "params", "flops", "sha256") if k in m}
        models[m["key"]].update(settings=settings.to_json(), latency_ms=stats.to_json())
    table = {"format": TABLE_FORMAT, "input_shape": manifest["input_shape"], "num_classes": manifest.get("num_classes"),
             "batch": batch, "provider": provider, "tuned": tune, "machine": machine_fingerprint(),
             "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.time() - t0, 2),
             "models": models}
    atomic_write_json(Path(out) if out else directory / "latency.json", table)
    return table


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
