"""Generalized decoupled knowledge distillation (GDKD), top-k partition.

Zheng, Cheng. "Generalized Decoupled Knowledge Distillation". arXiv:2512.04625; code ZaberKo/GDKD.
Defaults from the repo's cfg.py: w0=1, w1=1, w2=8, k=5, T=4, strategy "best", kl_type "forward"
(the 20-epoch warm-up and w_ce=1 live in the preset).

The partition comes from the TEACHER's logits, not the label: S_top = the k largest teacher logits
("best"; "worst" takes the k smallest), S_oth = the rest. With p = softmax(z/T):
    high  = KL(b^t || b^s),  b = [sum_{S_top} p, sum_{S_oth} p]            (level 0)
    top   = KL(softmax(z^t_{S_top}/T) || softmax(z^s_{S_top}/T))           (level 1, renormalised)
    other = the same on S_oth
    L_GDKD = T^2 * (1/B) sum_b [w0 * high + w1 * top + w2 * other].
kl_type applies to the level-1 terms only: forward KL(t||s), reverse KL(s||t), or both (their mean).
Chain identity: KL(p^t||p^s) = high + P^t_top * top + P^t_oth * other (forward KL).
With k=1 and the teacher's argmax equal to y, GDKD(w0, w1, w2) == DKD(alpha=w0, beta=w2) and top == 0.

Ties: at equal teacher logits the lower class index ranks first (a stable sort), so the partition never
depends on the top-k kernel. k must satisfy 1 <= k <= C-1: k = C empties S_oth, which a finite mask
would silently turn into the full softmax, so it is rejected.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.errors import UsageError
from ..core.types import LossContext, ModelOut
from .base import LOSSES, LogitLoss
from .logspace import binary_log_probs, check_number, kl_rows, masked_log_softmax, upcast

STRATEGIES = ("best", "worst")
KL_TYPES = ("forward", "reverse", "both")


def check_k(k: int, num_classes: int) -> None:
    if not 1 <= k <= num_classes - 1:
        raise UsageError(f"gdkd: k={k} must be between 1 and C-1={num_classes - 1} for {num_classes} classes "
                         "(the teacher's top-k and the other classes must both be non-empty)")


def topk_mask(z_t: Tensor, k: int, strategy: str = "best") -> Tensor:
    """(B, C) bool marking each row's k largest ("best") or smallest ("worst") teacher logits; among
    equal logits the lower class index is taken first (stable sort in either direction)."""
    order = torch.sort(z_t, dim=1, descending=(strategy == "best"), stable=True).indices[:, :k]
    return torch.zeros_like(z_t, dtype=torch.bool).scatter_(1, order, True)


def _level1(log_t: Tensor, log_s: Tensor, keep: Tensor, kl_type: str) -> Tensor:
    if kl_type == "forward":
        return kl_rows(log_t, log_s, keep)
    if kl_type == "reverse":
        return kl_rows(log_s, log_t, keep)
    return 0.5 * (kl_rows(log_t, log_s, keep) + kl_rows(log_s, log_t, keep))


def gdkd_terms(z_s: Tensor, z_t: Tensor, k: int, T: float, strategy: str = "best",
               kl_type: str = "forward") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-sample (high, top, other) at temperature T without T^2, shape (B,) each, and the top-k mask."""
    zs, zt = upcast(z_s) / T, upcast(z_t) / T
    check_k(k, zs.shape[1])
    top_set = topk_mask(zt, k, strategy)
    high = kl_rows(binary_log_probs(zt, top_set), binary_log_probs(zs, top_set))
    oth_set = ~top_set
    top = _level1(masked_log_softmax(zt, top_set), masked_log_softmax(zs, top_set), top_set, kl_type)
    other = _level1(masked_log_softmax(zt, oth_set), masked_log_softmax(zs, oth_set), oth_set, kl_type)
    return high, top, other, top_set


@dataclass(frozen=True)
class GDKDParams:
    w0: float = 1.0  # level 0: top-k vs rest binary KL
    w1: float = 1.0  # level 1: KL inside the teacher's top-k
    w2: float = 8.0  # level 1: KL inside the other classes
    k: int = 5
    T: float = 4.0
    strategy: str = "best"  # best | worst
    kl_type: str = "forward"  # forward | reverse | both
    standardize: bool = False  # logit standardisation before the softmax (Sun et al., CVPR 2024)

    def __post_init__(self) -> None:
        for name in ("w0", "w1", "w2"):
            check_number(name, getattr(self, name))
        check_number("T", self.T, positive=True)
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be an integer >= 1, got {self.k!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.kl_type not in KL_TYPES:
            raise ValueError(f"kl_type must be one of {', '.join(KL_TYPES)}, got {self.kl_type!r}")


@LOSSES.register("gdkd")
class GDKD(LogitLoss):
    """GDKD: T^2 * (w0 * high + w1 * top + w2 * other) over the teacher's top-k partition
    (Zheng & Cheng, arXiv:2512.04625). parts: `high`, `top`, `other`, each T^2 * batch mean, unweighted."""

    Params = GDKDParams
    reference = "Zheng & Cheng, Generalized Decoupled Knowledge Distillation, arXiv:2512.04625 (code ZaberKo/GDKD)"

    def __init__(self, params: GDKDParams, ctx: LossContext):
        super().__init__(params, ctx)
        check_k(params.k, ctx.num_classes)  # fail before training, not at the first step

    def forward(self, s: ModelOut, t: ModelOut | None, batch) -> tuple[Tensor, dict[str, Tensor]]:
        p = self.params
        high, top, other, _ = gdkd_terms(*self.pair(s, t), p.k, p.T, p.strategy, p.kl_type)
        scale = p.T * p.T
        high_m, top_m, other_m = high.mean() * scale, top.mean() * scale, other.mean() * scale
        value = p.w0 * high_m + p.w1 * top_m + p.w2 * other_m
        return value, {"high": high_m, "top": top_m, "other": other_m}
