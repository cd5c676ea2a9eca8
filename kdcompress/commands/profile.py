"""`kdcompress profile DIR`: flags to one typed job (pipeline.ProfileJob), one call, then the table.

Imports only onnxruntime, numpy and rich on the way: the target needs no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..pipeline import ProfileJob, profile_job
from . import Outcome, render


def profile_job_from(f: dict[str, Any]) -> ProfileJob:
    return ProfileJob(directory=Path(f["directory"]), provider=f["provider"], threads=f["threads"], tune=f["tune"],
                      processes=f["processes"], out=Path(f["out"]) if f["out"] else None)


def run_profile(f: dict[str, Any], console) -> Outcome:
    result = profile_job(profile_job_from(f), console)
    table = {k: v for k, v in result.items() if k not in ("latency_table", "job")}
    return Outcome(result, lambda: render.profile_table(table))
