"""NKD: normalized knowledge distillation.

Yang, Zeng, Li, Zhang, Yuan, Li. "From Knowledge Distillation to Self-Knowledge Distillation: A Unified
Approach with Normalized Loss and Customized Soft Labels". ICCV 2023, arXiv:2303.13005.
Defaults from the authors' code (yzd-v/cls_KD, nkd.py): T=1, gamma=1.5; used together with CE.

    target     = -(1/B) sum_b p^t_y log p^s_y                  (no temperature on this part)
    non-target = -gamma * T^2 * (1/B) sum_b sum_{j!=y} p_hat^t_j log p_hat^s_j
    L_NKD = target + non-target,
where p_hat is the softmax over the C-1 non-target logits at temperature T. Both parts are
cross-entropies, not KLs, so the loss is NOT zero when the student equals the teacher: it is then
-p^t_y log p^t_y + gamma * T^2 * H(p_hat^t). Soft/mixup labels use argmax(label) as y.
The non-target softmax is a masked log-softmax with a finite negative (logspace.py), never a gather
of the C-1 columns, so the maths is the same for any batch and any label pattern.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.types import NEED_LABELS, NEED_LOGITS, NEED_TEACHER_LOGITS, ModelOut
from .base import LOSSES, LogitLoss
from .logspace import check_number, hard_labels, masked_log_softmax, one_hot_mask, upcast


def nkd_terms(z_s: Tensor, z_t: Tensor, y: Tensor, T: float, gamma: float) -> tuple[Tensor, Tensor]:
    """(target, non-target) batch means; the non-target part includes gamma and T^2."""
    zs, zt = upcast(z_s), upcast(z_t)
    y = hard_labels(y)
    target = one_hot_mask(y, zs.shape[1])
    log_ps_y = torch.log_softmax(zs, dim=1).gather(1, y.view(-1, 1)).squeeze(1)
    pt_y = torch.softmax(zt, dim=1).gather(1, y.view(-1, 1)).squeeze(1).detach()
    loss_t = -(pt_y * log_ps_y).mean()

    others = ~target
    log_hat_s = masked_log_softmax(zs / T, others)
    hat_t = torch.exp(masked_log_softmax(zt / T, others)).detach()
    cross = torch.where(others, hat_t * log_hat_s, torch.zeros((), dtype=zs.dtype, device=zs.device))
    loss_non = -gamma * T * T * cross.sum(dim=1).mean()
    return loss_t, loss_non


@dataclass(frozen=True)
class NKDParams:
    T: float = 1.0  # temperature of the non-target part only
    gamma: float = 1.5  # weight of the non-target part
    standardize: bool = False  # logit standardisation of both parts (Sun et al., CVPR 2024)

    def __post_init__(self) -> None:
        check_number("T", self.T, positive=True)
        check_number("gamma", self.gamma)


@LOSSES.register("nkd")
class NKD(LogitLoss):
    """NKD: teacher-weighted target CE + gamma * T^2 * normalised non-target CE (Yang et al., ICCV 2023,
    arXiv:2303.13005). parts: `target`, `nontarget` (the latter includes gamma and T^2)."""

    Params = NKDParams
    NEEDS = frozenset({NEED_LOGITS, NEED_LABELS, NEED_TEACHER_LOGITS})
    MIN_CLASSES = 2
    reference = "Yang et al., Normalized KD (NKD), ICCV 2023, arXiv:2303.13005"

    def forward(self, s: ModelOut, t: ModelOut | None, batch) -> tuple[Tensor, dict[str, Tensor]]:
        p = self.params
        loss_t, loss_non = nkd_terms(*self.pair(s, t), batch.y, p.T, p.gamma)
        return loss_t + loss_non, {"target": loss_t, "nontarget": loss_non}
