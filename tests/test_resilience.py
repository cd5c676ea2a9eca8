"""Never lose a run: SIGTERM mid-epoch resumes to the very weights of an uninterrupted run, SIGKILL and
SIGTERM of a real training process resume from the last checkpoint with nothing half-written left, a NaN
loss stops with exit 6 and keeps the last good checkpoint, the run directory is locked; --compile keeps
checkpoints and export plain; the single-process face of distributed.py."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kdcompress.cli import app
from kdcompress.core.errors import Interrupted, KdError, TrainingError, UsageError
from kdcompress.core.runio import RunDir, safe_torch_load
from kdcompress.losses.base import Objective
from kdcompress.train.distributed import Dist, env_world
from kdcompress.train.step import StepEngine, prefetch

from .conftest import TINY_DATA
from .helpers import sigterm_at_step, train_factories

runner = CliRunner()
BIG_DATA = "synthetic:classes=3,size=8,n=2000"  # ~90 steps of 16 per epoch: a signal lands mid-epoch


@pytest.fixture(scope="module")
def _module_cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("latency")


@pytest.fixture(autouse=True)
def _shared_latency_cache(_isolated_cache, _module_cache_dir, monkeypatch):
    """One latency cache for this module: the candidates are measured once, not in every case."""
    monkeypatch.setenv("KDCOMPRESS_CACHE", str(_module_cache_dir))


def _args(teacher: Path, out: Path, epochs: int = 3, data: str = TINY_DATA, *extra: str) -> list[str]:
    return ["distill", "--teacher", str(teacher), "--data", data, "--student", "tinycnn_w8", "--epochs", str(epochs),
            "--set", "train.batch_size=16", "--device", "cpu", "--out", str(out), "--json", *extra]


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("kdcompress: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in stderr, stderr
    return errors[0]


def _no_tmp(root: Path) -> None:
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return safe_torch_load(path)["state_dict"]


def _train(teacher_path: Path, out: Path, preset: str = "kd", epochs: int = 3, **kw):
    from rich.console import Console

    from kdcompress.data.specs import load_data
    from kdcompress.losses import load_checked_preset
    from kdcompress.teacher.formats import load_teacher
    from kdcompress.train.loop import train

    teacher = load_teacher(teacher_path)
    p = load_checked_preset(preset, [f"train.epochs={epochs}", "train.batch_size=16"])
    return train(arch="tinycnn_w8", splits=load_data(TINY_DATA, teacher.input_spec), spec=teacher.input_spec,
                 preset=p, teacher=teacher, run=RunDir(out), device=torch.device("cpu"), fingerprint={"p": preset},
                 console=Console(file=io.StringIO()), **kw,
                 **train_factories("tinycnn_w8", load_data(TINY_DATA, teacher.input_spec).num_classes,
                                   teacher.input_spec, p))


@pytest.mark.parametrize("preset", ["kd", "nd", "ickd"])  # nd: a projector with dropout; ickd: the bank
def test_sigterm_mid_epoch_then_resume_gives_the_uninterrupted_weights(tiny_teacher, tmp_path, monkeypatch, preset):
    ref = _train(tiny_teacher, tmp_path / "ref", preset)

    orig = sigterm_at_step(monkeypatch, epoch=2, step=2)  # a real signal, caught by the trainer's handler
    out = tmp_path / "run"
    with pytest.raises(Interrupted) as info:
        _train(tiny_teacher, out, preset)
    assert info.value.exit_code == 128 + signal.SIGTERM
    assert "interrupted by SIGTERM at epoch 2 step 2/3" in info.value.message and "last.pt" in info.value.message
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the trainer's handler is gone again
    ck = safe_torch_load(RunDir(out).last_checkpoint)
    assert (ck["epoch"], ck["step"], ck["world"]) == (1, 2, 1)
    assert ck["partial"]["sums"][0]["loss"] > 0 and len(ck["rng"]["aug"]) == 1
    assert not (out / "student.pt").exists()
    _no_tmp(out)

    monkeypatch.setattr(StepEngine, "step", orig)
    got = _train(tiny_teacher, out, preset)
    assert (got.resumed_from_epoch, got.resumed_from_step) == (2, 2)  # resumed inside epoch 2, after its step 2

    def strip(h):
        return [{k: v for k, v in row.items() if k != "train_seconds"} for row in h]

    assert strip(got.history) == strip(ref.history)  # partial loss sums restored: same epoch means
    a, b = _weights(out / "student.pt"), _weights(tmp_path / "ref" / "student.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(row["train_seconds"] > 0 for row in got.history)


def test_mid_epoch_resume_in_epoch_1_is_recorded_in_train_json(tiny_teacher, tmp_path, monkeypatch):
    """A distill interrupted inside its first epoch, then rerun: train.json (and report.json) say it resumed
    in epoch 1 after step 2, not `resumed_from_epoch: 0`, which reads as a fresh run."""
    orig = sigterm_at_step(monkeypatch, epoch=1, step=2)
    out = tmp_path / "run"
    r = runner.invoke(app, _args(tiny_teacher, out, 2))
    assert r.exit_code == 128 + signal.SIGTERM, r.output
    assert "interrupted by SIGTERM at epoch 1 step 2/3" in " ".join(r.stderr.split())
    monkeypatch.setattr(StepEngine, "step", orig)
    r = runner.invoke(app, _args(tiny_teacher, out, 2))
    assert r.exit_code == 0, r.output
    saved = json.loads((out / "train.json").read_text())
    assert (saved["resumed_from_epoch"], saved["resumed_from_step"]) == (1, 2)
    assert json.loads(r.stdout)["training"]["resumed_from_epoch"] == 1
    assert [row["epoch"] for row in saved["history"]] == [1, 2]
    fresh = json.loads(runner.invoke(app, _args(tiny_teacher, tmp_path / "fresh", 1)).stdout)["training"]
    assert (fresh["resumed_from_epoch"], fresh["resumed_from_step"]) == (0, 0)  # 0: not resumed


def _start(teacher: Path, out: Path, epochs: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "kdcompress", *_args(teacher, out, epochs, BIG_DATA)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_epoch(run: RunDir, proc: subprocess.Popen, epoch: int, timeout: float = 90.0) -> None:
    """Until the process has checkpointed `epoch` (polling the file it replaces atomically)."""
    t0 = time.monotonic()
    while True:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, "no checkpoint appeared"
        if run.last_checkpoint.exists():
            try:
                if safe_torch_load(run.last_checkpoint)["epoch"] >= epoch:
                    return
            except KdError:  # replaced while being read: look again
                pass
        time.sleep(0.01)


def test_sigkill_then_sigterm_of_real_training_processes_resume_each_time(tiny_teacher, tmp_path):
    run = RunDir(tmp_path / "run")
    epochs = 5
    # 1. SIGKILL after the first epoch's checkpoint: no chance to clean up
    proc = _start(tiny_teacher, run.root, epochs)
    _wait_for_epoch(run, proc, 1)
    proc.kill()
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = safe_torch_load(run.last_checkpoint)["epoch"]
    assert 1 <= killed_at < epochs

    # 2. the same command resumes; SIGTERM once it has checkpointed another epoch: a clean stop
    proc = _start(tiny_teacher, run.root, epochs)
    _wait_for_epoch(run, proc, killed_at + 1)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == Interrupted("", signal.SIGTERM).exit_code == 143, stderr
    assert stdout == ""
    assert f"after epoch {killed_at}" in " ".join(stderr.split())  # "resuming RUN after epoch N" (wrapped)
    line = _one_error_line(stderr)
    assert line.startswith("kdcompress: error: interrupted by SIGTERM") and "rerun the same command" in line
    ck = safe_torch_load(run.last_checkpoint)
    assert ck["epoch"] > killed_at and (ck["partial"] is not None) == (ck["step"] > 0)
    assert not (run.root / "student.pt").exists()
    _no_tmp(run.root)

    # 3. and again: it finishes the planned epochs from the last checkpoint
    r = runner.invoke(app, _args(tiny_teacher, run.root, epochs, BIG_DATA))
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    # resumed inside the epoch the signal interrupted, or after the last finished one
    assert report["training"]["resumed_from_epoch"] == ck["epoch"] + (1 if ck["step"] else 0)
    assert report["training"]["resumed_from_step"] == ck["step"]
    assert [row["epoch"] for row in report["training"]["history"]] == list(range(1, epochs + 1))
    assert (run.root / "student.pt").is_file() and (run.root / "report.json").is_file()
    _no_tmp(run.root)


def test_nan_loss_stops_with_exit_6_and_keeps_the_last_good_checkpoint(tiny_teacher, tmp_path, monkeypatch):
    orig = Objective.forward

    def diverge_in_epoch_2(self, s, t, batch, epoch, **kw):
        total, parts = orig(self, s, t, batch, epoch, **kw)
        return (total * float("nan"), parts) if epoch == 2 else (total, parts)

    monkeypatch.setattr(Objective, "forward", diverge_in_epoch_2)
    out = tmp_path / "run"
    r = runner.invoke(app, _args(tiny_teacher, out))
    assert r.exit_code == TrainingError.exit_code, r.output
    line = _one_error_line(r.stderr)
    assert "loss became nan at epoch 2" in line and "last good checkpoint is kept" in line
    ck = safe_torch_load(RunDir(out).last_checkpoint)
    assert ck["epoch"] == 1 and ck["step"] == 0
    assert all(torch.isfinite(v).all() for v in ck["student"].values() if v.is_floating_point())
    assert not (out / "student.pt").exists()
    _no_tmp(out)


@contextlib.contextmanager
def _locked_elsewhere(root: Path):
    """Another process holds the run directory's lock (the lock is re-entrant within one process)."""
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(120)")
    p = subprocess.Popen([sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        yield
    finally:
        p.kill()
        p.wait()


def test_a_busy_run_directory_is_refused_and_stale_tmp_files_go(tiny_teacher, tmp_path):
    run = RunDir(tmp_path / "run")
    _train(tiny_teacher, run.root, epochs=1)
    with _locked_elsewhere(run.root), pytest.raises(UsageError, match="in use by another kdcompress process"):
        _train(tiny_teacher, run.root, epochs=2, restart=True)
    assert safe_torch_load(run.last_checkpoint)["epoch"] == 1  # --restart deleted nothing of the busy run
    (run.checkpoints / ".last.pt.abc.tmp").write_bytes(b"half")  # left by a killed writer
    (run.root / ".report.json.xyz.tmp").write_bytes(b"half")
    assert _train(tiny_teacher, run.root, epochs=1).resumed_from_epoch == 1
    _no_tmp(run.root)


def test_compile_keeps_checkpoints_plain(tiny_teacher, tmp_path, monkeypatch):
    monkeypatch.setenv("KDCOMPRESS_COMPILE_BACKEND", "aot_eager")  # inductor would compile C++ for ~20 s here
    compiled = []
    orig = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: compiled.append(kw) or orig(m, **kw))
    result = _train(tiny_teacher, tmp_path, epochs=1, compile=True)
    assert compiled == [{"backend": "aot_eager"}] and result.best_val_accuracy >= 0
    from kdcompress.core.spec import InputSpec
    from kdcompress.students.registry import build_student

    plain = build_student("tinycnn_w8", 3, InputSpec((1, 8, 8), (0.5,), (0.25,))).state_dict()
    assert _weights(tmp_path / "student.pt").keys() == plain.keys()  # no _orig_mod. / module. prefixes
    assert safe_torch_load(RunDir(tmp_path).last_checkpoint)["student"].keys() == plain.keys()


def test_compile_flag_reaches_the_trainer(tiny_teacher, tmp_path, monkeypatch):
    import kdcompress.pipeline.job as pipeline

    seen = []
    monkeypatch.setattr(pipeline, "train", lambda **kw: seen.append(kw["compile"]) or (_ for _ in ()).throw(
        TrainingError("stop here")))
    r = runner.invoke(app, _args(tiny_teacher, tmp_path, 1, TINY_DATA, "--compile"))
    assert r.exit_code == TrainingError.exit_code and seen == [True]


# ----------------------------------------------------------------------------------------- distributed.py


def test_single_process_dist_is_a_no_op(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert env_world() is None
    d = Dist()
    assert d.on_main(lambda: 5) == 5 and d.main_first(lambda: 6) == 6
    assert d.gather("x") == ["x"] and d.broadcast({"a": 1}) == {"a": 1}
    assert torch.equal(d.sum(torch.tensor([1.0, 2.0])), torch.tensor([1.0, 2.0], dtype=torch.float64))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(UsageError, match="inconsistent torchrun environment"):
        env_world()


def test_rank_0_failure_reaches_every_rank_once(monkeypatch):
    """on_main on rank 0 broadcasts its error; another rank raises it with the same exit code, quietly."""
    sent = []
    main = Dist(rank=0, world=2)
    monkeypatch.setattr(Dist, "broadcast", lambda self, obj=None: sent.append(obj) or obj)

    def fail():
        raise TrainingError("boom")

    with pytest.raises(TrainingError):
        main.on_main(fail)
    assert sent == [("err", "boom", TrainingError.exit_code)]
    monkeypatch.setattr(Dist, "broadcast", lambda self, obj=None: sent[0])
    with pytest.raises(KdError) as info:
        Dist(rank=1, world=2).on_main(fail)
    assert info.value.exit_code == TrainingError.exit_code and info.value.quiet and info.value.message == "boom"
    r = CliRunner().invoke(app, ["presets", "show", "kd"])  # the CLI itself is unaffected
    assert r.exit_code == 0


def test_prefetch_yields_in_order_and_reraises_producer_errors():
    assert list(prefetch(iter(range(7)), depth=2)) == list(range(7))

    def broken():
        yield 1
        raise KdError("unreadable image x.png")

    it = prefetch(broken())
    assert next(it) == 1
    with pytest.raises(KdError, match="x.png"):
        next(it)


def test_world_size_without_torchrun_is_one_line(tiny_teacher, tmp_path):
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": None, "MASTER_PORT": None}
    r = runner.invoke(app, _args(tiny_teacher, tmp_path / "r", 1), env=env)
    assert r.exit_code == 7 and "start multi-process runs with torchrun" in _one_error_line(r.stderr)
    assert not (tmp_path / "r").exists()
