"""Is the teacher better than chance on the validation split? Measured before any training, so a wrong
class order, normalisation or architecture is refused instead of silently distilled from."""

from __future__ import annotations

import numpy as np
import torch

from ..core.classes import is_integer_name
from ..core.errors import InputError
from ..core.infer import accuracy, predict
from ..core.splits import DataSplits
from .model import Teacher


WEAK_TEACHER_Z = 3.0  # standard errors above chance a teacher must clear on the validation split


def teacher_strength(teacher: Teacher, splits: DataSplits, device: torch.device, *, allow_weak: bool,
                     warn) -> float | None:
    """The teacher's fp32 top-1 on the validation split (data already aligned to its classes), before any
    training. Rule: chance is p0 = max(1/C, the largest class share of the split) (what a constant guess
    scores); with n images its standard error is se = sqrt(p0 (1 - p0) / n). A teacher at or below
    p0 + 3 se is not clearly better than chance (one-sided, about p < 0.0015 under the normal
    approximation of the binomial) and is refused with InputError unless `allow_weak`. When the split is
    too small for even a perfect score to clear the bar, the check is skipped with a warning."""
    n = len(splits.val)
    if n == 0:
        return None
    logits = predict(teacher.to(device).model, splits.val, teacher.input_spec, device)
    if logits.shape[1] != splits.num_classes:
        raise InputError(f"teacher {teacher.path} returns {logits.shape[1]} logits but the data has "
                         f"{splits.num_classes} classes")
    acc = accuracy(logits, splits.val.y)
    share = float(torch.bincount(splits.val.y, minlength=splits.num_classes).max()) / n
    p0 = max(1.0 / splits.num_classes, share)
    bar = p0 + WEAK_TEACHER_Z * float(np.sqrt(p0 * (1.0 - p0) / n))
    if bar >= 1.0:
        warn(f"the validation split ({n} images) is too small to tell the teacher from chance; not checked")
    elif acc <= bar and not allow_weak:
        order = "name its outputs in order with --classes"
        names = tuple(splits.classes)
        if all(is_integer_name(c) for c in names) and tuple(sorted(names)) != names:
            # numbered folders: torchvision's ImageFolder numbers them in string order ('0','1','10',...)
            order = f"a teacher trained with string-sorted class folders needs --classes {','.join(sorted(names))}"
        raise InputError(
            f"teacher {teacher.path} scores {acc:.1%} on the validation split ({n} images), no better than "
            f"chance ({p0:.1%} + 3 standard errors = {bar:.1%}); likely causes: its class order differs from "
            f"the data's ({order}), the wrong normalisation (--mean/--std), or the wrong --teacher-arch; "
            "--allow-weak-teacher distils from it anyway")
    elif acc <= bar:
        warn(f"teacher scores {acc:.1%} on the validation split, no better than chance ({bar:.1%}); "
             "distilling anyway (--allow-weak-teacher)")
    return acc
