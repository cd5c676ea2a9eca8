"""Turning candidates into ONNX bytes, in parallel processes where cores allow, and writing the candidate
ladder to a directory (`select --export-candidates DIR`) for `kdcompress profile` on the target.

The dynamo exporter costs 1-6 s per model on 2 cores and is single-threaded Python, so a cold selection is
dominated by exports. `Exporter` keeps a small pool of spawned processes (spawn, not fork: the parent
holds torch's thread pools) and exports a wave of candidates at once; measuring happens afterwards, in the
parent, with the pool idle, so the exports never disturb a timing. Precision variants are made by the
`convert(fp32_bytes, spec, precision) -> bytes` the caller passes in (export.variants.timing_variant: the
same fp16 converter and static QDQ INT8 quantiser export ships), so select does not import export.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from ..core.errors import UsageError
from ..core.latencytable import MANIFEST, MANIFEST_FORMAT, model_key
from ..core.runio import atomic_write_bytes, atomic_write_json
from ..core.spec import InputSpec

Convert = Callable[[bytes, InputSpec, str], bytes]


def candidate_onnx(name: str, num_classes: int, spec: InputSpec, precision: str, convert: Convert | None) -> bytes:
    """ONNX bytes of zoo student `name` (random init: latency does not depend on the weights) in `precision`.
    Module level so that a spawned worker can run it."""
    import torch

    from ..core.onnxio import onnx_bytes
    from ..students.registry import build_student

    torch.set_num_threads(1)
    data = onnx_bytes(build_student(name, num_classes, spec).eval(), spec)
    if precision == "fp32":
        return data
    if convert is None:
        raise UsageError(f"measuring the {precision} variant needs a converter (internal: pass convert=)")
    return convert(data, spec, precision)


class Exporter:
    """Exports waves of (name, precision) jobs; a pool of `workers` processes when workers > 1 and a wave
    has more than one job, in-process otherwise. Use as a context manager (the pool is shut down)."""

    def __init__(self, num_classes: int, spec: InputSpec, convert: Convert | None, workers: int):
        self.num_classes, self.spec, self.convert, self.workers = num_classes, spec, convert, max(1, workers)
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def many(self, jobs: list[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        if not jobs:
            return {}
        if self.workers <= 1 or len(jobs) == 1:
            return {(n, p): candidate_onnx(n, self.num_classes, self.spec, p, self.convert) for n, p in jobs}
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=get_context("spawn"))
        futures = {(n, p): self._pool.submit(candidate_onnx, n, self.num_classes, self.spec, p, self.convert)
                   for n, p in jobs}
        return {k: f.result() for k, f in futures.items()}


def export_ladder(directory: Path, *, rows: list[dict[str, Any]], num_classes: int, spec: InputSpec, batch: int,
                  convert: Convert | None, workers: int) -> dict[str, Any]:
    """Write each row's ONNX file (`NAME.PRECISION.onnx`) and manifest.json into `directory`.
    `rows`: {"name", "precision", "family", "params", "flops"} per model. Returns the manifest."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--export-candidates {directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    with Exporter(num_classes, spec, convert, workers) as ex:
        data = ex.many([(r["name"], r["precision"]) for r in rows])
    models = []
    for r in rows:
        blob = data[(r["name"], r["precision"])]
        file = f"{r['name']}.{r['precision']}.onnx"
        atomic_write_bytes(directory / file, blob)
        models.append({"key": model_key(r["name"], r["precision"]), **r, "file": file,
                       "sha256": hashlib.sha256(blob).hexdigest()})
    manifest = {"format": MANIFEST_FORMAT, "input_shape": list(spec.shape), "num_classes": num_classes,
                "batch": batch, "models": models}
    atomic_write_json(directory / MANIFEST, manifest)
    return manifest
