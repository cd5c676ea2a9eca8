"""The file a distill run ships, described in report.json's `shipped` block, and the one wording of the budget
that report.md and the console summary share.

The shipped file is the `recommended` variant (the fastest that passes every gate, never slower than fp32):
with `--int8` or `--precision auto` that is often student.int8.onnx, and the budget, latency, accuracy and
gates a pipeline acts on are that file's, not the fp32 file's. When no variant passes, nothing ships
(`shipped` is null, the run exits 5) and the text describes the variant that would have shipped. Pure
functions over report.json objects: no torch, so the console summary can use them cheaply.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

HEADER_KEYS = ("schema_version", "kind", "kdcompress_version", "created", "machine")


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def meets_budget(latency: dict[str, Any] | None, budget_ms: float | None, stat: str) -> bool | None:
    """Whether `latency` (a latency_ms object) meets the budget at `stat`; None when no budget is set (a run
    with --student alone) or the statistic is missing: "no budget" is never "met"."""
    value = (latency or {}).get(stat)
    if budget_ms is None or not finite(value):
        return None
    return value <= budget_ms


def annotate_variant(v: dict[str, Any], root: Path, budget_ms: float | None, stat: str) -> dict[str, Any]:
    """A variants[] entry with `path` (relative to the run directory), `precision` and `meets_budget`."""
    path = os.path.relpath(Path(v["onnx"]).resolve(), Path(root).resolve())
    return {**v, "path": path, "precision": v["variant"],
            "meets_budget": meets_budget(v.get("latency_ms"), budget_ms, stat)}


def intended_variant(r: dict[str, Any]) -> dict[str, Any] | None:
    """The variant a distill run stands behind: the recommended one; when none passed every gate, the one it
    would have shipped (the precision decision's, else fp32). None for a report without variants."""
    variants = r.get("variants") or []
    by_name = {v["name"]: v for v in variants}
    if r.get("recommended") in by_name:
        return by_name[r["recommended"]]
    want = (r.get("precision") or {}).get("shipped", "fp32")
    return next((v for v in variants if v.get("variant") == want), variants[0] if variants else None)


def _reconcile_precision(precision: dict[str, Any], shipped: dict[str, Any] | None) -> dict[str, Any]:
    """`precision.shipped` names the precision of the file that ships. Validation may recommend another
    variant than the selection's choice (an int8 file measured slower than fp32 is never recommended;
    `--int8` beside an fp32 choice ships the int8 file when it is faster and passes): say so."""
    if shipped is None or precision.get("shipped") == shipped["precision"]:
        return precision
    note = (f"validation recommends the {shipped['precision']} file {shipped['path']} (the fastest variant that "
            "passes every gate, never slower than fp32)")
    return {**precision, "shipped": shipped["precision"],
            "reason": f"{precision.get('reason', '')}; {note}".lstrip("; ")}


def add_shipped(r: dict[str, Any], root: Path) -> dict[str, Any]:
    """A distill report with its `shipped` block (right after the header: the first thing a pipeline reads),
    every variant annotated alike (annotate_variant), and `precision.shipped` agreeing with the block."""
    budget, stat = r.get("budget_ms"), r.get("budget_stat", "p50")
    variants = [annotate_variant(v, root, budget, stat) for v in r["variants"]]
    rec = next((v for v in variants if v["name"] == r.get("recommended")), None)
    shipped = None if rec is None else {**rec, "arch": r["student"]["arch"]}
    body = {k: v for k, v in r.items() if k not in HEADER_KEYS and k != "shipped"}
    out = {**{k: r[k] for k in HEADER_KEYS if k in r}, "shipped": shipped, **body, "variants": variants}
    if isinstance(r.get("precision"), dict):
        out["precision"] = _reconcile_precision(r["precision"], shipped)
    return out


def budget_sentence(r: dict[str, Any], v: dict[str, Any] | None) -> str:
    """One wording of the budget for report.md and the console: never "None" or "-" for a missing budget,
    never "met" without one, and always about the file that ships (`v`, from intended_variant)."""
    budget, stat = r.get("budget_ms"), r.get("budget_stat", "p50")
    if budget is None:
        return "no budget set"
    if v is None:
        return f"budget {budget:g} ms ({stat}): no file was measured"
    value = (v.get("latency_ms") or {}).get(stat)
    ok = meets_budget(v.get("latency_ms"), budget, stat)
    verdict = "met" if ok else "MISSED" if ok is False else "not measured"
    shown = f"{value:.4f} ms" if finite(value) else "n/a"
    line = (f"budget {budget:g} ms ({stat}): {verdict} by the {v['variant']} file "
            f"{v.get('path') or Path(v['onnx']).name} ({stat} {shown})")
    return line if r.get("recommended") == v["name"] else f"{line}, which does not ship (no variant passed every gate)"
