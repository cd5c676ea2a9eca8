"""report.json (versioned schema, for pipelines) and report.md (for people)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .runio import atomic_write_json, atomic_write_text

SCHEMA_VERSION = 1


def _ms(d: dict[str, Any] | None, k: str) -> str:
    return "–" if not d or d.get(k) is None else f"{d[k]:.4f}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def render_markdown(r: dict[str, Any]) -> str:
    s, t, p = r["student"], r["teacher"], r["parity"]
    sl, tl = s.get("latency_ms"), t.get("latency_ms")
    budget = r.get("budget_ms")
    lines = [
        f"# kdcompress report: {r['preset']['name']} on {r['data']['name']}",
        "",
        f"Created {r['created']} by kdcompress {r['kdcompress_version']} on {r['machine'].get('cpu', '?')} "
        f"({r['machine'].get('cpus', '?')} CPUs), training device `{r['device']}`, "
        f"ONNX Runtime `{r['provider']}` with {r['threads']} thread(s).",
        "",
        f"Preset **{r['preset']['name']}**"
        + (" (kdcompress variant: the paper's exact form is unconfirmed)" if r['preset'].get('variant') else "")
        + f": {r['preset']['description']}  ",
        f"Reference: {r['preset']['reference']}",
        "",
        "| model | arch | params | FLOPs | test accuracy | p50 ms | p90 ms | p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        f"| teacher | {t['arch']} | {t['params']:,} | {'–' if t.get('flops') is None else format(t['flops'], ',')} | {_pct(t.get('accuracy'))} | "
        f"{_ms(tl, 'p50')} | {_ms(tl, 'p90')} | {_ms(tl, 'p99')} |",
        f"| student | {s['arch']} | {s['params']:,} | {s['flops']:,} | {_pct(s.get('accuracy'))} | "
        f"{_ms(sl, 'p50')} | {_ms(sl, 'p90')} | {_ms(sl, 'p99')} |",
        "",
        f"- Budget: {'none' if budget is None else f'{budget:g} ms'} ({r['budget_stat']}, batch 1); "
        f"student {'meets' if s.get('meets_budget') else 'MISSES'} it.",
        f"- Speed-up over the teacher (p50): {r['speedup']:.2f}x; accuracy change: "
        f"{100 * r['accuracy_delta']:+.2f} points ({100 * r['accuracy_ratio']:.1f}% of the teacher's).",
        f"- ONNX Runtime vs PyTorch on {p['samples']} test images: max |diff| {p['max_abs_diff']:.3g}, "
        f"top-1 agreement {_pct(p['top1_agreement'])}.",
        f"- Training: {r['epochs']} epochs in {r['training']['seconds']:.1f} s; best validation accuracy "
        f"{_pct(s.get('val_accuracy_best'))} at epoch {s.get('best_epoch')} (final epoch "
        f"{_pct(s.get('val_accuracy_final'))}); the shipped weights are the best-validation epoch's.",
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
    if sel.get("teacher_meets_budget"):
        lines += ["", "> Warning: the teacher itself meets this budget; a student buys speed you may not need."]
    lines += ["", "## Files", "", f"- `{s['onnx']}` (ONNX student), `{s['checkpoint']}` (PyTorch checkpoint)", ""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], json_path: Path, md_path: Path) -> None:
    atomic_write_json(json_path, report)
    atomic_write_text(md_path, render_markdown(report))
