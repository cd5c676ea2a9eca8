"""`kdcompress export --run` (exportjob.py, through deliver.py): a re-export never changes a file that
report.json vouches for.

A finished run's report.json records the sha256 of every ONNX file it names (student.onnx, the teacher's
copy, the validated variants). A re-export therefore
- keeps such a file untouched when the new export has the same graph (only metadata could differ: the
  file on disk is the validated one, with its accuracy stamp),
- refuses, before writing anything, when it would put a different graph under a name the report vouches
  for (another --opset, --simplify, another calibration): it names --out as the way to write it elsewhere,
- writes new variants (student.int8.onnx, student.fp16.onnx) beside it, each carrying student.onnx's
  metadata (ort_settings, precision, classes, normalisation, preset, accuracy), and then lists them, with
  their sha256, under report.json's `artifacts` (one atomic write; report.md is re-rendered after it).
Every file the report names thus always has the checksum the report records.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import InputError, UsageError
from ..core.fsguard import file_sha256
from ..core.runio import RunDir, atomic_write_json, atomic_write_text, read_json
from ..export import OnnxArtifact, VariantBuild

# metadata that describes one file rather than the run's student: never carried from student.onnx
PER_FILE_KEYS = ("variant", "opset", "simplified", "test_accuracy", "kdcompress_version")


@dataclass(frozen=True)
class RunFiles:
    """What a re-export must respect in a run directory: the ONNX files report.json names (by path in
    this run, with the sha256 it records), the report itself, and the metadata every new file carries."""

    report: dict[str, Any] | None
    vouched: dict[Path, str]
    carried: dict[str, str]


def check_run_dir(rd: RunDir) -> None:
    """--run names an existing directory (checked before the lock is taken: nothing is created)."""
    if not rd.root.exists():
        raise InputError(f"run directory not found: {rd.root}")
    if not rd.root.is_dir():
        raise InputError(f"--run {rd.root} is not a directory; give the run directory (runs/NAME)")


def _named_files(node: Any, out: dict[str, str]) -> None:
    """Every {onnx: PATH, sha256 | onnx_sha256: HEX} pair anywhere in a report (student, teacher, variants,
    artifacts). The teacher's `sha256` is its checkpoint's; `onnx_sha256` is its ONNX copy's."""
    if isinstance(node, dict):
        sha = node.get("onnx_sha256") or node.get("sha256")
        if isinstance(node.get("onnx"), str) and isinstance(sha, str):
            out[node["onnx"]] = sha
        for v in node.values():
            _named_files(v, out)
    elif isinstance(node, list):
        for v in node:
            _named_files(v, out)


def vouched_files(report: dict[str, Any], rd: RunDir) -> dict[Path, str]:
    """The run's files report.json names, as paths in `rd` (kdcompress writes them at the run's top level,
    so a report written from another working directory still finds them by name)."""
    pairs: dict[str, str] = {}
    _named_files(report, pairs)
    recorded = Path(str(report.get("run_dir") or rd.root))
    return {rd.root / Path(p).name: sha for p, sha in pairs.items()
            if Path(p).parent in (recorded, Path(os.path.abspath(recorded)), rd.root)}


def carried_metadata(rd: RunDir) -> dict[str, str]:
    """student.onnx's metadata less the per-file keys; without a student.onnx, the ONNX Runtime settings
    and precision selection.json chose (what distill writes into it)."""
    from ..runtime import encode_value, read_metadata

    if rd.onnx.is_file():
        return {k: v for k, v in read_metadata(rd.onnx).items() if k not in PER_FILE_KEYS}
    if not rd.selection.is_file():
        return {}
    chosen = (read_json(rd.selection) or {}).get("chosen") or {}
    return {k: encode_value(chosen[src]) for k, src in (("ort_settings", "settings"), ("precision", "precision"))
            if chosen.get(src) is not None}


def run_files(rd: RunDir) -> RunFiles:
    report = read_json(rd.report_json) if rd.report_json.is_file() else None
    vouched = vouched_files(report, rd) if isinstance(report, dict) else {}
    return RunFiles(report if isinstance(report, dict) else None, vouched, carried_metadata(rd))


def graph_digest(data: bytes) -> str:
    """sha256 of an ONNX model without its metadata_props: two exports of the same graph agree here even
    when one carries an accuracy stamp the other lacks."""
    import onnx

    proto = onnx.load_from_string(data)
    del proto.metadata_props[:]
    return hashlib.sha256(proto.SerializeToString()).hexdigest()


def plan_writes(builds: list[VariantBuild], files: RunFiles) -> tuple[list[VariantBuild], list[VariantBuild]]:
    """(to write, to keep): a build whose path report.json vouches for is kept when its graph equals the
    file's; a different graph there is refused (UsageError) before anything is written."""
    write, keep = [], []
    for b in builds:
        key = next((p for p in files.vouched if _same_path(p, b.path)), None)
        if key is None:
            write.append(b)
            continue
        if not key.is_file() or file_sha256(key) != files.vouched[key]:
            raise InputError(f"{key} does not match the sha256 report.json records for it; it was changed "
                             "outside kdcompress: rerun distill (or give export --out FILE.onnx)")
        if graph_digest(key.read_bytes()) != graph_digest(b.data):
            raise UsageError(f"this export differs from {key}, which report.json vouches for (another --opset, "
                             "--simplify or --calib than the run's); the run is left as it is: give --out "
                             "FILE.onnx to write this export elsewhere")
        keep.append(b)
    return write, keep


def _same_path(a: Path, b: Path) -> bool:
    return os.path.abspath(a) == os.path.abspath(b)


def kept_artifact(b: VariantBuild) -> OnnxArtifact:
    """The file already on disk (validated, stamped), described as export describes what it writes."""
    from ..runtime import read_metadata

    data = b.path.read_bytes()
    return OnnxArtifact(b.variant, b.path, b.opset, hashlib.sha256(data).hexdigest(), len(data),
                        read_metadata(b.path), b.checks)


def record_in_report(rd: RunDir, files: RunFiles, rows: list[dict[str, Any]]) -> bool:
    """List the newly written files of this run (rows of export's result) under report.json's `artifacts`
    with their sha256, replacing an earlier export's row for the same file; report.md follows. False when
    the run has no report (nothing vouched for yet) or no new file lies in the run."""
    from ..report import render_markdown

    if files.report is None:
        return False
    recorded = Path(str(files.report.get("run_dir") or rd.root))
    mine = [r for r in rows if Path(r["onnx"]).parent.resolve() == rd.root.resolve()]
    if not mine:
        return False
    fresh = [{k: v for k, v in r.items() if k in ("variant", "opset", "sha256", "bytes", "checks")}
             | {"onnx": str(recorded / Path(r["onnx"]).name), "source": "export"}
             | ({"test_accuracy": r["accuracy"], "parity": r["parity"]} if "accuracy" in r else {}) for r in mine]
    names = {Path(r["onnx"]).name for r in fresh}
    old = [a for a in files.report.get("artifacts") or [] if Path(str(a.get("onnx"))).name not in names]
    report = {**files.report, "artifacts": old + fresh}
    atomic_write_json(rd.report_json, report)
    atomic_write_text(rd.report_md, render_markdown(report))
    return True
