"""`kdcompress select`: load the teacher, measure the ladder, choose; show it as a table, a JSON object and
a Pareto plot (latency vs FLOPs) written beside selection.json."""

from __future__ import annotations

import io
from pathlib import Path

from ..core.runio import atomic_write_bytes
from .search import Candidate, Selection


def human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def pareto_front(cands: list[Candidate], stat: str) -> list[Candidate]:
    """Candidates that no other beats on both axes (at least as many FLOPs for at most the latency)."""
    front, best = [], float("inf")
    for c in sorted(cands, key=lambda c: (-c.flops, c.latency.stat(stat))):
        if c.latency.stat(stat) < best:
            front.append(c)
            best = c.latency.stat(stat)
    return sorted(front, key=lambda c: c.flops)


def save_pareto_plot(sel: Selection, path: Path, title: str = "") -> None:
    """Latency against FLOPs on log axes: every candidate, the Pareto front, the budget, the chosen
    student and the teacher. Rendered with the Agg canvas (no display, no pyplot state) and written
    atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    stat = sel.budget.stat
    fig = Figure(figsize=(8, 5.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cands = list(sel.candidates)
    for fits, color, label in ((True, "tab:blue", "fits"), (False, "tab:gray", "over budget")):
        pts = [c for c in cands if c.fits == fits]
        if pts:
            ax.scatter([c.flops for c in pts], [c.latency.stat(stat) for c in pts], s=18, color=color,
                       label=label if sel.budget.ms is not None else "candidate", zorder=2)
    front = pareto_front(cands, stat)
    ax.plot([c.flops for c in front], [c.latency.stat(stat) for c in front], color="tab:blue", lw=0.8,
            alpha=0.5, drawstyle="steps-post", label="Pareto front", zorder=1)
    for c in cands:
        ax.annotate(c.name, (c.flops, c.latency.stat(stat)), fontsize=5.5, xytext=(3, 2),
                    textcoords="offset points", color="0.3")
    if sel.teacher is not None and sel.teacher.flops is not None:  # unknown FLOPs: no place on this axis
        t = sel.teacher
        ax.scatter([t.flops], [t.latency.stat(stat)], marker="^", s=70, color="black",
                   label=f"teacher ({t.name})", zorder=3)
    if sel.chosen is not None:
        c = sel.chosen
        ax.scatter([c.flops], [c.latency.stat(stat)], marker="*", s=220, color="tab:red",
                   label=f"chosen ({c.name})", zorder=4)
    if sel.budget.ms is not None:
        ax.axhline(sel.budget.ms, color="tab:red", ls="--", lw=1, label=f"budget {sel.budget.ms:g} ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("forward FLOPs per image")
    ax.set_ylabel(f"ONNX Runtime latency, {stat} (ms, batch {sel.budget.batch})")
    ax.set_title(title or f"student ladder: {sel.provider}, {sel.threads} thread(s)", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(Path(path), buf.getvalue())


