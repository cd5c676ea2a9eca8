"""Every rich table and summary kdcompress prints on stdout, in one place. Each takes the JSON-able result
a command returned (the same object `--json` prints), so the table and the JSON never disagree."""

from __future__ import annotations

import os
import sys
import textwrap
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text


def _console() -> Console:
    """A terminal's own width; piped output (a file, a log) takes $COLUMNS when set, else 120 columns."""
    if sys.stdout.isatty():
        return Console()
    cols = os.environ.get("COLUMNS", "")
    return Console(width=int(cols) if cols.isdigit() and int(cols) >= 40 else 120)


def fit_table(title: str, columns: list[tuple[str, str, int | None]], rows: list[list[str]], width: int,
              **kw: Any) -> Table:
    """A table whose cells are never cut: columns (header, justify, drop rank; None: always kept) are dropped,
    lowest rank first, until every cell fits `width`; a name longer than the rest of the line folds."""
    size = [max([len(h)] + [len(Text.from_markup(r[i]).plain) for r in rows]) + 3 for i, (h, _, _) in
            enumerate(columns)]
    keep = list(range(len(columns)))
    for i in sorted((i for i, c in enumerate(columns) if c[2] is not None), key=lambda i: columns[i][2]):
        if sum(size[j] for j in keep) + 1 <= width:
            break
        keep.remove(i)
    t = Table(title=title, **kw)
    for i in keep:
        h, justify, rank = columns[i]
        t.add_column(h, justify=justify, no_wrap=rank is not None, overflow="fold")
    for r in rows:
        t.add_row(*(r[i] for i in keep))
    return t


def human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def _pct(v: Any) -> str:
    from ..report import finite

    return f"{100 * v:.2f}%" if finite(v) else "n/a"


def distill_summary(r: dict[str, Any]) -> None:
    """The teacher and the file that ships (report.json's `shipped`; report.shipped), its budget line, and
    every variant. Imported lazily: the report package imports torch."""
    from ..report import budget_sentence, finite, intended_variant

    v = intended_variant(r) or {}
    s = {**v, "arch": f"{r['student']['arch']} ({v.get('variant', 'fp32')})", "params": r["student"]["params"]}
    rows = []
    for role, m in (("teacher", r["teacher"]), ("ships" if r.get("recommended") else "student", s)):
        lat = m.get("latency_ms") or {}
        rows.append([role, m["arch"], f"{m['params']:,}", _pct(m.get("accuracy")),
                     *(f"{lat[k]:.4f}" if finite(lat.get(k)) else "n/a" for k in ("p50", "p90", "p99"))])
    # at a narrow width p99, then p90, then params give way; a long (timm) arch name folds, never cut
    cols = [("", "left", None), ("arch", "left", None), ("params", "right", 2), ("test acc", "right", None),
            ("p50 ms", "right", None), ("p90 ms", "right", 1), ("p99 ms", "right", 0)]
    c = _console()
    c.print(fit_table(f"kdcompress {r['preset']['name']}: {r['teacher']['arch']} -> {r['student']['arch']}", cols,
                      rows, c.width))
    budget = budget_sentence(r, v or None).replace("MISSED", "[red]MISSED[/]").replace(": met", ": [green]met[/]")
    sp, diff, ta = (v.get("speedup_vs_teacher"), (v.get("parity") or {}).get("max_abs_diff"),
                    r["teacher"].get("accuracy"))
    ratio = v.get("accuracy") / ta if finite(v.get("accuracy")) and finite(ta) and ta else None
    c.print(f"{budget}; speed-up {f'{sp:.2f}x' if finite(sp) else 'n/a'}; "
            f"student reaches {f'{100 * ratio:.1f}%' if ratio is not None else 'n/a'} of the teacher's accuracy; "
            f"parity max|diff| {f'{diff:.2e}' if finite(diff) else 'n/a'}, "
            f"agreement {_pct((v.get('parity') or {}).get('top1_agreement'))}")
    for w in r.get("variants", []):
        c.print(f"  {w['name']:5s} {w['onnx']}: top-1 {_pct(w.get('accuracy'))}, p50 {w['latency_ms']['p50']:.4f} ms, "
                f"gates {'pass' if w['passed'] else '[red]FAIL[/]'}"
                + (" [bold](recommended)[/]" if w["recommended"] else ""))
    ships = (r.get("shipped") or {}).get("path")
    c.print(f"outputs in {r['run_dir']}/: "
            + (f"ships {ships}; " if ships else "nothing ships (no variant passed every gate); ")
            + "student.pt, report.json, report.md, plots/")
    if ships:
        next_steps(c, [f"kdcompress predict {r['run_dir']}/{ships} IMAGES", f"kdcompress validate --onnx "
                       f"{r['run_dir']}/{ships} --data NEW_DATA --teacher {r['teacher'].get('path', 'TEACHER')}",
                       f"kdcompress export --run {r['run_dir']} --int8"])


def next_steps(c: Console, commands: list[str]) -> None:
    """What to run next, after a command's own output (the human view only: --json prints the result alone).
    Each command is printed so that it pastes back into a shell whole at any width (shell_lines)."""
    c.print("next:", style="bold")
    for cmd in commands:
        for line in shell_lines(cmd, c.width):
            c.print(line, markup=False, highlight=False, soft_wrap=True)


def _units(command: str) -> list[str]:
    """A command's words, a flag kept with its value: `--budget-ms 0.1` is broken before or after, never inside."""
    units: list[str] = []
    for word in command.split():
        if units and units[-1].startswith("-") and " " not in units[-1] and not word.startswith("-"):
            units[-1] += f" {word}"
        else:
            units.append(word)
    return units


def shell_lines(command: str, width: int, indent: str = "  ") -> list[str]:
    """One suggested command as lines of at most `width` columns that a shell reads back as that command: broken
    between words with ` \\` continuations (the terminal would otherwise cut it mid-word, and a pasted piece
    runs alone). A trailing `  # comment` that does not fit beside it goes on its own line above. Only a single
    word longer than the line (a long path) is left longer than `width`, whole."""
    cmd, _, note = command.partition("  # ")
    if len(indent) + len(command) <= width:
        return [indent + command]
    lines = [f"{indent}# {n}" for n in textwrap.wrap(note, max(20, width - len(indent) - 2))] if note else []
    if len(indent) + len(cmd) <= width:
        return [*lines, indent + cmd]
    cont = indent + "    "
    current = indent
    for unit in _units(cmd):
        if current.strip() and len(current) + 1 + len(unit) + 2 > width:
            lines.append(current + " \\")
            current = cont
        current += unit if not current.strip() else f" {unit}"
    return [*lines, current]


def validation_table(r: dict[str, Any]) -> None:
    cols = [("model", "left", None), ("top-1", "right", None), ("p50 ms", "right", None), ("p90 ms", "right", 3),
            ("p99 ms", "right", 1), ("img/s", "right", 2), ("max|diff|", "right", 4), ("agree", "right", 5),
            ("speed-up", "right", 6), ("gates", "right", None)]
    rows = []
    for name, m, v in ([("teacher", r["teacher"], None)] if r.get("teacher") else []) + [
            (v["name"], v, v) for v in r["variants"]]:
        lat, par = m["latency_ms"], (v or {}).get("parity") or {}
        sp = (v or {}).get("speedup_vs_teacher")
        rows.append([name + (" *" if v and v["recommended"] else ""), f"{100 * m['accuracy']:.2f}%",
                     f"{lat['p50']:.4f}", f"{lat['p90']:.4f}", f"{lat['p99']:.4f}",
                     f"{m['throughput']['throughput']:,.0f}", f"{par['max_abs_diff']:.3g}" if par else "-",
                     f"{100 * par['top1_agreement']:.2f}%" if par else "-",
                     f"{sp:.2f}x" if sp else "-", "-" if v is None else ("pass" if v["passed"] else "[red]FAIL[/]")])
    c = _console()
    c.print(fit_table(f"kdcompress validate on {r['data']['name']} ({r['provider']}, {r['threads']} thread(s))",
                      cols, rows, c.width))
    c.print(f"recommended: {r['recommended'] or 'none (no variant passed every gate)'}")


def profile_table(table: dict[str, Any]) -> None:
    """`profile`'s latency table: model keys are never cut; settings columns go first at a narrow width."""
    cols = [("model", "left", None), ("p50 ms", "right", None), ("p90 ms", "right", 4), ("p99 ms", "right", 2),
            ("threads", "right", 3), ("opt", "left", 1), ("execution", "left", 0)]
    rows = [[key, f"{m['latency_ms']['p50']:.4f}", f"{m['latency_ms']['p90']:.4f}", f"{m['latency_ms']['p99']:.4f}",
             str(m["settings"]["threads"]), m["settings"]["opt_level"], m["settings"]["execution"]]
            for key, m in table["models"].items()]
    c = _console()
    c.print(fit_table(f"latency on {table['machine'].get('cpu') or '?'} ({table['provider']}, batch {table['batch']}, "
                      f"slowest of {table['processes']} process(es) per model)", cols, rows, c.width))


def export_lines(result: dict[str, Any]) -> None:
    c = _console()
    for a in result["artifacts"]:
        par = a.get("parity")
        extra = (f"  test acc {100 * a['accuracy']:.2f}%  max|diff| {par['max_abs_diff']:.3g}  "
                 f"agreement {100 * par['top1_agreement']:.2f}%" if par else "")
        kept = "  (kept: the file report.json vouches for)" if a.get("kept") else ""
        c.print(f"{a['variant']:5s} {a['onnx']}  {a['bytes']:,} bytes{extra}{kept}", markup=False, highlight=False)
    if result["artifacts"]:
        f = result["artifacts"][-1]["onnx"]
        next_steps(c, [f"kdcompress validate --onnx {f} --data DATA", f"kdcompress predict {f} IMAGES"])


def report_lines(r: dict[str, Any]) -> None:
    root = r["_root"]
    _console().print(f"wrote {root}/report.md" + "".join(f", {root}/{p}" for p in r.get("plots", [])),
                     markup=False, highlight=False)


def teacher_trained(info: dict[str, Any]) -> None:
    _console().print(f"teacher {info['arch']}: test accuracy {100 * info['test_accuracy']:.2f}% -> {info['path']}",
                     markup=False, highlight=False)


def teacher_table(info: dict[str, Any]) -> None:
    spec, lat = info["input_spec"], info["latency_ms"]
    names = info["classes"]
    t = Table(title=f"teacher {info['path']}", show_header=False)
    t.add_column("key")
    t.add_column("value", overflow="fold")  # a long class name or path folds, never cut
    for k, v in (
        ("format", info["format"]), ("arch", info["arch"]), ("params", f"{info['params']:,}"),
        ("FLOPs (batch 1)", "unknown" if info["flops"] is None else f"{info['flops']:,}"),
        ("classes", f"{info['num_classes']}: " + ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")),
        ("input", f"{'x'.join(map(str, spec['shape']))} NCHW, mean {spec['mean']}, std {spec['std']}"),
        ("features",
         "logits only" if info["logits_only"] else f"embedding of {info['embed_dim']} ({info['features']})"),
        ("outputs", info.get("outputs", "logits")
         + (" (used as log-probabilities)" if info.get("outputs") == "probabilities" else "")),
        ("ORT latency", f"p50 {lat['p50']:.4f} ms, p90 {lat['p90']:.4f} ms, p99 {lat['p99']:.4f} ms "
                        f"({info['provider']}, {info['threads']} thread(s), batch 1)"),
    ):
        t.add_row(k, v)
    c = _console()
    c.print(t)
    # under the table, on one line: a 64-digit checksum is copied whole, and no 80-column cell holds it
    c.print(f"sha256 {info['sha256']}", markup=False, highlight=False, soft_wrap=True)


def presets_table(rows: list, guide: tuple[str, ...] = ()) -> None:
    t = Table(title="kdcompress presets")
    t.add_column("name", no_wrap=True)
    t.add_column("terms")
    t.add_column("description")
    for p in rows:
        t.add_row(p.name, " + ".join(x.key for x in p.terms),
                  p.description + (" (kdcompress variant)" if p.variant else ""))
    c = _console()
    c.print(t)
    if guide:
        c.print("which preset to pick:", style="bold")
        for line in guide:
            c.print(f"  - {line}", markup=False, highlight=False)


def preset_detail(p, params: list[dict[str, Any]]) -> None:
    """A Preset and, per term, its Params with the defaults filled in."""
    c = _console()
    c.print(f"[bold]{p.name}[/]{' (kdcompress variant)' if p.variant else ''}: {p.description}")
    c.print(f"reference: {p.reference}")
    t = Table(title="loss terms")
    for col in ("term", "kind", "weight", "warm-up epochs", "params (defaults filled in)"):
        t.add_column(col)
    for term, values in zip(p.terms, params, strict=True):
        t.add_row(term.key, term.kind, f"{term.weight:g}", str(term.warmup_epochs),
                  ", ".join(f"{k}={v}" for k, v in values.items()) or "-")
    c.print(t)
    tr = Table(title="training defaults")
    tr.add_column("key")
    tr.add_column("value")
    for k, v in asdict(p.train).items():
        tr.add_row(k, str(v))
    c.print(tr)


def selection_table(sel: dict[str, Any], title: str) -> None:
    """The measured ladder of a selection.json object (Selection.to_json), the teacher's row last. At a narrow
    width the graph, p90 and params columns go first; names and p50 are never cut."""
    budget = "none (ladder only)" if sel["budget_ms"] is None else f"{sel['budget_ms']:g} ms {sel['stat']}"
    chosen = ((sel["chosen"] or {}).get("name"), (sel["chosen"] or {}).get("precision", "fp32"))
    notes = [f"warning: {w}" for w in sel["warnings"]]
    if sel.get("skipped"):
        notes.append(f"{len(sel['skipped'])} candidate(s) not measured: bigger than a same-family one over budget")
    if sel.get("fallback"):
        notes.append(f"fp32 fallback if the {sel['chosen']['precision']} variant fails its accuracy gate: "
                     f"{sel['fallback']['name']}")

    def fits(c: dict[str, Any]) -> str:
        return "-" if sel["budget_ms"] is None else ("yes" if c["fits"] else "no")

    rows = []
    for c in sel["candidates"]:
        prec = c.get("precision", "fp32")
        lat = c["latency_ms"]
        slow = " (slower than fp32)" if c.get("slower_than_fp32") else ""
        mark = "[bold green]<- chosen[/]" if (c["name"], prec) == chosen else ""
        rows.append([c["name"] + ("" if prec == "fp32" else f" ({prec}){slow}"), f"{c['params']:,}", human(c["flops"]),
                     f"{lat['p50']:.4f}", f"{lat['p90']:.4f}",
                     c.get("graph", "ship") + (f" ({c['draws']})" if c.get("draws") else ""), fits(c), mark])
    if sel["teacher"] is not None:
        c, lat = sel["teacher"], sel["teacher"]["latency_ms"]
        rows.append([f"[italic]{c['name']} (teacher)[/]", f"{c['params']:,}",
                     "unknown" if c["flops"] is None else human(c["flops"]), f"{lat['p50']:.4f}", f"{lat['p90']:.4f}",
                     c.get("graph", "ship"), fits(c) + (" [yellow](!)[/]" if sel["teacher_meets_budget"] else ""), ""])
    con = _console()
    cols = [("name", "left", None), ("params", "right", 2), ("FLOPs", "right", 3), ("p50 ms", "right", None),
            ("p90 ms", "right", 1), ("graph", "left", 0), ("fits", "left", None), ("chosen", "left", None)]
    table = fit_table(f"{title}\nbudget {budget}, batch {sel['batch']}, {sel['provider']}, {sel['threads']} "
                      "thread(s)", cols, rows, con.width, caption_style="yellow")
    if any(col.header == "graph" for col in table.columns):  # the note explains a column a narrow table drops
        notes.append("graph: screen = the fast TorchScript export every candidate is screened on; ship = the "
                     "dynamo graph export writes (every confirmed figure: the slowest of the processes in brackets)")
    table.caption = "\n".join(notes) or None
    con.print(table)
    if sel["chosen"] is not None:
        b = (f"--budget-ms {sel['budget_ms']:g}" if sel["budget_ms"] is not None
             else f"--student {sel['chosen']['name']}")
        next_steps(con, [f"kdcompress distill --teacher TEACHER --data DATA {b}" + (
            f" --precision {sel['precision']}" if sel.get("precision", "fp32") != "fp32" else ""),
            "kdcompress select ... --export-candidates DIR  # or time the ladder on the target:",
            "kdcompress profile DIR  # there; then select --latency-table DIR/latency.json"])


def candidates_written(result: dict[str, Any]) -> None:
    """`select --export-candidates DIR`: what was written, then the profile command to run on the target."""
    c = _console()
    d = result["directory"]
    c.print(f"wrote {result['models']} ONNX file(s) and manifest.json to {d}", markup=False, highlight=False,
            soft_wrap=True)
    next_steps(c, [f"kdcompress profile {d}  # on the target, after copying the directory there",
                   f"kdcompress select ... --latency-table {d}/latency.json  # back here"])


def doctor_table(info: dict[str, Any]) -> None:
    c = _console()
    t, o, f, cpu = info["torch"], info["onnxruntime"], info["faiss"], info["cpu"]
    tab = Table(title=f"kdcompress {info['kdcompress']} doctor", show_header=False)
    tab.add_column("item")
    tab.add_column("value", overflow="fold")
    gpus = ", ".join(f"{g['name']} ({g['memory_gib']} GiB, sm {g['capability']})" for g in t["gpus"]) or "none"
    rows = [
        ("python", f"{info['python']} on {info['platform']}"),
        ("torch", f"{t['version']} (CUDA build {t['cuda_build'] or 'none'}, cuDNN {t['cudnn'] or 'none'}); "
                  f"torchvision {t['torchvision']}"),
        ("GPUs", gpus),
        ("onnxruntime", f"{o['version']} from {', '.join(f'{k} {v}' for k, v in o['distributions'].items()) or '?'}"),
        *((f"  {p['provider']}", ("[green]starts[/]" if p["starts"] else "[red]does not start[/]")
           + (f" ({p['note']})" if p["note"] else "")) for p in o["providers"]),
        ("faiss", "not installed" if not f["installed"] else
         f"{f['version']} ({'GPU build, ' + str(f['gpus']) + ' GPU(s)' if f['gpu_build'] else 'CPU build'})"),
        ("CPUs", f"{cpu['count']} online, {cpu['usable']} usable"
                 + (" (container / affinity limit)" if cpu["container_limited"] else "")),
    ]
    for k, v in rows:
        tab.add_row(k, v)
    c.print(tab)
    for n in info["notes"]:
        c.print(f"note: {n}")
    for w in info["warnings"]:
        c.print(f"[yellow]warning:[/] {w}")
    if not info["warnings"]:
        c.print("[green]no known problems[/]")


def predictions(r: dict[str, Any], limit: int = 50) -> None:
    """`predict`: one line per image, its top-k classes with probabilities (the first `limit` images)."""
    c = _console()
    for row in r["predictions"][:limit]:
        best = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in row["top"])
        c.print(f"{row['path']}: {best}", markup=False, highlight=False, soft_wrap=True)
    if len(r["predictions"]) > limit:
        rest = len(r["predictions"]) - limit
        c.print(f"... {rest} more" + (f" in {r['out']}" if r["out"] else " (write them all with --out FILE.csv)"))
