"""PNG plots for report.md, drawn from report.json alone (so `kdcompress report` can redraw them).

matplotlib's object API with the Agg canvas: no pyplot, no global figure state, no display needed.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ..core.runio import atomic_write_bytes

ACCURACY_LATENCY = "plots/accuracy_latency.png"
TRAINING = "plots/training.png"
CONFUSION = "plots/confusion.png"
CONFUSION_PLOT_MAX = 50  # classes; above it the heatmap is unreadable (report.json keeps the counts)
_NOT_LOSSES = {"epoch", "lr", "val_accuracy"}


def loss_columns(history: list[dict[str, Any]]) -> list[str]:
    """The history columns that are loss terms: not the epoch, learning rate, accuracy or a duration."""
    return [k for k, v in history[0].items()
            if k not in _NOT_LOSSES and not k.endswith("seconds") and isinstance(v, (int, float))]


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())


def accuracy_latency(report: dict[str, Any], path: Path) -> bool:
    """Test top-1 accuracy against latency (the gated statistic, batch 1) for the teacher and every
    variant; the budget as a vertical line, the recommended variant starred."""
    stat = report["gates"]["thresholds"].get("budget_stat") or "p50"
    points = []
    t = report.get("teacher")
    if t and t.get("latency_ms") and t.get("accuracy") is not None:
        points.append(("teacher", t["latency_ms"][stat], t["accuracy"], "tab:gray", "s"))
    colors = ["tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]
    for i, v in enumerate(report.get("variants", [])):
        label = f"student {v['name']}" + (" (recommended)" if v.get("recommended") else "")
        label += "" if v["passed"] else " (FAILS a gate)"
        marker = "*" if v.get("recommended") else ("o" if v["passed"] else "X")
        points.append((label, v["latency_ms"][stat], v["accuracy"], colors[i % len(colors)], marker))
    if not points:
        return False
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    # labels go in the legend: variants of one student often sit on top of each other
    for label, x, y, color, marker in points:
        ax.scatter([x], [100 * y], c=color, marker=marker, s=160 if marker == "*" else 60, zorder=3,
                   alpha=0.85, label=label)
    budget = report["gates"]["thresholds"].get("budget_ms")
    if budget:
        ax.axvline(budget, color="tab:orange", ls="--", lw=1, label=f"budget {budget:g} ms")
    ax.legend(loc="best", fontsize=8)
    xs = [p[1] for p in points]
    if max(xs) / max(min(xs), 1e-9) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(f"ONNX Runtime latency, {stat} at batch 1 (ms)")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title("test accuracy vs ONNX Runtime latency", fontsize=9)
    ax.grid(True, alpha=0.3)
    _save(fig, path)
    return True


def training_curves(history: list[dict[str, Any]], path: Path) -> bool:
    """Per-epoch mean of the total loss and each loss part, and validation accuracy."""
    if not history:
        return False
    epochs = [r["epoch"] for r in history]
    parts = loss_columns(history)
    fig = _figure(9.0, 3.6)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for k in parts:
        ax1.plot(epochs, [r.get(k) for r in history], marker="o", ms=3,
                 lw=2 if k == "loss" else 1, label="total" if k == "loss" else k)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss (epoch mean)")
    ax1.legend(fontsize=8)
    ax1.grid(True, alpha=0.3)
    ax2.plot(epochs, [100 * r["val_accuracy"] for r in history], marker="o", ms=3, color="tab:green")
    best = max(history, key=lambda r: r["val_accuracy"])
    ax2.scatter([best["epoch"]], [100 * best["val_accuracy"]], marker="*", s=120, color="tab:orange", zorder=3,
                label=f"best: epoch {best['epoch']}")
    ax2.set_xlabel("epoch")
    for ax in (ax1, ax2):
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax2.set_ylabel("validation accuracy (%)")
    ax2.legend(fontsize=8)
    ax2.grid(True, alpha=0.3)
    _save(fig, path)
    return True


def _shipped_eval(report: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    v = report.get("shipped") or next((v for v in report.get("variants", []) if v.get("recommended")), None)
    v = v or next(iter(report.get("variants", [])), None)
    return (f"student {v.get('name', '')}".strip(), v) if v else None


def confusion_matrices(report: dict[str, Any], path: Path) -> bool:
    """Row-normalised test confusion of the shipped student and of the teacher, side by side."""
    classes = (report.get("data") or {}).get("classes") or []
    panels = [(label, m["confusion"]["matrix"]) for label, m in
              [_shipped_eval(report) or ("", {}), ("teacher", report.get("teacher") or {})]
              if (m.get("confusion") or {}).get("matrix")]
    if not panels or not classes or len(classes) > CONFUSION_PLOT_MAX:
        return False
    import numpy as np

    fig = _figure(4.4 * len(panels), 4.0)
    for k, (label, matrix) in enumerate(panels):
        m = np.asarray(matrix, dtype=float)
        rows = m / np.maximum(m.sum(1, keepdims=True), 1)
        ax = fig.add_subplot(1, len(panels), k + 1)
        im = ax.imshow(100 * rows, cmap="Blues", vmin=0, vmax=100)
        ax.set_title(f"{label}: test confusion (% of each true class)", fontsize=8)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        if len(classes) <= 20:
            ax.set_xticks(range(len(classes)), [str(c) for c in classes], rotation=90, fontsize=6)
            ax.set_yticks(range(len(classes)), [str(c) for c in classes], fontsize=6)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    _save(fig, path)
    return True


def render_plots(report: dict[str, Any], root: Path) -> list[str]:
    """Draw every plot the report supports into `root`; returns their paths relative to `root`."""
    root = Path(root)
    out = []
    if accuracy_latency(report, root / ACCURACY_LATENCY):
        out.append(ACCURACY_LATENCY)
    history = (report.get("training") or {}).get("history") or []
    if training_curves(history, root / TRAINING):
        out.append(TRAINING)
    if confusion_matrices(report, root / CONFUSION):
        out.append(CONFUSION)
    return out
