"""`kdcompress export`: ONNX files (and variants) of a run's or a checkpoint's student, each checked
(pipeline.ExportJob, pipeline.export_job)."""

from __future__ import annotations

from typing import Any

from ..core.errors import GateError
from ..export import ExportOptions
from ..pipeline import ExportJob, export_job
from . import Outcome, render


def raise_for_export(result: dict[str, Any]) -> None:
    bad = [r["variant"] for r in result["artifacts"] if r.get("parity") and not r["parity"]["passed"]]
    if bad:
        raise GateError(f"variant(s) {', '.join(bad)} differ from PyTorch beyond their tolerance on the test "
                        "split (see the parity entries); not fit to ship")


def export_job_from(f: dict[str, Any]) -> ExportJob:
    """The flags as one ExportJob (a bad --opset or --calib, or not exactly one of --run/--checkpoint: exit 2)."""
    opts = ExportOptions(opset=f["opset"], fp16=f["fp16"], int8=f["int8"], calib=f["calib"], simplify=f["simplify"])
    return ExportJob(opts, run=f["run"], checkpoint=f["checkpoint"], out=f["out"], data=f["data"],
                     teacher=f["teacher"])


def run_export(f: dict[str, Any], console) -> Outcome:
    result = export_job(export_job_from(f), console)
    return Outcome(result, lambda: render.export_lines(result), lambda: raise_for_export(result))
