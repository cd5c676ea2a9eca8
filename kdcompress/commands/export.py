"""`kdcompress export`: ONNX files (and variants) of a run's or a checkpoint's student, each checked
(pipeline.export_job)."""

from __future__ import annotations

from typing import Any

from ..core.errors import GateError
from ..export import ExportOptions
from ..pipeline import export_job
from . import Outcome, render


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
