"""`kdcompress validate`: any ONNX classifier on a dataset's test split, gated, with a report
(pipeline.ValidateJob, pipeline.validate_job)."""

from __future__ import annotations

from typing import Any

from ..core.config import RuntimeConfig
from ..core.errors import UsageError
from ..pipeline import ValidateJob, validate_job
from ..validate import Gates, raise_for_gates
from . import Outcome, render
from .flags import teacher_options

TEACHER_ONLY = ("teacher_arch", "num_classes", "classes", "input_shape", "trust_checkpoint")


def validate_job_from(f: dict[str, Any]) -> ValidateJob:
    """The flags as one ValidateJob; a teacher flag without --teacher, a bad value or a gate without its
    reference is refused here (exit 2), before any file is read."""
    given = [k for k in TEACHER_ONLY if f[k] not in (None, False)]
    if f["teacher"] is None and given:  # --mean/--std also describe the --onnx files; these only a teacher
        raise UsageError(f"--{given[0].replace('_', '-')} describes a teacher; give --teacher FILE or leave it out")
    return ValidateJob(files=tuple(f["onnx"]), data=f["data"], teacher=f["teacher"], checkpoint=f["checkpoint"],
                       runtime=RuntimeConfig("cpu", f["provider"], f["threads"]),
                       gates=Gates(f["min_agreement"], f["max_accuracy_drop"], f["budget_ms"], f["stat"]),
                       # --mean/--std are the teacher's and every --onnx file's (they override metadata)
                       teacher_options=teacher_options(f), trust_checkpoint=f["trust_checkpoint"],
                       layout=f["layout"], throughput_batch=f["throughput_batch"], out=f["out"], force=f["force"])


def run_validate(f: dict[str, Any], console) -> Outcome:
    report = validate_job(validate_job_from(f), console)
    return Outcome(report, lambda: render.validation_table(report), lambda: raise_for_gates(report))
