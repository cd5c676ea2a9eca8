"""Decoupled knowledge distillation (DKD).

Zhao, Cui, Song, Qiu, Liang. "Decoupled Knowledge Distillation". CVPR 2022, arXiv:2203.08679.
Defaults from mdistiller's CIFAR-100 config: alpha=1, beta=8, T=4 (the 20-epoch warm-up and w_ce=1 live
in the preset, not here).

With p = softmax(z/T), the binary target-vs-rest distribution b = [p_y, 1 - p_y] and the non-target
distribution p_hat = softmax over {z_j/T : j != y}:
    TCKD = KL(b^t || b^s),   NCKD = KL(p_hat^t || p_hat^s),
    L_DKD = T^2 * (1/B) sum_b [alpha * TCKD_b + beta * NCKD_b].
Exact identity (the paper's motivation): KL(p^t || p^s) = TCKD + (1 - p^t_y) * NCKD per sample.

Unlike the reference code, nothing takes the log of a probability: log b = [log_softmax_y,
logsumexp_{j!=y} - logsumexp_j], and p_hat is a masked log-softmax with a finite negative (logspace.py),
so p^s_y -> 1 or logits of +-1e4 stay finite in value and gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..core.types import NEED_LABELS, NEED_LOGITS, NEED_TEACHER_LOGITS, ModelOut
from .base import LOSSES, LogitLoss
from .logspace import binary_log_probs, check_number, hard_labels, kl_rows, masked_log_softmax, one_hot_mask, upcast


def dkd_terms(z_s: Tensor, z_t: Tensor, y: Tensor, T: float) -> tuple[Tensor, Tensor]:
    """Per-sample (TCKD, NCKD) at temperature T, shape (B,) each, without the T^2 factor."""
    zs, zt = upcast(z_s) / T, upcast(z_t) / T
    target = one_hot_mask(hard_labels(y), zs.shape[1])
    tckd = kl_rows(binary_log_probs(zt, target), binary_log_probs(zs, target))
    others = ~target
    nckd = kl_rows(masked_log_softmax(zt, others), masked_log_softmax(zs, others), others)
    return tckd, nckd


def dkd_loss(z_s: Tensor, z_t: Tensor, y: Tensor, alpha: float, beta: float, T: float) -> tuple[Tensor, Tensor, Tensor]:
    """(L_DKD, T^2 * mean TCKD, T^2 * mean NCKD): batchmean reduction, then T^2."""
    tckd, nckd = dkd_terms(z_s, z_t, y, T)
    scale = T * T
    tckd_m, nckd_m = tckd.mean() * scale, nckd.mean() * scale
    return alpha * tckd_m + beta * nckd_m, tckd_m, nckd_m


@dataclass(frozen=True)
class DKDParams:
    alpha: float = 1.0  # weight of TCKD
    beta: float = 8.0  # weight of NCKD
    T: float = 4.0
    standardize: bool = False  # logit standardisation before the softmax (Sun et al., CVPR 2024)

    def __post_init__(self) -> None:
        check_number("alpha", self.alpha)
        check_number("beta", self.beta)
        check_number("T", self.T, positive=True)


@LOSSES.register("dkd")
class DKD(LogitLoss):
    """DKD: T^2 * (alpha * TCKD + beta * NCKD), batch mean (Zhao et al., CVPR 2022, arXiv:2203.08679).

    parts: `tckd` and `nckd`, each T^2 * batch mean, before alpha/beta."""

    Params = DKDParams
    NEEDS = frozenset({NEED_LOGITS, NEED_LABELS, NEED_TEACHER_LOGITS})
    MIN_CLASSES = 2
    reference = "Zhao et al., Decoupled Knowledge Distillation, CVPR 2022, arXiv:2203.08679"

    def forward(self, s: ModelOut, t: ModelOut | None, batch) -> tuple[Tensor, dict[str, Tensor]]:
        p = self.params
        value, tckd, nckd = dkd_loss(*self.pair(s, t), batch.y, p.alpha, p.beta, p.T)
        return value, {"tckd": tckd, "nckd": nckd}
