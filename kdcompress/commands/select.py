"""`kdcompress select`: measure the student ladder for a teacher's input shape and choose within a budget;
or write the ladder as ONNX files for `kdcompress profile` on the target (--export-candidates); or choose
from the latency table that profile wrote (--latency-table)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from rich.console import Console

from ..core.config import Budget, RuntimeConfig, TeacherOptions
from ..core.errors import UsageError
from ..runtime.latencytable import read_table
from ..core.runio import RunDir, atomic_write_json
from ..select import Selection, save_pareto_plot, select
from ..select.ladder import export_ladder
from ..select.search import ladder_rows
from ..select.warm import LazyTeacher, known_summary, remember, summary_key, summary_of
from . import Outcome, render
from .flags import teacher_options


def converter():
    """The fp16/INT8 maker select measures with (export's own converters; select may not import export),
    imported when first used: export imports torch, which a warm selection need not (select.warm)."""
    def convert(data: bytes, spec, precision: str) -> bytes:
        from ..export.variants import timing_variant

        return timing_variant(data, spec, precision)
    return convert


def latency_table_arg(path: Path | None) -> tuple[Path, dict[str, Any]] | None:
    return None if path is None else (Path(path), read_table(Path(path)))


def teacher_for_select(path: Path, trust: bool, use_cache: bool,
                       options: TeacherOptions | None = None) -> tuple[int, Any, str, Any]:
    """(classes, input spec, architecture, model) of the teacher at `path`, read with the teacher flags
    (`options`). When this file was loaded before with the same options (select.warm: its sha256 and the
    load options), the model is a LazyTeacher and torch is not imported unless something has to be measured;
    otherwise the teacher is loaded and its summary kept. The model is always a LazyTeacher when the summary
    could be kept, so select() takes the teacher's capacity from the Teacher (FLOPs None when not countable,
    an ONNX teacher's counted on its graph) rather than counting the module (an ORT-run module counts 0)."""
    options = options or TeacherOptions()

    def load():
        from ..teacher import load_teacher

        return load_teacher(path, trust=trust, options=options)
    key = summary_key(path, {"trust": trust, "options": options.to_json()}) if use_cache else None
    if (known := known_summary(key)) is not None:
        return known.num_classes, known.input_spec, known.arch, LazyTeacher(known, lambda: load().model, path)
    t = load()
    kept = summary_of(t)
    if key is not None:
        with contextlib.suppress(Exception):  # a summary is an optimisation: keeping it may fail harmlessly
            remember(key, kept, t.path)
    return t.num_classes, t.input_spec, t.arch, LazyTeacher(kept, lambda: t.model, path)  # counted once, at load


def run_select(*, teacher: Path, budget: Budget, runtime: RuntimeConfig, candidates: tuple[str, ...] = (),
               use_cache: bool = True, out: Path | None = None, trust_checkpoint: bool = False,
               console: Console | None = None, precision: str = "fp32", latency_table: Path | None = None,
               tune: bool = False, prune: bool = True, force: bool = False,
               teacher_options: TeacherOptions | None = None) -> tuple[Selection, str]:
    """Measure and choose for `teacher`'s input shape; with `out`, write selection.json and selection.png.
    Returns the selection and a one-line description of the setting (for titles). `out` is claimed
    (RunDir.claim) before any work: a bad or foreign --out is refused at once, it is locked while the
    ladder is measured, and a refused selection leaves no directory it created."""
    console = console or Console(stderr=True)
    with RunDir(Path(out)).claim(force=force) if out is not None else contextlib.nullcontext():
        table = latency_table_arg(latency_table)
        num_classes, spec, arch, model = teacher_for_select(Path(teacher), trust_checkpoint, use_cache, teacher_options)
        shape = "x".join(str(v) for v in spec.shape)
        with console.status("measuring student candidates in ONNX Runtime") as status:
            sel = select(num_classes=num_classes, spec=spec, budget=budget, runtime=runtime,
                         teacher_model=model, teacher_name=arch, names=candidates, use_cache=use_cache,
                         on_measure=lambda n: status.update(f"measuring {n} in ONNX Runtime ({runtime.provider})"),
                         precision=precision, convert=converter(), latency_table=table, tune=tune, prune=prune)
        for w in sel.notes:
            console.print(f"[yellow]warning:[/] {w}")
        title = f"student ladder for {arch} ({num_classes} classes, input {shape})"
        if out is not None:
            out = Path(out)
            atomic_write_json(out / "selection.json", sel.to_json())
            save_pareto_plot(sel, out / "selection.png", title)
            console.print(f"wrote {out / 'selection.json'} and {out / 'selection.png'}")
    return sel, title


def run_export_candidates(f: dict[str, Any], names: tuple[str, ...], console) -> Outcome:
    from ..teacher import load_teacher

    t = load_teacher(f["teacher"], trust=f["trust_checkpoint"], options=teacher_options(f))
    rows = ladder_rows(t.num_classes, t.input_spec, t.flops, names, f["precision"], f["provider"])
    with console.status(f"exporting {len(rows)} candidate model(s) to ONNX"):
        manifest = export_ladder(f["export_candidates"], rows=rows, num_classes=t.num_classes, spec=t.input_spec,
                                 batch=f["batch"], convert=converter(), workers=f["workers"] or 0)
    result = {"directory": str(f["export_candidates"]), "models": len(manifest["models"]),
              "input_shape": manifest["input_shape"], "batch": manifest["batch"],
              "next": f"copy the directory to the target and run: kdcompress profile {f['export_candidates']}"}
    return Outcome(result, lambda: Console().print(f"wrote {result['models']} ONNX file(s) and manifest.json to "
                                                 f"{result['directory']}; {result['next']}"))


def candidate_names(text: str | None) -> tuple[str, ...]:
    """--candidates a,b -> ("a", "b"); None -> () (the whole plausible zoo). Given but naming nothing ('', ',')
    is refused: it would silently measure the whole zoo."""
    if text is None:
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise UsageError("--candidates is empty; give names like a,b or omit it")
    return names


def run_select_command(f: dict[str, Any], console) -> Outcome:
    names = candidate_names(f["candidates"])
    if f.get("export_candidates") is not None:
        return run_export_candidates(f, names, console)
    sel, title = run_select(teacher=f["teacher"], budget=Budget(f["budget_ms"], f["stat"], f["batch"]),
                            runtime=RuntimeConfig(provider=f["provider"], threads=f["threads"]), candidates=names,
                            use_cache=not f["no_cache"], out=f["out"], trust_checkpoint=f["trust_checkpoint"],
                            teacher_options=teacher_options(f),
                            console=console, precision=f["precision"], latency_table=f["latency_table"],
                            tune=f["tune"], prune=not f["no_prune"], force=f["force"])
    result = sel.to_json()
    return Outcome(result, lambda: render.selection_table(result, title))
