"""The bad-input corpus: one table of inputs that must each fail through the CLI with one line on stderr
(`kdcompress: error: ...`), their own non-zero exit code, no traceback and no half-written output.

Each case builds its inputs in a fresh directory and returns the `distill` arguments that differ from a
valid tiny run; the table says which exit code and which words the line must carry.
"""

from __future__ import annotations

import os
import pickle
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kdcompress.cli import app
from kdcompress.core.errors import BudgetError, EnvironmentProblem, InputError, TrainingError, UsageError

from .conftest import TINY_DATA

runner = CliRunner()
USAGE, INPUT, BUDGET, ENV, TRAIN = (UsageError.exit_code, InputError.exit_code, BudgetError.exit_code,
                                    EnvironmentProblem.exit_code, TrainingError.exit_code)


@pytest.fixture(scope="module")
def _module_cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("latency")


@pytest.fixture(autouse=True)
def _shared_latency_cache(_isolated_cache, _module_cache_dir, monkeypatch):
    """One latency cache for this module: the candidates are measured once, not in every case."""
    monkeypatch.setenv("KDCOMPRESS_CACHE", str(_module_cache_dir))


@dataclass(frozen=True)
class Env:
    root: Path  # a fresh directory for this case's files
    teacher: Path  # a valid tiny teacher (kdcompress checkpoint, resnet8, 3 classes, 1x8x8)

    @property
    def out(self) -> Path:
        return self.root / "run"


class _Evil:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):  # unpickling this creates the marker file: code execution
        return (open, (self.marker, "w"))


# ----------------------------------------------------------------------------------------- inputs


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _png(path: Path, value: int = 128) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)


def _folder(root: Path, classes: tuple[str, ...], per_class: int = 10) -> Path:
    for c in classes:
        for i in range(per_class):
            _png(root / c / f"{i}.png", 20 * i)
    return root


def _teacher_onnx(e: Env) -> Path:
    from kdcompress.teacher.formats import load_teacher
    from kdcompress.teacher.model import teacher_onnx_bytes

    return _write(e.root / "teacher.onnx", teacher_onnx_bytes(load_teacher(e.teacher), {"role": "teacher"}))


def _onnx_escaping_external_data(e: Env) -> Path:
    """A valid-looking graph whose weight lives in '../secret.bin', outside the model's directory."""
    import onnx
    from onnx import TensorProto, helper

    (e.root / "secret.bin").write_bytes(np.zeros(64, dtype=np.float32).tobytes())
    model_dir = e.root / "models"
    model_dir.mkdir()
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[64, 3])
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../secret.bin"), ("offset", "0"), ("length", str(64 * 3 * 4))):
        entry = w.external_data.add()
        entry.key, entry.value = k, v
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [w])
    path = model_dir / "teacher.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]).SerializeToString())
    assert onnx.load(str(path), load_external_data=False).graph.initializer[0].data_location == TensorProto.EXTERNAL
    return path


def _toml(e: Env, text: str) -> str:
    p = e.root / "preset.toml"
    p.write_text(text)
    return str(p)


DIVERGING = """
name = "diverging"
[train]
epochs = 2
batch_size = 16
lr = 1e30
schedule = "constant"
[[loss]]
kind = "ce"
weight = 0.1
[[loss]]
kind = "kd"
weight = 0.9
params = { T = 4.0 }
"""


def _teacher(e: Env, path: Path) -> list[str]:
    return ["--teacher", str(path)]


def _state_dict_of_teacher(e: Env) -> Path:
    sd = torch.load(e.teacher, weights_only=True)["state_dict"]
    path = e.root / "weights.pt"
    torch.save(sd, path)
    return path


def _truncated(e: Env) -> Path:
    data = e.teacher.read_bytes()
    return _write(e.root / "truncated.pt", data[: len(data) // 2])


def _evil(e: Env) -> Path:
    path = e.root / "evil.pt"
    torch.save({"state_dict": _Evil(e.root / "pwned")}, path)
    return path


def _evil_raw_pickle(e: Env) -> Path:
    path = e.root / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump(_Evil(e.root / "pwned"), f)
    return path


def _file_as_out(e: Env) -> list[str]:
    (e.root / "afile").write_text("keep me")
    return ["--out", str(e.root / "afile")]


def _readonly_out(e: Env) -> list[str]:
    d = e.root / "ro"
    d.mkdir()
    d.chmod(0o500)
    if os.access(d, os.W_OK):  # root, or a filesystem that ignores modes: nothing to test here
        d.chmod(0o700)
        pytest.skip("permissions are not enforced for this user")
    return ["--out", str(d / "run")]


def _corrupt_resume_checkpoint(e: Env) -> list[str]:
    (e.out / "checkpoints").mkdir(parents=True)
    (e.out / "checkpoints" / "last.pt").write_bytes(b"\x80\x02not really a checkpoint")
    return []


def _csv_without_label(e: Env) -> list[str]:
    _folder(e.root / "imgs", ("a", "b"))
    (e.root / "list.csv").write_text("path\nimgs/a/0.png\n")
    return ["--data", f"csv:{e.root / 'list.csv'}"]


def _unreadable_image(e: Env) -> list[str]:
    root = _folder(e.root / "data", ("class_0", "class_1", "class_2"))
    (root / "class_1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png body")
    return ["--data", f"imagefolder:{root}"]


def _empty_dataset(e: Env) -> list[str]:
    for c in ("class_0", "class_1", "class_2"):
        (e.root / "data" / c).mkdir(parents=True)
    return ["--data", f"imagefolder:{e.root / 'data'}"]


def _cuda_without_gpu(e: Env) -> list[str]:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    return ["--device", "cuda"]


Case = Callable[[Env], list[str]]
CASES: list[tuple[str, Case, int, tuple[str, ...]]] = [
    # --- teacher files
    ("teacher missing", lambda e: _teacher(e, e.root / "nope.pt"), INPUT, ("nope.pt",)),
    ("teacher empty", lambda e: _teacher(e, _write(e.root / "empty.pt", b"")), INPUT, ("empty",)),
    ("teacher corrupt bytes",
     lambda e: _teacher(e, _write(e.root / "junk.pt", b"\x80\x02" + random.Random(7).randbytes(300))), INPUT,
     ("junk.pt", "not a readable checkpoint")),
    ("teacher truncated", lambda e: _teacher(e, _truncated(e)), INPUT, ("truncated.pt",)),
    ("teacher is a text file", lambda e: _teacher(e, _write(e.root / "notes.pt", b"hello, not weights")), INPUT,
     ("notes.pt", "not a readable checkpoint")),
    ("teacher is a directory", lambda e: _teacher(e, e.root), INPUT, ("directory",)),
    ("pickle that runs code (torch.save)", lambda e: _teacher(e, _evil(e)), INPUT, ("--trust-checkpoint",)),
    ("pickle that runs code (raw pickle)", lambda e: _teacher(e, _evil_raw_pickle(e)), INPUT, ("--trust-checkpoint",)),
    ("state_dict for the wrong arch", lambda e: [*_teacher(e, _state_dict_of_teacher(e)), "--teacher-arch", "resnet20",
                                                 "--num-classes", "3", "--input-shape", "1,8,8", "--mean", "0.5",
                                                 "--std", "0.25"], INPUT, ("resnet20",)),
    ("state_dict without --teacher-arch", lambda e: _teacher(e, _state_dict_of_teacher(e)), USAGE, ("--teacher-arch",)),
    ("truncated ONNX teacher", lambda e: _teacher(e, _write(e.root / "t.onnx", _teacher_onnx(e).read_bytes()[:200])),
     INPUT, ("t.onnx",)),
    ("ONNX external data outside its directory", lambda e: _teacher(e, _onnx_escaping_external_data(e)), INPUT,
     ("teacher.onnx",)),
    ("wrong input shape for the teacher", lambda e: ["--input-shape", "3,8,8"], INPUT, ("3, 8, 8",)),
    ("malformed --input-shape", lambda e: ["--input-shape", "1,8"], USAGE, ("--input-shape",)),
    ("duplicate --classes", lambda e: ["--classes", "a,b,a"], USAGE, ("'a'",)),
    # --- data
    ("class count teacher vs data", lambda e: ["--data", "synthetic:classes=4,n=100"], INPUT, ("3 classes", "4")),
    ("unknown data spec", lambda e: ["--data", "imagenett:/x"], USAGE, ("unknown data spec", "imagenett")),
    ("bad synthetic option", lambda e: ["--data", "synthetic:classes=3,colour=red"], USAGE, ("colour",)),
    ("missing data directory", lambda e: ["--data", f"imagefolder:{e.root / 'absent'}"], INPUT, ("absent",)),
    ("empty dataset", _empty_dataset, INPUT, ("no images",)),
    ("one-class dataset", lambda e: ["--data", f"imagefolder:{_folder(e.root / 'one', ('only',))}"], INPUT,
     ("one class",)),
    ("unreadable image", _unreadable_image, INPUT, ("broken.png",)),
    ("csv without a label column", _csv_without_label, INPUT, ("label",)),
    # --- budget, names
    ("impossible budget", lambda e: ["--budget-ms", "0.000001"], BUDGET, ("no student meets",)),
    ("zero budget", lambda e: ["--budget-ms", "0"], USAGE, ("--budget-ms",)),
    ("negative budget", lambda e: ["--budget-ms", "-5"], USAGE, ("--budget-ms",)),
    ("unknown preset", lambda e: ["--preset", "kdd"], USAGE, ("'kdd'",)),
    ("unknown student", lambda e: ["--student", "resnet9"], USAGE, ("'resnet9'",)),
    ("unknown provider", lambda e: ["--provider", "openvino"], USAGE, ("openvino",)),
    ("unknown budget statistic", lambda e: ["--stat", "p75"], USAGE, ("--stat",)),
    ("zero ORT threads", lambda e: ["--threads", "0"], USAGE, ("--threads",)),
    # --- presets and overrides
    ("malformed TOML preset", lambda e: ["--preset", _toml(e, "[[loss]\nkind = 'kd'\n")], INPUT, ("not valid TOML",)),
    ("TOML preset with an unknown loss", lambda e: ["--preset", _toml(e, "[[loss]]\nkind = 'kdx'\n")], USAGE, ("kdx",)),
    ("TOML preset with an unknown key", lambda e: ["--preset", _toml(e, "lossses = 1\n[[loss]]\nkind='kd'\n")], USAGE,
     ("lossses",)),
    ("--set on a missing key", lambda e: ["--set", "kd.TT=3"], USAGE, ("kd.TT",)),
    ("--set on a missing term", lambda e: ["--set", "dkd.beta=3"], USAGE, ("'dkd'",)),
    ("--set with a wrong type", lambda e: ["--set", "train.lr=fast"], USAGE, ("train.lr",)),
    ("--set without '='", lambda e: ["--set", "train.lr"], USAGE, ("key=value",)),
    ("--set batch size zero", lambda e: ["--set", "train.batch_size=0"], USAGE, ("batch_size",)),
    ("epochs zero", lambda e: ["--epochs", "0"], USAGE, ("epochs",)),
    ("epochs negative", lambda e: ["--epochs", "-3"], USAGE, ("epochs",)),
    # --- run directory, machine, training
    ("out directory is a file", _file_as_out, INPUT, ("afile",)),
    ("non-writable out directory", _readonly_out, INPUT, ("ro",)),
    ("corrupt checkpoint to resume from", _corrupt_resume_checkpoint, INPUT,
     ("last.pt", "not a readable checkpoint", "--restart")),
    ("CUDA requested without a GPU", _cuda_without_gpu, ENV, ("cuda",)),
    ("diverging preset (lr 1e30)", lambda e: ["--preset", _toml(e, DIVERGING), "--epochs", "2"], TRAIN,
     ("loss became", "epoch 1", "no checkpoint")),
]


def _base(e: Env) -> list[str]:
    return ["distill", "--teacher", str(e.teacher), "--data", TINY_DATA, "--student", "tinycnn_w8", "--epochs", "1",
            "--set", "train.batch_size=16", "--device", "cpu", "--out", str(e.out)]


def _merge(base: list[str], extra: list[str]) -> list[str]:
    """Flags in `extra` replace the base's value of the same flag (--set accumulates instead)."""
    out = list(base)
    i = 0
    while i < len(extra):
        flag, value = extra[i], extra[i + 1]
        if flag != "--set" and flag in out:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
        i += 2
    return out


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 25
    assert len({name for name, *_ in CASES}) == len(CASES)


@pytest.mark.parametrize("name, make, code, needles", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tiny_teacher, tmp_path, name, make, code, needles):
    e = Env(tmp_path, tiny_teacher)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    extra = make(e)
    made = {p for p in tmp_path.rglob("*") if p.is_file()} - set(before)
    r = runner.invoke(app, _merge(_base(e), extra))

    assert r.exit_code == code, (r.exit_code, r.output)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("kdcompress: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr
    assert "Traceback" not in r.output and r.stdout == ""
    for n in needles:
        assert n in errors[0], errors[0]
    # nothing half-written: no temporary files, no outputs of a finished stage, no code was run
    assert not list(tmp_path.rglob("*.tmp"))
    for f in ("student.pt", "student.onnx", "report.json", "report.md"):
        assert not (e.out / f).exists(), f
    assert not (tmp_path / "pwned").exists()
    for p in made:  # the case's own inputs are left as they were
        assert p.exists()


# ============================================================================ against an earlier run
# Each case below runs a refused command while a finished run (one tiny distill, shared by the module and
# copied per case) sits in the case's directory. Every file under that directory (the run, the case's own
# inputs, a foreign directory) is hashed before and after: a refused command changes nothing.


@pytest.fixture(scope="module")
def trained_run(tiny_teacher, tmp_path_factory, _module_cache_dir) -> Path:
    mp = pytest.MonkeyPatch()
    mp.setenv("KDCOMPRESS_CACHE", str(_module_cache_dir))
    out = tmp_path_factory.mktemp("earlier") / "run"
    r = runner.invoke(app, ["distill", "--teacher", str(tiny_teacher), "--data", TINY_DATA, "--student", "tinycnn_w8",
                            "--epochs", "1", "--set", "train.batch_size=16", "--device", "cpu", "--out", str(out)])
    mp.undo()
    assert r.exit_code == 0, r.output
    return out


@dataclass
class Ctx:
    root: Path  # the case's directory: everything under it is hashed
    run: Path  # a copy of the finished run
    teacher: Path
    cleanup: list

    def distill(self, *extra: str, out: Path | str | None = None) -> list[str]:
        base = ["distill", "--teacher", str(self.teacher), "--data", TINY_DATA, "--student", "tinycnn_w8", "--epochs",
                "1", "--set", "train.batch_size=16", "--device", "cpu", "--out", str(self.run if out is None else out)]
        return _merge(base, list(extra))


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and link under root: content hash, mode; a link by its target."""
    import hashlib

    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_file():
            out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
    return out


def _hold_lock(c: Ctx) -> None:
    import subprocess
    import sys

    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(300)")
    p = subprocess.Popen([sys.executable, "-c", code, str(c.run)], stdout=subprocess.PIPE, text=True)
    c.cleanup.append(lambda: (p.kill(), p.wait()))
    assert p.stdout.readline().strip() == "held"


def _link(c: Ctx, name: str, target_is_dir: bool) -> None:
    """Replace run/NAME by a symlink to a copy outside the run."""
    import shutil

    src, outside = c.run / name, c.root / "outside" / name.replace("/", "_")
    outside.parent.mkdir(exist_ok=True)
    (shutil.copytree if target_is_dir else shutil.copy2)(src, outside)
    shutil.rmtree(src) if target_is_dir else src.unlink()
    src.symlink_to(outside, target_is_directory=target_is_dir)


def _foreign(c: Ctx, *names: str) -> Path:
    d = c.root / "mine"
    d.mkdir()
    for n in names:
        (d / n).write_text("the user's own file")
    return d


def _teacher_dict(c: Ctx) -> dict:
    return torch.load(c.teacher, weights_only=True)


def _broken_teacher(c: Ctx, value: float, where: str = "param") -> Path:
    obj = _teacher_dict(c)
    sd = obj["state_dict"]
    key = next(k for k in sd if (k.endswith("running_var") if where == "buffer" else k.endswith("weight")))
    sd[key] = sd[key].clone()
    sd[key].view(-1)[0] = value
    path = c.root / f"broken_{where}.pt"
    torch.save(obj, path)
    return path


def _teacher_with_spec(c: Ctx, **spec) -> Path:
    obj = _teacher_dict(c)
    obj["input_spec"] = {**obj["input_spec"], **spec}
    path = c.root / "spec.pt"
    torch.save(obj, path)
    return path


def _tiny_onnx(c: Ctx, name: str, *, add: float | None = None, meta: dict | None = None, ir: int | None = None) -> Path:
    """A plain ONNX classifier (1x8x8 -> 3) written with onnx.helper; `add` is added to every logit."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Flatten", ["input"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["z"])]
    inits = [w]
    if add is not None:
        inits.append(numpy_helper.from_array(np.full((3,), add, np.float32), "b"))
        nodes.append(helper.make_node("Add", ["z", "b"], ["logits"]))
    else:
        nodes.append(helper.make_node("Identity", ["z"], ["logits"]))
    graph = helper.make_graph(nodes, "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=ir or 9)
    for k, v in {"mean": "[0.5]", "std": "[0.25]", "classes": '["class_0", "class_1", "class_2"]',
                 **(meta or {})}.items():
        e = model.metadata_props.add()
        e.key, e.value = k, v
    path = c.root / name
    path.write_bytes(model.SerializeToString())
    return path


ORT_TOO_NEW_IR = 14  # onnx 1.23's checker accepts IR 14; this ONNX Runtime runs up to IR 13


def _fifo(c: Ctx, name: str) -> Path:
    path = c.root / name
    os.mkfifo(path)
    return path


def _validate(c: Ctx, onnx: Path, *extra: str) -> list[str]:
    return ["validate", "--onnx", str(onnx), "--data", TINY_DATA, *extra]


def _needs_non_root(c: Ctx) -> None:
    if os.geteuid() == 0:
        pytest.skip("permissions are not enforced for root")


def _readonly_dir(c: Ctx) -> Path:
    _needs_non_root(c)
    d = c.root / "ro"
    d.mkdir()
    d.chmod(0o500)
    c.cleanup.append(lambda: d.chmod(0o700))
    return d


RunCase = Callable[[Ctx], list[str]]
RUN_CASES: list[tuple[str, RunCase, int, tuple[str, ...]]] = [
    # --- the run directory itself
    # the refusal names the keys that differ, old -> new
    ("resume with another student", lambda c: c.distill("--student", "tinycnn_w16"), USAGE,
     ("different configuration", "arch: ", "-> tinycnn_w16")),
    ("resume with another loss parameter", lambda c: c.distill("--set", "kd.T=2"), USAGE,
     ("different configuration", "params.T: 4.0 -> 2")),
    ("resume with other data", lambda c: c.distill("--data", "synthetic:classes=3,size=8,n=120"), USAGE,
     ("different configuration", "data: ", "n=120")),
    ("resume with another seed", lambda c: c.distill("--set", "train.seed=7"), USAGE,
     ("different configuration", "seed: 0 -> 7")),
    ("run directory busy", lambda c: (_hold_lock(c), c.distill())[1], USAGE, ("in use",)),
    ("--restart of a busy run directory", lambda c: (_hold_lock(c), c.distill() + ["--restart"])[1], USAGE,
     ("in use",)),
    ("checkpoints/ links out of the run", lambda c: (_link(c, "checkpoints", True), c.distill())[1], INPUT,
     ("symlink", "checkpoints")),
    ("plots/ links out of the run", lambda c: (_link(c, "plots", True), c.distill())[1], INPUT, ("symlink", "plots")),
    ("report.json links out of the run", lambda c: (_link(c, "report.json", False), c.distill())[1], INPUT,
     ("symlink", "report.json")),
    ("student.onnx links out of the run", lambda c: (_link(c, "student.onnx", False), c.distill())[1], INPUT,
     ("symlink", "student.onnx")),
    ("checkpoints/last.pt links out of the run", lambda c: (_link(c, "checkpoints/last.pt", False), c.distill())[1],
     INPUT, ("symlink", "last.pt")),
    ("--restart with a symlinked checkpoints/",
     lambda c: (_link(c, "checkpoints", True), c.distill() + ["--restart"])[1], INPUT, ("symlink",)),
    ("--out is a file of the run", lambda c: c.distill(out=c.run / "config.json"), INPUT, ("not a directory",)),
    ("--out below a file", lambda c: c.distill(out=c.run / "report.md" / "sub"), INPUT, ("not a directory",)),
    ("--out a foreign non-empty directory", lambda c: c.distill(out=_foreign(c, "notes.txt", "data.csv")), USAGE,
     ("not a kdcompress run", "--force", "notes.txt")),
    ("--out a directory holding only a dotfile", lambda c: c.distill(out=_foreign(c, ".gitignore")), USAGE,
     ("not a kdcompress run",)),
    ("--out empty", lambda c: c.distill(out=""), USAGE, ("--out is empty",)),
    ("--out= empty", lambda c: [a for a in c.distill() if a not in ("--out", str(c.run))] + ["--out="], USAGE,
     ("--out is empty",)),
    ("--out /proc", lambda c: c.distill(out="/proc"), INPUT, ("/proc",)),
    ("--out inside /proc", lambda c: c.distill(out="/proc/self/kdc"), INPUT, ("/proc",)),
    ("--out /dev/null", lambda c: c.distill(out="/dev/null"), INPUT, ("/dev",)),
    ("--out a dangling symlink", lambda c: (os.symlink(c.root / "nowhere", c.root / "dangling"),
                                            c.distill(out=c.root / "dangling"))[1], INPUT, ("dangling",)),
    ("--out in a read-only directory", lambda c: c.distill(out=_readonly_dir(c) / "run"), INPUT, ("not writable",)),
    # --- values refused where they enter
    ("--budget-ms nan", lambda c: c.distill("--budget-ms", "nan"), USAGE, ("--budget-ms",)),
    ("--budget-ms inf", lambda c: c.distill("--budget-ms", "inf"), USAGE, ("--budget-ms",)),
    ("--budget-ms not a number", lambda c: c.distill("--budget-ms", "abc"), USAGE, ("--budget-ms",)),
    ("--epochs not a number", lambda c: c.distill("--epochs", "two"), USAGE, ("--epochs",)),
    ("an unknown flag", lambda c: c.distill("--epoch", "2"), USAGE, ("--epoch",)),
    ("kd.T zero", lambda c: c.distill("--set", "kd.T=0"), USAGE, ("T",)),
    ("kd.T negative", lambda c: c.distill("--set", "kd.T=-2"), USAGE, ("T",)),
    ("kd.T inf", lambda c: c.distill("--set", "kd.T=inf"), USAGE, ("T",)),
    ("kd.T nan", lambda c: c.distill("--set", "kd.T=nan"), USAGE, ("T",)),
    ("dkd T inf", lambda c: c.distill("--preset", "dkd", "--set", "dkd.T=inf"), USAGE, ("T",)),
    ("kd.weight negative", lambda c: c.distill("--set", "kd.weight=-1"), USAGE, ("weight",)),
    ("train.lr nan", lambda c: c.distill("--set", "train.lr=nan"), USAGE, ("lr",)),
    ("train.momentum 1", lambda c: c.distill("--set", "train.momentum=1"), USAGE, ("momentum",)),
    ("train.batch_size negative", lambda c: c.distill("--set", "train.batch_size=-4"), USAGE, ("batch_size",)),
    ("train.seed negative", lambda c: c.distill("--set", "train.seed=-1"), USAGE, ("seed",)),
    ("--mean nan", lambda c: c.distill("--mean", "nan"), USAGE, ("--mean",)),
    ("--std inf", lambda c: c.distill("--std", "inf"), USAGE, ("--std",)),
    ("--std zero", lambda c: c.distill("--std", "0"), USAGE, ("--std",)),
    ("a huge --input-shape", lambda c: c.distill("--input-shape", "1,100000,100000"), INPUT, ("limits",)),
    ("teacher weight NaN", lambda c: c.distill("--teacher", str(_broken_teacher(c, float("nan")))), INPUT,
     ("NaN or infinite", "broken_param.pt")),
    ("teacher weight inf", lambda c: c.distill("--teacher", str(_broken_teacher(c, float("inf")))), INPUT,
     ("NaN or infinite",)),
    ("teacher buffer inf", lambda c: c.distill("--teacher", str(_broken_teacher(c, float("inf"), "buffer"))), INPUT,
     ("NaN or infinite", "running_var")),
    ("teacher checkpoint std 0", lambda c: c.distill("--teacher", str(_teacher_with_spec(c, std=[0.0]))), INPUT,
     ("std",)),
    ("teacher checkpoint mean NaN", lambda c: c.distill("--teacher", str(_teacher_with_spec(c, mean=[float("nan")]))),
     INPUT, ("finite",)),
    ("ONNX teacher with NaN mean metadata",
     lambda c: c.distill("--teacher", str(_tiny_onnx(c, "t.onnx", meta={"mean": "[NaN]"}))), INPUT, ("finite",)),
    ("ONNX teacher with an IR version ORT cannot run",
     lambda c: c.distill("--teacher", str(_tiny_onnx(c, "t.onnx", ir=ORT_TOO_NEW_IR))), INPUT, ("IR version",)),
    # --- files that are not regular files
    ("teacher is a FIFO", lambda c: c.distill("--teacher", str(_fifo(c, "t.pt"))), INPUT, ("FIFO",)),
    ("teacher is a device", lambda c: c.distill("--teacher", "/dev/zero"), INPUT, ("device",)),
    ("CSV data is a FIFO", lambda c: c.distill("--data", f"csv:{_fifo(c, 'list.csv')}"), INPUT, ("FIFO",)),
    ("teacher inspect of a FIFO", lambda c: ["teacher", "inspect", str(_fifo(c, "t.pt"))], INPUT, ("FIFO",)),
    ("validate a FIFO", lambda c: _validate(c, _fifo(c, "m.onnx")), INPUT, ("FIFO",)),
    ("export a FIFO checkpoint", lambda c: ["export", "--checkpoint", str(_fifo(c, "s.pt"))], INPUT, ("FIFO",)),
    # --- other commands against the run
    ("export --out a directory", lambda c: ["export", "--run", str(c.run), "--out", str(c.run)], INPUT, ("directory",)),
    ("export --opset beyond ONNX Runtime", lambda c: ["export", "--run", str(c.run), "--opset", "99"], USAGE,
     ("--opset",)),
    ("export --opset below the exporter", lambda c: ["export", "--run", str(c.run), "--opset", "11"], USAGE,
     ("--opset",)),
    ("validate an all-inf model", lambda c: _validate(c, _tiny_onnx(c, "inf.onnx", add=float("inf"))), 5,
     ("finite",)),
    ("validate an all-NaN model", lambda c: _validate(c, _tiny_onnx(c, "nan.onnx", add=float("nan"))), 5,
     ("finite",)),
    ("validate a model with NaN std metadata", lambda c: _validate(c, _tiny_onnx(c, "m.onnx", meta={"std": "[NaN]"})),
     INPUT, ("m.onnx", "finite")),
    ("validate an IR version ORT cannot run", lambda c: _validate(c, _tiny_onnx(c, "m.onnx", ir=ORT_TOO_NEW_IR)), INPUT,
     ("IR version",)),
    ("validate --budget-ms nan", lambda c: _validate(c, c.run / "student.onnx", "--budget-ms", "nan"), USAGE,
     ("--budget-ms",)),
    ("validate --throughput-batch 0", lambda c: _validate(c, c.run / "student.onnx", "--throughput-batch", "0"), USAGE,
     ("--throughput-batch",)),
    ("validate --out a foreign directory", lambda c: _validate(c, c.run / "student.onnx", "--out",
                                                               str(_foreign(c, "report.txt"))), USAGE, ("--force",)),
    ("validate --out a file", lambda c: _validate(c, c.run / "student.onnx", "--out", str(c.run / "report.json")),
     INPUT, ("not a directory",)),
    ("select --batch 0",
     lambda c: ["select", "--teacher", str(c.teacher), "--batch", "0", "--candidates", "tinycnn_w8"],
     USAGE, ("--batch",)),
]


def test_the_run_corpus_is_large_enough():
    assert len(RUN_CASES) >= 40
    assert len({name for name, *_ in RUN_CASES}) == len(RUN_CASES)


@pytest.mark.parametrize("name, make, code, needles", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_refused_against_an_earlier_run(trained_run, tiny_teacher, tmp_path, name, make, code, needles):
    import shutil

    c = Ctx(tmp_path, tmp_path / "run", tiny_teacher, [])
    shutil.copytree(trained_run, c.run, symlinks=True)
    try:
        args = make(c)
        before = snapshot(tmp_path)
        r = runner.invoke(app, args)
        after = snapshot(tmp_path)
    finally:
        for undo in c.cleanup:
            undo()
    assert r.exit_code == code, (r.exit_code, r.output)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("kdcompress: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr
    assert "Traceback" not in r.output and "internal error" not in errors[0]
    for n in needles:
        assert n in errors[0], errors[0]
    assert after == before  # no file of the earlier run (nor any other here) changed, none appeared


# a generator of refused commands: a flag of one command and a value it must refuse
BAD_VALUES = {
    "--budget-ms": ["nan", "inf", "-inf", "0", "-1", "1e999", "abc", ""],
    "--epochs": ["0", "-1", "1.5", "x"],
    "--threads": ["0", "-2", "many"],
    "--stat": ["p0", "mean", ""],
    "--mean": ["nan", "inf", "a,b", ""],
    "--std": ["0", "-1", "nan", "inf"],
    "--input-shape": ["1,8", "0,8,8", "1,-8,8", "1,1000000,1000000", "x"],
    "--set": ["kd.T=0", "kd.T=-1", "kd.T=nan", "kd.T=inf", "kd.weight=-0.5", "kd.weight=nan", "train.lr=inf",
              "train.lr=-1", "train.momentum=1", "train.momentum=-0.1", "train.batch_size=0", "train.seed=-5",
              "train.weight_decay=-1", "train.epochs=0", "kd.TT=1"],
    "--preset": ["kdd", "/nonexistent.toml"],
    "--student": ["resnet9", ""],
    "--provider": ["openvino", ""],
}


def test_property_a_run_directory_survives_any_refused_command(trained_run, tiny_teacher, tmp_path):
    """A seeded random sequence of refused distill commands (a bad value for one flag each, sometimes with
    --restart) aimed at a finished run: each exits non-zero with one line, and afterwards the run directory
    is byte-identical, file for file, mode for mode."""
    import shutil

    c = Ctx(tmp_path, tmp_path / "run", tiny_teacher, [])
    shutil.copytree(trained_run, c.run, symlinks=True)
    before = snapshot(tmp_path)
    rng = random.Random(12)
    pairs = [(f, v) for f, vs in BAD_VALUES.items() for v in vs]
    for flag, value in rng.sample(pairs, 24):
        args = c.distill(flag, value) + (["--restart"] if rng.random() < 0.3 else [])
        r = runner.invoke(app, args)
        assert r.exit_code in (USAGE, INPUT), (flag, value, r.exit_code, r.output)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("kdcompress: error:"), (flag, value, r.stderr)
        assert snapshot(tmp_path) == before, (flag, value)
