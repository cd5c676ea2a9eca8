"""The losses stage: one method per module, registered in LOSSES, combined by `Objective`.

Importing this package registers every built-in loss. It also owns preset validation: core.config parses a
preset's TOML into LossTerms without knowing the losses; `load_checked_preset` adds the check of each
term's kind and params against this registry (imports torch).
"""

from __future__ import annotations

from ..core.build import build_dataclass
from ..core.config import Preset, apply_overrides, load_preset
from ..core.errors import UsageError
from ..core.types import NEED_LABELS
from . import bickd, ce, dist, dkd, gdkd, ickd, kd, nd, nkd  # noqa: F401  (registration side effect)
from .base import LOSSES, Loss, Objective, warmup_factor

__all__ = ["LOSSES", "Loss", "Objective", "check_mixing", "check_terms", "load_checked_preset", "preset_needs",
           "warmup_factor"]


def check_terms(preset: Preset) -> Preset:
    """Each term's kind exists and its params build the loss's Params (unknown keys, wrong types); a mixing
    augmentation is not combined with a term that reads the labels."""
    _check_params(preset)
    check_mixing(preset)
    return preset


def _check_params(preset: Preset) -> Preset:
    for t in preset.terms:
        build_dataclass(LOSSES.get(t.kind).Params, t.params, prefix=t.key)
    return preset


def check_mixing(preset: Preset) -> None:
    """train.mix blends two images into one input whose label is neither's: a label term (CE, DKD's target
    split, ND's class centres, ...) would train on a wrong target. Refused, naming the terms and the fix."""
    mixing = preset.train.mix
    if mixing == "none":
        return
    labelled = [t.key for t in preset.terms if NEED_LABELS in LOSSES.get(t.kind).NEEDS]
    if labelled:
        raise UsageError(f"train.mix={mixing} blends two images into one, so its label is neither's, but "
                         f"preset '{preset.name}' has term(s) {', '.join(labelled)} that use the labels; "
                         "use a label-free preset (--preset fm) or --set train.mix=none")


def load_checked_preset(name: str, overrides: list[str] | tuple[str, ...] = ()) -> Preset:
    """A built-in name or a .toml path, `--set` overrides applied, every term checked."""
    # the params before `--set` (an error names the file's key), everything after (`--set train.mix=none`
    # may be what makes a preset valid)
    return check_terms(apply_overrides(_check_params(load_preset(name)), overrides))


def preset_needs(preset: Preset) -> frozenset[str]:
    """What the preset's losses need from the trainer and the teacher (core.types NEED_* names)."""
    out: set[str] = set()
    for term in preset.terms:
        out |= set(LOSSES.get(term.kind).NEEDS)
    return frozenset(out)
