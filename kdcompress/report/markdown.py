"""report.json (versioned schema, for pipelines), report.md and plots (for people).

The schema is kdcompress/report/report.schema.json (shipped in the wheel). `schema_version` changes only when a
field is removed, renamed or changes type; new fields keep the version (consumers ignore unknown keys).
Two kinds share it: `distill` (the whole job) and `validate` (ONNX files measured on their own).
Version 2: a distill report names the file it ships first (`shipped`, shipped.py) and `student.meets_budget`
is null without a budget (it was true). `kdcompress report` re-renders version 1 reports as they are.
Every figure in report.md goes through _num/_pct: a missing or non-finite value reads "n/a", never "nan".
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from ..core.errors import InputError
from ..core.fsguard import strict_json
from ..core.runio import atomic_write_json, atomic_write_text, read_json
from .plots import render_plots
from .shipped import budget_sentence, finite, intended_variant

SCHEMA_VERSION = 2
KINDS = ("distill", "validate")


def _cache(d: dict | None) -> str:
    """The teacher-output cache decision (train.cachechoice), or nothing for a report from before it."""
    if not d:
        return ""
    how = "replayed from the teacher-output cache" if d["used"] == "views" else "computed online in every step"
    return f" Teacher outputs: {how} (train.teacher_cache={d['requested']}: {d['reason']})."


def _warmups(rows: list[dict]) -> str:
    """' Warm-up: dkd 3 epochs (20 of 240 in the recipe, scaled).' for the terms that have one."""
    parts = [f"{w['term']} {w['epochs']} epoch(s)" + (f" ({w['recipe_epochs']} of {w['recipe_length']} in the recipe, "
             "scaled)" if w.get("recipe_epochs") else " (set explicitly)") for w in rows if w["epochs"] > 0]
    return f" Warm-up: {'; '.join(parts)}." if parts else ""


def load_schema() -> dict[str, Any]:
    return json.loads(resources.files("kdcompress.report").joinpath("report.schema.json").read_text())


def _num(v: float | None, fmt: str, missing: str = "–") -> str:
    """`v` formatted; `missing` when absent, "n/a" when not a finite number (a NaN never reads "+nan")."""
    if v is None:
        return missing
    return format(v, fmt) if finite(v) else "n/a"


def _ms(d: dict[str, Any] | None, k: str) -> str:
    return _num((d or {}).get(k), ".4f")


def _pct(v: float | None, missing: str = "–") -> str:
    return _num(100 * v if finite(v) else v, ".2f", missing) + ("%" if finite(v) else "")


def _times(v: float | None, missing: str = "–") -> str:
    return _num(v, ".2f", missing) + ("x" if finite(v) else "")


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if finite(a) and finite(b) and b else None


def _models_table(r: dict[str, Any]) -> list[str]:
    stat = r["gates"]["thresholds"]["budget_stat"]
    lines = [
        "| model | file | size | top-1 | top-5 | p50 ms | p90 ms | p99 ms | throughput img/s (batch) "
        "| max abs diff | agreement | speed-up | Δ acc (pts) | gates |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|",
    ]
    t = r.get("teacher")
    if t:
        lat, thr = t["latency_ms"], t.get("throughput") or {}
        lines.append(f"| teacher | `{Path(t.get('onnx') or '').name}` | {_size(t.get('bytes'))} | "
                     f"{_pct(t.get('accuracy'))} | {_pct(t.get('accuracy_top5'))} | "
                     f"{_ms(lat, 'p50')} | {_ms(lat, 'p90')} | {_ms(lat, 'p99')} | "
                     f"{_num(thr.get('throughput'), ',.0f')} ({thr.get('batch', '–')}) | | | 1.00x | | |")
    for v in r["variants"]:
        lat, thr, par = v["latency_ms"], v["throughput"], v.get("parity") or {}
        name = f"**{v['name']}** (recommended)" if v["recommended"] else v["name"]
        delta = v.get("accuracy_delta_vs_teacher")
        lines.append(
            f"| {name} | `{Path(v['onnx']).name}` | {_size(v['bytes'])} | {_pct(v['accuracy'])} | "
            f"{_pct(v.get('accuracy_top5'))} | {_ms(lat, 'p50')} | {_ms(lat, 'p90')} | {_ms(lat, 'p99')} | "
            f"{_num(thr.get('throughput'), ',.0f')} ({thr.get('batch', '–')}) | "
            f"{_num(par.get('max_abs_diff'), '.3g')} | "
            f"{_pct(par.get('top1_agreement'))} | {_times(v.get('speedup_vs_teacher'))} | "
            f"{_num(100 * delta if finite(delta) else delta, '+.2f')} | {'pass' if v['passed'] else '**FAIL**'} |")
    lines += ["", f"Latency is batch {r['variants'][0]['latency_ms']['batch'] if r['variants'] else 1}; gates use "
              f"{stat}. Speed-up is the teacher's p50 over the model's."]
    return lines


def _size(b: int | None) -> str:
    if b is None:
        return "–"
    return f"{b / 1e6:.2f} MB" if b >= 1e6 else f"{b / 1e3:.1f} kB"


def _gates_section(r: dict[str, Any]) -> list[str]:
    g = r["gates"]
    th = g["thresholds"]
    set_ = [f"{k} = {v}" for k, v in th.items() if v is not None and k != "budget_stat"]
    lines = ["## Gates", "",
             f"Thresholds: {', '.join(set_) or 'none given'} (stat {th['budget_stat']}); the parity gate applies "
             "per-variant tolerances whenever the PyTorch model is at hand.", ""]
    rec = r.get("recommended")
    lines.append(f"**Result: {'PASS' if g['passed'] else 'FAIL'}.** " + (
        f"Recommended variant: **{rec}** (the fastest that passes every gate, never slower than fp32)."
        if rec else "No variant passes every gate; the command exits with code 5."))
    if g["failed"]:
        lines += ["", "| variant | gate | value | threshold | detail |", "|---|---|---:|---:|---|"]
        lines += [f"| {f['variant']} | {f['gate']} | {_num(f['value'], '.4g')} | {_num(f['threshold'], '.4g')} | "
                  f"{f['detail']} |" for f in g["failed"]]
    return lines


def _per_class(r: dict[str, Any], limit: int = 40) -> list[str]:
    classes = r["data"]["classes"]
    cols = ([("teacher", r["teacher"])] if r.get("teacher") else []) + [(v["name"], v) for v in r["variants"]]
    if not classes or not cols:
        return []
    lines = ["## Per-class test accuracy", "", "| class | " + " | ".join(c for c, _ in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for c in classes[:limit]:
        lines.append(f"| {c} | " + " | ".join(_pct((m.get("per_class_accuracy") or {}).get(c)) for _, m in cols) + " |")
    if len(classes) > limit:
        lines.append(f"| … {len(classes) - limit} more in report.json | " + " | ".join("" for _ in cols) + " |")
    return lines + _confused(cols)


def _confused(cols: list[tuple[str, dict[str, Any]]], limit: int = 5) -> list[str]:
    """The most frequent confusions of each model (report.json `confusion.top`; the counts in `confusion.matrix`)."""
    rows = [(name, c) for name, m in cols for c in ((m.get("confusion") or {}).get("top") or [])[:limit]]
    if not rows:
        return []
    return ["", "Most frequent confusions on the test split (true -> predicted, images):", "",
            "| model | true | predicted | images |", "|---|---|---|---:|"] + [
        f"| {name} | {c['true']} | {c['predicted']} | {c['count']} |" for name, c in rows]


def _shipped_lines(r: dict[str, Any]) -> list[str]:
    """What ships and how it does: the budget, speed-up, accuracy and parity of THAT file (shipped.py), so a
    run that ships int8 never reads as the fp32 file missing the budget."""
    v, t = intended_variant(r), r.get("teacher") or {}
    if v is None:
        return []
    file = f"the {v['variant']} file `{v.get('path') or Path(v['onnx']).name}`"
    ships = r.get("recommended") == v["name"]
    budget = budget_sentence(r, v)
    par = v.get("parity") or {}
    delta = v.get("accuracy_delta_vs_teacher")
    ratio = _ratio(v.get("accuracy"), t.get("accuracy"))
    return [
        f"- Ships: {file} (sha256 `{(v.get('sha256') or '')[:16]}…`)." if ships else
        f"- Ships: nothing: no variant passed every gate (the command exits 5); {file} would have shipped.",
        f"- {budget[0].upper()}{budget[1:]}"
        + ("" if r.get("budget_ms") is None else f" (batch {(v.get('latency_ms') or {}).get('batch', 1)})") + ".",
        f"- {v['variant']} speed-up over the teacher (p50): {_times(v.get('speedup_vs_teacher'), 'n/a')}; "
        f"accuracy change: {_num(100 * delta if finite(delta) else delta, '+.2f', 'n/a')} points"
        + (f" ({100 * ratio:.1f}% of the teacher's)." if ratio is not None else "."),
        f"- {v['variant']} ONNX Runtime vs PyTorch on {par.get('samples', 'n/a')} test images: max |diff| "
        f"{_num(par.get('max_abs_diff'), '.3g', 'n/a')}, top-1 agreement {_pct(par.get('top1_agreement'), 'n/a')}.",
    ]


def _distill_section(r: dict[str, Any]) -> list[str]:
    s, t = r["student"], r["teacher"]
    lines = [
        f"Preset **{r['preset']['name']}**"
        + (" (kdcompress variant: the paper's exact form is unconfirmed)" if r['preset'].get('variant') else "")
        + f": {r['preset']['description']}  ",
        f"Reference: {r['preset']['reference']}",
        "",
        f"- Teacher {t['arch']} ({t['params']:,} params, "
        f"{'unknown' if t.get('flops') is None else format(t['flops'], ',')} FLOPs) -> student {s['arch']} "
        f"({s['params']:,} params, {s['flops']:,} FLOPs).",
        *_shipped_lines(r),
        *(f"- **Warning:** {w}" for w in r.get("warnings") or ()),
        f"- Training: {r['epochs']} epochs in {r['training']['seconds']:.1f} s; best validation accuracy "
        f"{_pct(s.get('val_accuracy_best'), 'n/a')} at epoch {s.get('best_epoch')} (final epoch "
        f"{_pct(s.get('val_accuracy_final'), 'n/a')}); the shipped weights are the best-validation epoch's."
        + _warmups(r["training"].get("warmup") or []) + _cache(r["training"].get("teacher_cache")),
        "",
        "## Candidates measured for selection",
        "",
        "| candidate | params | FLOPs | p50 ms | p90 ms | fits | chosen |",
        "|---|---:|---:|---:|---:|:-:|:-:|",
    ]
    sel = r.get("selection") or {}
    chosen = (sel.get("chosen") or {}).get("name")
    for c in sel.get("candidates", []):
        lat = c["latency_ms"]
        lines.append(f"| {c['name']} | {c['params']:,} | {c['flops']:,} | {lat['p50']:.4f} | {lat['p90']:.4f} | "
                     f"{'yes' if c['fits'] else 'no'} | {'**yes**' if c['name'] == chosen else ''} |")
    for w in sel.get("warnings") or ():  # select's warnings, the teacher-fits one among them
        lines += ["", f"> Warning: {w}"]
    return lines


def _preset_ranking(r: dict[str, Any]) -> list[str]:
    """--preset auto: one paragraph on how the preset was chosen."""
    k = r.get("preset_ranking")
    if not k:
        return []
    last = {t["preset"]: t["val_accuracy"] for t in k["trials"] if t["rung"] == len(k.get("plan") or []) - 1}
    text = (f"--preset auto chose **{k['winner']}** among {', '.join(k['candidates'])}: "
            + (f"{len(k['trials'])} paired trials (same student, seed and initial weights) by successive halving "
               f"(plan {', '.join(f'{n} x {e} epoch(s)' for n, e in k['plan'])}), scored on the validation split "
               f"({k['val_images']} images); last round " + ", ".join(f"{n} {_pct(a)}" for n, a in last.items())
               + f"; ties go to {k.get('tie_break', 'the simpler preset')}. Cost: {k['epochs_spent']} trial epochs, "
               f"{k.get('wall_seconds', k['seconds_spent']):.1f} s."
               if k["trials"] else "the only candidate left, so no trial ran.")
            + "".join(f" Skipped {s['preset']}: {s['reason']}." for s in k["skipped"]))
    return ["## Preset ranking", "", text, ""]


def render_markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    title = (f"# kdcompress report: {r['preset']['name']} on {r['data']['name']}" if r["kind"] == "distill"
             else f"# kdcompress validation on {r['data']['name']}")
    lines = [title, "",
             f"Created {r['created']} by kdcompress {r['kdcompress_version']} on {m.get('cpu', '?')} "
             f"({m.get('cpus', '?')} CPUs), ONNX Runtime {m.get('onnxruntime', '?')} `{r['provider']}` with "
             f"{r['threads']} thread(s)" + (f"; training device `{r['device']}`." if r.get("device") else "."), ""]
    if r["kind"] == "distill":
        lines += _distill_section(r) + [""] + _preset_ranking(r)
    lines += ["## Models in ONNX Runtime", ""] + _models_table(r) + [""] + _gates_section(r) + [""]
    plots = r.get("plots") or []
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    lines += _per_class(r) + [""]
    files = [f"- `{v['onnx']}` ({v['name']}, sha256 `{v['sha256'][:16]}…`)"
             + (" **shipped**" if r["kind"] == "distill" and v["name"] == r.get("recommended") else "")
             for v in r["variants"]]
    files += [f"- `{a['onnx']}` ({a['variant']}, written by `kdcompress export`: checked against PyTorch, latency not "
              f"measured; sha256 `{a['sha256'][:16]}…`)"
              for a in r.get("artifacts") or [] if a.get("source") == "export"]
    if r["kind"] == "distill":
        files.append(f"- `{r['student']['checkpoint']}` (PyTorch checkpoint)")
    lines += ["## Files", "", *files, ""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], root: Path) -> dict[str, Any]:
    """Plots, then report.json (naming them), then report.md, all into `root`. Returns the report."""
    root = Path(root)
    report = strict_json({**report, "plots": render_plots(report, root)})  # report.md reads what report.json holds
    atomic_write_json(root / "report.json", report)
    atomic_write_text(root / "report.md", render_markdown(report))
    return report


def rerender(root: Path) -> dict[str, Any]:
    """Redraw report.md and the plots of a run (or a `validate --out` directory) from its report.json."""
    root = Path(root)
    path = root / "report.json" if root.is_dir() else root
    report = read_json(path)
    if not isinstance(report, dict):
        raise InputError(f"{path} does not hold a kdcompress report (not a JSON object)")
    version = report.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise InputError(f"{path} has schema_version {version!r}; this kdcompress reads up to {SCHEMA_VERSION}")
    if report.get("kind", "distill") not in KINDS:
        raise InputError(f"{path}: unknown report kind {report.get('kind')!r}")
    report.setdefault("kind", "distill")
    try:
        return write_report(report, path.parent)
    except (KeyError, TypeError) as e:
        raise InputError(f"{path} lacks a field the report needs: {e}") from None
