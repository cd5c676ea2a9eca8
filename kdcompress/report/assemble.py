"""report.json's parts: the headers every report starts with (schema version, kind, machine), the data
section, and a distill run's whole report assembled from the stages' outputs."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..core.splits import DataSplits
from ..core.system import machine_fingerprint
from .markdown import SCHEMA_VERSION


def data_json(spec: str, splits: DataSplits) -> dict[str, Any]:
    return {"spec": spec, "name": splits.name, "classes": list(splits.classes), "shape": list(splits.shape),
            "sizes": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}}


def header(kind: str) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "kind": kind, "kdcompress_version": __version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "machine": machine_fingerprint() | {"torch": torch.__version__}}


def distill_report(*, run_root: Path, preset, data_spec: str, splits: DataSplits, budget, teacher, teacher_val,
                   arch: str, capacity, result, checkpoint: Path, val, artifacts, device, selection) -> dict[str, Any]:
    """report.json of a distill run (before its precision section and its `shipped` block, shipped.py) from
    the stages' outputs: the Teacher, the student's Capacity, the TrainResult, the Validation, the
    OnnxArtifacts and the Selection. `student` is the trained student and its fp32 file."""
    from ..core.config import preset_to_json

    fp32 = val.variant("fp32")
    s_eval, t_eval = fp32.eval, val.teacher
    s_stat = s_eval.latency.stat(budget.stat)
    return {
        **header("distill"),
        "run_dir": str(run_root),
        "preset": {k: v for k, v in preset_to_json(preset).items() if k != "train"},
        "data": data_json(data_spec, splits),
        "budget_ms": budget.ms,
        "budget_stat": budget.stat,
        "teacher": {"path": str(teacher.path), "arch": teacher.arch, "params": teacher.params,
                    "flops": teacher.flops, "format": teacher.format, **t_eval.to_json(), "val_accuracy": teacher_val,
                    "sha256": teacher.sha256, "onnx_sha256": t_eval.sha256},
        "student": {"arch": arch, "params": capacity.params, "flops": capacity.flops, **s_eval.to_json(),
                    "val_accuracy_best": result.best_val_accuracy,
                    "val_accuracy_final": result.final_val_accuracy, "best_epoch": result.best_epoch,
                    "checkpoint": str(checkpoint),
                    "meets_budget": None if budget.ms is None else s_stat <= budget.ms},
        "parity": fp32.parity.to_json(),
        "speedup": fp32.speedup,
        "accuracy_delta": fp32.accuracy_delta,
        "accuracy_ratio": s_eval.accuracy.top1 / t_eval.accuracy.top1 if t_eval.accuracy.top1 else None,
        "epochs": result.epochs,
        "device": str(device),
        **val.to_json(),
        "artifacts": [a.to_json() for a in artifacts],
        "training": {**{k: v for k, v in result.to_json().items() if k not in ("arch", "checkpoint")},
                     "warmup": [t.warmup_json(preset.train) for t in preset.terms]},
        "selection": selection.to_json(),
    }


def validate_report(*, data_spec: str, splits: DataSplits, checkpoint: Path | None, val,
                    teacher_info: dict[str, Any] | None) -> dict[str, Any]:
    """report.json of `kdcompress validate` from its Validation (and what was learnt of the teacher file)."""
    return {**header("validate"), "provider": val.provider, "threads": val.threads,
            "data": data_json(data_spec, splits),
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "teacher": None if val.teacher is None else {**val.teacher.to_json(), **(teacher_info or {})},
            **val.to_json()}
