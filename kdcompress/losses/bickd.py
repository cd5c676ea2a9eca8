"""BicKD, kdcompress variant: vanilla KD + a bilateral (sample-wise and class-wise) contrastive term.

Paper: Zhu, Xu, Xiong, Liu, Liu, Lee, Gu. "BicKD: Bilateral Contrastive Knowledge Distillation".
arXiv:2602.01265. Only its abstract could be read: a logit-based method built on vanilla KD whose
"bilateral contrastive loss" compares teacher and student sample-wise and class-wise, making the class
generalisation spaces more orthogonal while keeping each class consistent. The exact loss, temperatures
and weights are unconfirmed, so this is a **kdcompress variant** (methods.md §7, design [D]), reported
as such, not the paper's loss:

    P^s, P^t = softmax(z/T)  (B x C; rows are samples, columns are classes over the batch)
    row = InfoNCE: student row b must match teacher row b against the teacher rows b' != b,
          logits cos(P^s_b, P^t_b') / tau, cross-entropy with target b, mean over b
    col = the same over the columns: student column c vs teacher column c against the other classes'
          columns, which pushes different classes' columns towards orthogonality
    L = KD_T + lambda * (row + col) / 2        (KD_T is Hinton KD with its T^2; the contrast has no T^2)

Placeholders: T=4 (KD's CIFAR default), tau=0.1, lambda=1. A batch of one sample has no negatives: the
contrastive part is then defined as 0 (documented, never NaN) and the loss is plain KD. A class column
that is all zeros (never predicted in the batch, or underflow at extreme logits) has cosine 0 with
everything rather than NaN (normalisation clamps the norm).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.types import ModelOut
from .base import LOSSES, LogitLoss
from .kd import kd_loss
from .logspace import check_number, upcast

NORM_EPS = 1e-12


def info_nce(anchors: Tensor, keys: Tensor, tau: float) -> Tensor:
    """Mean over rows i of -log softmax_j(cos(anchors_i, keys_j) / tau)[i]: row i's positive is keys_i."""
    a = F.normalize(anchors, dim=1, eps=NORM_EPS)
    k = F.normalize(keys, dim=1, eps=NORM_EPS)
    logits = a @ k.t() / tau
    return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))


def bickd_terms(z_s: Tensor, z_t: Tensor, T: float, tau: float) -> tuple[Tensor, Tensor, Tensor]:
    """(KD_T with T^2, row InfoNCE, column InfoNCE). With B < 2 both contrasts are 0."""
    zs, zt = upcast(z_s), upcast(z_t)
    kd = kd_loss(zs, zt, T)
    if zs.shape[0] < 2:
        zero = zs.new_zeros(())
        return kd, zero, zero
    p_s = torch.softmax(zs / T, dim=1)
    p_t = torch.softmax(zt / T, dim=1)
    return kd, info_nce(p_s, p_t, tau), info_nce(p_s.t(), p_t.t(), tau)


@dataclass(frozen=True)
class BicKDParams:
    T: float = 4.0
    tau: float = 0.1  # contrastive temperature on the cosine similarities
    lambda_: float = 1.0  # weight of (row + col) / 2 relative to KD
    standardize: bool = False  # logit standardisation of KD and the contrast (Sun et al., CVPR 2024)

    def __post_init__(self) -> None:
        check_number("T", self.T, positive=True)
        check_number("tau", self.tau, positive=True)
        check_number("lambda_", self.lambda_)


@LOSSES.register("bickd")
class BicKD(LogitLoss):
    """BicKD (kdcompress variant, not the paper's confirmed loss): KD + lambda * (row + col) / 2 InfoNCE
    between the student's and teacher's B x C probability matrices (Zhu et al., arXiv:2602.01265).
    Batch size 1: the contrastive part is 0. parts: `kd`, `row`, `col` (unweighted)."""

    Params = BicKDParams
    reference = "Zhu et al., BicKD: Bilateral Contrastive Knowledge Distillation, arXiv:2602.01265 (kdcompress variant)"

    def forward(self, s: ModelOut, t: ModelOut | None, batch) -> tuple[Tensor, dict[str, Tensor]]:
        p = self.params
        kd, row, col = bickd_terms(*self.pair(s, t), p.T, p.tau)
        return kd + p.lambda_ * 0.5 * (row + col), {"kd": kd, "row": row, "col": col}
