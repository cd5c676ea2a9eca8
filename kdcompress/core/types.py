"""Types every stage shares: what a model gives (ModelOut), the names of
what a loss needs (NEED_*), and the contexts a loss is built and prepared with.

core imports no stage. A stage that needs another stage's object (the trainer needs a teacher, the losses
need the training split) sees it through a Protocol defined here, never through the other stage's class.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from .spec import InputSpec
from .splits import Split, normalize

if TYPE_CHECKING:
    from rich.console import Console


NEED_LOGITS = "logits"  # student logits (always available)
NEED_LABELS = "labels"  # ground-truth class indices
NEED_TEACHER_LOGITS = "teacher_logits"
NEED_STUDENT_EMBED = "student_embed"  # penultimate (pooled) feature of the student
NEED_TEACHER_EMBED = "teacher_embed"  # penultimate (pooled) feature of the teacher
NEED_INDEX = "index"  # dataset index of each sample in the training split


@dataclass(frozen=True)
class ModelOut:
    logits: Tensor
    embed: Tensor | None = None

    def float(self) -> ModelOut:
        return ModelOut(self.logits.float(), None if self.embed is None else self.embed.float())


@dataclass(frozen=True)
class LossContext:
    """Facts a loss may need at construction: sizes, to build projectors and buffers."""

    num_classes: int
    student_embed_dim: int | None = None
    teacher_embed_dim: int | None = None


@dataclass(frozen=True)
class TeacherOutputs:
    """The frozen teacher over the whole un-augmented training split, row n = dataset index n (CPU, fp32)."""

    embed: Tensor  # (N, d) penultimate (pooled) features
    logits: Tensor  # (N, C)
    labels: Tensor  # (N,) int64


class TeacherLike(Protocol):
    """What training asks of a teacher (teacher.Teacher implements it for every file format)."""

    num_classes: int
    embed_dim: int | None

    def outputs(self, x: Tensor, want_embed: bool = False) -> ModelOut: ...

    def check_needs(self, needs: Iterable[str], preset: str) -> None: ...

    def to(self, device: torch.device) -> TeacherLike: ...


def logits_and_embed(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """The student interface (timm's): one forward pass giving the logits and the pooled penultimate
    embedding. Every zoo student has forward_features / forward_head(pre_logits) / get_classifier;
    teachers are never asked this way (they go through TeacherLike.outputs)."""
    emb = model.forward_head(model.forward_features(x), pre_logits=True)
    return model.get_classifier()(emb), emb



@dataclass(frozen=True)
class PrepareContext:
    """What `prepare(ctx)` may use: the teacher (eval mode, on `device`, asked through `outputs`), the training
    split (images in [0, 1], never augmented here; `spec` normalises them as the teacher expects) and a console
    for progress.

    `cached(key, build)` shares one object between the losses of an Objective (the teacher pass, the IC-KD
    bank): the first caller builds it, later callers get the same object.
    """

    teacher: TeacherLike
    train_split: Split
    spec: InputSpec
    device: torch.device
    num_classes: int
    console: Console
    batch_size: int
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def cached(self, key: str, build: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def teacher_outputs(self) -> TeacherOutputs:
        """One full-precision pass of the teacher over the training split (computed once per context)."""
        return self.cached("teacher_outputs", self._teacher_pass)

    def _teacher_pass(self) -> TeacherOutputs:
        t0 = time.perf_counter()
        embeds, logits = [], []
        # fp32, no autocast: the centres and the bank are computed once and must not carry bf16 error.
        # The teacher is asked through its own interface (Teacher.outputs), whatever format it came in.
        with torch.inference_mode():
            for b in self.train_split.batches(self.batch_size):
                out = self.teacher.outputs(normalize(b.x.to(self.device), self.spec), want_embed=True)
                embeds.append(out.embed.float().cpu())
                logits.append(out.logits.float().cpu())
        out = TeacherOutputs(torch.cat(embeds), torch.cat(logits), self.train_split.y.clone())
        self.console.print(f"teacher pass over {len(out.labels)} training images "
                           f"({time.perf_counter() - t0:.1f} s)")
        return out
