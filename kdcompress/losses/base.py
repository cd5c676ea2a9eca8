"""The loss contract, the LOSSES registry and `Objective`, which combines weighted, warmed-up terms.

A loss is an nn.Module registered under its kind with:
  * `Params`: a frozen dataclass of hyperparameters (what a preset's `params` table and `--set` fill);
  * `NEEDS`: what the trainer must supply (see NEED_* below); the trainer never branches on loss types;
  * `forward(s, t, batch) -> (value, parts)`: the unweighted value and named sub-terms;
  * optionally `prepare(ctx)`: one pass over the training set before training (ND centres, IC-KD bank),
    whose result is saved in the run directory via `state_dict` so a resumed run reuses it.
Weights and warm-up live in `Objective`, never inside a loss. All maths runs in fp32 from log-softmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..config import LossTerm, build_dataclass
from ..registry import Registry

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


class Loss(nn.Module):
    Params: ClassVar[type]
    NEEDS: ClassVar[frozenset[str]] = frozenset({NEED_LOGITS})
    reference: ClassVar[str] = ""

    def __init__(self, params: Any, ctx: LossContext):
        super().__init__()
        self.params = params
        self.ctx = ctx

    def forward(self, s: ModelOut, t: ModelOut | None, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError


LOSSES: Registry[type[Loss]] = Registry("loss", entry_point_group="kdcompress.losses")


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """omega(e) = min(e / E_w, 1) with 1-indexed epochs (mdistiller's convention): epoch 1 of a 20-epoch
    warm-up already gets 0.05, and E_w = 0 or 1 means no warm-up."""
    if epoch < 1:
        raise ValueError(f"epochs are 1-indexed, got {epoch}")
    if warmup_epochs <= 0:
        return 1.0
    return min(epoch / warmup_epochs, 1.0)


class Objective(nn.Module):
    """sum_i weight_i * omega_i(epoch) * loss_i. Learnable parts of losses are this module's parameters."""

    def __init__(self, terms: tuple[LossTerm, ...], ctx: LossContext):
        super().__init__()
        self.terms = terms
        self.losses = nn.ModuleDict()
        for term in terms:
            cls = LOSSES.get(term.kind)
            params = build_dataclass(cls.Params, term.params, prefix=term.key)
            self.losses[term.key] = cls(params, ctx)

    @property
    def needs(self) -> frozenset[str]:
        out: set[str] = set()
        for loss in self.losses.values():
            out |= loss.NEEDS
        return frozenset(out)

    def weights(self, epoch: int) -> dict[str, float]:
        return {t.key: t.weight * warmup_factor(epoch, t.warmup_epochs) for t in self.terms}

    def forward(self, s: ModelOut, t: ModelOut | None, batch: Any, epoch: int) -> tuple[Tensor, dict[str, float]]:
        s32 = s.float()
        t32 = t.float() if t is not None else None
        total = s.logits.new_zeros((), dtype=torch.float32)
        parts: dict[str, float] = {}
        for key, w in self.weights(epoch).items():
            value, sub = self.losses[key](s32, t32, batch)
            parts[key] = float(value.detach())
            for name, v in sub.items():
                parts[f"{key}.{name}"] = float(v.detach())
            if w != 0.0:
                total = total + w * value
        return total, parts
