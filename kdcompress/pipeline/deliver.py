"""The one export-and-validate, used by distill and by `kdcompress export` alike: export the fp32 file and its
variants (each checked against PyTorch at batch 1 and 7), write them (a re-export keeps the files report.json
vouches for: reexport.py), measure each on the data's test split against the PyTorch model, and stamp each
new file's test accuracy into its metadata (the report records the stamped files' checksums).

How deep the measurement goes is the caller's: distill validates fully (`Checks`: accuracy, parity, latency,
the teacher and the gates, validate stage); export measures accuracy and parity only."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.spec import InputSpec
from ..core.splits import DataSplits
from ..core.progress import SILENT, Reporter
from ..export import ExportOptions, OnnxArtifact, build_units, build_variants, calibration_images
from ..runtime import make_session, stamp_metadata
from ..validate import (THROUGHPUT_BATCH, Gates, ModelInput, Validation, accuracy_metrics, accuracy_units, describe,
                        onnx_logits, parity, reference_logits, validate_models)
from .prepare import probe_batch
from .reexport import RunFiles, kept_artifact, plan_writes


@dataclass(frozen=True)
class Delivery:
    """One model to deliver: the PyTorch model and its input spec, the fp32 file's path (variants beside it),
    the export options and metadata, the data (None: exported and checked, not measured), for each data
    class the model output that carries it (None: the same order), and, for a re-export into a run, the
    files that run's report vouches for."""

    model: torch.nn.Module
    spec: InputSpec
    fp32_path: Path
    opts: ExportOptions
    metadata: dict[str, Any]
    splits: DataSplits | None = None
    columns: tuple[int, ...] | None = None
    files: RunFiles | None = None


@dataclass(frozen=True)
class Checks:
    """A full validation (distill): ORT settings, gates, the teacher (file or bytes, and how to feed it),
    the latency batch and the throughput batch."""

    runtime: Any  # RuntimeConfig
    gates: Gates
    teacher: tuple[Path | bytes, ModelInput] | None = None
    batch: int = 1
    throughput_batch: int = THROUGHPUT_BATCH


@dataclass(frozen=True)
class Score:
    """One file on the test split: its accuracy metrics and its parity with the PyTorch model."""

    accuracy: Any  # validate.Accuracy
    parity: Any  # validate.Parity


@dataclass(frozen=True)
class Delivered:
    """The files as they are on disk (stamped), which of them were kept (vouched for, untouched), each file's
    Score (None without data) and, with Checks, the Validation."""

    artifacts: tuple[OnnxArtifact, ...]
    kept: frozenset[Path]
    scores: tuple[Score | None, ...]
    validation: Validation | None = None


def deliver(d: Delivery, checks: Checks | None = None, report: Reporter = SILENT) -> Delivered:
    """Export, write, measure (fully with `checks`, else accuracy and parity) and stamp (module doc); the
    work is planned on `report` (delivery_units; a full validation plans its own when it starts)."""
    report.plan(delivery_units(d, full=checks is not None))
    arts, kept = export_files(d, report)
    if d.splits is None:
        return Delivered(tuple(arts), kept, (None,) * len(arts))
    report.step("PyTorch on the test split")
    ref = reference_logits(d.model, d.splits.test, d.spec)
    ref = ref if d.columns is None else ref[:, list(d.columns)]
    report.advance()
    val = None
    if checks is not None:
        val = validate_models([a.path for a in arts], [describe(a.path, data_shape=d.spec.shape) for a in arts],
                              d.splits.test, d.splits.classes, checks.runtime, checks.gates, reference=ref,
                              teacher=checks.teacher, batch=checks.batch, throughput_batch=checks.throughput_batch,
                              report=report)
        scores = [Score(v.eval.accuracy, v.parity) for v in val.variants]
    else:
        scores = [score_file(a, d, ref, report) for a in arts]
    stamped = stamp_accuracy(arts, [s.accuracy.top1 for s in scores], kept)
    report.advance()
    if val is not None:  # the validation describes the files as stamped
        val = replace(val, variants=tuple(replace(v, eval=replace(v.eval, sha256=a.sha256, bytes=a.bytes))
                                          for v, a in zip(val.variants, stamped, strict=True)))
    return Delivered(tuple(stamped), kept, tuple(scores), val)


def delivery_units(d: Delivery, full: bool) -> int:
    """deliver's own units of work: calibration images read, the build (export.build_units), the writes, and
    with data the PyTorch reference, each file's accuracy (unless a full validation measures it) and the
    stamping."""
    units = int(d.opts.int8 and d.splits is not None) + build_units(d.opts) + 1
    if d.splits is not None:
        per_file = 0 if full else accuracy_units(None, len(d.splits.test))  # exported files take any batch
        units += 1 + per_file * len(d.opts.variants) + 1
    return units


def export_files(d: Delivery, report: Reporter = SILENT) -> tuple[list[OnnxArtifact], frozenset[Path]]:
    """Every file built and checked in memory first; then the new ones written and the vouched-for ones
    kept (a different graph under a vouched-for name is refused before anything is written)."""
    calib = None
    if d.opts.int8 and d.splits is not None:
        report.step("reading calibration images")
        calib = calibration_images(d.splits.train, d.spec, d.opts.calib)
        report.advance()
    builds = build_variants(d.model, d.spec, d.fp32_path, d.opts, d.metadata, calib=calib,
                            probe=probe_batch(d.splits, d.spec), report=report)
    report.step("writing the files")
    write, keep = plan_writes(builds, d.files) if d.files is not None else (builds, [])
    arts = {b.path: b.write() for b in write} | {b.path: kept_artifact(b) for b in keep}
    report.advance()
    return [arts[b.path] for b in builds], frozenset(b.path for b in keep)


def score_file(a: OnnxArtifact, d: Delivery, ref: np.ndarray, report: Reporter = SILENT) -> Score:
    """One file's accuracy on the whole test split (its outputs read in the data's class order) and its
    parity with PyTorch's logits `ref`."""
    assert d.splits is not None
    report.step(f"{a.variant} on the test split")
    mi = replace(describe(a.path, data_shape=d.spec.shape), columns=d.columns)
    logits = onnx_logits(make_session(a.path), mi, d.splits.test, report.advance)
    acc = accuracy_metrics(logits, d.splits.test.y.numpy(), d.splits.classes)
    return Score(acc, parity(logits, ref, a.variant))


def stamp_accuracy(arts: list[OnnxArtifact], top1: list[float], kept: frozenset[Path]) -> list[OnnxArtifact]:
    """Each new file with its test accuracy in its metadata, described by its new checksum and size; a kept
    file (the one report.json vouches for) is never rewritten."""
    out = []
    for a, acc in zip(arts, top1, strict=True):
        if a.path in kept:
            out.append(a)
            continue
        sha, size = stamp_metadata(a.path, {"test_accuracy": round(acc, 6)})
        out.append(replace(a, sha256=sha, bytes=size))
    return out
