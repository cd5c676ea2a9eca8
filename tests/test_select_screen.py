"""Screening on the fast TorchScript export, confirming on the dynamo graph that ships.

Fake measurements (select.measure_model / tune_model / export_wave monkeypatched: the fake "bytes" name
the graph they are of, so the fake clock sees which graph each measurement was of), plus real exports of
tiny zoo models: the fallback to dynamo when TorchScript fails, the precision variants made from the
screening bytes, the ladder written with shipping bytes, and both graphs giving the same logits in ORT."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import kdcompress.select.search as sel_mod
from kdcompress.core.config import Budget, RuntimeConfig
from kdcompress.runtime.onnxio import INPUT_NAME, onnx_bytes, screen_bytes
from kdcompress.runtime.ortbench import LatencyStats, SessionSettings
from kdcompress.core.spec import InputSpec
from kdcompress.select.ladder import Exporter, export_ladder
from kdcompress.select.cache import cache_path
from kdcompress.select.search import select
from kdcompress.students.registry import STUDENTS, capacity

SPEC = InputSpec((1, 8, 8), (0.5,), (0.25,))
NAMES = ("tinycnn_w8", "vgg8_x0_25", "resnet8", "resnet14")
BY_PARAMS = {capacity(STUDENTS.get(n).build(3, SPEC), SPEC).params: n for n in NAMES}


def stats(ms: float) -> LatencyStats:
    return LatencyStats(ms, ms * 1.2, ms * 1.3, ms, ms * 0.9, 100, 1, 1000 / ms)


class Clock:
    """Fake measure_model: latency from `fn(name, graph)`; records (name, graph measured) per call."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, model, spec, runtime, batch, *, onnx=None, precision="fp32", settings=None, graph="ship"):
        name = BY_PARAMS.get(sum(p.numel() for p in model.parameters()), "teacher")
        measured = onnx.decode() if onnx is not None else graph
        self.calls.append((name, measured))
        return stats(self.fn(name, measured))


@pytest.fixture
def clock(monkeypatch):
    def install(fn, tune_calls=None):
        c = Clock(fn)
        monkeypatch.setattr(sel_mod, "measure_model", c)
        # the fresh-process draws: more measurements by the same fake clock, as many as select asks for
        monkeypatch.setattr(sel_mod, "confirm_measurements",
                            lambda *a, **k: (c(*a, **k) for _ in range(sel_mod.CONFIRM_MAX)))
        monkeypatch.setattr(sel_mod, "export_wave", lambda ex, jobs, graph="ship":
                            {j: (graph.encode(), graph) for j in jobs})

        def tune(model, spec, runtime, batch, stat, *, onnx=None, precision="fp32"):
            if tune_calls is not None:
                tune_calls.append(onnx)
            return SessionSettings(1), c(model, spec, runtime, batch, onnx=onnx)
        monkeypatch.setattr(sel_mod, "tune_model", tune)
        return c
    return install


LAT = {"tinycnn_w8": 0.01, "vgg8_x0_25": 0.02, "resnet8": 0.03, "resnet14": 0.06, "teacher": 0.5}


def choose(budget, **kw):
    return select(num_classes=3, spec=SPEC, budget=Budget(budget), runtime=RuntimeConfig(), names=NAMES, **kw)


def test_screening_on_the_fast_graph_confirmation_on_the_shipping_graph(clock):
    c = clock(lambda n, g: LAT[n])
    s = choose(0.045)
    assert s.chosen.name == "resnet8" and s.chosen.confirmed and s.chosen.graph == "ship"
    assert [x for x in c.calls if x[1] == "screen"] == [(n, "screen") for n in NAMES]  # each screened once
    # every confirming draw ships: this process's, then CONFIRM_MAX fresh ones (0.03 ms has no 2x headroom)
    assert [x for x in c.calls if x[1] == "ship"] == [("resnet8", "ship")] * (1 + sel_mod.CONFIRM_MAX)
    assert {x.name: x.graph for x in s.candidates} == {"tinycnn_w8": "screen", "vgg8_x0_25": "screen",
                                                        "resnet8": "ship", "resnet14": "screen"}
    assert s.to_json()["chosen"]["graph"] == "ship"
    entries = json.loads(cache_path().read_text())
    confirmed = [e for e in entries.values() if e["confirmed"]]
    assert len(confirmed) == 1 and confirmed[0]["graph"] == "ship"
    assert sorted(e["graph"] for e in entries.values() if not e["confirmed"]) == ["screen"] * 3
    c.calls.clear()
    warm = choose(0.045)  # from the cache: the confirmed figure stays the shipping graph's
    assert c.calls == [] and warm.chosen.graph == "ship" and warm.chosen.latency == s.chosen.latency


def test_tuned_confirmation_sweeps_and_measures_the_shipping_bytes(clock):
    swept = []
    c = clock(lambda n, g: LAT[n], tune_calls=swept)
    s = choose(0.045, tune=True, use_cache=False)
    assert swept == [b"ship"] and s.chosen.graph == "ship"
    assert [x for x in c.calls if x[1] == "ship"] == [("resnet8", "ship")] * (1 + sel_mod.CONFIRM_MAX)


def test_the_shipping_graph_decides(clock):
    # resnet8 screens inside the budget but its shipping graph is slower: the next one down is confirmed
    c = clock(lambda n, g: 0.05 if (n, g) == ("resnet8", "ship") else LAT[n])
    s = choose(0.045, use_cache=False)
    assert s.chosen.name == "vgg8_x0_25" and s.chosen.graph == "ship"
    r8 = next(x for x in s.candidates if x.name == "resnet8")
    assert not r8.fits and r8.confirmed and r8.graph == "ship" and r8.latency.p50 == 0.05
    # resnet8's first shipping draw is over: no fresh process is started for it; vgg8_x0_25 (0.02 ms) has
    # 2x headroom, so CONFIRM_MIN fresh draws settle it
    assert [n for n, g in c.calls if g == "ship"] == ["resnet8"] + ["vgg8_x0_25"] * (1 + sel_mod.CONFIRM_MIN)


def test_choice_and_pruning_unchanged_when_the_graphs_agree(clock):
    for budget in (0.015, 0.025, 0.045, 0.07):
        c = clock(lambda n, g: LAT[n])
        pruned = choose(budget, use_cache=False)
        c2 = clock(lambda n, g: LAT[n])
        full = choose(budget, use_cache=False, prune=False)
        assert pruned.chosen.name == full.chosen.name == max(
            (n for n in NAMES if LAT[n] <= budget), key=lambda n: LAT[n])
        assert len(c.calls) <= len(c2.calls)


def test_a_screening_figure_that_fell_back_to_ship_counts_as_the_first_confirmation(clock, monkeypatch):
    c = clock(lambda n, g: LAT[n])
    monkeypatch.setattr(sel_mod, "export_wave", lambda ex, jobs, graph="ship": {j: (b"ship", "ship") for j in jobs})
    s = choose(0.045, use_cache=False)
    assert s.chosen.name == "resnet8" and s.chosen.graph == "ship"
    # screening (already the shipping graph) counts as this process's draw; then the fresh ones
    assert [n for n, _ in c.calls].count("resnet8") == 1 + sel_mod.CONFIRM_MAX


# ------------------------------------------------------------------------------------------ real exports

def ops(data: bytes) -> set[str]:
    return {n.op_type for n in onnx.load_from_string(data).graph.node}


def logits(data: bytes, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, {INPUT_NAME: x})[0]


def test_screening_and_shipping_bytes_load_in_ort_and_agree():
    model = STUDENTS.get("resnet8").build(3, SPEC).eval()
    screen, graph = screen_bytes(model, SPEC, batch=5)  # static: the batch it is measured at
    ship = onnx_bytes(model, SPEC)
    assert graph == "screen" and "GlobalAveragePool" in ops(screen) and "GlobalAveragePool" not in ops(ship)
    x = np.random.default_rng(0).standard_normal((5, *SPEC.shape)).astype(np.float32)
    a, b = logits(screen, x), logits(ship, x)
    assert a.shape == b.shape == (5, 3)
    assert logits(ship, x[:2]).shape == (2, 3)  # the shipping graph keeps its dynamic batch
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    with torch.no_grad():
        np.testing.assert_allclose(a, model(torch.from_numpy(x)).numpy(), atol=1e-5, rtol=0)


def test_torchscript_failure_falls_back_to_dynamo(monkeypatch):
    real = torch.onnx.export

    def export(*a, **kw):
        if kw.get("dynamo") is False:
            raise RuntimeError("TorchScript cannot trace this")
        return real(*a, **kw)
    monkeypatch.setattr(torch.onnx, "export", export)
    model = STUDENTS.get("tinycnn_w8").build(3, SPEC).eval()
    data, graph = screen_bytes(model, SPEC)
    assert graph == "ship" and "GlobalAveragePool" not in ops(data) and "ReduceMean" in ops(data)
    ex = Exporter(3, SPEC, None, 1)
    blob, graph = ex.screen(("tinycnn_w8", "fp32"))
    assert graph == "ship" and ex.ship(("tinycnn_w8", "fp32")) == blob  # the fallback export is reused


def test_precision_variants_are_made_from_the_screening_bytes():
    seen = []

    def convert(data, spec, precision):
        seen.append((ops(data), precision))
        return data + b""

    ex = Exporter(3, SPEC, convert, 1)
    fp32, g = ex.screen(("tinycnn_w8", "fp32"))
    int8, g8 = ex.screen(("tinycnn_w8", "int8"))
    assert g == g8 == "screen" and int8 == fp32 and seen == [(ops(fp32), "int8")]
    assert "GlobalAveragePool" in seen[0][0]

    def broken(data, spec, precision):
        if "GlobalAveragePool" in ops(data):
            raise ValueError("cannot quantise this graph")
        return data
    blob, graph = Exporter(3, SPEC, broken, 1).screen(("tinycnn_w8", "int8"))
    assert graph == "ship" and "GlobalAveragePool" not in ops(blob)


def test_export_candidates_writes_the_shipping_graph(tmp_path):
    rows = [{"name": "tinycnn_w8", "precision": "fp32", "family": "tinycnn", "params": 1, "flops": 1}]
    export_ladder(tmp_path / "ladder", rows=rows, num_classes=3, spec=SPEC, batch=1, convert=None, workers=1)
    data = (tmp_path / "ladder" / "tinycnn_w8.fp32.onnx").read_bytes()
    assert "GlobalAveragePool" not in ops(data) and "ReduceMean" in ops(data)


def test_real_selection_records_both_graphs():
    s = select(num_classes=3, spec=SPEC, budget=Budget(10.0), runtime=RuntimeConfig(),
               names=("tinycnn_w8", "tinycnn_w16"), use_cache=False)
    assert s.chosen.name == "tinycnn_w16" and s.chosen.graph == "ship" and s.chosen.confirmed
    assert {c.name: c.graph for c in s.candidates} == {"tinycnn_w8": "screen", "tinycnn_w16": "ship"}


def test_fresh_process_measurements_need_no_torch_and_fail_in_one_line(tmp_path):
    """runtime.freshbench: the confirmation's fresh processes time the shipping bytes with onnxruntime alone
    (torch blocked in the child), and a model they cannot load is one EnvironmentProblem line."""
    import subprocess
    import sys

    from kdcompress.core.errors import EnvironmentProblem
    from kdcompress.runtime.freshbench import measure_fresh

    model = STUDENTS.get("tinycnn_w8").build(3, SPEC).eval()
    data = onnx_bytes(model, SPEC)
    runs = measure_fresh(data, "cpu", (1, *SPEC.shape), SessionSettings(1), 2)
    assert len(runs) == 2 and all(r.iters >= 100 and 0 < r.min <= r.p50 <= r.p99 for r in runs)
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    block = ("import sys, importlib.abc\n"
             "class B(importlib.abc.MetaPathFinder):\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name == 'torch' or name.startswith('torch.'):\n"
             "            raise ImportError('torch is blocked')\n"
             "sys.meta_path.insert(0, B())\n"
             "from kdcompress.runtime.freshbench import main\n"
             f"main([{str(path)!r}, 'cpu', '{{\"threads\": 1}}', '1,1,8,8'])\n")
    p = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["iters"] >= 100
    with pytest.raises(EnvironmentProblem, match="fresh process failed: InputError: ONNX Runtime cannot load"):
        measure_fresh(b"not onnx", "cpu", (1, *SPEC.shape), SessionSettings(1), 1)
