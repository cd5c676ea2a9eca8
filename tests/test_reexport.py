"""`kdcompress export --run` after a finished distill: it holds the run's lock, never changes a file that
report.json vouches for, carries student.onnx's metadata into the variants it adds, and lists them in
report.json with their sha256. Plus the output-path messages every writer shares (/proc, a directory)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from kdcompress.cli import app
from kdcompress.core.errors import InputError, UsageError

from .conftest import TINY_DATA
from .helpers import tree_hash

runner = CliRunner()
# what distill writes into student.onnx beyond the checkpoint's own facts, and what every variant must carry
RUN_KEYS = ("ort_settings", "precision", "classes", "mean", "std", "input_shape", "preset", "teacher_sha256",
            "val_accuracy", "arch")


@pytest.fixture(scope="module")
def finished_run(tiny_teacher, tmp_path_factory) -> Path:
    """One tiny finished distill (fp32 only), copied by each test."""
    mp = pytest.MonkeyPatch()
    mp.setenv("KDCOMPRESS_CACHE", str(tmp_path_factory.mktemp("cache")))
    out = tmp_path_factory.mktemp("distilled") / "run"
    r = runner.invoke(app, ["distill", "--teacher", str(tiny_teacher), "--data", TINY_DATA, "--student", "tinycnn_w8",
                            "--epochs", "1", "--set", "train.batch_size=16", "--device", "cpu", "--out", str(out)])
    mp.undo()
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture
def run(finished_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(finished_run, dst, symlinks=True)
    return dst




def metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def vouched(run: Path) -> dict[str, str]:
    """file name -> sha256 for every ONNX file report.json names (student, teacher, variants, artifacts)."""
    report = json.loads((run / "report.json").read_text())
    found: dict[str, str] = {}

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("onnx"), str):
                found[Path(node["onnx"]).name] = node.get("onnx_sha256") or node["sha256"]
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(report)
    return found


def assert_report_true(run: Path) -> None:
    """The invariant: every file report.json names exists with the sha256 report.json records."""
    for name, sha in vouched(run).items():
        assert hashlib.sha256((run / name).read_bytes()).hexdigest() == sha, name


def export(*args) -> object:
    return runner.invoke(app, ["export", *map(str, args)])


def test_reexport_keeps_the_validated_file_and_adds_variants_the_report_lists(run):
    before = tree_hash(run, dirs=False)
    validated = metadata(run / "student.onnx")
    assert {"ort_settings", "precision", "test_accuracy"} <= set(validated)

    r = export("--run", run, "--json")
    assert r.exit_code == 0, r.output
    after = tree_hash(run, dirs=False)
    assert_report_true(run)
    assert metadata(run / "student.onnx") == validated
    assert {k: v for k, v in after.items() if k != "export.json"} == before  # nothing the run had changed
    assert json.loads(r.stdout)["artifacts"][0]["kept"] is True

    r = export("--run", run, "--int8", "--calib", "8", "--json")
    assert r.exit_code == 0, r.output
    assert_report_true(run)
    assert tree_hash(run, dirs=False)["student.onnx"] == before["student.onnx"]
    assert metadata(run / "student.onnx") == validated
    int8 = metadata(run / "student.int8.onnx")
    assert {k: int8[k] for k in RUN_KEYS} == {k: validated[k] for k in RUN_KEYS}
    assert int8["variant"] == "int8" and float(int8["test_accuracy"]) >= 0
    listed = {Path(a["onnx"]).name: a for a in json.loads((run / "report.json").read_text())["artifacts"]}
    assert listed["student.int8.onnx"]["source"] == "export"
    assert listed["student.int8.onnx"]["sha256"] == hashlib.sha256((run / "student.int8.onnx").read_bytes()).hexdigest()
    assert "student.int8.onnx" in (run / "report.md").read_text()

    # the same export again: the int8 file is now vouched for too, and kept byte for byte
    again = tree_hash(run, dirs=False)
    r = export("--run", run, "--int8", "--calib", "8")
    assert r.exit_code == 0, r.output
    assert {k: v for k, v in tree_hash(run, dirs=False).items() if k != "export.json"} == {
        k: v for k, v in again.items() if k != "export.json"}
    assert_report_true(run)


def test_reexport_to_a_different_graph_is_refused_before_any_write(run):
    before = tree_hash(run, dirs=False)
    r = export("--run", run, "--opset", "18")
    assert r.exit_code == UsageError.exit_code, r.output
    line = r.stderr.strip()
    assert line.startswith("kdcompress: error:") and "\n" not in line and "--out" in line, line
    assert tree_hash(run, dirs=False) == before


def test_reexport_waits_for_the_lock_a_running_distill_holds(run):
    code = ("import sys, time; from kdcompress.core.runio import RunDir\n"
            "with RunDir(__import__('pathlib').Path(sys.argv[1])).lock():\n"
            "    print('held', flush=True); time.sleep(300)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        before = tree_hash(run, dirs=False)
        r = export("--run", run, "--int8", "--calib", "8")
    finally:
        holder.kill()
        holder.wait()
    assert r.exit_code == UsageError.exit_code, r.output
    assert "in use" in r.stderr and r.stderr.count("kdcompress: error:") == 1
    assert tree_hash(run, dirs=False) == before


def test_export_of_a_run_without_student_onnx_takes_the_selections_settings(run):
    """A run stopped after training (no student.onnx, no report): the export writes student.onnx with the
    ONNX Runtime settings and precision selection.json chose, as distill would have."""
    chosen = json.loads((run / "selection.json").read_text())["chosen"]
    for name in ("student.onnx", "report.json", "report.md"):
        (run / name).unlink()
    r = export("--run", run)
    assert r.exit_code == 0, r.output
    meta = metadata(run / "student.onnx")
    assert json.loads(meta["ort_settings"]) == chosen["settings"] and meta["precision"] == chosen["precision"]
    assert not (run / "report.json").exists()


# ------------------------------------------------------------------------------ output paths


def one_error(r, code: int) -> str:
    assert r.exit_code == code, (r.exit_code, r.output)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("kdcompress: error:") and "Traceback" not in r.output, r.stderr
    return lines[0]


@pytest.mark.parametrize("out", ["/proc/kdc.onnx", "/proc/self/kdc.onnx", "/sys/kdc.onnx", "/dev/kdc.onnx"])
def test_export_out_on_a_special_filesystem_says_so(finished_run, tmp_path, out):
    before = tree_hash(finished_run, dirs=False)
    line = one_error(export("--checkpoint", finished_run / "student.pt", "--out", out), InputError.exit_code)
    assert "special filesystem" in line and "not found" not in line, line
    assert not Path(out).exists() and tree_hash(finished_run, dirs=False) == before


def test_export_run_out_in_proc_is_refused_before_the_lock_and_work(run):
    before = tree_hash(run, dirs=False)
    line = one_error(export("--run", run, "--out", "/proc/self/student.onnx"), InputError.exit_code)
    assert "/proc" in line and "special filesystem" in line, line
    assert tree_hash(run, dirs=False) == before


def test_validate_out_in_proc_says_so(finished_run):
    r = runner.invoke(app, ["validate", "--onnx", str(finished_run / "student.onnx"), "--data", TINY_DATA,
                            "--out", "/proc/kdc"])
    line = one_error(r, InputError.exit_code)
    assert "/proc" in line and "special filesystem" in line and "not found" not in line, line


def test_validate_a_directory_as_onnx_says_it_is_a_directory(finished_run):
    r = runner.invoke(app, ["validate", "--onnx", str(finished_run), "--data", TINY_DATA])
    line = one_error(r, InputError.exit_code)
    assert "is a directory, expected an .onnx file" in line, line


def test_atomic_writes_into_proc_name_the_cause():
    from kdcompress.core.runio import atomic_write_bytes

    with pytest.raises(InputError, match="special filesystem") as e:
        atomic_write_bytes(Path("/proc/self/kdc-test"), b"x")
    assert "not found" not in str(e.value)


def test_a_missing_folder_while_writing_is_not_called_a_missing_file():
    import errno

    from kdcompress.core.fsguard import os_error

    assert "file not found" in str(os_error(OSError(errno.ENOENT, "No such file"), "/x/y", "reading"))
    msg = str(os_error(OSError(errno.ENOENT, "No such file"), "/x/y", "writing"))
    assert "file not found" not in msg and "/x/y" in msg and "directory" in msg
