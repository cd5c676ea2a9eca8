"""Lint as part of `make test` (and so of CI): ruff's selected rules, the 120-column line limit (E501)
among them, hold over the package, the tests, the benchmarks and the examples."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINTED = ("kdcompress", "tests", "benchmarks", "docs/examples")


def _ruff() -> list[str]:
    """The ruff of this interpreter's environment (the dev extra installs it): its `ruff` script, or `-m ruff`."""
    script = Path(sys.executable).with_name("ruff")
    if script.is_file():
        return [str(script)]
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    pytest.skip("ruff is not installed in this environment (it comes with the dev extra: pip install -e '.[dev]')")


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    # --no-cache: a test run writes no .ruff_cache into the checkout
    return subprocess.run([*_ruff(), "check", "--no-cache", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_ruff_passes_on_the_tree():
    r = _check(*LINTED)
    assert r.returncode == 0, f"ruff check {' '.join(LINTED)} fails:\n{r.stdout}{r.stderr}"


def test_the_project_config_refuses_a_line_over_120_columns(tmp_path):
    ok, long = "x = " + repr("a" * 114), "x = " + repr("a" * 115)  # 120 and 121 characters
    assert (len(ok), len(long)) == (120, 121)
    (tmp_path / "fits.py").write_text(ok + "\n")
    (tmp_path / "too_long.py").write_text(long + "\n")
    config = str(ROOT / "pyproject.toml")
    assert _check("--config", config, str(tmp_path / "fits.py")).returncode == 0
    r = _check("--config", config, "--output-format", "concise", str(tmp_path / "too_long.py"))
    assert r.returncode == 1 and "E501" in r.stdout, r.stdout + r.stderr
