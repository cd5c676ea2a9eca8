"""`kdcompress predict`: flags to one pipeline call (pipeline.prediction), then the human view."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.build import parse_floats
from ..pipeline import PredictJob, predict_job
from . import Outcome, render


def predict_job_from(f: dict[str, Any]) -> PredictJob:
    """The flags as one checked job."""
    return PredictJob(model=Path(f["model"]), images=Path(f["images"]), topk=f["topk"],
                      out=None if f.get("out") is None else Path(f["out"]), threads=f.get("threads"),
                      mean=parse_floats(f.get("mean"), "--mean"), std=parse_floats(f.get("std"), "--std"))


def run_predict(f: dict[str, Any], console) -> Outcome:
    result = predict_job(predict_job_from(f))
    return Outcome(result, lambda: render.predictions(result))
