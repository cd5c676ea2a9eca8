"""Warm-ups given for the 240-epoch recipe scale with --epochs like the LR milestones; an explicit
`--set <term>.warmup_epochs=N` keeps N; the effective warm-up is what the Objective uses."""

from __future__ import annotations

import pytest

from kdcompress.core.config import TrainConfig, apply_overrides, preset_from_dict
from kdcompress.core.types import LossContext
from kdcompress.losses import load_checked_preset
from kdcompress.losses.base import Objective


def _warm(preset) -> dict[str, int]:
    return {t.key: t.warmup_epochs for t in preset.terms}


@pytest.mark.parametrize("epochs, expected", [(240, 20), (40, 3), (30, 2), (120, 10), (480, 40), (1, 1), (5, 1)])
def test_recipe_warmup_scales_like_the_milestones(epochs, expected):
    p = load_checked_preset("dkd", [f"train.epochs={epochs}"])
    assert _warm(p) == {"ce": 0, "dkd": expected}
    assert p.terms[1].recipe_warmup == 20
    assert TrainConfig(epochs=epochs).scaled_warmup(20) == expected
    # the milestones and the warm-up use the same factor epochs / milestone_epochs
    assert p.train.scaled_milestones()[0] == max(1, round(150 * epochs / 240))


def test_objective_uses_the_effective_warmup():
    p = load_checked_preset("dkd", ["train.epochs=40"])  # 20 of 240 -> 3
    w = Objective(p.terms, LossContext(10)).weights
    assert w(1)["dkd"] == pytest.approx(1 / 3) and w(2)["dkd"] == pytest.approx(2 / 3) and w(3)["dkd"] == 1.0
    assert w(1)["ce"] == 1.0


@pytest.mark.parametrize("order", [["train.epochs=40", "dkd.warmup_epochs=5"],
                                   ["dkd.warmup_epochs=5", "train.epochs=40"]])
def test_explicit_warmup_is_kept_whatever_the_run_length(order):
    p = load_checked_preset("dkd", order)
    assert _warm(p)["dkd"] == 5 and p.terms[1].recipe_warmup is None
    longer = apply_overrides(p, ["train.epochs=400"])
    assert _warm(longer)["dkd"] == 5
    assert Objective(p.terms, LossContext(10)).weights(1)["dkd"] == pytest.approx(0.2)


def test_overrides_applied_twice_rescale_from_the_recipe_not_from_the_last_value():
    p = load_checked_preset("ickd", ["train.epochs=40"])
    assert _warm(p) == {"ce": 0, "kd": 3, "picd": 3, "nicd": 3}
    q = apply_overrides(p, ["train.epochs=80"])
    assert _warm(q) == {"ce": 0, "kd": 7, "picd": 7, "nicd": 7}  # round(20 * 80 / 240) = 7, not 3 * 2
    assert _warm(apply_overrides(q, ["train.epochs=240"]))["kd"] == 20


def test_a_user_preset_scales_by_its_own_milestone_epochs():
    raw = {"train": {"epochs": 50, "milestone_epochs": 100},
           "loss": [{"kind": "ce"}, {"kind": "kd", "warmup_epochs": 10}]}
    p = preset_from_dict(raw)
    assert _warm(p) == {"ce": 0, "kd": 5}
    assert p.terms[1].warmup_json(p.train) == {"term": "kd", "epochs": 5, "recipe_epochs": 10, "recipe_length": 100,
                                               "source": "recipe, scaled to the run"}
    q = apply_overrides(p, ["kd.warmup_epochs=10"])
    assert q.terms[1].warmup_json(q.train)["source"] == "absolute (set explicitly)"
    assert _warm(q)["kd"] == 10


def test_report_markdown_states_the_warmup():
    from kdcompress.report.markdown import _warmups

    rows = [{"term": "ce", "epochs": 0, "recipe_epochs": None, "recipe_length": None, "source": "x"},
            {"term": "dkd", "epochs": 3, "recipe_epochs": 20, "recipe_length": 240, "source": "x"},
            {"term": "nd", "epochs": 5, "recipe_epochs": None, "recipe_length": None, "source": "x"}]
    assert _warmups(rows) == (" Warm-up: dkd 3 epoch(s) (20 of 240 in the recipe, scaled); "
                              "nd 5 epoch(s) (set explicitly).")
    assert _warmups(rows[:1]) == ""
