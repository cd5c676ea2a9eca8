"""DIST: knowledge distillation from a stronger teacher via Pearson correlation of predictions.

Huang, You, Wang, Qian, Xu. "Knowledge Distillation from A Stronger Teacher". NeurIPS 2022,
arXiv:2205.10536. Defaults from the GDKD repo's CIFAR-100 config: beta=gamma=2, T=4 (w_ce=1 and no
warm-up live in the preset).

P^s, P^t are the B x C matrices softmax(z/T). With the authors' Pearson correlation
    rho(a, b) = <a - mean a, b - mean b> / (||a - mean a|| * ||b - mean b|| + 1e-8)
(eps added to the PRODUCT of norms; F.cosine_similarity clamps each norm instead and disagrees on
near-one-hot rows):
    inter = 1 - mean_b rho(P^s_b, P^t_b)        (rows: each sample's class ranking)
    intra = 1 - mean_c rho(P^s_:c, P^t_:c)      (columns: each class's ranking over the batch)
    L = T^2 * (beta * inter + gamma * intra).
Degenerate by construction at B=1 (the centred column is 0, intra = 1 with zero gradient) and B=2
(each column correlation is +-1); the training loader uses drop_last so B >= 2 whenever it can.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.types import ModelOut
from .base import LOSSES, LogitLoss
from .logspace import check_number, upcast

PEARSON_EPS = 1e-8


def pearson(a: Tensor, b: Tensor, dim: int) -> Tensor:
    """Pearson correlation along `dim`, eps on the product of the centred norms (as the authors do).
    vector_norm's gradient at an all-zero centred vector is 0, not NaN (B=1 columns)."""
    a_c = a - a.mean(dim=dim, keepdim=True)
    b_c = b - b.mean(dim=dim, keepdim=True)
    num = (a_c * b_c).sum(dim=dim)
    den = torch.linalg.vector_norm(a_c, dim=dim) * torch.linalg.vector_norm(b_c, dim=dim) + PEARSON_EPS
    return num / den


def dist_terms(z_s: Tensor, z_t: Tensor, T: float) -> tuple[Tensor, Tensor]:
    """(inter, intra) at temperature T, without the T^2 factor."""
    p_s = torch.softmax(upcast(z_s) / T, dim=1)
    p_t = torch.softmax(upcast(z_t) / T, dim=1)
    inter = 1.0 - pearson(p_s, p_t, dim=1).mean()
    intra = 1.0 - pearson(p_s, p_t, dim=0).mean()
    return inter, intra


@dataclass(frozen=True)
class DISTParams:
    beta: float = 2.0  # inter-class (row) relation weight
    gamma: float = 2.0  # intra-class (column) relation weight
    T: float = 4.0
    standardize: bool = False  # logit standardisation before the softmax (Sun et al., CVPR 2024)

    def __post_init__(self) -> None:
        check_number("beta", self.beta)
        check_number("gamma", self.gamma)
        check_number("T", self.T, positive=True)


@LOSSES.register("dist")
class DIST(LogitLoss):
    """DIST: T^2 * (beta * inter + gamma * intra) Pearson relations (Huang et al., NeurIPS 2022,
    arXiv:2205.10536). parts: `inter`, `intra`, each T^2-scaled, before beta/gamma."""

    Params = DISTParams
    reference = "Huang et al., Knowledge Distillation from A Stronger Teacher, NeurIPS 2022, arXiv:2205.10536"

    def forward(self, s: ModelOut, t: ModelOut | None, batch) -> tuple[Tensor, dict[str, Tensor]]:
        p = self.params
        inter, intra = dist_terms(*self.pair(s, t), p.T)
        scale = p.T * p.T
        inter_m, intra_m = inter * scale, intra * scale
        return p.beta * inter_m + p.gamma * intra_m, {"inter": inter_m, "intra": intra_m}
