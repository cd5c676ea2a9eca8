"""Cross-entropy with the ground-truth labels (the student's own supervised term)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ..core.types import NEED_LABELS, NEED_LOGITS, ModelOut
from .base import LOSSES, Loss


@dataclass(frozen=True)
class CEParams:
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


@LOSSES.register("ce")
class CE(Loss):
    """Cross-entropy, mean over the batch."""

    Params = CEParams
    NEEDS = frozenset({NEED_LOGITS, NEED_LABELS})
    reference = "cross-entropy"

    def forward(self, s: ModelOut, t: ModelOut | None, batch) -> tuple[Tensor, dict[str, Tensor]]:
        return F.cross_entropy(s.logits, batch.y, label_smoothing=self.params.label_smoothing), {}
