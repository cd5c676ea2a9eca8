"""Log-space building blocks shared by the logit losses (DKD, GDKD, NKD, DIST, BicKD).

Rules from methods.md §11 that every helper here enforces:
  * maths in at least fp32 (fp16/bf16 inputs are upcast; float64 stays float64 so tests can be exact);
  * probabilities only ever appear as exp(log-prob): never log(softmax) nor log(sum of probabilities);
  * a subset of classes is selected by replacing the others with a large FINITE negative before
    log-softmax / logsumexp. With -inf the KL's 0 * (-inf - -inf) would be NaN; with the reference
    code's fixed offset of 1000 the mask leaks once |z/T| approaches 1000 (logits of 1e4 at T=1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Far below any realistic logit / T, yet finite in fp32 (max 3.4e38) so that differences of two masked
# log-probabilities stay finite: exp() of it is exactly 0 and masked entries contribute nothing.
MASK_NEG = -1e30


def upcast(x: Tensor) -> Tensor:
    """At least fp32: half-precision inputs (AMP) are promoted, fp32/fp64 are kept as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def hard_labels(y: Tensor) -> Tensor:
    """int64 class indices of shape (B,). Soft/mixup targets (B, C) use argmax(label) as y, which is the
    documented approximation DKD and NKD need (methods.md §11.3)."""
    if y.dim() == 2:
        y = y.argmax(dim=1)
    return y.reshape(-1).long()


def one_hot_mask(y: Tensor, num_classes: int) -> Tensor:
    """(B, C) bool, True at each row's label."""
    return torch.zeros(y.shape[0], num_classes, dtype=torch.bool, device=y.device).scatter_(1, y.view(-1, 1), True)


def masked_log_softmax(z: Tensor, keep: Tensor) -> Tensor:
    """log-softmax restricted to the classes where `keep` is True (renormalised over that subset);
    entries outside the subset come out near MASK_NEG (finite) and carry no gradient."""
    return torch.log_softmax(torch.where(keep, z, MASK_NEG), dim=1)


def masked_logsumexp(z: Tensor, keep: Tensor) -> Tensor:
    """logsumexp over the classes where `keep` is True, per row: shape (B,)."""
    return torch.logsumexp(torch.where(keep, z, MASK_NEG), dim=1)


def kl_rows(log_p: Tensor, log_q: Tensor, keep: Tensor | None = None) -> Tensor:
    """Per-row KL(p || q) = sum_i p_i (log p_i - log q_i) from log-probabilities, shape (B,).

    Entries outside `keep` are zeroed explicitly (their p is already exactly 0; the where() makes that
    independent of the magnitude of the masked log-probabilities)."""
    terms = torch.exp(log_p) * (log_p - log_q)
    if keep is not None:
        terms = torch.where(keep, terms, torch.zeros((), dtype=terms.dtype, device=terms.device))
    return terms.sum(dim=1)


def binary_log_probs(z: Tensor, in_a: Tensor) -> Tensor:
    """(B, 2) log-probabilities of the events "class in A" and "class not in A" under softmax(z),
    each as a difference of logsumexps (log P(A) = lse_A(z) - lse(z)), never a log of summed probabilities."""
    lse = torch.logsumexp(z, dim=1)
    return torch.stack([masked_logsumexp(z, in_a) - lse, masked_logsumexp(z, ~in_a) - lse], dim=1)


def check_number(name: str, value: float, *, positive: bool = False) -> None:
    """Params validation shared by the logit losses: finite, and > 0 or >= 0 (raises ValueError)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if not positive and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


STANDARDIZE_EPS = 1e-7


def standardize(z: Tensor) -> Tensor:
    """Logit standardisation (Sun et al., CVPR 2024, arXiv:2403.01427; methods.md §8b): per sample, over the
    last dim (the C classes), z' = (z - mean(z)) / (1e-7 + std(z)) with the unbiased std, as the authors' code
    does. The result does not change when a per-sample constant is added to z or when z is multiplied by a
    positive per-sample factor (up to the 1e-7), so the temperature softmax sees only the logits' shape."""
    z = upcast(z)
    return (z - z.mean(dim=-1, keepdim=True)) / (STANDARDIZE_EPS + z.std(dim=-1, keepdim=True))


def maybe_standardize(z: Tensor, on: bool) -> Tensor:
    """`standardize(z)` when a loss's `standardize` param is true, else z unchanged."""
    return standardize(z) if on else z

