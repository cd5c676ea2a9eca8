"""Selection under a latency budget: ranking on fake measurements, the confirming re-measurement, the
latency cache (hit, miss, invalidation), threads, the `select` CLI and its impossible-budget error."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

import kdcompress.core.system as system_mod
import kdcompress.select.cache as cache_mod
import kdcompress.select.search as sel_mod
from kdcompress.cli import app
from kdcompress.core.config import Budget, RuntimeConfig
from kdcompress.core.errors import BudgetError, UsageError
from kdcompress.runtime.ortbench import LatencyStats, SessionSettings
from kdcompress.core.spec import Capacity, InputSpec
from kdcompress.select.cache import LatencyCache, cache_path
from kdcompress.select.search import Candidate, Selection, select
from kdcompress.select.view import pareto_front
from kdcompress.students.registry import STUDENTS

SPEC = InputSpec((1, 8, 8), (0.5,), (0.25,))
NAMES = ("tinycnn_w8", "vgg8_x0_25", "wrn10_1", "resnet8")
# FLOPs at 1x8x8: tinycnn_w8 46k < vgg8_x0_25 758k < wrn10_1 = resnet8 1.53M (params 77,562 < 77,754)
PARAMS = {sum(p.numel() for p in STUDENTS.get(n).build(3, SPEC).parameters()): n for n in NAMES}
assert len(PARAMS) == len(NAMES)


def stats(p50: float, p90: float | None = None) -> LatencyStats:
    p90 = p50 * 1.2 if p90 is None else p90
    return LatencyStats(p50, p90, p90 * 1.1, p50, p50 * 0.9, 100, 1, 1000 / p50)


class FakeClock:
    """Stands in for select.measure_model: each call for a model returns the next of its latencies."""

    def __init__(self, table: dict[str, list]):
        self.table = {k: list(v) for k, v in table.items()}
        self.calls: list[tuple[str, int | None, int, str]] = []

    def __call__(self, model, spec, runtime, batch, *, onnx=None, precision="fp32", settings=None, graph="ship"):
        name = PARAMS.get(sum(p.numel() for p in model.parameters()), "teacher")
        if precision != "fp32":
            name = f"{name}:{precision}"
        self.calls.append((name, runtime.threads, batch, runtime.provider))
        seq = self.table[name]
        v = seq.pop(0) if len(seq) > 1 else seq[0]
        return v if isinstance(v, LatencyStats) else stats(v)


def fake_export(ex, jobs, graph="ship"):
    """Fake clocks need no ONNX: the 'bytes' name the graph asked for, so a clock sees what it measures."""
    return {j: (graph.encode(), graph) for j in jobs}


@pytest.fixture
def clock(monkeypatch):
    def install(table):
        c = FakeClock(table)
        monkeypatch.setattr(sel_mod, "measure_model", c)
        # the fresh-process draws: more measurements by the same fake clock, as many as select asks for
        monkeypatch.setattr(sel_mod, "confirm_measurements",
                            lambda *a, **k: (c(*a, **k) for _ in range(sel_mod.CONFIRM_MAX)))
        monkeypatch.setattr(sel_mod, "export_wave", fake_export)  # fake clocks need no ONNX

        def tune(model, spec, runtime, batch, stat, *, onnx=None, precision="fp32"):
            return SessionSettings(runtime.threads or 1), c(model, spec, runtime, batch, precision=precision)
        monkeypatch.setattr(sel_mod, "tune_model", tune)
        return c
    return install


LAT = {"tinycnn_w8": [0.01], "vgg8_x0_25": [0.05], "wrn10_1": [0.02], "resnet8": [0.04], "teacher": [0.5]}


def run(budget_ms, names=NAMES, stat="p50", runtime=RuntimeConfig(), teacher=True, **kw) -> Selection:
    t = STUDENTS.get("resnet8x2").build(3, SPEC) if teacher else None
    return select(num_classes=3, spec=SPEC, budget=Budget(budget_ms, stat), runtime=runtime, teacher_model=t,
                  teacher_name="resnet8x2", names=names, **kw)


class Recorded:
    """A Reporter that keeps every call, to check what a bar drawn from them would show."""

    def __init__(self):
        self.calls: list[tuple[str, int]] = []

    def plan(self, units: int) -> None:
        self.calls.append(("plan", units))

    def step(self, what: str) -> None:
        pass

    def advance(self, units: int = 1) -> None:
        self.calls.append(("advance", units))


def test_the_bar_of_a_selection_with_a_budget_never_steps_back(clock):
    """The first confirmation is planned with the candidates, so the bar does not go back from 100% when it
    starts; a selection whose first choice holds ends with every planned unit done."""
    clock(LAT)
    rec = Recorded()
    s = run(1.0, report=rec)
    assert s.chosen.name == "resnet8"
    first_advance = next(i for i, (k, _) in enumerate(rec.calls) if k == "advance")
    assert all(k == "advance" for k, _ in rec.calls[first_advance:]), rec.calls  # nothing planned late
    planned = sum(n for k, n in rec.calls if k == "plan")
    assert planned == sum(n for k, n in rec.calls if k == "advance") == len(NAMES) + 1 + 1 + sel_mod.CONFIRM_MAX


def test_most_capable_within_budget_wins(clock):
    clock(LAT)
    s = run(0.045)
    # vgg8 (0.05) is over; of the rest, wrn10_1 and resnet8 tie on FLOPs and resnet8 has more params
    assert s.chosen.name == "resnet8" and s.chosen.confirmed
    assert [c.name for c in s.candidates] == ["tinycnn_w8", "vgg8_x0_25", "wrn10_1", "resnet8"]
    assert {c.name: c.fits for c in s.candidates} == {"tinycnn_w8": True, "vgg8_x0_25": False,
                                                       "wrn10_1": True, "resnet8": True}
    assert run(0.03).chosen.name == "wrn10_1"  # resnet8 (0.04) no longer fits; FLOPs beat latency order
    assert run(0.011).chosen.name == "tinycnn_w8"
    assert run(1.0).chosen.name == "resnet8"  # vgg8 fits too but has fewer FLOPs


def test_budget_applies_to_the_chosen_statistic(clock):
    clock({**LAT, "resnet8": [stats(0.02, 0.09)], "wrn10_1": [stats(0.03, 0.04)]})
    assert run(0.045, stat="p50").chosen.name == "resnet8"
    assert run(0.045, stat="p90").chosen.name == "wrn10_1"


def test_confirmation_falls_back_when_the_second_measurement_misses(clock):
    c = clock({**LAT, "resnet8": [0.04, 0.047]})  # lucky first run, slower second one
    s = run(0.045)
    assert s.chosen.name == "wrn10_1"
    r8 = next(x for x in s.candidates if x.name == "resnet8")
    assert not r8.fits and r8.confirmed and r8.latency.p50 == 0.047  # the slower figure is kept
    # one screening measurement each; resnet8's first confirming draw is over budget (no fresh process);
    # wrn10_1 (0.02 ms, 2x headroom) needs this process's draw and CONFIRM_MIN fresh ones
    assert [n for n, *_ in c.calls].count("resnet8") == 2
    assert [n for n, *_ in c.calls].count("wrn10_1") == 2 + sel_mod.CONFIRM_MIN
    # the cache remembers the confirmed (slower) figure: a second run agrees without re-measuring
    c.calls.clear()
    again = run(0.045)
    assert again.chosen.name == "wrn10_1" and c.calls == []


def test_confirmation_keeps_the_slower_measurement_when_both_fit(clock):
    clock({**LAT, "resnet8": [0.03, 0.04]})
    s = run(0.045)
    assert s.chosen.name == "resnet8" and s.chosen.latency.p50 == 0.04


def test_impossible_budget_names_the_fastest(clock):
    clock(LAT)
    with pytest.raises(BudgetError) as e:
        run(0.005)
    assert "0.005 ms" in str(e.value) and "tinycnn_w8" in str(e.value) and "0.0100 ms" in str(e.value)
    assert BudgetError.exit_code == 4


def test_every_confirmation_failing_is_a_budget_error(clock):
    clock({**LAT, "tinycnn_w8": [0.01, 0.02]})
    with pytest.raises(BudgetError, match="tinycnn_w8, measured 0.0200 ms"):
        run(0.015, names=("tinycnn_w8",))


def test_no_budget_is_the_ladder_only(clock):
    c = clock(LAT)
    s = run(None)
    assert s.chosen is None and all(x.fits for x in s.candidates)
    assert not s.teacher_meets_budget and s.warnings == ()
    assert len(c.calls) == len(NAMES) + 1  # no confirmation without a budget
    assert run(None, names=("vgg8_x0_25",)).chosen.name == "vgg8_x0_25"  # distill --student NAME


def test_teacher_meeting_the_budget_warns(clock):
    clock(LAT)
    s = run(0.6)
    assert s.teacher.name == "resnet8x2" and s.teacher.fits and s.teacher_meets_budget
    j = s.to_json()
    assert j["teacher_meets_budget"] is True and "teacher itself meets" in j["warnings"][0]
    assert not run(0.045).teacher_meets_budget


def test_json_shape(clock):
    clock(LAT)
    j = json.loads(json.dumps(run(0.045).to_json()))
    assert j["budget_ms"] == 0.045 and j["stat"] == "p50" and j["threads"] == 1
    assert set(j["chosen"]) >= {"name", "params", "flops", "latency_ms", "fits"}
    assert j["chosen"]["name"] == "resnet8" and j["chosen"]["flops"] == 1_527_040 - 2 * 64 * (10 - 3)  # 3 classes
    assert set(j["chosen"]["latency_ms"]) >= {"p50", "p90"}
    assert len(j["candidates"]) == 4 and all("fits" in c for c in j["candidates"])
    assert j["teacher"]["latency_ms"]["p50"] == 0.5 and j["teacher"]["fits"] is False


def test_plausible_filters_by_teacher_flops_and_regime(clock):
    table = {n: [0.01] for n in PARAMS.values()}
    clock({**table, "teacher": [0.5]})
    names = {n for n, _ in sel_mod.plausible(3, SPEC, Capacity(10**9, 1_000_000))}
    # every small student under 1 MFLOP at 1x8x8, none of the torchvision families (the input is small)
    assert names == {"tinycnn_w8", "tinycnn_w16", "vgg8_x0_25"}
    # nor one with more parameters than the teacher, even with fewer FLOPs (vgg8_x0_25 has 246k at any size)
    assert {n for n, _ in sel_mod.plausible(3, SPEC, Capacity(100_000, 1_000_000))} == {"tinycnn_w8", "tinycnn_w16"}
    assert {n for n, _ in sel_mod.plausible(3, SPEC, Capacity(100_000, None))} >= {"tinycnn_w8", "tinycnn_w16"}
    with pytest.raises(UsageError, match="no student candidate"):
        sel_mod.plausible(3, SPEC, Capacity(10**9, 1))


def test_threads_default_one_and_capped_at_the_cpu_limit(clock, monkeypatch):
    monkeypatch.setattr(system_mod, "cpu_limit", lambda: 2)
    c = clock(LAT)
    assert run(0.045).threads == 1 and {t for _, t, *_ in c.calls} == {1}
    c.calls.clear()
    s = run(0.045, runtime=RuntimeConfig(threads=8))
    assert s.threads == 2 and {t for _, t, *_ in c.calls} == {2}
    assert "exceeds this container's CPU limit (2); using 2" in s.warnings[0]
    assert run(0.045, runtime=RuntimeConfig(threads=2)).warnings == ()


# ------------------------------------------------------------------------------------------ cache


def test_cache_hit_and_miss_on_threads_batch_provider(clock, monkeypatch):
    monkeypatch.setattr(system_mod, "cpu_limit", lambda: 4)
    c = clock(LAT)
    run(0.045)
    # 4 candidates + teacher + resnet8's confirmation (0.04 ms has no 2x headroom: 1 + CONFIRM_MAX draws)
    assert cache_path().is_file() and len(c.calls) == 5 + 1 + sel_mod.CONFIRM_MAX
    c.calls.clear()
    run(0.045)
    assert c.calls == []  # all hits, the chosen one already confirmed
    for rt, batch in ((RuntimeConfig(threads=2), 1), (RuntimeConfig(), 4), (RuntimeConfig(provider="cuda"), 1)):
        c.calls.clear()
        select(num_classes=3, spec=SPEC, budget=Budget(None, batch=batch), runtime=rt, names=("resnet8",))
        assert c.calls == [("resnet8", rt.threads or 1, batch, rt.provider)], (rt, batch)
    c.calls.clear()
    select(num_classes=3, spec=SPEC, budget=Budget(None), runtime=RuntimeConfig(), names=("resnet8",))
    assert c.calls == []
    # another machine (or ORT version): the fingerprint is part of the key
    monkeypatch.setattr(cache_mod, "machine_fingerprint", lambda: {"cpu": "elsewhere", "onnxruntime": "0"})
    select(num_classes=3, spec=SPEC, budget=Budget(None), runtime=RuntimeConfig(), names=("resnet8",))
    assert [n for n, *_ in c.calls] == ["resnet8"]


@pytest.mark.parametrize("garbage", [b"{not json", b"\xff\xfe\x00", b"[1, 2]", b""])
def test_corrupt_cache_file_is_re_measured(clock, garbage):
    c = clock(LAT)
    run(None)
    cache_path().write_bytes(garbage)
    c.calls.clear()
    run(None)
    assert len(c.calls) == 5
    assert len(json.loads(cache_path().read_text())) == 5  # rewritten whole


def test_malformed_entry_is_re_measured(clock):
    c = clock(LAT)
    run(None, names=("resnet8",), teacher=False)
    data = json.loads(cache_path().read_text())
    (key,) = data
    data[key] = {"p50": "fast"} | {"confirmed": True}
    cache_path().write_text(json.dumps(data))
    c.calls.clear()
    run(None, names=("resnet8",), teacher=False)
    assert len(c.calls) == 1
    assert LatencyCache().get(key).p50 == 0.04


def test_no_cache_measures_and_writes_nothing(clock):
    c = clock(LAT)
    run(0.045, use_cache=False)
    run(0.045, use_cache=False)
    assert len(c.calls) == 2 * (5 + 1 + sel_mod.CONFIRM_MAX) and not cache_path().exists()


def test_real_measurement_is_cached_and_confirmed():
    s = run(10.0, names=("tinycnn_w8",), teacher=False)
    c = s.chosen
    assert c.name == "tinycnn_w8" and c.confirmed and c.fits
    assert 0 < c.latency.min <= c.latency.p50 <= c.latency.p90 <= c.latency.p99
    assert c.latency.iters >= 100 and c.latency.batch == 1
    entry = next(iter(json.loads(cache_path().read_text()).values()))
    assert entry["confirmed"] is True and entry["p50"] == c.latency.p50
    assert c.graph == "ship" and entry["graph"] == "ship"  # the confirmed figure is of the shipping graph


def test_pareto_front():
    def cand(name, flops, ms):
        return Candidate(name, 1, flops, stats(ms), True)

    cands = [cand("a", 10, 1.0), cand("b", 20, 0.5), cand("c", 30, 2.0), cand("d", 30, 3.0), cand("e", 5, 0.4)]
    # a is dominated by b (more FLOPs, faster); d by c (same FLOPs, faster)
    assert [c.name for c in pareto_front(cands, "p50")] == ["e", "b", "c"]


# ------------------------------------------------------------------------------------------ CLI

runner = CliRunner()


@pytest.fixture
def teacher_ckpt(tmp_path):
    from kdcompress.core.checkpoint import save_checkpoint

    path = tmp_path / "teacher.pt"
    save_checkpoint(path, STUDENTS.get("resnet8x2").build(3, SPEC), "resnet8x2", ("a", "b", "c"), SPEC)
    return path


def cli(*args):
    return runner.invoke(app, ["select", *args])


def test_cli_json_and_files(clock, teacher_ckpt, tmp_path):
    clock(LAT)
    out = tmp_path / "sel"
    r = cli("--teacher", str(teacher_ckpt), "--budget-ms", "0.045", "--candidates", ",".join(NAMES),
            "--out", str(out), "--json")
    assert r.exit_code == 0, r.output
    j = json.loads(r.stdout)
    assert j["chosen"]["name"] == "resnet8" and j["budget_ms"] == 0.045 and j["teacher"]["name"] == "resnet8x2"
    assert j["chosen"]["draws"] == 1 + sel_mod.CONFIRM_MAX  # 0.04 of 0.045 ms: no 2x headroom
    assert json.loads((out / "selection.json").read_text()) == j
    assert (out / "selection.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))


def test_cli_table_and_ladder(clock, teacher_ckpt):
    clock(LAT)
    r = cli("--teacher", str(teacher_ckpt), "--budget-ms", "0.6", "--candidates", ",".join(NAMES))
    assert r.exit_code == 0, r.output
    for needle in ("tinycnn_w8", "resnet8", "p50 ms", "p90 ms", "fits", "chosen", "resnet8x2 (teacher)",
                   "teacher itself meets", f"ship ({1 + sel_mod.CONFIRM_MIN})", "slowest of the processes"):
        assert needle in r.stdout, needle
    r = cli("--teacher", str(teacher_ckpt), "--candidates", ",".join(NAMES), "--json")
    j = json.loads(r.stdout)
    assert j["chosen"] is None and j["budget_ms"] is None and len(j["candidates"]) == 4


def test_cli_threads_cap_warns(clock, teacher_ckpt, monkeypatch):
    monkeypatch.setattr(system_mod, "cpu_limit", lambda: 2)
    clock(LAT)
    r = cli("--teacher", str(teacher_ckpt), "--budget-ms", "0.045", "--candidates", "resnet8", "--threads", "64",
            "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["threads"] == 2
    assert "warning" in r.stderr and "CPU limit (2)" in r.stderr


def test_cli_impossible_budget_one_line_exit_4(clock, teacher_ckpt):
    clock(LAT)
    r = cli("--teacher", str(teacher_ckpt), "--budget-ms", "0.001", "--candidates", ",".join(NAMES))
    assert r.exit_code == 4, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("kdcompress: error: no student meets the 0.001 ms budget")
    assert "tinycnn_w8" in lines[0] and "0.0100 ms" in lines[0] and r.stdout == ""


@pytest.mark.parametrize("args, code, needle", [
    (["--candidates", "resnet9"], 2, "did you mean"),
    (["--stat", "p75"], 2, "--stat must be one of p50, p90, p99"),
    (["--budget-ms", "-1"], 2, "--budget-ms must be a finite number > 0"),
    (["--threads", "0"], 2, "--threads must be >= 1"),
])
def test_cli_bad_flags(clock, teacher_ckpt, args, code, needle):
    clock(LAT)
    r = cli("--teacher", str(teacher_ckpt), *args)
    assert r.exit_code == code and needle in r.stderr, r.output
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1


def test_cli_out_must_be_a_directory(clock, teacher_ckpt, tmp_path):
    clock(LAT)
    f = tmp_path / "file"
    f.write_text("x")
    r = cli("--teacher", str(teacher_ckpt), "--out", str(f))
    assert r.exit_code == 3 and "not a directory" in r.stderr


def test_selection_is_frozen():
    s = Selection(None, (), Budget(None), "cpu", 1)
    with pytest.raises(AttributeError):
        s.threads = 2  # type: ignore[misc]
    assert replace(s, threads=2).threads == 2


def test_cli_out_is_claimed_like_a_run_directory(clock, teacher_ckpt, tmp_path):
    """select --out goes through RunDir.claim: a foreign non-empty directory is refused (exit 2) untouched
    unless --force, and a refused selection (exit 4) leaves no directory it created."""
    clock(LAT)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    args = ("--teacher", str(teacher_ckpt), "--budget-ms", "0.045", "--candidates", ",".join(NAMES))
    r = cli(*args, "--out", str(foreign))
    assert r.exit_code == 2 and "not a kdcompress run" in r.stderr and "--force" in r.stderr, r.output
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    r = cli(*args, "--out", str(foreign), "--force", "--json")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt", "selection.json", "selection.png"]
    assert (foreign / "notes.txt").read_text() == "keep"
    r = cli(*args, "--out", str(foreign), "--json")  # only kdcompress's names now besides --force's file
    assert r.exit_code == 2

    new = tmp_path / "a" / "b"
    r = cli("--teacher", str(teacher_ckpt), "--budget-ms", "0.001", "--candidates", ",".join(NAMES), "--out", str(new))
    assert r.exit_code == 4 and not (tmp_path / "a").exists(), r.output
