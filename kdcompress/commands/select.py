"""`kdcompress select`: measure the student ladder for a teacher's input shape and choose within a budget;
or write the ladder as ONNX files for `kdcompress profile` on the target (--export-candidates); or choose
from the latency table that profile wrote (--latency-table)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from rich.console import Console

from ..core.config import Budget, RuntimeConfig
from ..core.latencytable import read_table
from ..core.runio import RunDir, atomic_write_json
from ..select import Selection, save_pareto_plot, select
from ..select.ladder import export_ladder
from ..select.search import ladder_rows
from ..teacher import load_teacher
from . import Outcome, render


def converter():
    """The fp16/INT8 maker select measures with (export's own converters; select may not import export)."""
    from ..export.variants import timing_variant

    return timing_variant


def latency_table_arg(path: Path | None) -> tuple[Path, dict[str, Any]] | None:
    return None if path is None else (Path(path), read_table(Path(path)))


def run_select(*, teacher: Path, budget: Budget, runtime: RuntimeConfig, candidates: tuple[str, ...] = (),
               use_cache: bool = True, out: Path | None = None, trust_checkpoint: bool = False,
               console: Console | None = None, precision: str = "fp32", latency_table: Path | None = None,
               tune: bool = False, prune: bool = True, force: bool = False) -> tuple[Selection, str]:
    """Measure and choose for `teacher`'s input shape; with `out`, write selection.json and selection.png.
    Returns the selection and a one-line description of the setting (for titles). `out` is claimed
    (RunDir.claim) before any work: a bad or foreign --out is refused at once, it is locked while the
    ladder is measured, and a refused selection leaves no directory it created."""
    console = console or Console(stderr=True)
    with RunDir(Path(out)).claim(force=force) if out is not None else contextlib.nullcontext():
        table = latency_table_arg(latency_table)
        t = load_teacher(teacher, trust=trust_checkpoint, flags=False)  # select has no teacher flags
        shape = "x".join(str(v) for v in t.input_spec.shape)
        with console.status("measuring student candidates in ONNX Runtime") as status:
            sel = select(num_classes=t.num_classes, spec=t.input_spec, budget=budget, runtime=runtime,
                         teacher_model=t.model, teacher_name=t.arch, names=candidates, use_cache=use_cache,
                         on_measure=lambda n: status.update(f"measuring {n} in ONNX Runtime ({runtime.provider})"),
                         precision=precision, convert=converter(), latency_table=table, tune=tune, prune=prune)
        for w in sel.notes:
            console.print(f"[yellow]warning:[/] {w}")
        title = f"student ladder for {t.arch} ({t.num_classes} classes, input {shape})"
        if out is not None:
            out = Path(out)
            atomic_write_json(out / "selection.json", sel.to_json())
            save_pareto_plot(sel, out / "selection.png", title)
            console.print(f"wrote {out / 'selection.json'} and {out / 'selection.png'}")
    return sel, title


def run_export_candidates(f: dict[str, Any], names: tuple[str, ...], console) -> Outcome:
    t = load_teacher(f["teacher"], trust=f["trust_checkpoint"])
    rows = ladder_rows(t.num_classes, t.input_spec, t.model, names, f["precision"], f["provider"])
    with console.status(f"exporting {len(rows)} candidate model(s) to ONNX"):
        manifest = export_ladder(f["export_candidates"], rows=rows, num_classes=t.num_classes, spec=t.input_spec,
                                 batch=f["batch"], convert=converter(), workers=f["workers"] or 0)
    result = {"directory": str(f["export_candidates"]), "models": len(manifest["models"]),
              "input_shape": manifest["input_shape"], "batch": manifest["batch"],
              "next": f"copy the directory to the target and run: kdcompress profile {f['export_candidates']}"}
    return Outcome(result, lambda: Console().print(f"wrote {result['models']} ONNX file(s) and manifest.json to "
                                                 f"{result['directory']}; {result['next']}"))


def run_select_command(f: dict[str, Any], console) -> Outcome:
    names = tuple(n.strip() for n in (f["candidates"] or "").split(",") if n.strip())
    if f.get("export_candidates") is not None:
        return run_export_candidates(f, names, console)
    sel, title = run_select(teacher=f["teacher"], budget=Budget(f["budget_ms"], f["stat"], f["batch"]),
                            runtime=RuntimeConfig(provider=f["provider"], threads=f["threads"]), candidates=names,
                            use_cache=not f["no_cache"], out=f["out"], trust_checkpoint=f["trust_checkpoint"],
                            console=console, precision=f["precision"], latency_table=f["latency_table"],
                            tune=f["tune"], prune=not f["no_prune"], force=f["force"])
    result = sel.to_json()
    return Outcome(result, lambda: render.selection_table(result, title))
