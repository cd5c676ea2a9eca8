"""80 columns through the CLI (issue 27): `select`, `profile`, `teacher inspect` and every `--help` at COLUMNS=80
keep every line within 80 columns and cut no name, number or flag; piped output (a real process, not a tty)
takes its width from $COLUMNS; every command takes --json and prints one strict-JSON object; the next
commands printed after a table paste back into a shell whole. tests/test_narrow.py checks the renderers alone."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from kdcompress.cli import app

from .conftest import TINY_DATA
from .helpers import latency_table as _table

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
NAMES = ("tinycnn_w8", "tinycnn_w16", "mobilenetv2_x0_25", "shufflenetv2_x0_5")


def fits(text: str, width: int) -> list[str]:
    """The lines of `text`, checked to be at most `width` columns with nothing cut short by an ellipsis."""
    lines = text.splitlines()
    assert lines, "no output"
    assert all(len(line) <= width for line in lines), "\n".join(line for line in lines if len(line) > width)
    assert "…" not in text, text
    return lines


def whole(token: str, line: str) -> bool:
    """`token` appears in `line` as itself: not the start or the end of a longer name or number."""
    return re.search(rf"(?<![\w.:-]){re.escape(token)}(?![\w.:-])", line) is not None


def leaf_commands(cmd=None, path: tuple[str, ...] = ()):
    """(command path, click command) of every command kdcompress runs (groups are walked, not listed)."""
    cmd = cmd or get_command(app)
    subs = getattr(cmd, "commands", None)
    if not subs:
        yield path, cmd
        return
    for name, sub in subs.items():
        yield from leaf_commands(sub, (*path, name))


# ------------------------------------------------------------------------------------------ select


def select_args(teacher: Path, table: Path, *extra: str) -> list[str]:
    return ["select", "--teacher", str(teacher), "--candidates", ",".join(NAMES), "--budget-ms", "0.04",
            "--latency-table", str(table), *extra]


def pasted(lines: list[str], start: str) -> str:
    """The command a shell reads from the printed lines that begin with `start` (` \\` continuations joined)."""
    i = next(i for i, line in enumerate(lines) if line.strip().startswith(start))
    parts = [lines[i].strip()]
    while parts[-1].endswith(" \\"):
        i += 1
        parts[-1] = parts[-1][:-2]
        parts.append(lines[i].strip())
    return " ".join(parts)


def test_select_at_80_columns_keeps_every_name_and_latency_whole(tiny_teacher, tmp_path):
    p50s = _table(tmp_path / "latency.json", NAMES)
    r = runner.invoke(app, select_args(tiny_teacher, tmp_path / "latency.json", "--precision", "auto"),
                      env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    lines = fits(r.stdout, 80)
    rows = {}
    for key, p50 in p50s.items():
        name, prec = key.split(":")
        shown = name if prec == "fp32" else f"{name} (int8)"
        row = [line for line in lines if whole(shown, line) and (prec != "fp32" or "(int8)" not in line)]
        assert len(row) == 1, (key, r.stdout)
        assert whole(f"{p50:.4f}", row[0]), (key, row[0])  # the figure the budget is judged on, every digit
        rows[key] = row[0]
    assert "<- chosen" in rows["mobilenetv2_x0_25:fp32"]
    # the next command, wrapped for 80 columns, pastes back into a shell as the one command
    assert pasted(lines, "kdcompress distill") == ("kdcompress distill --teacher TEACHER --data DATA --budget-ms 0.04 "
                                                   "--precision auto")
    # the note on the graph column goes with the column: at 80 columns the column is dropped, and so is the note
    wide = runner.invoke(app, select_args(tiny_teacher, tmp_path / "latency.json", "--precision", "auto"),
                         env={"COLUMNS": "160"})
    assert wide.exit_code == 0 and " graph " in wide.stdout and "graph: screen =" in wide.stdout, wide.stdout
    assert " graph " not in r.stdout and "graph: screen =" not in r.stdout, r.stdout


def test_export_candidates_at_80_columns_names_the_profile_command_whole(tiny_teacher, tmp_path):
    d = tmp_path / "ladder"
    r = runner.invoke(app, ["select", "--teacher", str(tiny_teacher), "--candidates", "tinycnn_w8",
                            "--export-candidates", str(d), "--workers", "1"], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    # a line is longer than 80 columns only to keep the directory's path whole
    assert all(len(line) <= 80 or whole(str(d), line) or whole(f"{d}/latency.json", line) for line in lines), lines
    assert pasted(lines, "kdcompress profile") == f"kdcompress profile {d}"
    assert pasted(lines, "kdcompress select") == f"kdcompress select ... --latency-table {d}/latency.json"
    assert (d / "manifest.json").is_file()


def test_the_next_commands_fit_any_width_and_paste_back_whole():
    from kdcompress.commands.render import shell_lines

    cmd = "kdcompress validate --onnx runs/x/student.onnx --data NEW_DATA --teacher models/teacher.pt"
    assert shell_lines(cmd, 120) == [f"  {cmd}"]
    for width in (40, 60, 80):
        lines = shell_lines(cmd, width)
        assert len(lines) > 1 and all(len(line) <= width for line in lines), lines
        assert pasted(lines, "kdcompress") == cmd
        assert not any(line.rstrip(" \\").endswith(("--onnx", "--data", "--teacher")) for line in lines)  # flag+value
    long_path = "kdcompress predict /" + "d" * 90 + "/student.onnx IMAGES"
    assert pasted(shell_lines(long_path, 80), "kdcompress") == long_path  # a word longer than the line stays whole
    noted = shell_lines("kdcompress profile DIR  # there; then select --latency-table DIR/latency.json", 50)
    assert noted[-1] == "  kdcompress profile DIR" and all(x.startswith("  # ") for x in noted[:-1])


# ------------------------------------------------------------------------------------------ profile (piped)


def candidate_dir(d: Path, keys: tuple[str, ...]) -> None:
    """What `select --export-candidates` writes, by hand: one tiny ONNX classifier (Flatten -> MatMul, written
    with the onnx package) under each key, and the manifest naming them."""
    import hashlib

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from kdcompress.runtime.latencytable import MANIFEST_FORMAT

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])], [w])
    blob = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8).SerializeToString()
    onnx.checker.check_model(onnx.load_from_string(blob))
    d.mkdir()
    entries = []
    for i, key in enumerate(keys):
        name, prec = key.split(":")
        (d / f"{i}.onnx").write_bytes(blob)
        entries.append({"key": key, "name": name, "precision": prec, "family": "shufflenetv2_cifar", "params": 192,
                        "flops": 384, "file": f"{i}.onnx", "sha256": hashlib.sha256(blob).hexdigest()})
    (d / "manifest.json").write_text(json.dumps({"format": MANIFEST_FORMAT, "input_shape": [1, 8, 8],
                                                 "num_classes": 3, "batch": 1, "models": entries}))


def test_piped_profile_takes_its_width_from_columns_and_keeps_model_keys_whole(tmp_path):
    keys = ("shufflenetv2_x0_5:int8", "shufflenetv2_x1_0:int8", "shufflenetv2_x1_0:fp32")
    candidate_dir(tmp_path / "ladder", keys)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = {}
    for cols in ("80", "200"):
        p = subprocess.run([sys.executable, "-m", "kdcompress", "profile", str(tmp_path / "ladder"), "--no-tune",
                            "--processes", "1", "--out", str(tmp_path / f"{cols}.json")], capture_output=True,
                           text=True, env={**env, "COLUMNS": cols}, timeout=300)
        assert p.returncode == 0, p.stderr
        out[cols] = p.stdout
    for cols, text in out.items():
        table = json.loads((tmp_path / f"{cols}.json").read_text())
        lines = fits(text, int(cols))
        for key in keys:  # each key whole, on its own row: the sizes and precisions stay told apart
            row = [line for line in lines if whole(key, line)]
            assert len(row) == 1, (cols, key, text)
            assert whole(f"{table['models'][key]['latency_ms']['p50']:.4f}", row[0]), row[0]
    assert max(len(line) for line in out["200"].splitlines()) > 80  # the wide pipe is not held to 80 columns
    assert "execution" in out["200"] and "execution" not in out["80"]  # a settings column gave way at 80


# ------------------------------------------------------------------------------------------ teacher inspect


def test_teacher_inspect_at_80_columns_cuts_nothing(tiny_teacher):
    import hashlib

    r = runner.invoke(app, ["teacher", "inspect", str(tiny_teacher)], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    lines = fits(r.stdout, 80)
    digest = hashlib.sha256(tiny_teacher.read_bytes()).hexdigest()
    assert f"sha256 {digest}" in lines  # whole, on one line, ready to copy
    assert any(whole("resnet8", line) for line in lines) and any("p50 " in line for line in lines)


# ------------------------------------------------------------------------------------------ distill


def test_distill_at_80_columns_cuts_nothing_and_its_next_commands_paste_whole(tiny_teacher, tmp_path, monkeypatch,
                                                                              capsys):
    from kdcompress.commands.render import distill_summary

    out = tmp_path / "run"
    r = runner.invoke(app, ["distill", "--teacher", str(tiny_teacher), "--data", TINY_DATA, "--student", "tinycnn_w8",
                            "--epochs", "1", "--device", "cpu", "--out", str(out)], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert all(len(line) <= 80 or str(out) in line for line in lines) and "…" not in r.stdout, r.stdout
    row = next(line for line in lines if whole("tinycnn_w8", line) and "│" in line)
    report = json.loads((out / "report.json").read_text())
    assert whole(f"{report['student']['latency_ms']['p50']:.4f}", row), row
    assert pasted(lines, "kdcompress validate") == (f"kdcompress validate --onnx {out}/student.onnx --data NEW_DATA "
                                                    f"--teacher {tiny_teacher}")
    # a timm teacher's long name at 80 columns: the name folds and the latency stays whole, nothing is cut
    monkeypatch.setenv("COLUMNS", "80")
    report["teacher"]["arch"] = "timm:vit_small_patch16_224.augreg_in21k_ft_in1k"
    distill_summary(report)
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if str(out) not in line]
    assert all(len(line) <= 80 for line in lines) and "…" not in text, text
    assert "augreg_in21k_ft_in1k" in "".join(text.split()) and whole(f"{report['teacher']['latency_ms']['p50']:.4f}",
                                                                      text)


@pytest.mark.parametrize("epochs", [None, "2"])
def test_distill_warns_when_no_epochs_leaves_a_long_recipe(epochs, tiny_teacher, tmp_path, monkeypatch):
    """dkd's recipe trains for 240 epochs: without --epochs the run says so, with the flag to give, once every
    check passed (the run is stopped at its first step here, as a `kill` would; it resumes later)."""
    from .helpers import sigterm_at_step

    sigterm_at_step(monkeypatch, epoch=1, step=1)
    r = runner.invoke(app, ["distill", "--teacher", str(tiny_teacher), "--data", TINY_DATA, "--student", "tinycnn_w8",
                            "--preset", "dkd", "--device", "cpu", "--out", str(tmp_path / "run"),
                            *(["--epochs", epochs] if epochs else [])], env={"COLUMNS": "80"})
    assert r.exit_code == 143 and "rerun the same command to resume" in r.stderr, r.output
    said = " ".join(r.stderr.split())
    warned = "no --epochs given: training for the dkd recipe's 240 epochs; give --epochs N for a shorter run"
    assert (warned in said) == (epochs is None), said


# ------------------------------------------------------------------------------------------ --help


@pytest.mark.parametrize("path", [p for p, _ in leaf_commands()], ids=" ".join)
def test_help_at_80_columns_shows_every_flag_name_whole(path):
    cmd = dict(leaf_commands())[path]
    r = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    lines = [line for line in r.stdout.splitlines() if len(line) <= 80]
    assert len(lines) == len(r.stdout.splitlines()), r.stdout
    lines = lines[next(i for i, line in enumerate(lines) if "Options" in line):]  # the options, not the docstring
    for param in cmd.params:
        names = [n for n in (*param.opts, *param.secondary_opts) if n.startswith("-")]
        if not names or getattr(param, "hidden", False):  # hidden: old spellings of distill's --set job keys
            continue
        # the option's own row: it starts with one of its names, and every one of them stands there whole
        row = [line for line in lines if (m := re.match(r"[│ *]{0,6}(-[\w-]+)", line)) and m.group(1) in names]
        assert len(row) == 1 and all(whole(n, row[0]) for n in names), (path, names, r.stdout)


@pytest.mark.parametrize("path", [p for p, _ in leaf_commands()], ids=" ".join)
def test_help_at_80_columns_cuts_no_word_of_a_help_text(path):
    r = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert r.exit_code == 0 and "…" not in r.stdout, r.stdout


# ------------------------------------------------------------------------------------------ --json everywhere


def test_every_command_takes_json():
    lacking = [" ".join(p) for p, cmd in leaf_commands() if not any("--json" in x.opts for x in cmd.params)]
    assert not lacking, f"commands without --json: {lacking}"


def strict(text: str) -> dict:
    def refuse(name: str):
        raise AssertionError(f"{name} in --json output")
    obj = json.loads(text, parse_constant=refuse)
    assert isinstance(obj, dict)
    return obj


@pytest.mark.parametrize("args", [["presets", "list"], ["presets", "show", "dkd"], ["doctor"],
                                  ["teacher", "inspect", "TEACHER"], ["select", "TABLE"]], ids=lambda a: " ".join(a))
def test_json_is_one_strict_object_on_stdout_at_any_width(args, tiny_teacher, tmp_path):
    if args[0] == "select":
        _table(tmp_path / "latency.json", NAMES)
        args = select_args(tiny_teacher, tmp_path / "latency.json")
    args = [str(tiny_teacher) if a == "TEACHER" else a for a in args]
    r = runner.invoke(app, [*args, "--json"], env={"COLUMNS": "40"})
    assert r.exit_code == 0, r.output
    obj = strict(r.stdout)  # the whole of stdout: no table, no next steps, however narrow the terminal
    assert json.dumps(obj) and "next:" not in r.stdout
