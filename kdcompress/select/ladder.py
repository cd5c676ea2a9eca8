"""Turning candidates into ONNX bytes, and writing the candidate ladder to a directory
(`select --export-candidates DIR`) for `kdcompress profile` on the target.

Two graphs per candidate. The *screening* graph (graph "screen": runtime.onnxio.screen_bytes, the TorchScript
exporter at a static batch, fast) is what a selection measures first; it is made in-process,
since a spawned worker costs a torch import (seconds) and the export is short. The *shipping* graph (graph "ship":
runtime.onnxio.onnx_bytes, the dynamo exporter export uses, several times slower and single-threaded
Python; export times per model in benchmarks/RESULTS.md, "Screening fidelity") is
what a confirmation measures and what --export-candidates writes; a wave of several of those runs in a
small pool of spawned processes (spawn, not fork: the parent holds torch's thread pools) when workers > 1.
Measuring happens in the parent with the pool idle, so exports never disturb a timing. Precision variants
are made from the fp32 bytes of the same graph by the `convert(fp32_bytes, spec, precision) -> bytes` the
caller passes in (export.variants.timing_variant: the same fp16 converter and static QDQ INT8 quantiser
export ships), so select does not import export. A screening export or conversion that fails falls back
to the shipping graph for that model (reported as graph "ship").
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from ..core.errors import UsageError
from ..runtime import MANIFEST, MANIFEST_FORMAT, model_key
from ..core.runio import atomic_write_bytes, atomic_write_json
from ..core.spec import InputSpec
from ..core.system import torch_threads

Convert = Callable[[bytes, InputSpec, str], bytes]
Job = tuple[str, str]  # (student name, precision)


def _variant(data: bytes, spec: InputSpec, precision: str, convert: Convert | None) -> bytes:
    if precision == "fp32":
        return data
    if convert is None:
        raise UsageError(f"measuring the {precision} variant needs a converter (internal: pass convert=)")
    return convert(data, spec, precision)


def candidate_onnx(name: str, num_classes: int, spec: InputSpec, precision: str, convert: Convert | None) -> bytes:
    """Shipping-graph ONNX bytes of zoo student `name` (random init: latency does not depend on the
    weights) in `precision`. Module level so that a spawned worker can run it."""
    import torch

    from ..runtime import onnx_bytes
    from ..students import build_student

    torch.set_num_threads(1)
    return _variant(onnx_bytes(build_student(name, num_classes, spec).eval(), spec), spec, precision, convert)


class Exporter:
    """Screening bytes (`screen`, in-process) and shipping bytes (`ship`; `many` uses a pool of `workers`
    processes when workers > 1 and a wave has more than one job). The fp32 bytes of each graph are kept,
    so a model's precision variants share one export. Use as a context manager (the pool is shut down)."""

    def __init__(self, num_classes: int, spec: InputSpec, convert: Convert | None, workers: int,
                 build: Callable[[str], Any] | None = None, batch: int = 1):
        self.num_classes, self.spec, self.convert, self.workers = num_classes, spec, convert, max(1, workers)
        self.build = build  # name -> model (the caller's, so a model is built once); default: the zoo's
        self.batch = batch  # the screening graph's static batch (the batch it is measured at)
        self._pool: ProcessPoolExecutor | None = None
        self._fp32: dict[tuple[str, str], tuple[bytes, str]] = {}  # (name, graph asked) -> (bytes, graph made)

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _model(self, name: str):
        from ..students import build_student

        return self.build(name) if self.build else build_student(name, self.num_classes, self.spec)

    def ship(self, job: Job) -> bytes:
        from ..runtime import onnx_bytes

        name, precision = job
        if (name, "ship") not in self._fp32:
            self._fp32[(name, "ship")] = (onnx_bytes(self._model(name), self.spec), "ship")
        return _variant(self._fp32[(name, "ship")][0], self.spec, precision, self.convert)

    def screen(self, job: Job) -> tuple[bytes, str]:
        """(bytes, graph): the screening graph, or the shipping one where the TorchScript export fails."""
        from ..runtime import screen_bytes

        name, precision = job
        if (name, "screen") not in self._fp32:
            data, graph = screen_bytes(self._model(name), self.spec, batch=self.batch)
            self._fp32[(name, "screen")] = (data, graph)
            if graph == "ship":
                self._fp32[(name, "ship")] = (data, graph)
        data, graph = self._fp32[(name, "screen")]
        if graph == "screen" and precision != "fp32" and self.convert is not None:
            try:
                return self.convert(data, self.spec, precision), graph
            except Exception:  # the converter could not take the TorchScript graph
                return self.ship(job), "ship"
        return _variant(data, self.spec, precision, self.convert), graph

    def many(self, jobs: list[Job]) -> dict[Job, bytes]:
        """Shipping bytes of each job."""
        if not jobs:
            return {}
        if self.workers <= 1 or len(jobs) == 1:
            return {j: self.ship(j) for j in jobs}
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
    with torch_threads(1), Exporter(num_classes, spec, convert, workers) as ex:
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
