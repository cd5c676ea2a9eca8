"""The confirmation's fresh-process draws: when they settle a candidate (`settled`), that a slow draw
late in the sequence rejects it, that the cache keeps the draws so another budget only adds what it still
needs, that an entry confirmed before draws were kept is confirmed again, and that the real generator
starts no process after the caller stops."""

from __future__ import annotations

import json

import pytest

import kdcompress.runtime.freshbench as fresh_mod
import kdcompress.select.search as sel_mod
from kdcompress.core.config import Budget, RuntimeConfig
from kdcompress.runtime.ortbench import SessionSettings
from kdcompress.select.cache import cache_path
from kdcompress.select.search import CONFIRM_MAX, CONFIRM_MIN, SPREAD_BOUND, select, settled

from .test_select import SPEC, FakeClock, stats

NAMES = ("tinycnn_w8", "resnet8")


def test_settled_rule_on_hand_cases():
    b = 1.0
    assert not settled([], b)
    assert settled([1.01], b)  # this process's draw over budget: rejected without a fresh process
    assert settled([0.9, 0.8, 1.2], b)  # one fresh draw over: rejected at once
    head = 1.0 / SPREAD_BOUND  # a slowest draw at half the budget leaves the 2x headroom
    assert not settled([head] * CONFIRM_MIN, b)  # this process + CONFIRM_MIN - 1 fresh: one short
    assert settled([head] * (CONFIRM_MIN + 1), b)
    assert not settled([head * 1.01] * (CONFIRM_MIN + 1), b)  # no headroom: all the fresh draws
    assert not settled([0.99] * CONFIRM_MAX, b)
    assert settled([0.99] * (CONFIRM_MAX + 1), b)
    assert settled([0.99] * (CONFIRM_MAX + 1) + [1.5], b)
    assert settled([0.1] * (CONFIRM_MIN + 1), None) and not settled([0.1], None)


class NamedClock(FakeClock):
    """A FakeClock that remembers which model it measured last (the fresh draws follow it)."""
    last = ""

    def __call__(self, model, *a, **k):
        v = super().__call__(model, *a, **k)
        self.last = self.calls[-1][0]
        return v


@pytest.fixture
def fresh(monkeypatch):
    def install(screen: dict[str, float], seqs: dict[str, list[float]]):
        c = NamedClock({**{n: [v] for n, v in screen.items()}, "teacher": [0.5]})
        taken = {n: 0 for n in seqs}
        monkeypatch.setattr(sel_mod, "measure_model", c)

        def confirm(model, spec, runtime, batch, **kw):
            n = c.last  # the confirmation's first draw (this process) was just measured by the clock
            while taken[n] < len(seqs[n]):
                taken[n] += 1
                yield stats(seqs[n][taken[n] - 1])
        monkeypatch.setattr(sel_mod, "confirm_measurements", confirm)
        monkeypatch.setattr(sel_mod, "export_wave",
                            lambda ex, jobs, graph="ship": {j: (graph.encode(), graph) for j in jobs})
        return c, taken
    return install


def choose(budget_ms: float):
    return select(num_classes=3, spec=SPEC, budget=Budget(budget_ms), runtime=RuntimeConfig(), names=NAMES)


def test_a_slow_draw_late_in_the_sequence_rejects_the_candidate(fresh):
    """resnet8 fits on this process's draw and its first 7 fresh ones; the 8th is the slow mode, over the
    budget: it is rejected (no 9th process), and tinycnn_w8 (2x headroom) needs only CONFIRM_MIN draws."""
    slow_at = 7
    _, taken = fresh({"tinycnn_w8": 0.01, "resnet8": 0.04},
                     {"resnet8": [0.04] * slow_at + [0.07] + [0.04] * 20, "tinycnn_w8": [0.01] * 20})
    s = choose(0.045)
    assert s.chosen.name == "tinycnn_w8" and s.chosen.draws == 1 + CONFIRM_MIN
    r8 = next(c for c in s.candidates if c.name == "resnet8")
    assert not r8.fits and r8.latency.p50 == 0.07 and r8.draws == 1 + slow_at + 1
    assert taken == {"resnet8": slow_at + 1, "tinycnn_w8": CONFIRM_MIN}
    assert s.stats["fresh_draws"] == slow_at + 1 + CONFIRM_MIN
    assert s.to_json()["chosen"]["draws"] == 1 + CONFIRM_MIN


def test_the_cache_keeps_the_draws_and_another_budget_adds_only_what_it_needs(fresh):
    c, taken = fresh({"tinycnn_w8": 0.01, "resnet8": 0.04}, {"resnet8": [0.04] * 30, "tinycnn_w8": [0.01] * 30})
    # at 0.1 ms, 0.04 leaves 2x headroom: CONFIRM_MIN fresh draws
    assert choose(0.1).chosen.name == "resnet8" and taken["resnet8"] == CONFIRM_MIN
    entry = next(e for e in json.loads(cache_path().read_text()).values() if e.get("confirmed"))
    assert len(entry["draws"]) == 1 + CONFIRM_MIN
    c.calls.clear()
    assert choose(0.1).chosen.name == "resnet8" and c.calls == [] and taken["resnet8"] == CONFIRM_MIN  # warm
    # at 0.045 ms there is no headroom: the draws go on from where they stopped, up to CONFIRM_MAX
    s = choose(0.045)
    assert s.chosen.name == "resnet8" and s.chosen.draws == 1 + CONFIRM_MAX
    assert taken["resnet8"] == CONFIRM_MAX and c.calls == []  # no new first draw in this process
    assert choose(0.045).chosen.draws == 1 + CONFIRM_MAX and taken["resnet8"] == CONFIRM_MAX


def test_an_entry_confirmed_before_draws_were_kept_is_confirmed_again(fresh):
    c, taken = fresh({"tinycnn_w8": 0.01, "resnet8": 0.04}, {"resnet8": [0.04] * 30, "tinycnn_w8": [0.01] * 30})
    choose(0.1)
    data = json.loads(cache_path().read_text())
    for e in data.values():
        e.pop("draws", None)  # what a cache written by the rule before looks like
    cache_path().write_text(json.dumps(data))
    c.calls.clear()
    s = choose(0.1)
    assert s.chosen.name == "resnet8" and s.chosen.draws == 1 + CONFIRM_MIN
    # the old confirmed figure is of the shipping graph: it stands as this process's draw, and the fresh
    # draws are taken again
    assert c.calls == [] and taken["resnet8"] == 2 * CONFIRM_MIN


def test_fresh_draws_start_no_process_after_the_caller_stops(monkeypatch):
    started = []

    class Done:
        returncode, stderr = 0, ""
        stdout = json.dumps({"p50": 0.01, "p90": 0.012, "p99": 0.013, "mean": 0.01, "min": 0.009,
                             "iters": 100, "batch": 1, "throughput": 1e5}) + "\n"

    monkeypatch.setattr(fresh_mod.subprocess, "run", lambda args, **kw: started.append(args) or Done())
    gen = fresh_mod.fresh_draws(b"model", "cpu", (1, 1, 8, 8), SessionSettings(1), 10, min_time_s=0.05)
    assert next(gen).p50 == 0.01 and next(gen).p50 == 0.01
    gen.close()
    assert len(started) == 2 and started[0][-1] == "0.05"  # the child is told its short measuring time
    assert len(fresh_mod.measure_fresh(b"model", "cpu", (1, 1, 8, 8), SessionSettings(1), 3)) == 3
