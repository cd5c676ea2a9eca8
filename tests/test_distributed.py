"""torchrun: two CPU processes (gloo) distil like one process does, with the same outputs.

One launch (torchrun costs ~5 s before the first step, ENVIRONMENT.md §7). The nd preset makes it cover
what is distributed beyond DDP itself: the prepared class centres built by rank 0 and broadcast, and the
projector's gradients averaged outside DDP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kdcompress.cli import app
from kdcompress.core.runio import safe_torch_load

from .conftest import TINY_DATA


def _args(teacher: Path, out: Path) -> list[str]:
    return ["distill", "--teacher", str(teacher), "--data", TINY_DATA, "--student", "tinycnn_w8", "--preset", "nd",
            "--epochs", "2", "--set", "train.batch_size=8", "--device", "cpu", "--out", str(out), "--json"]


def _shape(obj: Any) -> Any:
    """The structure of a JSON value: dict keys (recursively), list lengths, value types."""
    if isinstance(obj, dict):
        return {k: _shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_shape(v) for v in obj]
    return "number" if isinstance(obj, (int, float)) and not isinstance(obj, bool) else type(obj).__name__


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_torchrun_two_processes_match_the_single_process_outputs(tiny_teacher, tmp_path):
    single = CliRunner().invoke(app, _args(tiny_teacher, tmp_path / "single"))
    assert single.exit_code == 0, single.output
    one = json.loads(single.stdout)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the latency cache the single run filled is shared
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "kdcompress",
         *_args(tiny_teacher, tmp_path / "ddp")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout)  # rank 0's one JSON object; rank 1 wrote nothing to stdout
    assert two == json.loads((tmp_path / "ddp" / "report.json").read_text())
    assert "Traceback" not in proc.stderr and "kdcompress: error" not in proc.stderr
    assert proc.stderr.count("epoch 1/2") == 1 and proc.stderr.count("nd: teacher class centres") == 1

    assert _files(tmp_path / "ddp") == _files(tmp_path / "single")
    assert "checkpoints/prepared.pt" in _files(tmp_path / "ddp")
    # the same report, key for key (values differ: two shards of half a batch each)
    for r in (one, two):
        r["selection"] = r["selection"]["chosen"]["name"]  # candidate tables are the same measurement
    assert _shape(two) == _shape(one)
    assert (one["training"]["world_size"], two["training"]["world_size"]) == (1, 2)
    assert two["epochs"] == 2 and [h["epoch"] for h in two["training"]["history"]] == [1, 2]
    assert all(h["loss"] > 0 and h["nd"] > 0 and 0 <= h["val_accuracy"] <= 1 for h in two["training"]["history"])
    ck = safe_torch_load(tmp_path / "ddp" / "checkpoints" / "last.pt")
    assert ck["world"] == 2 and len(ck["rng"]["aug"]) == 2 and not torch_equal(*ck["rng"]["aug"])
    assert any(k.startswith("losses.nd.projector") for k in ck["objective"])
    assert two["parity"]["top1_agreement"] == 1.0


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


DRIVER = """
from types import SimpleNamespace

import kdcompress.pipeline.choose as pl
from kdcompress.cli import main

real = pl.apply_precision_gate


def strict(selection, val, opts, console):  # any drop at all fails (even 0.0): the fallback path
    return real(selection, val, SimpleNamespace(max_precision_drop=-1.0), console)


pl.apply_precision_gate = strict
main()
"""


def test_torchrun_trains_the_fp32_fallback_on_every_rank(tiny_teacher, tmp_path):
    """An int8 choice that fails its precision gate under torchrun: rank 0 decides, every rank learns it and
    trains the fp32 fallback together (rank 0 alone would wait forever for its peers in DDP's all-reduce)."""
    from .helpers import latency_table

    p50s = latency_table(tmp_path / "latency.json", ("tinycnn_w8", "tinycnn_w16"), ("int8", "fp32"))  # int8 faster
    (tmp_path / "driver.py").write_text(DRIVER)
    out = tmp_path / "run"
    # tinycnn_w16 fits 0.025 ms in int8 (0.0247) only, so the fp32 fallback is another student: tinycnn_w8
    args = ["distill", "--teacher", str(tiny_teacher), "--data", TINY_DATA, "--budget-ms", "0.025", "--precision",
            "int8", "--latency-table", str(tmp_path / "latency.json"), "--preset", "kd", "--epochs", "1", "--set",
            "train.batch_size=8", "--device", "cpu", "--out", str(out), "--json"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(tmp_path / "driver.py"), *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(proc.stdout)
    assert rep == json.loads((out / "report.json").read_text())
    p = rep["precision"]
    assert p["fell_back"] and p["shipped"] == "fp32" and p["fallback_run"] == str(out / "fallback")
    assert rep["selection"]["chosen"]["name"] == "tinycnn_w16"  # the first choice stays on record
    assert rep["selection"]["chosen"]["precision"] == "int8" and rep["student"]["arch"] == "tinycnn_w8"
    assert rep["training"]["world_size"] == 2  # the fallback trained on both ranks
    assert (out / "fallback" / "student.onnx").is_file() and "Traceback" not in proc.stderr
    # the fallback's latency is the table's (the target's), not a measurement on this machine
    fb = json.loads((out / "fallback" / "report.json").read_text())["selection"]["chosen"]
    assert fb["name"] == "tinycnn_w8" and fb["latency_ms"]["p50"] == pytest.approx(p50s["tinycnn_w8:fp32"], abs=1e-5)
