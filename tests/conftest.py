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
    from kdcompress.config import apply_overrides, load_preset
    from kdcompress.pipeline import train_teacher
    from rich.console import Console

    out = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    old = os.environ.get("KDCOMPRESS_CACHE")
    preset = apply_overrides(load_preset("ce"), ["train.epochs=2", "train.batch_size=16", "train.schedule=cosine"])
    train_teacher(data=TINY_DATA, arch="resnet8", preset=preset, out=out, device="cpu",
                  console=Console(stderr=True, quiet=True))
    assert old == os.environ.get("KDCOMPRESS_CACHE")
    return out
