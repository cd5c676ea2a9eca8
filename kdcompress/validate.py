"""Validation in ONNX Runtime: accuracy on the test split, parity with PyTorch, latency through the one
harness, and the teacher measured the same way beside the student."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import InputSpec, RuntimeConfig
from .data import TensorSplit, normalize
from .infer import predict
from .ortbench import LatencyStats, check_onnx, make_session, measure_latency

EVAL_BATCH = 256


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    top1_agreement: float
    samples: int

    def to_json(self) -> dict[str, Any]:
        return {"max_abs_diff": self.max_abs_diff, "top1_agreement": self.top1_agreement, "samples": self.samples}


@dataclass(frozen=True)
class OnnxEval:
    path: Path
    accuracy: float
    latency: LatencyStats
    logits: np.ndarray

    def to_json(self) -> dict[str, Any]:
        return {"onnx": str(self.path), "accuracy": round(self.accuracy, 6), "latency_ms": self.latency.to_json()}


def onnx_logits(session, split: TensorSplit, spec: InputSpec) -> np.ndarray:
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: normalize(b.x, spec).numpy()})[0] for b in split.batches(EVAL_BATCH)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def evaluate_onnx(path: Path, split: TensorSplit, spec: InputSpec, runtime: RuntimeConfig,
                  batch: int = 1) -> OnnxEval:
    check_onnx(path)
    sess = make_session(Path(path), runtime.provider, runtime.threads)
    logits = onnx_logits(sess, split, spec)
    acc = float((logits.argmax(1) == split.y.numpy()).mean()) if len(split) else float("nan")
    lat = measure_latency(sess, (batch, *spec.shape))
    return OnnxEval(Path(path), acc, lat, logits)


def parity(onnx_logits_: np.ndarray, model: torch.nn.Module, split: TensorSplit, spec: InputSpec) -> Parity:
    ref = predict(model.float().cpu(), split, spec, torch.device("cpu")).numpy()
    diff = float(np.abs(onnx_logits_ - ref).max()) if len(ref) else 0.0
    agree = float((onnx_logits_.argmax(1) == ref.argmax(1)).mean()) if len(ref) else float("nan")
    return Parity(diff, agree, len(ref))
