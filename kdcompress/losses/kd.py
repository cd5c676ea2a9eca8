"""Vanilla knowledge distillation.

Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural Network". arXiv:1503.02531 (2015).
L_KD = T^2 * (1/B) sum_b KL(softmax(z^t_b / T) || softmax(z^s_b / T)); batchmean reduction, fp32, log-space.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ..core.types import ModelOut
from .base import LOSSES, LogitLoss
from .logspace import check_number


def kd_loss(z_s: Tensor, z_t: Tensor, T: float) -> Tensor:
    """T^2 * batch-mean KL(p_t || p_s) at temperature T, from log-softmax (no log of probabilities)."""
    log_ps = F.log_softmax(z_s.float() / T, dim=1)
    log_pt = F.log_softmax(z_t.float() / T, dim=1)
    kl = F.kl_div(log_ps, log_pt, reduction="sum", log_target=True) / z_s.shape[0]
    return kl * (T * T)


@dataclass(frozen=True)
class KDParams:
    T: float = 4.0
    standardize: bool = False  # logit standardisation before the softmax (Sun et al., CVPR 2024)

    def __post_init__(self) -> None:
        check_number("T", self.T, positive=True)  # finite and > 0


@LOSSES.register("kd")
class KD(LogitLoss):
    """Hinton KD: T^2 * KL(teacher || student) at temperature T (arXiv:1503.02531)."""

    Params = KDParams
    reference = "Hinton et al. 2015, arXiv:1503.02531"

    def forward(self, s: ModelOut, t: ModelOut | None, batch) -> tuple[Tensor, dict[str, Tensor]]:
        return kd_loss(*self.pair(s, t), self.params.T), {}
