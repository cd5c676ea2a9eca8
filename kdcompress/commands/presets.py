"""`kdcompress presets list|show`."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

from ..core.build import build_dataclass
from ..core.config import builtin_preset_names, preset_to_json
from ..losses import LOSSES, load_checked_preset
from . import Outcome, render


def run_list(f: dict[str, Any], console) -> Outcome:
    rows = [load_checked_preset(n) for n in builtin_preset_names()]
    # one JSON object, like every other --json output (a pipeline reads each the same way)
    result = {"presets": [{"name": p.name, "description": p.description, "variant": p.variant} for p in rows]}
    return Outcome(result, lambda: render.presets_table([as_literal_text(p) for p in rows]))


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
