"""`kdcompress export`: ONNX files (and variants) of a run's or a checkpoint's student, each checked, through
the one export-and-validate (deliver.py). With --run the run's lock is held throughout and the files its
report.json vouches for are never changed (reexport.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.errors import InputError, UsageError
from ..core.fsguard import check_output_file
from ..core.progress import eta_bar
from ..core.runio import RunDir, atomic_write_json, read_json, safe_torch_load
from ..core.spec import InputSpec
from ..data import load_data
from ..export import ExportOptions
from ..runtime import build_metadata
from .deliver import Delivered, Delivery, deliver
from .prepare import check_fit
from .reexport import RunFiles, check_run_dir, record_in_report, run_files


@dataclass(frozen=True)
class ExportPlan:
    """What one export reads and where it writes: the checkpoint, the fp32 path, the data spec, the
    provenance written into the metadata, and (for --run) the run's files a re-export must respect."""

    checkpoint: Path
    out: Path
    data: str | None
    preset: str | None
    teacher_sha: str | None
    run: RunDir | None = None
    files: RunFiles | None = None


EXPORT_JOB_FORMAT = "kdcompress.export-job/1"


@dataclass(frozen=True)
class ExportJob:
    """`kdcompress export`: whose student (a run directory or a checkpoint, exactly one), the fp32 path
    (None: beside it), the data for calibration and the test-split checks, the teacher (for the checksum in
    the metadata) and the export options."""

    opts: ExportOptions
    run: Path | None = None
    checkpoint: Path | None = None
    out: Path | None = None
    data: str | None = None
    teacher: Path | None = None

    def __post_init__(self) -> None:
        if (self.run is None) == (self.checkpoint is None):
            raise UsageError("give either --run runs/NAME or --checkpoint student.pt")

    def to_json(self) -> dict[str, Any]:
        def text(p: Path | None) -> str | None:
            return None if p is None else str(p)

        return {"format": EXPORT_JOB_FORMAT, "run": text(self.run), "checkpoint": text(self.checkpoint),
                "out": text(self.out), "data": self.data, "teacher": text(self.teacher), "export": asdict(self.opts)}


def export_job(job: ExportJob, console) -> dict[str, Any]:
    """Write the ONNX files of a run's (or a checkpoint's) student, check each (onnx.checker full, batch 1
    and 7 in ORT vs PyTorch), and, with data, measure test accuracy and parity on the whole test split,
    stamping the accuracy into each new file. The caller raises GateError when a variant strays from
    PyTorch beyond its tolerance (after export.json, which records the job, is written)."""
    if job.run is None:
        return _export(_checkpoint_plan(Path(job.checkpoint), job.out, job.data, job.teacher), job, console)
    rd = RunDir(Path(job.run))
    check_run_dir(rd)
    # a distill still running here (or another export) holds the lock: refused before any work, nothing changed
    with rd.lock(fix="wait for it to finish (a distill still training?), then rerun the export"):
        return _export(_run_plan(rd, job.out, job.data, job.teacher), job, console)


def _run_provenance(rd: RunDir) -> tuple[str | None, str | None, str | None]:
    """(data spec, preset name, teacher sha256) of a run directory, from its config and last checkpoint."""
    cfg = read_json(rd.config) if rd.config.exists() else {}
    data = cfg.get("data")
    preset = (cfg.get("preset") or {}).get("name")
    sha = None
    if rd.last_checkpoint.exists():
        sha = (safe_torch_load(rd.last_checkpoint).get("fingerprint") or {}).get("teacher")
    return data, preset, sha


def _teacher_sha(teacher: Path | None) -> str | None:
    from ..core.fsguard import file_sha256

    if teacher is None:
        return None
    if not Path(teacher).is_file():
        raise InputError(f"teacher file not found: {teacher}")
    return file_sha256(Path(teacher))


def _check_out(out: Path) -> None:
    if Path(out).is_dir():  # before any work
        raise InputError(f"--out {out} is a directory; give the fp32 file path, e.g. {Path(out) / 'student.onnx'}")
    check_output_file(Path(out))


def _checkpoint_plan(checkpoint: Path, out: Path | None, data: str | None, teacher: Path | None) -> ExportPlan:
    out = Path(out) if out is not None else checkpoint.with_suffix(".onnx")
    _check_out(out)
    return ExportPlan(checkpoint, out, data, None, _teacher_sha(teacher))


def _run_plan(rd: RunDir, out: Path | None, data: str | None, teacher: Path | None) -> ExportPlan:
    if not rd.student.exists():
        raise InputError(f"{rd.root} has no student.pt; train it first (kdcompress distill)")
    out = Path(out) if out is not None else rd.onnx
    _check_out(out)
    run_data, preset, teacher_sha = _run_provenance(rd)
    return ExportPlan(rd.student, out, data or run_data, preset, _teacher_sha(teacher) or teacher_sha, rd,
                      run_files(rd))


def _delivery(plan: ExportPlan, opts: ExportOptions, console) -> Delivery:
    """The checkpoint's student, its metadata and the data (its classes matched to the checkpoint's by name)."""
    from ..students import load_checkpoint

    model, obj = load_checkpoint(plan.checkpoint)
    spec = InputSpec.from_json(obj["input_spec"])
    classes = tuple(str(c) for c in obj["classes"])
    splits = load_data(plan.data) if plan.data else None
    cols = None  # the checkpoint's outputs -> the data's classes, by name
    if splits is not None:
        cols = check_fit(str(plan.checkpoint), classes, spec, splits,
                         lambda m: console.print(f"[yellow]warning:[/] {m}"))
    meta = build_metadata(arch=str(obj["arch"]), classes=classes, spec=spec,
                          preset=plan.preset or (obj.get("metrics") or {}).get("preset"),
                          teacher_sha256=plan.teacher_sha, val_accuracy=(obj.get("metrics") or {}).get("val_accuracy"))
    if plan.files is not None:  # what student.onnx says beyond that (ort_settings, precision) goes into every file
        meta = {**plan.files.carried, **meta}
    return Delivery(model, spec, plan.out, opts, meta, splits, None if cols is None else tuple(cols), plan.files)


def _export(plan: ExportPlan, job: ExportJob, console) -> dict[str, Any]:
    opts = job.opts
    d = _delivery(plan, opts, console)
    with eta_bar(console, "export") as bar:
        done = deliver(d, report=bar)
    rows = export_rows(done)
    result = {"kind": "export", "kdcompress_version": __version__, "checkpoint": str(plan.checkpoint),
              "data": plan.data, "opset": opts.opset, "simplified": opts.simplify, "artifacts": rows,
              "job": job.to_json()}
    if plan.run is not None:
        atomic_write_json(plan.run.root / "export.json", result)
        result["report_updated"] = record_in_report(plan.run, plan.files, [r for r in rows if not r["kept"]])
    return result


def export_rows(done: Delivered) -> list[dict[str, Any]]:
    """export's row for each file: the file, whether it was kept, and with data its test accuracy and parity."""
    rows = []
    for a, s in zip(done.artifacts, done.scores, strict=True):
        row = a.to_json() | {"kept": a.path in done.kept}
        rows.append(row if s is None else row | s.accuracy.to_json() | {"parity": s.parity.to_json()})
    return rows
