"""`kdcompress profile DIR` as one typed job: time the candidate ladder that `select --export-candidates DIR`
wrote, on the machine this runs on (the deployment target), and write its latency table for `--latency-table`.

Imports only onnxruntime, numpy and rich (through runtime.latencytable and core.progress): the target needs no
torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import UsageError
from ..core.progress import eta_bar
from ..core.system import cpu_limit
from ..runtime import profile_dir


@dataclass(frozen=True)
class ProfileJob:
    """The exported ladder's directory, the execution provider, ORT threads (without tuning), whether to sweep
    ORT settings, fresh processes per model, and where the table goes (default DIR/latency.json)."""

    directory: Path
    provider: str = "cpu"
    threads: int | None = None
    tune: bool = True
    processes: int = 5
    out: Path | None = None

    def __post_init__(self) -> None:
        if self.processes < 1:
            raise UsageError(f"--processes must be at least 1, got {self.processes}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {self.threads}")

    @property
    def table_path(self) -> Path:
        return Path(self.out) if self.out is not None else Path(self.directory) / "latency.json"

    def to_json(self) -> dict[str, Any]:
        return {"format": "kdcompress.profile-job/1", "directory": str(self.directory), "provider": self.provider,
                "threads": self.threads, "tune": self.tune, "processes": self.processes, "out": str(self.table_path)}


def unstable_warning(table: dict[str, Any]) -> str | None:
    """The warning for models whose processes measured far apart, or None."""
    if not table["unstable"]:
        return None
    key, spread = max(table["unstable"].items(), key=lambda kv: kv[1])
    others = f" ({len(table['unstable']) - 1} other model(s) too)" if len(table["unstable"]) > 1 else ""
    return (f"{key}'s {table['processes']} processes measured up to {spread:.2f}x apart ({table['stat']}){others}: "
            "latency on this machine depends on the process or on other load; the table keeps the slowest, so "
            "leave headroom or profile with more --processes")


def profile_job(job: ProfileJob, console) -> dict[str, Any]:
    """Time every model of the ladder on an ETA bar; write the table; the result names it and carries the job."""
    with eta_bar(console, "profile") as bar:
        table = profile_dir(Path(job.directory), provider=job.provider, threads=job.threads, tune=job.tune,
                            cpu_limit=cpu_limit(), out=job.table_path, processes=job.processes, progress=bar)
    if (w := unstable_warning(table)) is not None:
        console.print(f"[yellow]warning:[/] {w}")
    console.print(f"wrote {job.table_path}")
    return {"latency_table": str(job.table_path), **table, "job": job.to_json()}
