"""The CLI's shared surfaces (issue 24): one set of teacher flags for every command that reads a teacher,
an ONNX teacher in select (FLOPs counted on its graph, unknown kept distinct from 0), preset names that a
file in the working directory cannot shadow, an empty --candidates refused, and every --json an object."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

import kdcompress.select.search as sel_mod
import kdcompress.teacher.formats as formats_mod
from kdcompress.cli import app
from kdcompress.core.checkpoint import save_checkpoint
from kdcompress.core.config import load_preset
from kdcompress.core.errors import UsageError
from kdcompress.runtime.ortbench import LatencyStats
from kdcompress.core.spec import InputSpec
from kdcompress.students.registry import STUDENTS, capacity

from .conftest import TINY_DATA
from .helpers import tree_hash

runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
SPEC = InputSpec((1, 8, 8), (0.5,), (0.25,))  # TINY_DATA's images: 1x8x8, 3 classes
SPEC_FLAGS = ["--input-shape", "1,8,8", "--mean", "0.5", "--std", "0.25"]
TEACHER_FLAGS = {"--teacher-arch", "--num-classes", "--classes", "--input-shape", "--mean", "--std",
                 "--trust-checkpoint"}


def cli(*args: str):
    return runner.invoke(app, list(args))


def one_line_error(r, code: int, needle: str) -> None:
    assert r.exit_code == code, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("kdcompress: error: ") and needle in lines[0], r.stderr
    assert "Traceback" not in r.output




@pytest.fixture(scope="module")
def zoo_model():
    torch.manual_seed(0)
    return STUDENTS.get("resnet8x2").build(3, SPEC).eval()


@pytest.fixture
def plain_state_dict(tmp_path, zoo_model) -> Path:
    """A teacher as training code writes it: torch.save(model.state_dict()), nothing else recorded."""
    path = tmp_path / "teacher_sd.pt"
    torch.save(zoo_model.state_dict(), path)
    return path


@pytest.fixture
def plain_onnx(tmp_path, zoo_model) -> Path:
    """A teacher exported by plain torch.onnx.export: no kdcompress metadata, no normalisation recorded."""
    path = tmp_path / "teacher.onnx"
    torch.onnx.export(zoo_model, (torch.zeros(1, *SPEC.shape),), str(path), input_names=["x"], output_names=["y"],
                      dynamo=False)
    return path


def fast_clock(monkeypatch) -> None:
    """Fake ORT figures for the students (no ONNX export either); the teacher's own file is measured for real."""
    stats = LatencyStats(0.01, 0.012, 0.013, 0.01, 0.009, 100, 1, 1e5)
    monkeypatch.setattr(sel_mod, "measure_model", lambda *a, **k: stats)
    monkeypatch.setattr(sel_mod, "export_wave", lambda ex, jobs, graph="ship": {j: (b"", graph) for j in jobs})


# ------------------------------------------------------------------------------ one set of teacher flags


def _commands(group, prefix=()):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield " ".join((*prefix, name)), cmd


def test_every_command_that_reads_a_teacher_takes_the_same_teacher_flags():
    """Enumerates the CLI: every command with a `teacher` parameter (option or argument) declares exactly the
    same teacher flags, with the same help, kind, default and negation. export is the one exception: its --teacher is
    only hashed into the ONNX metadata, never loaded, so no flag could change what it does."""
    declared = {}
    for name, cmd in _commands(typer.main.get_command(app)):
        params = {p.name: p for p in cmd.params}
        if "teacher" not in params:
            continue
        if name == "export":
            assert "checksum" in params["teacher"].help
            assert not TEACHER_FLAGS & {o for p in cmd.params for o in p.opts}
            continue
        flags = {o: p for p in cmd.params for o in p.opts if o in TEACHER_FLAGS}
        assert set(flags) == TEACHER_FLAGS, (name, TEACHER_FLAGS - set(flags))
        declared[name] = {o: (p.help, p.is_flag, p.metavar, p.default, tuple(p.secondary_opts))
                          for o, p in flags.items()}
    assert set(declared) == {"distill", "select", "validate", "teacher inspect"}
    first = next(iter(declared.values()))
    assert all(d == first for d in declared.values()), declared


def test_select_takes_a_plain_state_dict_teacher(plain_state_dict, zoo_model):
    r = cli("select", "--teacher", str(plain_state_dict), "--teacher-arch", "zoo:resnet8x2", *SPEC_FLAGS,
            "--candidates", "tinycnn_w8", "--json")
    assert r.exit_code == 0, r.output
    j = json.loads(r.stdout)
    assert j["teacher"]["name"] == "resnet8x2" and j["teacher"]["flops"] == capacity(zoo_model, SPEC).flops
    assert [c["name"] for c in j["candidates"]] == ["tinycnn_w8"]


def test_select_names_the_missing_teacher_flag(plain_state_dict):
    r = cli("select", "--teacher", str(plain_state_dict), *SPEC_FLAGS, "--candidates", "tinycnn_w8")
    one_line_error(r, UsageError.exit_code, "give --teacher-arch NAME")


def test_validate_takes_a_plain_state_dict_teacher(plain_state_dict, plain_onnx, tmp_path):
    """The student here is the teacher's own ONNX export (no metadata): --mean/--std describe both."""
    out = tmp_path / "val"
    r = cli("validate", "--onnx", str(plain_onnx), "--data", TINY_DATA, "--teacher", str(plain_state_dict),
            "--teacher-arch", "zoo:resnet8x2", *SPEC_FLAGS, "--out", str(out), "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["teacher"]["arch"] == "resnet8x2" and rep["teacher"]["path"] == str(plain_state_dict)
    # the same weights and normalisation on both sides: the same accuracy
    assert rep["teacher"]["accuracy"] == pytest.approx(rep["variants"][0]["accuracy"])
    assert (out / "report.json").is_file()


def test_validate_refuses_teacher_flags_without_a_teacher(plain_onnx, tmp_path):
    before = tree_hash(tmp_path)
    r = cli("validate", "--onnx", str(plain_onnx), "--data", TINY_DATA, "--teacher-arch", "resnet8x2", *SPEC_FLAGS,
            "--out", str(tmp_path / "val"))
    one_line_error(r, UsageError.exit_code, "--teacher-arch describes a teacher; give --teacher FILE")
    assert tree_hash(tmp_path) == before


# ------------------------------------------------------------------------------ ONNX teacher in select


def test_select_with_an_onnx_teacher_filters_by_its_graph_flops(plain_onnx, zoo_model, monkeypatch):
    """Before: the ORT-run teacher counted 0 FLOPs, so every candidate was 'larger' and select refused with
    "no student candidate suits this teacher", although distill took the same file."""
    fast_clock(monkeypatch)
    r = cli("select", "--teacher", str(plain_onnx), "--mean", "0.5", "--std", "0.25", "--json")
    assert r.exit_code == 0, r.output
    j = json.loads(r.stdout)
    t_flops = capacity(zoo_model, SPEC).flops
    assert j["teacher"]["flops"] == t_flops and j["teacher"]["graph"] == "ship"  # measured on its own file
    assert j["teacher"]["latency_ms"]["p50"] > 0
    assert j["candidates"] and all(c["flops"] < t_flops for c in j["candidates"])
    assert "resnet8" in {c["name"] for c in j["candidates"]}  # 1.5 MFLOPs < the teacher's 5.5


def test_select_with_unknown_teacher_flops_filters_nothing(plain_onnx, zoo_model, monkeypatch):
    """A graph whose FLOPs cannot be counted is unknown (null), never 0: no candidate is dropped for it."""
    fast_clock(monkeypatch)
    monkeypatch.setattr(formats_mod, "onnx_flops", lambda *a, **k: None)
    r = cli("select", "--teacher", str(plain_onnx), "--mean", "0.5", "--std", "0.25", "--json")
    assert r.exit_code == 0, r.output
    j = json.loads(r.stdout)
    assert j["teacher"]["flops"] is None
    # unfiltered by FLOPs: every student that suits the input and has no more parameters than the teacher
    limit = j["teacher"]["params"]  # counted on the ONNX graph (BN folded): a little under resnet8x2's in torch
    want = {n for n in STUDENTS.names() if STUDENTS.get(n).suits(SPEC)
            and capacity(STUDENTS.get(n).build(3, SPEC), SPEC).params <= limit}
    assert {c["name"] for c in j["candidates"]} == want
    r = cli("select", "--teacher", str(plain_onnx), "--mean", "0.5", "--std", "0.25")  # the table renders it
    assert r.exit_code == 0 and "unknown" in r.stdout, r.output


def test_two_onnx_teachers_do_not_share_a_latency_entry(tmp_path, zoo_model):
    from kdcompress.teacher import load_teacher

    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    for path, width in ((a, "resnet8x2"), (b, "resnet8")):
        m = STUDENTS.get(width).build(3, SPEC).eval()
        torch.onnx.export(m, (torch.zeros(1, *SPEC.shape),), str(path), dynamo=False)
    models = [load_teacher(p, options=formats_mod.TeacherOptions(mean=(0.5,), std=(0.25,))).model for p in (a, b)]
    assert repr(models[0]) != repr(models[1])  # repr keys select's latency cache


def test_onnx_flops_match_torch_for_a_torchvision_model(tmp_path):
    import onnx
    import torchvision

    from kdcompress.teacher.onnxflops import onnx_flops

    spec = InputSpec((3, 32, 32), (0.0,) * 3, (1.0,) * 3)
    m = torchvision.models.mobilenet_v3_small(num_classes=5).eval()
    torch.onnx.export(m, (torch.zeros(2, *spec.shape),), str(tmp_path / "m.onnx"), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    assert onnx_flops(onnx.load(str(tmp_path / "m.onnx")), spec.shape) == capacity(m, spec).flops


# ------------------------------------------------------------------------------ presets


def test_builtin_preset_names_win_over_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "kd").write_text("this is not TOML [")
    (tmp_path / "nd").mkdir()
    (tmp_path / "ce").write_text('[[loss]]\nkind = "kd"\nweight = 7.0\n')  # a valid preset, not the built-in ce
    assert [t.kind for t in load_preset("kd").terms] == ["ce", "kd"]
    assert [t.kind for t in load_preset("nd").terms] == ["ce", "kd", "nd"]
    assert [t.kind for t in load_preset("ce").terms] == ["ce"]
    r = cli("presets", "show", "kd", "--json")  # the CLI's default --preset is this same name
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["name"] == "kd"


def test_a_user_preset_is_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = '[[loss]]\nkind = "ce"\nweight = 0.5\n[[loss]]\nkind = "kd"\nweight = 2.5\n'
    (tmp_path / "kd.toml").write_text(text)
    (tmp_path / "mine").write_text(text)
    assert [t.weight for t in load_preset("./kd.toml").terms] == [0.5, 2.5]
    assert [t.weight for t in load_preset("kd.toml").terms] == [0.5, 2.5]
    assert [t.weight for t in load_preset(str(tmp_path / "mine")).terms] == [0.5, 2.5]
    assert [t.weight for t in load_preset("./mine").terms] == [0.5, 2.5]
    with pytest.raises(UsageError, match="unknown preset 'mine'.*give ./mine"):
        load_preset("mine")


# ------------------------------------------------------------------------------ --candidates, --json


@pytest.mark.parametrize("value", ["", ",", " , ,", " "])
def test_select_empty_candidates_is_refused(tmp_path, value):
    teacher = tmp_path / "t.pt"
    save_checkpoint(teacher, STUDENTS.get("tinycnn_w8").build(3, SPEC), "tinycnn_w8", ("a", "b", "c"), SPEC)
    before = tree_hash(tmp_path)
    r = cli("select", "--teacher", str(teacher), "--candidates", value, "--out", str(tmp_path / "sel"))
    one_line_error(r, UsageError.exit_code, "--candidates is empty; give names like a,b or omit it")
    assert tree_hash(tmp_path) == before


def test_every_cheap_json_output_is_an_object(tmp_path, plain_onnx):
    teacher = tmp_path / "t.pt"
    save_checkpoint(teacher, STUDENTS.get("tinycnn_w8").build(3, SPEC), "tinycnn_w8",
                    ("class_0", "class_1", "class_2"), SPEC)
    val = tmp_path / "val"
    runs = [
        ("presets", "list", "--json"),
        ("presets", "show", "kd", "--json"),
        ("doctor", "--json"),
        ("teacher", "inspect", str(teacher), "--json"),
        ("select", "--teacher", str(teacher), "--candidates", "tinycnn_w8", "--json"),
        ("export", "--checkpoint", str(teacher), "--out", str(tmp_path / "s.onnx"), "--json"),
        ("validate", "--onnx", str(tmp_path / "s.onnx"), "--data", TINY_DATA, "--out", str(val), "--json"),
        ("report", str(val), "--json"),
    ]
    for args in runs:
        r = runner.invoke(app, list(args))
        assert r.exit_code == 0, (args, r.output)
        assert isinstance(json.loads(r.stdout), dict), args
