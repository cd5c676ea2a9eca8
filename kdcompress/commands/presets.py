"""`kdcompress presets list|show`."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

from ..core.build import build_dataclass
from ..core.config import builtin_preset_names, preset_to_json
from ..losses import LOSSES, load_checked_preset
from . import Outcome, render


# Which preset to pick (docs/presets.md#which-preset-to-pick; the evidence is benchmarks/RESULTS.md, `presets`).
GUIDE = (
    "Not sure: --preset auto ranks kd, kd_ls, dist, dkd and nd by short paired trials on your validation split.",
    "A safe default: kd, the cheapest, with teacher outputs cached. Measured against a plain student trained "
    "longer or given kd's CPU time, it matched it and did not clearly beat it: on Fashion-MNIST (3 seeds) kd at 40 "
    "epochs +0.4 points [-0.9, +1.7] over the plain student at 80, at 70% of its CPU time, and +0.2 on a 7x larger "
    "student; on mnist5k (5 seeds, two tiny students) -0.4 and -0.6. Train kd as long as the plain student you "
    "compare it with.",
    "dist and nd did better than kd on Fashion-MNIST's tiny student (40 epochs): dist +1.3 points [-0.6, +3.2] "
    "(5 seeds, 4 wins) and nd +1.0 [-0.3, +2.3] (3 seeds, 3 wins) over the plain student at 80 epochs, at 1.1x "
    "kd's CPU time; measured on that one student so far, whose plain student still gained at 160 epochs.",
    "nd, ickd, dkd_nd need the teacher's features: a logits-only (ONNX) teacher takes the logit presets only.",
    "The DKD family (dkd, dkd_ls, gdkd, dkd_nd): beta=8 is the authors' 100-class value; on Fashion-MNIST (10 "
    "classes, 3 seeds) dkd scored 1.2 points below the plain student. Choose dkd.beta on validation or use "
    "--preset auto rather than taking it by default.",
    "fm (function matching) learns slowly: on mnist5k with a tiny student one 240-epoch run reached 81.6% where kd "
    "reached 93.7% in 80 epochs; use it only with a large student and a very long schedule.",
    "ce is the plain student, the baseline every gain is measured against: train it as long as it keeps improving "
    "and for kd's CPU time too before you credit distillation (benchmarks/RESULTS.md, issue 26).",
)


def run_list(f: dict[str, Any], console) -> Outcome:
    rows = [load_checked_preset(n) for n in builtin_preset_names()]
    # one JSON object, like every other --json output (a pipeline reads each the same way)
    result = {"presets": [{"name": p.name, "description": p.description, "variant": p.variant} for p in rows],
              "guide": list(GUIDE)}
    return Outcome(result, lambda: render.presets_table([as_literal_text(p) for p in rows], GUIDE))


def run_show(f: dict[str, Any], console) -> Outcome:
    p = load_checked_preset(f["name"])
    params = [asdict(build_dataclass(LOSSES.get(t.kind).Params, t.params, t.key)) for t in p.terms]
    return Outcome(preset_to_json(p), lambda: render.preset_detail(as_literal_text(p), params))


def as_literal_text(p):
    """The preset with its free text (name, description, reference) escaped for rich, which prints through
    markup: a reference such as "[arXiv:2106.05237]" or a "[bold]" in a user's TOML reads as a tag and
    vanishes. Only the human view gets this copy; --json prints the preset as written."""
    from rich.markup import escape

    return replace(p, name=escape(p.name), description=escape(p.description), reference=escape(p.reference))
