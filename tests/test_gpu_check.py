"""benchmarks/gpu_check.sh --dry-run: every step of the GPU check runs on the CPU with tiny sizes, the
summary table names each step, and the exit status says whether all passed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("doctor", "teacher", "distill_eager", "distill_compile", "teacher_cache", "throughput", "kd_vs_baseline",
         "ickd_over_kd", "select", "validate_cpu", "fp16_parity")


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_DIR": str(tmp_path / "work")}
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_the_dry_run_passes_every_step_and_prints_one_summary_table(tmp_path):
    r = _run(tmp_path, "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
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
