"""The one way select() is called (`measure`), by distill and by `kdcompress select` alike; and the select
command's jobs: measure the ladder for a teacher file (and write selection.json), or write the ladder as
ONNX files for `kdcompress profile` on the target (--export-candidates).

Imports no torch at import time: a warm `kdcompress select` takes everything from its caches (select.warm)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from ..core.config import Budget, RuntimeConfig, TeacherOptions
from ..core.progress import SILENT, Reporter, eta_bar
from ..core.runio import RunDir, atomic_write_json
from ..core.spec import Capacity, InputSpec
from ..select import (LazyTeacher, Selection, SelectOptions, export_ladder, known_summary, ladder_rows, remember,
                      save_pareto_plot, select, selection_kwargs, summary_key, summary_of)


def converter():
    """The fp16/INT8 maker select measures with (export's own converters; select may not import export),
    imported when first used: export imports torch, which a warm selection need not (select.warm)."""
    def convert(data: bytes, spec, precision: str) -> bytes:
        from ..export import timing_variant

        return timing_variant(data, spec, precision)
    return convert


@dataclass(frozen=True)
class Ladder:
    """What is measured: the class count and input spec, the teacher's model (a LazyTeacher, a module, or
    None: not measured) and name, and the candidates (empty: every plausible student)."""

    num_classes: int
    spec: InputSpec
    teacher_model: Any = None
    teacher_name: str = "teacher"
    names: tuple[str, ...] = ()


def setting_for(opts: SelectOptions) -> dict[str, Any]:
    """select()'s precision, latency table (read here: a bad file is refused now), converter and ORT tuning."""
    return selection_kwargs(opts, converter())


def measure(ladder: Ladder, budget: Budget, runtime: RuntimeConfig, setting: dict[str, Any], *,
            report: Reporter = SILENT, use_cache: bool = True, prune: bool = True) -> Selection:
    """The one call of the select stage; `setting` is setting_for(the selection options); `report` is the
    bar (core.progress) the candidates are counted on."""
    return select(num_classes=ladder.num_classes, spec=ladder.spec, budget=budget, runtime=runtime,
                  teacher_model=ladder.teacher_model, teacher_name=ladder.teacher_name, names=ladder.names,
                  use_cache=use_cache, report=report, prune=prune, **setting)


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


@dataclass(frozen=True)
class SelectJob:
    """`kdcompress select`: the teacher file (read with `teacher_options`, `trust`), the budget, ORT
    settings, candidates and options, whether the caches and pruning are used, and where to write."""

    teacher: Path
    budget: Budget
    runtime: RuntimeConfig
    opts: SelectOptions
    candidates: tuple[str, ...] = ()
    use_cache: bool = True
    prune: bool = True
    out: Path | None = None
    force: bool = False
    trust: bool = False
    teacher_options: TeacherOptions | None = None

    def to_json(self) -> dict[str, Any]:
        return {"format": "kdcompress.select-job/1", "teacher": str(self.teacher), "budget_ms": self.budget.ms,
                "stat": self.budget.stat, "batch": self.budget.batch, "provider": self.runtime.provider,
                "threads": self.runtime.threads, "select": self.opts.to_json(), "candidates": list(self.candidates),
                "use_cache": self.use_cache, "prune": self.prune, "out": None if self.out is None else str(self.out),
                "trust_checkpoint": self.trust,
                "teacher_options": None if self.teacher_options is None else self.teacher_options.to_json()}


def select_job(job: SelectJob, console: Console | None = None) -> tuple[Selection, str]:
    """Measure and choose for the teacher's input shape; with `out`, write selection.json and selection.png.
    Returns the selection and a one-line description of the setting (for titles). `out` is claimed
    (RunDir.claim) before any work: a bad or foreign --out is refused at once, it is locked while the
    ladder is measured, and a refused selection leaves no directory it created."""
    console = console or Console(stderr=True)
    with RunDir(Path(job.out)).claim(force=job.force) if job.out is not None else contextlib.nullcontext():
        setting = setting_for(job.opts)  # a bad --latency-table is refused before the teacher is read
        num_classes, spec, arch, model = teacher_for_select(Path(job.teacher), job.trust, job.use_cache,
                                                            job.teacher_options)
        shape = "x".join(str(v) for v in spec.shape)
        with eta_bar(console, "select") as bar:
            sel = measure(Ladder(num_classes, spec, model, arch, job.candidates), job.budget, job.runtime, setting,
                          report=bar, use_cache=job.use_cache, prune=job.prune)
        for w in sel.notes:
            console.print(f"[yellow]warning:[/] {w}")
        title = f"student ladder for {arch} ({num_classes} classes, input {shape})"
        if job.out is not None:
            out = Path(job.out)
            atomic_write_json(out / "selection.json", {**sel.to_json(), "job": job.to_json()})
            save_pareto_plot(sel, out / "selection.png", title)
            console.print(f"wrote {out / 'selection.json'} and {out / 'selection.png'}")
    return sel, title


def export_candidates(*, teacher: Path, directory: Path, names: tuple[str, ...], precision: str, provider: str,
                      batch: int, workers: int, trust: bool, teacher_options: TeacherOptions | None,
                      console: Console) -> dict[str, Any]:
    """`select --export-candidates DIR`: every candidate a selection would measure, as ONNX files and a
    manifest, for `kdcompress profile` on the target."""
    from ..teacher import load_teacher

    t = load_teacher(teacher, trust=trust, options=teacher_options)
    rows = ladder_rows(t.num_classes, t.input_spec, Capacity(t.params, t.flops), names, precision, provider)
    with console.status(f"exporting {len(rows)} candidate model(s) to ONNX"):
        manifest = export_ladder(directory, rows=rows, num_classes=t.num_classes, spec=t.input_spec,
                                 batch=batch, convert=converter(), workers=workers)
    return {"directory": str(directory), "models": len(manifest["models"]),
            "input_shape": manifest["input_shape"], "batch": manifest["batch"],
            "next": f"copy the directory to the target and run: kdcompress profile {directory}"}
