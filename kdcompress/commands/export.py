"""`kdcompress export`: ONNX files (and variants) of a run's or a checkpoint's student, each checked."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.errors import GateError, InputError, UsageError
from ..core.onnxio import build_metadata, stamp_metadata
from ..core.ortbench import make_session
from ..core.runio import RunDir, atomic_write_json, read_json, safe_torch_load
from ..core.spec import InputSpec
from ..data.specs import load_data
from ..export.onnx import ExportOptions, calibration_images, export_variants
from ..pipeline import check_fit, probe_batch
from ..validate.models import (
    accuracy_metrics,
    describe,
    onnx_logits,
    parity,
    reference_logits,
)
from . import Outcome, render


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
    from ..core.fsguard import file_sha256
    from ..students.checkpoint import load_checkpoint

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
    if Path(out).is_dir():  # before any work
        raise InputError(f"--out {out} is a directory; give the fp32 file path, e.g. {Path(out) / 'student.onnx'}")
    if teacher is not None:
        teacher_sha = file_sha256(Path(teacher)) if Path(teacher).is_file() else None
        if teacher_sha is None:
            raise InputError(f"teacher file not found: {teacher}")
    model, obj = load_checkpoint(Path(checkpoint))
    spec = InputSpec.from_json(obj["input_spec"])
    classes = tuple(str(c) for c in obj["classes"])
    preset = preset or (obj.get("metrics") or {}).get("preset")
    splits = load_data(data) if data else None
    cols = None  # the checkpoint's outputs -> the data's classes, by name
    if splits is not None:
        cols = check_fit(str(checkpoint), classes, spec, splits, lambda m: console.print(f"[yellow]warning:[/] {m}"))
    meta = build_metadata(arch=str(obj["arch"]), classes=classes, spec=spec, preset=preset,
                          teacher_sha256=teacher_sha, val_accuracy=(obj.get("metrics") or {}).get("val_accuracy"))
    calib = calibration_images(splits.train, spec, opts.calib) if opts.int8 and splits is not None else None
    with console.status("exporting to ONNX"):
        arts = export_variants(model, spec, Path(out), opts, meta, calib=calib, probe=probe_batch(splits, spec))
    rows = []
    ref = reference_logits(model, splits.test, spec) if splits is not None else None
    if ref is not None and cols is not None:
        ref = ref[:, cols]
    for a in arts:
        row = a.to_json()
        if splits is not None:
            mi = replace(describe(a.path, data_shape=spec.shape), columns=None if cols is None else tuple(cols))
            logits = onnx_logits(make_session(a.path), mi, splits.test)
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


def run_export(f: dict[str, Any], console) -> Outcome:
    opts = ExportOptions(opset=f["opset"], fp16=f["fp16"], int8=f["int8"], calib=f["calib"], simplify=f["simplify"])
    result = export_job(run=f["run"], checkpoint=f["checkpoint"], out=f["out"], data=f["data"], teacher=f["teacher"],
                        opts=opts, console=console)
    return Outcome(result, lambda: render.export_lines(result), lambda: raise_for_export(result))
