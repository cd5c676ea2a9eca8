"""Is the teacher better than chance on the validation split, and are its outputs in the data's class
order? Measured before any training, so a wrong class order, normalisation, input size or architecture is
refused instead of silently distilled from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core.classes import is_integer_name
from ..core.errors import InputError
from ..core.infer import accuracy, predict
from ..core.splits import DataSplits
from .model import Teacher


WEAK_TEACHER_Z = 3.0  # standard errors above chance a teacher must clear on the validation split
ORDER_Z = 3.0  # standard errors by which another class order must beat the identity (held out)
ORDER_MARGIN = 0.05  # ... and by at least this much top-1, so a near-tie swap of two classes is not flagged
ORDER_SHOWN = 40  # class orders longer than this are shortened in the message


@dataclass(frozen=True)
class ClassOrderFinding:
    """The teacher's outputs look like the data's classes in another order. `order[j]` is the data class
    the teacher's output j predicts (the --classes value that fixes it); `identity` is its top-1 as given,
    `assigned` with the best assignment of outputs to classes (fit on the whole split), `gain` and `se`
    the held-out (cross-fitted) gain of the assignment over the identity and its standard error."""

    order: tuple[str, ...]
    identity: float
    assigned: float
    gain: float
    se: float
    string_sorted: bool  # the order is the string sort of numbered names ('0','1','10','11','2',...)

    def to_json(self) -> dict[str, Any]:
        return {"apparent_order": list(self.order), "identity_accuracy": round(self.identity, 6),
                "assigned_accuracy": round(self.assigned, 6), "held_out_gain": round(self.gain, 6),
                "held_out_gain_se": round(self.se, 6), "string_sorted_names": self.string_sorted}


@dataclass(frozen=True)
class TeacherCheck:
    """What the checks before training found: the teacher's validation top-1 (None: no validation split)
    and, when it was accepted anyway (--allow-weak-teacher), a class-order finding."""

    accuracy: float | None
    class_order: ClassOrderFinding | None = None


def best_assignment(confusion: np.ndarray) -> np.ndarray:
    """cols[i]: the output assigned to class i maximising the images it gets right (confusion[i, j] counts
    class-i images predicted j). A half count on the diagonal breaks ties towards the identity."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(confusion + 0.5 * np.eye(len(confusion)), maximize=True)
    return cols[np.argsort(rows)]


def _confusion(y: np.ndarray, pred: np.ndarray, c: int) -> np.ndarray:
    m = np.zeros((c, c))
    np.add.at(m, (y, pred), 1.0)
    return m


def class_order_finding(pred: np.ndarray, y: np.ndarray, classes: tuple[str, ...]) -> ClassOrderFinding | None:
    """A class order the teacher appears to use instead of the data's, or None. The assignment is fit on
    half the images (alternate ones) and scored on the other half, both ways, so the gain over the identity
    is measured on images the assignment never saw: a random teacher's best assignment scores above its
    identity in-sample by selection alone, never held out. Flagged when the held-out gain exceeds ORDER_Z
    standard errors (of the per-image paired difference) and ORDER_MARGIN, and the assignment moves a class."""
    c, n = len(classes), len(y)
    cols = best_assignment(_confusion(y, pred, c))
    if n < 4 or np.array_equal(cols, np.arange(c)):
        return None
    d = np.zeros(n)
    for fit, score in ((slice(0, None, 2), slice(1, None, 2)), (slice(1, None, 2), slice(0, None, 2))):
        held = best_assignment(_confusion(y[fit], pred[fit], c))
        d[score] = (pred[score] == held[y[score]]).astype(float) - (pred[score] == y[score])
    gain, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(n))
    identity = float((pred == y).mean())
    if gain <= max(ORDER_Z * se, ORDER_MARGIN) or identity + gain <= chance_bar(y, c):
        return None  # not clearly better reordered, or no better than chance even then (a weak teacher)
    order = [""] * c
    for i, j in enumerate(cols):
        order[j] = classes[i]
    names = tuple(classes)
    string_sorted = all(is_integer_name(x) for x in names) and tuple(order) == tuple(sorted(names)) != names
    return ClassOrderFinding(tuple(order), identity, float((pred == cols[y]).mean()), gain, se, string_sorted)


def _order_text(order: tuple[str, ...]) -> str:
    if len(order) <= ORDER_SHOWN:
        return ",".join(order)
    return ",".join(order[:ORDER_SHOWN]) + f",... ({len(order)} names: list them in a file, one per line)"


def order_message(teacher: Teacher, f: ClassOrderFinding, n: int) -> str:
    why = ("; it looks trained on string-sorted folder names (torchvision's ImageFolder sorts "
           f"{','.join(f.order[:4])},... as strings)" if f.string_sorted else "")
    return (f"teacher {teacher.path} scores {f.identity:.1%} on the validation split ({n} images) but "
            f"{f.assigned:.1%} with its outputs read in another class order (held out: +{f.gain:.1%} ± {f.se:.1%}): "
            f"its outputs look like the classes {_order_text(f.order)} in that order{why}; pass --classes "
            f"{_order_text(f.order)} (--set teacher.allow_weak=true distils from it as it is)")


def teacher_check(teacher: Teacher, splits: DataSplits, device: torch.device, *, allow_weak: bool,
                  warn, shape_hint: str = "") -> TeacherCheck:
    """The teacher's fp32 top-1 on the validation split (data already aligned to its classes), before any
    training, and the class order its predictions follow.

    Class order (any split size): when the best assignment of outputs to classes beats the identity on
    held-out images (class_order_finding), the teacher is refused with InputError naming the --classes
    that fixes it, unless `allow_weak` (then warned, and returned for the report).

    Chance: p0 = max(1/C, the largest class share of the split) (what a constant guess scores); with n
    images its standard error is se = sqrt(p0 (1 - p0) / n). A teacher at or below p0 + 3 se is not
    clearly better than chance (one-sided, about p < 0.0015 under the normal approximation of the binomial)
    and is refused with InputError unless `allow_weak`. When the split is too small for even a perfect
    score to clear the bar, this check is skipped with a warning. `shape_hint`: a sentence about the input
    size to add to the refusal (the teacher's size was not given by --input-shape and differs from the
    images')."""
    n = len(splits.val)
    if n == 0:
        return TeacherCheck(None)
    logits = predict(teacher.to(device).model, splits.val, teacher.input_spec, device)
    if logits.shape[1] != splits.num_classes:
        raise InputError(f"teacher {teacher.path} returns {logits.shape[1]} logits but the data has "
                         f"{splits.num_classes} classes")
    acc = accuracy(logits, splits.val.y)
    finding = class_order_finding(logits.argmax(1).numpy(), splits.val.y.numpy(), tuple(splits.classes))
    if finding is not None and not allow_weak:
        raise InputError(order_message(teacher, finding, n))
    if finding is not None:
        warn(f"teacher's outputs look like the classes {_order_text(finding.order)} in that order "
             f"({finding.identity:.1%} as given, {finding.assigned:.1%} reordered); distilling from it as it is "
             "(--set teacher.allow_weak=true)")
    _check_chance(teacher, splits, acc, allow_weak, warn, shape_hint)
    return TeacherCheck(acc, finding)


def chance(y: np.ndarray, c: int) -> float:
    """What a constant guess scores: max(1/C, the largest class share)."""
    return max(1.0 / c, float(np.bincount(y, minlength=c).max()) / len(y))


def chance_bar(y: np.ndarray, c: int) -> float:
    """chance + WEAK_TEACHER_Z standard errors of a top-1 at chance over len(y) images."""
    p0 = chance(y, c)
    return p0 + WEAK_TEACHER_Z * float(np.sqrt(p0 * (1.0 - p0) / len(y)))


def _check_chance(teacher: Teacher, splits: DataSplits, acc: float, allow_weak: bool, warn, shape_hint: str) -> None:
    n = len(splits.val)
    y = splits.val.y.numpy()
    p0, bar = chance(y, splits.num_classes), chance_bar(y, splits.num_classes)
    if bar >= 1.0:
        warn(f"the validation split ({n} images) is too small to tell the teacher from chance; not checked")
    elif acc <= bar and not allow_weak:
        order = "name its outputs in order with --classes"
        names = tuple(splits.classes)
        if all(is_integer_name(c) for c in names) and tuple(sorted(names)) != names:
            # numbered folders: torchvision's ImageFolder numbers them in string order ('0','1','10',...)
            order = f"a teacher trained with string-sorted class folders needs --classes {','.join(sorted(names))}"
        size = f", {shape_hint}" if shape_hint else ""
        raise InputError(
            f"teacher {teacher.path} scores {acc:.1%} on the validation split ({n} images), no better than "
            f"chance ({p0:.1%} + 3 standard errors = {bar:.1%}); likely causes: its class order differs from "
            f"the data's ({order}), the wrong normalisation (--mean/--std){size}, or the wrong --teacher-arch; "
            "--set teacher.allow_weak=true distils from it anyway")
    elif acc <= bar:
        warn(f"teacher scores {acc:.1%} on the validation split, no better than chance ({bar:.1%}); "
             "distilling anyway (--set teacher.allow_weak=true)")


def teacher_strength(teacher: Teacher, splits: DataSplits, device: torch.device, *, allow_weak: bool,
                     warn, shape_hint: str = "") -> float | None:
    """teacher_check's accuracy alone (its checks run all the same)."""
    return teacher_check(teacher, splits, device, allow_weak=allow_weak, warn=warn, shape_hint=shape_hint).accuracy


def input_size_hint(teacher: Teacher, native: tuple[int, int, int], shape_flag: bool) -> str:
    """A clause for the weak-teacher refusal when the teacher's input size came from its file (or a
    library default recorded there, such as timm's 224 px pretrained_cfg) rather than --input-shape and
    differs from the images' own size: the images were resized to it, which a teacher trained at their
    size does not survive."""
    c, h, w = teacher.input_spec.shape
    if shape_flag or tuple(native[1:]) == (h, w):
        return ""
    return (f"the wrong input size (it takes {c}x{h}x{w} as its file records, the images are "
            f"{native[1]}x{native[2]} and were resized to that; if it was trained at their size, pass "
            f"--input-shape {c},{native[1]},{native[2]})")
