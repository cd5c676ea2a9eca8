"""`kdcompress teacher inspect`: what a teacher file is, what it gives, and how fast it runs in ORT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.config import TeacherOptions
from ..runtime import make_session, measure_latency
from ..teacher import load_teacher, teacher_onnx_bytes
from . import Outcome, render
from .flags import teacher_options


def inspect_teacher(path: Path, *, options: TeacherOptions | None = None, trust: bool = False,
                    provider: str = "cpu", threads: int | None = None, batch: int = 1) -> dict[str, Any]:
    """Everything `kdcompress teacher inspect` prints: arch, format, size, classes, input spec, whether it
    gives features, and its latency measured in ONNX Runtime with the one harness."""
    t = load_teacher(path, trust=trust, options=options)
    sess = make_session(teacher_onnx_bytes(t), provider, threads)
    layout = getattr(t.model, "layout", "NCHW")  # an ONNX teacher's graph input (OrtTeacher detects it)
    c, h, w = t.input_spec.shape
    lat = measure_latency(sess, (batch, h, w, c) if layout == "NHWC" else (batch, c, h, w))
    return {
        "path": str(t.path), "format": t.format, "arch": t.arch, "sha256": t.sha256,
        "params": t.params, "flops": t.flops, "num_classes": t.num_classes, "classes": list(t.classes),
        "input_spec": t.input_spec.to_json(), "layout": layout, "embed_dim": t.embed_dim, "logits_only": t.logits_only,
        "features": t.embed_via, "outputs": t.output, "metrics": t.metrics,
        "latency_ms": lat.to_json(), "provider": provider, "threads": threads or 1,
    }


def run_inspect(f: dict[str, Any], console) -> Outcome:
    info = inspect_teacher(f["teacher"], options=teacher_options(f), trust=f["trust_checkpoint"],
                           provider=f["provider"], threads=f["threads"])
    return Outcome(info, lambda: render.teacher_table(info))
