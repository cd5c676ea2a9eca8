"""benchmarks/gpu_check.sh --dry-run: every step of the GPU check runs on the CPU with tiny sizes, the
summary table names each step, and the exit status says whether all passed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("doctor", "teacher", "distill_eager", "distill_compile", "teacher_cache", "throughput", "kd_vs_baseline",
         "ickd_over_kd", "select", "validate_cpu", "fp16_parity")


def _bare_path(tmp_path: Path) -> str:
    """A PATH whose `python` and `python3` cannot import kdcompress (nor typer): this interpreter without
    its site-packages and PYTHONPATH (-S -I), as on a fresh machine whose python is not the project's."""
    shims = tmp_path / "bare-bin"
    shims.mkdir(exist_ok=True)
    for name in ("python", "python3"):
        (shims / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" -I -S "$@"\n')
        (shims / name).chmod(0o755)
    return f"{shims}:/usr/bin:/bin"


def _run(tmp_path: Path, *args: str, script: Path = ROOT / "benchmarks" / "gpu_check.sh",
         python: str | None = None) -> subprocess.CompletedProcess:
    """The script with a PATH whose python cannot run kdcompress; PYTHON set only when `python` is given."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env |= {"PATH": _bare_path(tmp_path), "GPU_CHECK_DIR": str(tmp_path / "work")}
    if python is not None:
        env["PYTHON"] = python
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=600)


def _checkout_with_venv(tmp_path: Path, venv: Path | None) -> Path:
    """A checkout's layout (benchmarks/, kdcompress/ and, when given, .venv as links) under tmp_path."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("benchmarks", "kdcompress"):
        (repo / name).symlink_to(ROOT / name, target_is_directory=True)
    if venv is not None:
        (repo / ".venv").symlink_to(venv, target_is_directory=True)
    return repo


def test_the_dry_run_passes_every_step_and_prints_one_summary_table(tmp_path):
    """Run the way a device session runs it: `python` on PATH is not the project's. The script finds the
    checkout's .venv itself (`make test` creates it); a checkout without one names this interpreter in PYTHON."""
    venv = ROOT / ".venv" / "bin" / "python"
    r = _run(tmp_path, "--dry-run", python=None if venv.exists() else sys.executable)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"using {venv if venv.exists() else sys.executable}" in r.stderr
    lines = r.stdout.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("kdcompress GPU check (dry run on the CPU"))
    rows = {ln.split("|")[1].strip(): ln.split("|")[2].strip() for ln in lines[head + 3:] if ln.startswith("| ")}
    assert list(rows) == list(STEPS)
    assert all(rows[s] == "PASS" for s in STEPS if s not in ("kd_vs_baseline", "ickd_over_kd"))
    assert rows["kd_vs_baseline"] == rows["ickd_over_kd"] == "info"  # goals are not judged on a CPU
    assert lines[-1] == "gpu_check: all steps passed"
    assert (tmp_path / "work" / "d_cache" / "teacher_cache.json").is_file()
    assert (tmp_path / "work" / "d_eager" / "student.fp16.onnx").is_file()


def test_a_failing_step_fails_the_check_and_bad_arguments_are_refused(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    check = gpu_check.Check(dry=True, work=tmp_path)

    def broken():
        raise gpu_check.Failed("exit 3: kdcompress: error: no such data")

    assert check.step("ok", lambda: "fine") and not check.step("broken", broken)
    assert not check.step("crash", lambda: 1 / 0)
    assert check.summary() == 1
    out = capsys.readouterr().out
    assert "| broken             | FAIL" in out and "ZeroDivisionError" in out and "2 step(s) failed" in out
    assert (tmp_path / "crash.traceback").is_file()
    r = _run(tmp_path, "--bogus")
    assert r.returncode == 2 and "unknown argument" in r.stderr


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="needs the tests to run in a virtual environment")
def test_the_script_finds_the_checkouts_venv_when_python_on_path_cannot_run_kdcompress(tmp_path):
    repo = _checkout_with_venv(tmp_path, Path(sys.prefix))
    r = _run(tmp_path, "--which-python", script=repo / "benchmarks" / "gpu_check.sh")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(repo / ".venv" / "bin" / "python")


def test_without_a_usable_python_it_says_how_to_make_one_in_one_line(tmp_path):
    repo = _checkout_with_venv(tmp_path, None)
    r = _run(tmp_path, "--dry-run", script=repo / "benchmarks" / "gpu_check.sh")
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "run `make install` first (creates .venv)" in lines[0], r.stderr
    assert not (tmp_path / "work").exists()  # refused before any work


def test_a_python_named_in_PYTHON_that_cannot_run_kdcompress_is_refused_not_replaced(tmp_path):
    repo = _checkout_with_venv(tmp_path, Path(sys.prefix))
    r = _run(tmp_path, "--which-python", script=repo / "benchmarks" / "gpu_check.sh",
             python=str(tmp_path / "bare-bin" / "python3"))
    assert r.returncode == 1 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and "PYTHON=" in r.stderr and "make install" in r.stderr
