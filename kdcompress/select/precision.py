"""The precision a distilled student ships in, after training: a reduced-precision choice (INT8/fp16,
chosen because that form meets the budget) must keep its accuracy within `max_precision_drop` of the
fp32 student on the test split; otherwise the run falls back, visibly, to the best fp32 fit: the same
student in fp32 when that fits, else another student (the pipeline retrains it). report.json's
`precision` object says what was asked, chosen, shipped, and why."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..runtime import read_table
from .result import Selection, SelectOptions


def selection_kwargs(opts: SelectOptions, convert) -> dict[str, Any]:
    """select()'s keyword arguments for these options (`convert`: export.variants.timing_variant)."""
    table = None if opts.latency_table is None else (opts.latency_table, read_table(opts.latency_table))
    return {"precision": opts.precision, "convert": convert, "latency_table": table, "tune": opts.tune}


def export_options_for(export_opts, precision: str):
    """Export the variant that was chosen (besides fp32, which is always exported)."""
    if precision == "int8" and not export_opts.int8:
        return replace(export_opts, int8=True)
    if precision == "fp16" and not export_opts.fp16:
        return replace(export_opts, fp16=True)
    return export_opts


def apply_precision_gate(selection: Selection, val, opts: SelectOptions, console) -> tuple[dict[str, Any], str | None]:
    """(report.json's `precision` object, the fp32 student to retrain or None). `val` is the Validation of
    the exported variants of the chosen student."""
    chosen = selection.chosen
    out: dict[str, Any] = {"requested": selection.precision, "chosen": chosen.precision, "shipped": chosen.precision,
                           "student": chosen.name, "max_drop": opts.max_precision_drop, "gate": None,
                           "fell_back": False, "reason": "fp32 was chosen: no precision gate"}
    if chosen.precision == "fp32":
        return out, None
    fp32_acc = val.variant("fp32").eval.accuracy.top1
    var_acc = val.variant(chosen.precision).eval.accuracy.top1
    drop = fp32_acc - var_acc
    passed = drop <= opts.max_precision_drop + 1e-12
    out["gate"] = {"fp32_top1": fp32_acc, "variant_top1": var_acc, "drop": drop, "passed": passed}
    if passed:
        out["reason"] = (f"{chosen.precision} top-1 {100 * var_acc:.2f}% is within {100 * opts.max_precision_drop:.2f} "
                         f"points of fp32 ({100 * fp32_acc:.2f}%)")
        return out, None
    fb = selection.fallback
    why = (f"{chosen.precision} top-1 {100 * var_acc:.2f}% dropped {100 * drop:.2f} points from fp32 "
           f"({100 * fp32_acc:.2f}%), more than the allowed {100 * opts.max_precision_drop:.2f}")
    out.update(fell_back=True, shipped="fp32")
    if fb is None:
        out.update(reason=f"{why}; no fp32 student fits the budget, so the fp32 {chosen.name} ships and its budget "
                          "gate decides the run")
        console.print(f"[yellow]warning:[/] {out['reason']}")
        return out, None
    out["student"] = fb.name
    if fb.name == chosen.name:
        out["reason"] = f"{why}; falling back to {fb.name} in fp32, which fits the budget"
        console.print(f"[yellow]warning:[/] {out['reason']}")
        return out, None
    out["reason"] = f"{why}; falling back to the best fp32 fit, {fb.name}, retrained in the run directory's fallback/"
    console.print(f"[yellow]warning:[/] {out['reason']}")
    return out, fb.name
