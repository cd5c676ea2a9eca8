"""The guarantees of the run directory and of every file kdcompress writes, tested at their one mechanism:
atomic_write_bytes (umask, strict JSON, no symlink followed inside a run, no device replaced, OS errors as
one line with their exit code), RunDir.claim (path checks, the marker, --force, the lock) and
RunDir.discard_previous (--restart removes only kdcompress's files); then end to end: --restart
interrupted and resumed, an ONNX teacher with external data."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kdcompress.cli import app, run_guarded
from kdcompress.core.errors import EnvironmentProblem, InputError, UsageError
from kdcompress.runtime.ortbench import error_cause, make_session, ort_max_opset
from kdcompress.core.runio import MARKER, RunDir, atomic_write_bytes, atomic_write_json, read_json, strict_json

from .helpers import sigterm_at_step

from .conftest import TINY_DATA

runner = CliRunner()


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("kdcompress: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in stderr, stderr
    return errors[0]


def _strict_load(path: Path):
    def refuse(token):
        raise AssertionError(f"non-strict JSON token {token} in {path}")

    return json.loads(Path(path).read_text(), parse_constant=refuse)


def _run_dir(tmp_path: Path) -> RunDir:
    run = RunDir(tmp_path / "run")
    with run.claim():
        run.mark("test")
    return run


# ----------------------------------------------------------------------------------------- the writer


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_honour_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        atomic_write_json(tmp_path / "b.json", {"a": 1})
    finally:
        os.umask(old)
    for name in ("a.bin", "b.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_json_files_are_strict(tmp_path):
    obj = {"nan": float("nan"), "inf": float("inf"), "list": [1.0, -math.inf], "np32": np.float32("nan"),
           "np64": np.float64("inf"), "tensor": torch.tensor(float("nan")), "ok": 0.5, "path": tmp_path}
    atomic_write_json(tmp_path / "x.json", obj)
    got = _strict_load(tmp_path / "x.json")
    assert got == {"nan": None, "inf": None, "list": [1.0, None], "np32": None, "np64": None, "tensor": None,
                   "ok": 0.5, "path": str(tmp_path)}
    assert strict_json((1.0, float("nan"))) == [1.0, None]


def test_a_symlink_inside_a_run_directory_is_never_followed(tmp_path):
    run = _run_dir(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (run.root / "plots").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InputError, match="symlink"):
        atomic_write_bytes(run.root / "plots" / "training.png", b"png")
    (outside / "victim.txt").write_text("keep")
    (run.root / "report.md").symlink_to(outside / "victim.txt")
    with pytest.raises(InputError, match="symlink"):
        atomic_write_bytes(run.root / "report.md", b"# report")
    with pytest.raises(InputError, match="symlink"):
        run.discard_previous()
    assert (outside / "victim.txt").read_text() == "keep" and sorted(os.listdir(outside)) == ["victim.txt"]
    # outside a run directory (no marker above it) symlinks are the user's business
    (tmp_path / "elsewhere").symlink_to(outside, target_is_directory=True)
    atomic_write_bytes(tmp_path / "elsewhere" / "free.txt", b"ok")
    assert (outside / "free.txt").read_bytes() == b"ok"


def test_a_fifo_or_directory_is_never_replaced(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(InputError, match="FIFO"):
        atomic_write_bytes(tmp_path / "pipe", b"x")
    assert (tmp_path / "pipe").is_fifo()
    (tmp_path / "d").mkdir()
    with pytest.raises(InputError, match="is a directory"):
        atomic_write_bytes(tmp_path / "d", b"x")
    with pytest.raises(InputError, match="FIFO"):
        read_json(tmp_path / "pipe")  # returns at once instead of blocking


def test_disk_full_is_exit_7_with_the_path(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(EnvironmentProblem, match="no space left") as e:
        atomic_write_bytes(tmp_path / "big.bin", b"x" * 100)
    assert str(tmp_path / "big.bin") in e.value.message
    assert not list(tmp_path.iterdir())  # the temporary file went too


@pytest.mark.parametrize("exc, code, words", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/x"), 7, ("no space left", "/data/x")),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/data/q"), 7, ("no space left", "/data/q")),
    (PermissionError(errno.EACCES, "Permission denied", "/etc/shadow"), 3, ("permission denied", "/etc/shadow")),
    (OSError(errno.EROFS, "Read-only file system", "/ro/f"), 3, ("permission denied", "/ro/f")),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/tmp/d"), 3, ("/tmp/d", "is a directory")),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/gone"), 3, ("/gone",)),
    (MemoryError(), 7, ("out of memory",)),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to "
                  "allocate 1099511627776 bytes"), 7, ("out of memory", "1099511627776")),
])
def test_resource_errors_reach_their_exit_code_never_internal(capsys, exc, code, words):
    import typer

    def boom():
        raise exc

    with pytest.raises(typer.Exit) as e:
        run_guarded(boom)
    assert e.value.exit_code == code
    line = _one_error_line(capsys.readouterr().err)
    assert "internal error" not in line
    for w in words:
        assert w in line, line


def _tiny_onnx(path: Path) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Flatten", ["input"], ["f"]),
                               helper.make_node("MatMul", ["f", "w"], ["logits"])],
                              "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)
    for k, v in {"mean": "[0.5]", "std": "[0.25]"}.items():
        e = model.metadata_props.add()
        e.key, e.value = k, v
    path.write_bytes(model.SerializeToString())
    return path


def test_disk_full_through_the_cli_is_one_line_exit_7(tmp_path, monkeypatch):
    model = _tiny_onnx(tmp_path / "m.onnx")
    real = os.fsync

    def full(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".report.json."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", full)
    r = runner.invoke(app, ["validate", "--onnx", str(model), "--data", TINY_DATA, "--out", str(tmp_path / "v")])
    assert r.exit_code == 7, r.output
    line = _one_error_line(r.stderr)
    assert "no space left" in line and str(tmp_path / "v" / "report.json") in line
    assert not (tmp_path / "v" / "report.json").exists()


# ----------------------------------------------------------------------------------------- claim, marker, restart


def test_claim_refuses_a_foreign_directory_unless_forced_and_deletes_nothing(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not a kdcompress run"):
        with RunDir(d).claim():
            pass
    assert sorted(os.listdir(d)) == ["notes.txt"]  # the refused claim wrote nothing
    with RunDir(d).claim(force=True):
        RunDir(d).mark("test")
        atomic_write_json(RunDir(d).config, {"a": 1})
    RunDir(d).discard_previous()
    assert sorted(os.listdir(d)) == [MARKER, "notes.txt"]
    assert (d / "notes.txt").read_text() == "mine"
    with RunDir(d).claim():  # a run now: no --force needed again
        pass


def test_a_directory_of_only_kdcompress_names_is_adopted(tmp_path):
    d = tmp_path / "old"
    (d / "checkpoints").mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / ".report.json.abc.tmp").write_bytes(b"half")
    with RunDir(d).claim():
        pass


def test_discard_previous_removes_only_kdcompress_files(tmp_path):
    run = _run_dir(tmp_path)
    run.prepare()
    mine = [run.root / "notes.txt", run.checkpoints / "my_copy.pt", run.root / "plots" / "extra.png"]
    ours = [run.config, run.report_json, run.report_md, run.student, run.onnx, run.last_checkpoint,
            run.checkpoints / "best.pt", run.root / "plots" / "training.png", run.root / "student.int8.onnx"]
    for p in mine + ours:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    run.discard_previous()
    assert all(p.exists() for p in mine) and not any(p.exists() for p in ours)


def test_the_lock_is_reentrant_here_and_exclusive_across_processes(tmp_path):
    run = _run_dir(tmp_path)
    code = ("import sys; from kdcompress.core.runio import RunDir\n"
            "try:\n    RunDir(sys.argv[1]).lock().__enter__()\nexcept Exception as e:\n    print(type(e).__name__)")
    with run.lock(), run.lock():
        out = subprocess.run([sys.executable, "-c", code, str(run.root)], capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == "UsageError", out
    out = subprocess.run([sys.executable, "-c", code, str(run.root)], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "", out  # released


def test_check_path_refuses_unusable_outs(tmp_path):
    (tmp_path / "f").write_text("x")
    for bad, words in [(tmp_path / "f", "not a directory"), (tmp_path / "f" / "sub", "not a directory"),
                       (Path("/proc/1/x"), "/proc"), (Path("/sys/kdc"), "/sys")]:
        with pytest.raises(InputError, match=words):
            RunDir(bad).check_path()
    assert (tmp_path / "f").read_text() == "x"


# ----------------------------------------------------------------------------------------- ONNX Runtime


def test_onnx_runtime_errors_keep_their_cause(tmp_path):
    path = _tiny_onnx(tmp_path / ("a" * 200 + ".onnx"))
    import onnx

    m = onnx.load(str(path))
    m.ir_version = 14  # onnx's checker takes it; this ONNX Runtime runs up to IR 13
    path.write_bytes(m.SerializeToString())
    with pytest.raises(InputError) as e:
        make_session(path)
    assert "IR version" in e.value.message and "max supported" in e.value.message, e.value.message
    long = RuntimeError("[ONNXRuntimeError] : 1 : FAIL : " + "x" * 1000 + " the real reason")
    assert error_cause(long).endswith("the real reason") and not error_cause(long).startswith("[ONNX")


def test_export_opset_is_bounded_by_this_onnx_runtime():
    import onnx

    from kdcompress.export import ExportOptions

    top = ort_max_opset()
    assert ExportOptions(opset=min(top, onnx.defs.onnx_opset_version())).opset >= 18
    with pytest.raises(UsageError, match="--opset"):
        ExportOptions(opset=top + 1)


# ----------------------------------------------------------------------------------------- end to end


def _distill(teacher: Path, out: Path, *extra: str, epochs: int = 1) -> list[str]:
    return ["distill", "--teacher", str(teacher), "--data", TINY_DATA, "--student", "tinycnn_w8", "--epochs",
            str(epochs), "--set", "train.batch_size=16", "--device", "cpu", "--out", str(out), *extra]


def test_restart_interrupted_leaves_no_old_outputs_and_the_hint_resumes(tiny_teacher, tmp_path, monkeypatch):
    from kdcompress.train.step import StepEngine

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    assert runner.invoke(app, _distill(tiny_teacher, out)).exit_code == 2  # not a run, no --force
    assert sorted(os.listdir(out)) == ["notes.txt"]
    r = runner.invoke(app, _distill(tiny_teacher, out, "--force"))
    assert r.exit_code == 0, r.output
    assert (out / "report.json").exists() and (out / MARKER).exists()
    for p in [*out.rglob("*")]:
        if p.is_file() and p.name != "notes.txt":
            assert p.stat().st_mode & 0o777 == 0o666 & ~_umask(), p

    orig = sigterm_at_step(monkeypatch, epoch=2, step=1)
    r = runner.invoke(app, _distill(tiny_teacher, out, "--restart", epochs=2))
    assert r.exit_code == 128 + signal.SIGTERM, r.output
    line = _one_error_line(r.stderr)
    assert "without --restart" in line, line
    for gone in ("report.json", "report.md", "student.pt", "student.onnx", "train.json", "plots/training.png"):
        assert not (out / gone).exists(), gone  # nothing of the old run beside the new config
    assert json.loads((out / "config.json").read_text())["preset"]["train"]["epochs"] == 2
    assert (out / "notes.txt").read_text() == "the user's"

    monkeypatch.setattr(StepEngine, "step", orig)
    r = runner.invoke(app, _distill(tiny_teacher, out, "--json", epochs=2))  # the hint, followed
    assert r.exit_code == 0, r.output
    saved = _strict_load(out / "train.json")
    assert (saved["resumed_from_epoch"], saved["resumed_from_step"]) == (2, 1)  # inside epoch 2, after its step 1
    assert (out / "notes.txt").read_text() == "the user's"
    for p in out.rglob("*.json"):
        _strict_load(p)


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_onnx_teacher_with_external_data_works_end_to_end(tmp_path):
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 3)).eval()
    tdir = tmp_path / "teacher"
    tdir.mkdir()
    torch.onnx.export(model, (torch.zeros(2, 1, 8, 8),), str(tdir / "t.onnx"), external_data=True, dynamo=True,
                      input_names=["input"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    assert (tdir / "t.onnx.data").exists()  # the weights live beside the graph
    out = tmp_path / "run"
    r = runner.invoke(app, _distill(tdir / "t.onnx", out, "--mean", "0.5", "--std", "0.25", "--json",
                                       "--allow-weak-teacher"))  # an untrained teacher: plumbing only
    assert r.exit_code == 0, r.output
    assert not (out / "teacher.onnx.data").exists()
    sess = make_session((out / "teacher.onnx").read_bytes())  # the run's copy stands alone
    assert sess.run(None, {"input": np.zeros((1, 1, 8, 8), np.float32)})[0].shape == (1, 3)


def test_torchrun_usage_error_is_printed_once_and_rank_0_is_the_root_cause(tiny_teacher, tmp_path):
    """What docs/distributed.md says: one line from rank 0; torchrun exits 1 and names rank 0's exit code 2
    as the root cause (the silent ranks leave last)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "kdcompress", *_distill(tiny_teacher, tmp_path / "r", "--budget-ms", "-1")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 1, p.stderr
    assert [ln for ln in p.stderr.splitlines() if ln.startswith("kdcompress: error:")] == [
        "kdcompress: error: --budget-ms must be a finite number > 0, got -1.0"]
    root = p.stderr[p.stderr.index("Root Cause"):]
    assert "rank      : 0" in root and "exitcode  : 2" in root, root
    assert not (tmp_path / "r").exists()


def test_a_job_refused_after_the_claim_leaves_no_directory_it_created(tmp_path):
    run = RunDir(tmp_path / "a" / "b" / "run")
    with pytest.raises(UsageError), run.claim():
        assert run.root.is_dir()
        raise UsageError("refused later")
    assert sorted(os.listdir(tmp_path)) == []
    (tmp_path / "kept").mkdir()
    with pytest.raises(UsageError), RunDir(tmp_path / "kept").claim():
        raise UsageError("refused later")
    assert (tmp_path / "kept").is_dir()  # not created by the claim: stays


def test_the_console_entry_point_keeps_output_and_exit_codes_without_the_interpreter_teardown(tmp_path):
    """cli.main ends the process with os._exit after the atexit handlers: stdout redirected to a file is
    complete, each documented exit code survives, an atexit handler still runs, and a reader that closes the
    pipe early gets no traceback."""
    out = tmp_path / "presets.json"
    with out.open("w") as f:
        p = subprocess.run([sys.executable, "-m", "kdcompress", "presets", "list", "--json"], stdout=f,
                           stderr=subprocess.PIPE, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "ickd" in {row["name"] for row in json.loads(out.read_text())["presets"]}

    p = subprocess.run([sys.executable, "-m", "kdcompress", "select", "--teacher", str(tmp_path / "none.pt"),
                        "--budget-ms", "1"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 3 and _one_error_line(p.stderr).endswith(f"teacher not found: {tmp_path / 'none.pt'}")

    flag = tmp_path / "atexit-ran"
    code = ("import atexit, pathlib, sys; f = pathlib.Path(sys.argv[1]); "
            "atexit.register(lambda: f.write_text('yes')); "
            "sys.argv[1:] = ['presets', 'list']; from kdcompress.cli import main; main()")
    p = subprocess.run([sys.executable, "-c", code, str(flag)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and flag.read_text() == "yes" and "ickd" in p.stdout

    p = subprocess.run(f"{sys.executable} -m kdcompress presets list --json | head -c 1", shell=True,
                       capture_output=True, text=True, timeout=120)
    assert p.stdout == "{" and "Traceback" not in p.stderr, p.stderr


def test_teacher_train_claims_its_hidden_run_directory(tmp_path):
    """teacher train's resume state (.NAME.run beside --out) is claimed like a run: bad data is refused with
    no directory left behind, and a second process training into the same place is refused while the
    first holds the lock."""
    out = tmp_path / "t" / "teacher.pt"
    r = runner.invoke(app, ["teacher", "train", "--data", f"imagefolder:{tmp_path / 'missing'}", "--out", str(out),
                            "--epochs", "1"])
    assert r.exit_code == 3, r.output
    assert not (tmp_path / "t").exists()

    hidden = out.parent / ".teacher.run"
    hidden.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], "
                               "os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); "
                               "time.sleep(120)", str(hidden)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # another job holds the lock
        r = runner.invoke(app, ["teacher", "train", "--data", TINY_DATA, "--out", str(out), "--epochs", "1"])
    finally:
        holder.kill()
        holder.wait()
    assert r.exit_code == 2 and "in use by another kdcompress process" in r.stderr, r.output
    assert not out.exists()
