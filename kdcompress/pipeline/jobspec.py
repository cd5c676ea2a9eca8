"""One typed job for `kdcompress distill`: the run configuration and every option beside it, frozen, written
whole into the run's config.json (`job`), so a run can be redone from its directory (`distill --config
RUN/config.json`). The flags that built it are recorded too: --config replays them through the same parsing,
so a redone job is validated exactly as the first one was."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console

from ..core.config import RunConfig
from ..export import ExportOptions
from ..select import SelectOptions
from ..validate import Gates

JOB_FORMAT = "kdcompress.distill-job/1"


@dataclass(frozen=True)
class DistillJob:
    run: RunConfig
    export: ExportOptions
    gates: Gates
    select: SelectOptions
    student_init: str | None = None
    force: bool = False
    allow_weak_teacher: bool = False
    flags: tuple[tuple[str, Any], ...] = ()  # the command's flags (JSON values), what --config replays
    notes: tuple[str, ...] = ()  # warnings about the request (e.g. a long recipe without --epochs)

    def to_json(self) -> dict[str, Any]:
        return {"format": JOB_FORMAT, "export": asdict(self.export), "gates": asdict(self.gates),
                "select": self.select.to_json(), "student_init": self.student_init,
                "allow_weak_teacher": self.allow_weak_teacher, "flags": dict(self.flags)}


def run_job(job: DistillJob, console: Console | None = None) -> dict[str, Any]:
    """distill() with every option of the job; config.json records the job whole."""
    from .job import distill

    return distill(job.run, console, export_opts=job.export, gates=job.gates, select_opts=job.select,
                   force=job.force, allow_weak_teacher=job.allow_weak_teacher, student_init=job.student_init,
                   record=job.to_json(), notes=job.notes)
