"""Tables at 80 columns (COLUMNS=80, piped): no cell is cut. Low-value columns go first; names and the
latency the budget is judged on stay whole."""

from __future__ import annotations

import pytest

from kdcompress.commands import render


def _lat(p50: float) -> dict:
    return {"p50": p50, "p90": p50 * 1.2, "p99": p50 * 1.3, "mean": p50, "min": p50 * 0.9, "iters": 100, "batch": 1,
            "throughput": 1000 / p50}


def _candidate(name: str, p50: float, prec: str = "fp32", **kw) -> dict:
    return {"name": name, "precision": prec, "params": 1_234_567, "flops": 98_765_432, "latency_ms": _lat(p50),
            "fits": p50 < 0.1, "graph": "ship", "draws": 16, **kw}


SEL = {"budget_ms": 0.1, "stat": "p50", "batch": 1, "provider": "cpu", "threads": 1, "warnings": [],
       "chosen": _candidate("shufflenetv2_x1_5", 0.0987), "fallback": None, "skipped": [],
       "candidates": [_candidate("shufflenetv2_x1_5", 0.0987), _candidate("mobilenetv2_x0_75", 0.1234, "int8",
                                                                          slower_than_fp32=True),
                      _candidate("resnet8x4", 12.3456)],
       "teacher": _candidate("timm:resnet18", 45.6789), "teacher_meets_budget": False}


@pytest.fixture
def narrow(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")

    def out() -> str:
        text = capsys.readouterr().out
        assert text and max(len(line) for line in text.splitlines()) <= 80, text
        assert "…" not in text, text
        return text
    return out


def test_the_selection_table_keeps_names_and_latency_whole(narrow):
    render.selection_table(SEL, "kdcompress select")
    text = narrow()
    for s in ("shufflenetv2_x1_5", "0.0987", "12.3456", "45.6789", "timm:resnet18", "<- chosen"):
        assert s in text


def test_the_profile_table_keeps_model_keys_whole(narrow):
    table = {"machine": {"cpu": "AMD EPYC"}, "provider": "cpu", "batch": 1, "processes": 5,
             "models": {f"shufflenetv2_x{w}:int8": {"latency_ms": _lat(0.1 + i), "settings": {
                 "threads": 2, "opt_level": "all", "execution": "sequential"}} for i, w in enumerate(("0_5", "1_0"))}}
    render.profile_table(table)
    text = narrow()
    assert "shufflenetv2_x0_5:int8" in text and "shufflenetv2_x1_0:int8" in text and "1.1000" in text


def test_a_wide_terminal_keeps_every_column(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "160")
    render.selection_table(SEL, "kdcompress select")
    text = capsys.readouterr().out
    assert "graph" in text and "p90 ms" in text and "1,234,567" in text


def test_select_and_export_say_what_to_run_next(capsys):
    render.selection_table(SEL, "kdcompress select")
    assert "next:\n  kdcompress distill --teacher TEACHER --data DATA --budget-ms 0.1\n" in capsys.readouterr().out
    render.export_lines({"artifacts": [{"variant": "fp32", "onnx": "out/student.onnx", "bytes": 1000}]})
    text = capsys.readouterr().out
    assert ("kdcompress validate --onnx out/student.onnx --data DATA" in text
            and "kdcompress predict out/student.onnx" in text)


def test_presets_list_says_which_preset_to_pick():
    import json

    from typer.testing import CliRunner

    from kdcompress.cli import app

    r = CliRunner().invoke(app, ["presets", "list", "--json"])
    guide = json.loads(r.stdout)["guide"]
    assert any("--preset auto" in g for g in guide) and any(g.startswith("A safe default: kd") for g in guide)
    r = CliRunner().invoke(app, ["presets", "list"], env={"COLUMNS": "100"})
    assert "which preset to pick:" in r.stdout and "--preset auto ranks" in r.stdout
