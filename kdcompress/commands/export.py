"""`kdcompress export`: ONNX files (and variants) of a run's or a checkpoint's student, each checked."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.errors import GateError, InputError, UsageError
from ..core.fsguard import check_output_file
from ..runtime.onnxio import build_metadata, stamp_metadata
from ..runtime.ortbench import make_session
from ..core.runio import RunDir, atomic_write_json, read_json, safe_torch_load
from ..core.spec import InputSpec
from ..data.specs import load_data
from ..export.onnx import ExportOptions, OnnxArtifact, build_variants, calibration_images
from ..pipeline import check_fit, probe_batch
from ..validate.models import (
    accuracy_metrics,
    describe,
    onnx_logits,
    parity,
    reference_logits,
)
from . import Outcome, render
from .reexport import RunFiles, check_run_dir, kept_artifact, plan_writes, record_in_report, run_files


def _run_provenance(rd: RunDir) -> tuple[str | None, str | None, str | None]:
    """(data spec, preset name, teacher sha256) of a run directory, from its config and last checkpoint."""
    cfg = read_json(rd.config) if rd.config.exists() else {}
    data = cfg.get("data")
    preset = (cfg.get("preset") or {}).get("name")
    sha = None
    if rd.last_checkpoint.exists():
        sha = (safe_torch_load(rd.last_checkpoint).get("fingerprint") or {}).get("teacher")
    return data, preset, sha


@dataclass(frozen=True)
class ExportPlan:
    """What one export reads and where it writes: the checkpoint, the fp32 path, the data spec, the
    provenance written into the metadata, and (for --run) the run's files a re-export must respect."""

    checkpoint: Path
    out: Path
    data: str | None
    preset: str | None
    teacher_sha: str | None
    run: RunDir | None = None
    files: RunFiles | None = None


def export_job(*, run: Path | None, checkpoint: Path | None, out: Path | None, data: str | None,
               teacher: Path | None, opts: ExportOptions, console) -> dict[str, Any]:
    """`kdcompress export`: write the ONNX files of a run's (or a checkpoint's) student, check each
    (onnx.checker full, batch 1 and 7 in ORT vs PyTorch), and, with data, measure test accuracy and
    parity on the whole test split, stamping the accuracy into each new file. With --run the run's lock
    is held throughout and the files report.json vouches for are never changed (commands/reexport.py).
    GateError when a variant strays from PyTorch beyond its tolerance (after export.json is written)."""
    if (run is None) == (checkpoint is None):
        raise UsageError("give either --run runs/NAME or --checkpoint student.pt")
    if run is None:
        return _export(_checkpoint_plan(Path(checkpoint), out, data, teacher), opts, console)
    rd = RunDir(Path(run))
    check_run_dir(rd)
    # a distill still running here (or another export) holds the lock: refused before any work, nothing changed
    with rd.lock(fix="wait for it to finish (a distill still training?), then rerun the export"):
        return _export(_run_plan(rd, out, data, teacher), opts, console)


def _teacher_sha(teacher: Path | None) -> str | None:
    from ..core.fsguard import file_sha256

    if teacher is None:
        return None
    if not Path(teacher).is_file():
        raise InputError(f"teacher file not found: {teacher}")
    return file_sha256(Path(teacher))


def _check_out(out: Path) -> None:
    if Path(out).is_dir():  # before any work
        raise InputError(f"--out {out} is a directory; give the fp32 file path, e.g. {Path(out) / 'student.onnx'}")
    check_output_file(Path(out))


def _checkpoint_plan(checkpoint: Path, out: Path | None, data: str | None, teacher: Path | None) -> ExportPlan:
    out = Path(out) if out is not None else checkpoint.with_suffix(".onnx")
    _check_out(out)
    return ExportPlan(checkpoint, out, data, None, _teacher_sha(teacher))


def _run_plan(rd: RunDir, out: Path | None, data: str | None, teacher: Path | None) -> ExportPlan:
    if not rd.student.exists():
        raise InputError(f"{rd.root} has no student.pt; train it first (kdcompress distill)")
    out = Path(out) if out is not None else rd.onnx
    _check_out(out)
    run_data, preset, teacher_sha = _run_provenance(rd)
    return ExportPlan(rd.student, out, data or run_data, preset, _teacher_sha(teacher) or teacher_sha, rd,
                      run_files(rd))


def _export(plan: ExportPlan, opts: ExportOptions, console) -> dict[str, Any]:
    from ..students.checkpoint import load_checkpoint

    model, obj = load_checkpoint(plan.checkpoint)
    spec = InputSpec.from_json(obj["input_spec"])
    classes = tuple(str(c) for c in obj["classes"])
    splits = load_data(plan.data) if plan.data else None
    cols = None  # the checkpoint's outputs -> the data's classes, by name
    if splits is not None:
        cols = check_fit(str(plan.checkpoint), classes, spec, splits,
                         lambda m: console.print(f"[yellow]warning:[/] {m}"))
    meta = build_metadata(arch=str(obj["arch"]), classes=classes, spec=spec,
                          preset=plan.preset or (obj.get("metrics") or {}).get("preset"),
                          teacher_sha256=plan.teacher_sha, val_accuracy=(obj.get("metrics") or {}).get("val_accuracy"))
    if plan.files is not None:  # what student.onnx says beyond that (ort_settings, precision) goes into every file
        meta = {**plan.files.carried, **meta}
    calib = calibration_images(splits.train, spec, opts.calib) if opts.int8 and splits is not None else None
    with console.status("exporting to ONNX"):
        builds = build_variants(model, spec, plan.out, opts, meta, calib=calib, probe=probe_batch(splits, spec))
    write, keep = plan_writes(builds, plan.files) if plan.files is not None else (builds, [])
    arts = {b.path: b.write() for b in write} | {b.path: kept_artifact(b) for b in keep}
    kept = {b.path for b in keep}
    ref = None
    if splits is not None:
        ref = reference_logits(model, splits.test, spec)
        ref = ref if cols is None else ref[:, cols]
    rows = [_measure(arts[b.path], spec, splits, cols, ref, stamp=b.path not in kept) for b in builds]
    result = {"kind": "export", "kdcompress_version": __version__, "checkpoint": str(plan.checkpoint),
              "data": plan.data, "opset": opts.opset, "simplified": opts.simplify, "artifacts": rows}
    if plan.run is not None:
        atomic_write_json(plan.run.root / "export.json", result)
        result["report_updated"] = record_in_report(plan.run, plan.files, [r for r in rows if not r["kept"]])
    return result


def _measure(a: OnnxArtifact, spec: InputSpec, splits, cols, ref, *, stamp: bool) -> dict[str, Any]:
    """export's row for one file; with data, its test accuracy and parity with PyTorch's logits `ref` on
    the whole test split, the accuracy stamped into the file unless it is a kept (vouched-for) one."""
    row = a.to_json() | {"kept": not stamp}
    if splits is None:
        return row
    mi = replace(describe(a.path, data_shape=spec.shape), columns=None if cols is None else tuple(cols))
    logits = onnx_logits(make_session(a.path), mi, splits.test)
    acc = accuracy_metrics(logits, splits.test.y.numpy(), splits.classes)
    if stamp:
        row["sha256"], row["bytes"] = stamp_metadata(a.path, {"test_accuracy": round(acc.top1, 6)})
    return row | acc.to_json() | {"parity": parity(logits, ref, a.variant).to_json()}


def raise_for_export(result: dict[str, Any]) -> None:
    bad = [r["variant"] for r in result["artifacts"] if r.get("parity") and not r["parity"]["passed"]]
    if bad:
        raise GateError(f"variant(s) {', '.join(bad)} differ from PyTorch beyond their tolerance on the test "
                        "split (see the parity entries); not fit to ship")


def run_export(f: dict[str, Any], console) -> Outcome:
    opts = ExportOptions(opset=f["opset"], fp16=f["fp16"], int8=f["int8"], calib=f["calib"], simplify=f["simplify"])
    result = export_job(run=f["run"], checkpoint=f["checkpoint"], out=f["out"], data=f["data"], teacher=f["teacher"],
                        opts=opts, console=console)
    return Outcome(result, lambda: render.export_lines(result), lambda: raise_for_export(result))
