"""The deployment stages as commands: `export` (ONNX files + their checks) and `validate` (any ONNX
classifier, gated), and `export_and_validate`, which distill composes. Inputs come from files (a run
directory, a checkpoint, a dataset spec); the work is done by export.py, validate.py and report.py."""

from __future__ import annotations

import datetime as _dt
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .config import InputSpec, RuntimeConfig
from .data import DataSplits, load_data, normalize
from .errors import GateError, InputError, UsageError
from .export import (CHECK_BATCHES, ExportOptions, OnnxArtifact, build_metadata, calibration_images,
                     export_variants, stamp_metadata)
from .gates import Gates
from .ortbench import machine_fingerprint, make_session
from .runio import RunDir, atomic_write_json, read_json, safe_torch_load
from .validate import (THROUGHPUT_BATCH, ModelInput, Validation, accuracy_metrics, describe, effective_threads,
                       onnx_logits, parity, reference_logits, validate_models)


def data_json(spec: str, splits: DataSplits) -> dict[str, Any]:
    return {"spec": spec, "name": splits.name, "classes": list(splits.classes),
            "sizes": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}}


def header(kind: str) -> dict[str, Any]:
    return {"schema_version": 1, "kind": kind, "kdcompress_version": __version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "machine": machine_fingerprint() | {"torch": torch.__version__}}


def _check_fit(what: str, classes: tuple[str, ...], spec: InputSpec, splits: DataSplits, warn) -> None:
    if len(classes) != splits.num_classes:
        raise InputError(f"{what} has {len(classes)} classes but data '{splits.name}' has {splits.num_classes}")
    if tuple(spec.shape) != tuple(splits.shape):
        raise InputError(f"{what} expects input {spec.shape} but data '{splits.name}' has images of {splits.shape}")
    if tuple(classes) != tuple(splits.classes) and warn:
        warn(f"class names differ between {what} and the data; assuming the same order")


def _probe(splits: DataSplits | None, spec: InputSpec) -> np.ndarray | None:
    if splits is None or len(splits.test) == 0:
        return None
    return normalize(splits.test.x[:max(CHECK_BATCHES)], spec).numpy()


# ------------------------------------------------------------------------------------------ distill


def export_and_validate(*, model: torch.nn.Module, spec: InputSpec, splits: DataSplits, fp32_path: Path,
                        opts: ExportOptions, metadata: dict[str, Any], runtime: RuntimeConfig, gates: Gates,
                        teacher: tuple[Path | bytes, ModelInput] | None, batch: int = 1,
                        throughput_batch: int = THROUGHPUT_BATCH,
                        progress=None) -> tuple[list[OnnxArtifact], Validation]:
    """Export fp32 (+ variants), validate each against the PyTorch model and the teacher, then stamp each
    file's test accuracy into its metadata (the report records the stamped files' checksums)."""
    calib = calibration_images(splits.train.x, spec, opts.calib) if opts.int8 else None
    arts = export_variants(model, spec, fp32_path, opts, metadata, calib=calib, probe=_probe(splits, spec))
    inputs = [describe(a.path, data_shape=spec.shape) for a in arts]
    ref = reference_logits(model, splits.test, spec)
    val = validate_models([a.path for a in arts], inputs, splits.test, splits.classes, runtime, gates,
                          reference=ref, teacher=teacher, batch=batch, throughput_batch=throughput_batch,
                          progress=progress)
    return _stamp(arts, val)


def _stamp(arts: list[OnnxArtifact], val: Validation) -> tuple[list[OnnxArtifact], Validation]:
    stamped, rows = [], []
    for a, v in zip(arts, val.variants, strict=True):
        sha, size = stamp_metadata(a.path, {"test_accuracy": round(v.eval.accuracy.top1, 6)})
        stamped.append(replace(a, sha256=sha, bytes=size))
        rows.append(replace(v, eval=replace(v.eval, sha256=sha, bytes=size)))
    return stamped, replace(val, variants=tuple(rows))


# ------------------------------------------------------------------------------------------ export


def _run_provenance(rd: RunDir) -> tuple[str | None, str | None, str | None]:
    """(data spec, preset name, teacher sha256) of a run directory, from its config and last checkpoint."""
    cfg = read_json(rd.config) if rd.config.exists() else {}
    data = cfg.get("data")
    preset = (cfg.get("preset") or {}).get("name")
    sha = None
    if rd.last_checkpoint.exists():
        sha = (safe_torch_load(rd.last_checkpoint).get("fingerprint") or {}).get("teacher")
    return data, preset, sha


def export_job(*, run: Path | None, checkpoint: Path | None, out: Path | None, data: str | None,
               teacher: Path | None, opts: ExportOptions, console) -> dict[str, Any]:
    """`kdcompress export`: write the ONNX files of a run's (or a checkpoint's) student, check each
    (onnx.checker full, batch 1 and 7 in ORT vs PyTorch), and, with data, measure test accuracy and
    parity on the whole test split, stamping the accuracy into the file. GateError when a variant
    strays from PyTorch beyond its tolerance (after export.json is written)."""
    from .teacher import file_sha256, load_checkpoint

    if (run is None) == (checkpoint is None):
        raise UsageError("give either --run runs/NAME or --checkpoint student.pt")
    preset = teacher_sha = None
    if run is not None:
        rd = RunDir(Path(run))
        if not rd.student.exists():
            raise InputError(f"{rd.root} has no student.pt; train it first (kdcompress distill)")
        checkpoint, out = rd.student, out or rd.onnx
        run_data, preset, teacher_sha = _run_provenance(rd)
        data = data or run_data
    elif out is None:
        out = Path(checkpoint).with_suffix(".onnx")
    if teacher is not None:
        teacher_sha = file_sha256(Path(teacher)) if Path(teacher).is_file() else None
        if teacher_sha is None:
            raise InputError(f"teacher file not found: {teacher}")
    model, obj = load_checkpoint(Path(checkpoint))
    spec = InputSpec.from_json(obj["input_spec"])
    classes = tuple(str(c) for c in obj["classes"])
    preset = preset or (obj.get("metrics") or {}).get("preset")
    splits = load_data(data) if data else None
    if splits is not None:
        _check_fit(str(checkpoint), classes, spec, splits, lambda m: console.print(f"[yellow]warning:[/] {m}"))
    meta = build_metadata(arch=str(obj["arch"]), classes=classes, spec=spec, preset=preset,
                          teacher_sha256=teacher_sha, val_accuracy=(obj.get("metrics") or {}).get("val_accuracy"))
    calib = calibration_images(splits.train.x, spec, opts.calib) if opts.int8 and splits is not None else None
    with console.status("exporting to ONNX"):
        arts = export_variants(model, spec, Path(out), opts, meta, calib=calib, probe=_probe(splits, spec))
    rows = []
    ref = reference_logits(model, splits.test, spec) if splits is not None else None
    for a in arts:
        row = a.to_json()
        if splits is not None:
            mi = describe(a.path, data_shape=spec.shape)
            logits = onnx_logits(make_session(a.path), mi, splits.test.x)
            acc = accuracy_metrics(logits, splits.test.y.numpy(), splits.classes)
            par = parity(logits, ref, a.variant)
            row["sha256"], row["bytes"] = stamp_metadata(a.path, {"test_accuracy": round(acc.top1, 6)})
            row |= acc.to_json() | {"parity": par.to_json()}
        rows.append(row)
    result = {"kind": "export", "kdcompress_version": __version__, "checkpoint": str(checkpoint),
              "data": data, "opset": opts.opset, "simplified": opts.simplify, "artifacts": rows}
    if run is not None:
        atomic_write_json(RunDir(Path(run)).root / "export.json", result)
    return result


def raise_for_export(result: dict[str, Any]) -> None:
    bad = [r["variant"] for r in result["artifacts"] if r.get("parity") and not r["parity"]["passed"]]
    if bad:
        raise GateError(f"variant(s) {', '.join(bad)} differ from PyTorch beyond their tolerance on the test "
                        "split (see the parity entries); not fit to ship")


# ------------------------------------------------------------------------------------------ validate


def _teacher_source(teacher: Path, splits: DataSplits, mean, std, layout, warn):
    from .export import INPUT_NAME, onnx_bytes
    from .teacher import load_teacher

    if Path(teacher).suffix.lower() == ".onnx":
        try:
            mi = describe(teacher, data_shape=splits.shape, layout=layout)
        except UsageError:  # no normalisation metadata: assume the student's flags apply to it too
            mi = describe(teacher, data_shape=splits.shape, mean=mean, std=std, layout=layout)
        info = {"path": str(teacher)}
        return (Path(teacher), mi), info
    t = load_teacher(Path(teacher))
    _check_fit(f"teacher {teacher}", t.classes, t.input_spec, splits, warn)
    data = onnx_bytes(t.model, t.input_spec)
    mi = ModelInput(INPUT_NAME, "NCHW", t.input_spec, "tensor(float)", None, t.classes, "fp32", {})
    return (data, mi), {"path": str(teacher), "arch": t.arch, "sha256_checkpoint": t.sha256, "params": t.params}


def validate_job(*, files: list[Path], data: str, teacher: Path | None, checkpoint: Path | None,
                 runtime: RuntimeConfig, gates: Gates, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None, layout: str | None = None, batch: int = 1,
                 throughput_batch: int = THROUGHPUT_BATCH, out: Path | None = None, console) -> dict[str, Any]:
    """`kdcompress validate`: measure ONNX classifiers (any, including third-party) on a dataset's test
    split, gate them and write report.json/report.md/plots into `out` when given. Returns the report;
    the caller raises GateError (gates.raise_for_gates) after printing it."""
    from .teacher import load_checkpoint

    if not files:
        raise UsageError("give at least one --onnx FILE")
    gates.require(has_reference=checkpoint is not None, has_teacher=teacher is not None)

    def warn(m: str) -> None:
        console.print(f"[yellow]warning:[/] {m}")

    runtime = effective_threads(runtime, warn)
    splits = load_data(data)
    inputs = [describe(Path(f), data_shape=splits.shape, mean=mean, std=std, layout=layout) for f in files]
    for f, mi in zip(files, inputs, strict=True):
        if mi.classes is not None and tuple(mi.classes) != tuple(splits.classes):
            warn(f"class names in {f} differ from the data's; assuming the same order")
    reference = None
    if checkpoint is not None:
        model, obj = load_checkpoint(Path(checkpoint))
        ck_spec = InputSpec.from_json(obj["input_spec"])
        _check_fit(str(checkpoint), tuple(str(c) for c in obj["classes"]), ck_spec, splits, warn)
        reference = reference_logits(model, splits.test, ck_spec)  # with the normalisation it was trained on
    t_src, t_info = (None, None)
    if teacher is not None:
        t_src, t_info = _teacher_source(Path(teacher), splits, mean, std, layout, warn)
    with console.status("validating in ONNX Runtime") as status:
        val = validate_models([Path(f) for f in files], inputs, splits.test, splits.classes, runtime, gates,
                              reference=reference, teacher=t_src, batch=batch, throughput_batch=throughput_batch,
                              progress=status.update)
    report = {**header("validate"), "provider": val.provider, "threads": val.threads, "data": data_json(data, splits),
              "checkpoint": None if checkpoint is None else str(checkpoint),
              "teacher": None if val.teacher is None else {**val.teacher.to_json(), **t_info},
              **val.to_json()}
    if out is not None:
        from .report import write_report

        Path(out).mkdir(parents=True, exist_ok=True)
        report = write_report(report, Path(out))
    return report
