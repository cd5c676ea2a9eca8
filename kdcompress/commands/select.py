"""`kdcompress select`: measure the student ladder for a teacher's input shape and choose within a budget;
or write the ladder as ONNX files for `kdcompress profile` on the target (--export-candidates); or choose
from the latency table that profile wrote (--latency-table). The jobs are pipeline.selection's."""

from __future__ import annotations

from typing import Any

from ..core.config import Budget, RuntimeConfig
from ..core.errors import UsageError
from ..pipeline import SelectJob, export_candidates, select_job
from ..select import SelectOptions
from . import Outcome, render
from .flags import teacher_options


def candidate_names(text: str | None) -> tuple[str, ...]:
    """--candidates a,b -> ("a", "b"); None -> () (the whole plausible zoo). Given but naming nothing ('', ',')
    is refused: it would silently measure the whole zoo."""
    if text is None:
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise UsageError("--candidates is empty; give names like a,b or omit it")
    return names


def run_export_candidates(f: dict[str, Any], names: tuple[str, ...], console) -> Outcome:
    result = export_candidates(teacher=f["teacher"], directory=f["export_candidates"], names=names,
                               precision=f["precision"], provider=f["provider"], batch=f["batch"],
                               workers=f["workers"] or 0, trust=f["trust_checkpoint"],
                               teacher_options=teacher_options(f), console=console)
    return Outcome(result, lambda: render.candidates_written(result))


def run_select_command(f: dict[str, Any], console) -> Outcome:
    names = candidate_names(f["candidates"])
    if f.get("export_candidates") is not None:
        return run_export_candidates(f, names, console)
    job = SelectJob(teacher=f["teacher"], budget=Budget(f["budget_ms"], f["stat"], f["batch"]),
                    runtime=RuntimeConfig(provider=f["provider"], threads=f["threads"]),
                    opts=SelectOptions(precision=f["precision"], latency_table=f["latency_table"], tune=f["tune"]),
                    candidates=names, use_cache=not f["no_cache"], prune=not f["no_prune"], out=f["out"],
                    force=f["force"], trust=f["trust_checkpoint"], teacher_options=teacher_options(f))
    sel, title = select_job(job, console)
    result = {**sel.to_json(), "job": job.to_json()}
    return Outcome(result, lambda: render.selection_table(result, title))
