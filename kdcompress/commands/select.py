"""`kdcompress select`: measure the student ladder for a teacher's input shape and choose within a budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from ..core.config import Budget, RuntimeConfig
from ..core.errors import InputError
from ..core.runio import atomic_write_json
from ..select import Selection, save_pareto_plot, select
from ..teacher import load_teacher
from . import Outcome, render


def run_select(*, teacher: Path, budget: Budget, runtime: RuntimeConfig, candidates: tuple[str, ...] = (),
               use_cache: bool = True, out: Path | None = None, trust_checkpoint: bool = False,
               console: Console | None = None) -> tuple[Selection, str]:
    """Measure and choose for `teacher`'s input shape; with `out`, write selection.json and selection.png.
    Returns the selection and a one-line description of the setting (for titles)."""
    console = console or Console(stderr=True)
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    t = load_teacher(teacher, trust=trust_checkpoint, flags=False)  # select has no teacher flags
    shape = "x".join(str(v) for v in t.input_spec.shape)
    with console.status("measuring student candidates in ONNX Runtime") as status:
        sel = select(num_classes=t.num_classes, spec=t.input_spec, budget=budget, runtime=runtime,
                     teacher_model=t.model, teacher_name=t.arch, names=candidates, use_cache=use_cache,
                     on_measure=lambda n: status.update(f"measuring {n} in ONNX Runtime ({runtime.provider})"))
    for w in sel.notes:
        console.print(f"[yellow]warning:[/] {w}")
    title = f"student ladder for {t.arch} ({t.num_classes} classes, input {shape})"
    if out is not None:
        out = Path(out)
        atomic_write_json(out / "selection.json", sel.to_json())
        save_pareto_plot(sel, out / "selection.png", title)
        console.print(f"wrote {out / 'selection.json'} and {out / 'selection.png'}")
    return sel, title


def run_select_command(f: dict[str, Any], console) -> Outcome:
    names = tuple(n.strip() for n in (f["candidates"] or "").split(",") if n.strip())
    sel, title = run_select(teacher=f["teacher"], budget=Budget(f["budget_ms"], f["stat"], f["batch"]),
                            runtime=RuntimeConfig(provider=f["provider"], threads=f["threads"]), candidates=names,
                            use_cache=not f["no_cache"], out=f["out"], trust_checkpoint=f["trust_checkpoint"],
                            console=console)
    result = sel.to_json()
    return Outcome(result, lambda: render.selection_table(result, title))
