"""`kdcompress predict MODEL INPUT` composed: top-k predictions of an exported classifier on an image, a folder of
images or a CSV of image paths, with the preprocessing its metadata records (input shape, channels, resize
and centre crop, [0, 1] scale, mean/std, layout) — what an edge pipeline or a person runs right after export.

MODEL is an ONNX file (run in ONNX Runtime, its contract read by validate.describe exactly as `validate` reads
it) or a kdcompress checkpoint such as a run's student.pt (run in PyTorch on the CPU). Images are decoded with
the data stage's decoder, the one distill and validate use, so a prediction here is the one those measured.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError, UsageError
from ..core.fsguard import regular_file
from ..core.runio import atomic_write_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
BATCH = 64


@dataclass(frozen=True)
class Predictor:
    """A loaded model: logits of a (N, C, H, W) batch in [0, 1], its input shape and class names."""

    run: Any  # Callable[[np.ndarray], np.ndarray]
    shape: tuple[int, int, int]
    classes: tuple[str, ...] | None
    kind: str


def _onnx_predictor(path: Path, threads: int | None, mean, std) -> Predictor:
    import torch

    from ..runtime import make_session
    from ..validate import describe

    mi = describe(path, mean=mean, std=std)
    sess = make_session(path, "cpu", threads)

    def run(x01: np.ndarray) -> np.ndarray:
        feed = mi.feed(torch.from_numpy(x01))
        if mi.static_batch:  # a graph with a fixed batch: fed in chunks of it, zero-padded
            return _padded(sess, mi, feed)
        return np.asarray(sess.run(mi.outputs(), {mi.name: feed})[0], dtype=np.float32)
    return Predictor(run, tuple(mi.spec.shape), mi.classes, "onnx")


def _padded(sess, mi, feed: np.ndarray) -> np.ndarray:
    outs = []
    for i in range(0, len(feed), mi.static_batch):
        part = feed[i:i + mi.static_batch]
        n = len(part)
        pad = np.zeros((mi.static_batch - n, *part.shape[1:]), part.dtype)
        outs.append(np.asarray(sess.run(mi.outputs(), {mi.name: np.concatenate([part, pad])})[0])[:n])
    return np.concatenate(outs).astype(np.float32)


def _checkpoint_predictor(path: Path) -> Predictor:
    import torch

    from ..core.splits import normalize
    from ..students import load_checkpoint

    from ..core.spec import InputSpec

    model, meta = load_checkpoint(path)  # refuses a file that is not a kdcompress checkpoint, in one line
    spec = InputSpec.from_json(meta["input_spec"])
    model.eval()

    def run(x01: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(normalize(torch.from_numpy(x01), spec)).float().numpy()
    return Predictor(run, tuple(spec.shape), tuple(meta.get("classes") or ()) or None, "checkpoint")


def load_predictor(model: Path, threads: int | None, mean=None, std=None) -> Predictor:
    model = regular_file(Path(model), "model", expected="an .onnx file or a kdcompress checkpoint (.pt)")
    if not model.exists():
        raise InputError(f"{model}: file not found")
    if model.suffix.lower() == ".onnx":
        return _onnx_predictor(model, threads, mean, std)
    if mean is not None or std is not None:
        raise UsageError("--mean/--std apply to an ONNX file; a kdcompress checkpoint records its own")
    return _checkpoint_predictor(model)


def _csv_paths(path: Path) -> list[Path]:
    """The first column of each row (a `path` header is skipped); relative paths against the CSV's folder."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    rows = [r for r in csv.reader(io.StringIO(text)) if r and r[0].strip()]
    if rows and rows[0][0].strip().lower() in ("path", "file", "image", "filename"):
        rows = rows[1:]
    return [(path.parent / r[0].strip()) if not Path(r[0].strip()).is_absolute() else Path(r[0].strip())
            for r in rows]


def image_paths(source: Path) -> list[Path]:
    """One image, every image under a folder (sorted, recursive), or the paths a CSV lists."""
    if not source.exists():
        raise InputError(f"{source}: no such file or folder")
    if source.is_dir():
        found = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise InputError(f"{source} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return found
    paths = _csv_paths(source) if source.suffix.lower() == ".csv" else [source]
    if not paths:
        raise InputError(f"{source} lists no image paths")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"{missing[0]} (listed in {source}) does not exist" if source.suffix.lower() == ".csv"
                         else f"{missing[0]} is not a file")
    return paths


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def predict(pred: Predictor, paths: list[Path], topk: int) -> list[dict[str, Any]]:
    """Top-k (class, probability) of every image, in the order of `paths`."""
    from ..data import decode

    rows = []
    for i in range(0, len(paths), BATCH):
        chunk = paths[i:i + BATCH]
        x = np.stack([decode(str(p), pred.shape) for p in chunk]).astype(np.float32) / 255.0
        logits = pred.run(x)
        if pred.classes is not None and logits.shape[1] != len(pred.classes):
            raise InputError(f"the model returns {logits.shape[1]} outputs but its metadata names "
                             f"{len(pred.classes)} classes")
        probs = _softmax(logits.astype(np.float64))
        for p, row in zip(chunk, probs, strict=True):
            best = np.argsort(-row, kind="stable")[:topk]
            names = [pred.classes[j] if pred.classes else str(j) for j in best]
            rows.append({"path": str(p), "top": [{"class": n, "index": int(j), "probability": round(float(row[j]), 6)}
                                                 for n, j in zip(names, best, strict=True)]})
    return rows


def write_predictions(rows: list[dict[str, Any]], out: Path, topk: int) -> None:
    """CSV (path, then class_k / probability_k per rank) or JSON by the suffix of `out`; atomically."""
    if out.suffix.lower() == ".json":
        atomic_write_bytes(out, json.dumps({"predictions": rows}, indent=1).encode())
        return
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", *[f"{k}{i + 1}" for i in range(topk) for k in ("class_", "probability_")]])
    for r in rows:
        w.writerow([r["path"], *[v for t in r["top"] for v in (t["class"], t["probability"])]])
    atomic_write_bytes(out, buf.getvalue().encode())


@dataclass(frozen=True)
class PredictJob:
    """`kdcompress predict`: the model (an .onnx file or a kdcompress checkpoint), the images (a file, a folder or
    a CSV), how many classes per image, ORT threads, a mean/std for an ONNX file that records none, and where to
    write every prediction (.csv or .json). Checked when built: a bad value is refused before any file is read."""

    model: Path
    images: Path
    topk: int = 5
    out: Path | None = None
    threads: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.topk < 1:
            raise UsageError(f"--topk must be >= 1, got {self.topk}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {self.threads}")
        if self.out is not None and Path(self.out).suffix.lower() not in (".csv", ".json"):
            raise UsageError(f"--out {self.out}: give a .csv or .json file")

    def to_json(self) -> dict[str, Any]:
        return {"format": "kdcompress.predict-job/1", "model": str(self.model), "images": str(self.images),
                "topk": self.topk, "out": None if self.out is None else str(self.out), "threads": self.threads,
                "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std)}


def predict_job(job: PredictJob) -> dict[str, Any]:
    """Predict every image of `job.images` with `job.model`; write them to `job.out` (.csv or .json) when given."""
    pred = load_predictor(Path(job.model), job.threads, job.mean, job.std)
    paths = image_paths(Path(job.images))
    rows = predict(pred, paths, min(job.topk, len(pred.classes) if pred.classes else job.topk))
    if job.out is not None:
        write_predictions(rows, Path(job.out), min(job.topk, len(rows[0]["top"])))
    return {"model": str(job.model), "kind": pred.kind, "input_shape": list(pred.shape), "images": len(rows),
            "out": None if job.out is None else str(job.out), "job": job.to_json(), "predictions": rows}
