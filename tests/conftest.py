"""Shared fixtures: an isolated latency cache, a tiny synthetic dataset spec and a tiny trained teacher."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tests run on 2 cores beside each other: keep torch to one thread so timings and runs stay predictable.
torch.set_num_threads(1)

TINY_DATA = "synthetic:classes=3,size=8,n=90"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("KDCOMPRESS_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    """A resnet8 teacher trained for 2 epochs on TINY_DATA, saved in kdcompress's checkpoint format."""
    from rich.console import Console

    from kdcompress.losses import load_checked_preset
    from kdcompress.pipeline import train_teacher

    out = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    old = os.environ.get("KDCOMPRESS_CACHE")
    preset = load_checked_preset("ce", ["train.epochs=2", "train.batch_size=16", "train.schedule=cosine"])
    train_teacher(data=TINY_DATA, arch="resnet8", preset=preset, out=out, device="cpu",
                  console=Console(stderr=True, quiet=True))
    assert old == os.environ.get("KDCOMPRESS_CACHE")
    return out


def assert_valid_report(path: Path) -> dict:
    """Validate a report.json against the schema shipped in the package (jsonschema, a dev dependency)."""
    import json

    import jsonschema

    from kdcompress.report.markdown import load_schema

    report = json.loads(Path(path).read_text())
    jsonschema.validate(report, load_schema(), cls=jsonschema.Draft202012Validator)
    return report


@pytest.fixture(autouse=True)
def _reports_match_schema(request):
    """Every report.json a test leaves in its tmp_path must validate against report.schema.json."""
    yield
    tmp = request.node.funcargs.get("tmp_path") if hasattr(request.node, "funcargs") else None
    if tmp is not None:
        for path in Path(tmp).rglob("report.json"):
            assert_valid_report(path)
