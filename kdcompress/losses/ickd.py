"""IC-KD, in-context knowledge distillation: PICD and NICD (kdcompress variant).

Zhu, Li, Wang. "Rethinking 'Knowledge' in Distillation: An In-context Sample Retrieval Perspective" (IC-KD).
arXiv:2501.07040 (2025).

Only the abstract could be read (methods.md §6): a memory bank of teacher features supplies "in-context"
samples for each training sample; PICD pulls the student's output towards the teacher's aggregated outputs of
same-class neighbours, NICD pushes it away from the teacher's outputs of different-class neighbours, both in
logit space and beside a standard KD term. The exact forms below are kdcompress's provisional design, NOT the
paper's (report them as "IC-KD (kdcompress variant)"):

  neighbours (`retrieval = "class"`, the default): the K nearest training samples WITH the sample's label
      (P_b, for PICD) and, separately, the K nearest with ANOTHER label (N_b, for NICD), by the sample's teacher
      feature in the bank (memory.py), the own dataset index excluded; so every sample has negatives.
      `retrieval = "joint"` (the earlier design): one top-K, split by label; with an accurate teacher N_b is
      then empty for most samples. The loss part `valid` is the fraction of the batch with |P_b| > 0 (picd)
      or |N_b| > 0 (nicd).
  PICD_b = T^2 KL(softmax(zbar_b / T) || softmax(z^s_b / T)), zbar_b = mean of the teacher logits over P_b
      (option `weighting = "similarity"`: weights softmax(sim / 0.1) over P_b); mean over samples with
      |P_b| > 0, 0 when there is none.
  NICD_b = mean over n in N_b of cos(softmax(z^s_b / T), softmax(z^t_n / T)) (minimised, in [0, 1]); mean
      over samples with |N_b| > 0, 0 when there is none.

Both terms of one Objective share ONE bank: each term's prepare() asks the PrepareContext for it with
`ctx.cached(BANK_KEY, ...)`, so the second term gets the object the first one built (and on resume, the one
the first one loaded). In dynamic joint mode the bank's one-entry memo makes the two terms share a single
search per step; class-conditional retrieval searches once per term (its own side), one pass over the bank each.
`standardize = true` z-scores the logits (methods.md §8b) before the temperature softmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.errors import UsageError
from ..core.types import NEED_INDEX, NEED_LABELS, NEED_LOGITS, NEED_TEACHER_EMBED, LossContext, ModelOut, PrepareContext
from .base import LOSSES, Loss
from .logspace import check_number, maybe_standardize
from .memory import MemoryBank

BANK_KEY = "ickd.bank"
SIM_TAU = 0.1  # temperature of the optional similarity weighting of positives (methods.md §6.4)
MODES = ("dynamic", "static")
WEIGHTINGS = ("mean", "similarity")


def _masked_mean(per: Tensor, valid: Tensor) -> Tensor:
    # Masked samples carry finite values times 0, so the gradient stays finite; all-masked gives exactly 0.
    v = valid.to(per.dtype)
    return (per * v).sum() / v.sum().clamp_min(1.0)


def positive_target(nb_logits: Tensor, pos: Tensor, sims: Tensor | None = None,
                    weighting: str = "mean") -> tuple[Tensor, Tensor]:
    """zbar_b: the (weighted) mean teacher logit over the positive neighbours. nb_logits (B, K, C),
    pos (B, K) bool, sims (B, K). Returns (zbar (B, C), valid (B,) = |P_b| > 0); rows without a positive
    are 0 (finite) and must be masked by the caller."""
    posf = pos.to(nb_logits.dtype)
    if weighting == "similarity":
        if sims is None:
            raise ValueError("similarity weighting needs the neighbours' similarities")
        # A large finite fill (not -inf) keeps an all-negative row finite; the * posf removes it exactly.
        a = torch.where(pos, sims.float() / SIM_TAU, torch.full_like(sims, -1e4, dtype=torch.float32))
        w = torch.softmax(a, dim=1) * posf
        w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
    else:
        w = posf / posf.sum(dim=1, keepdim=True).clamp_min(1.0)
    return (w.unsqueeze(2) * nb_logits.float()).sum(dim=1), pos.any(dim=1)


def picd_loss(z_s: Tensor, nb_logits: Tensor, pos: Tensor, T: float, sims: Tensor | None = None,
              weighting: str = "mean", standardize: bool = False) -> Tensor:
    """T^2 * KL(softmax(zbar/T) || softmax(z_s/T)) averaged over samples with at least one positive.
    standardize: z-score z_s and the aggregated target zbar per sample first (methods.md §8b)."""
    zbar, valid = positive_target(nb_logits, pos, sims, weighting)
    log_ps = F.log_softmax(maybe_standardize(z_s.float(), standardize) / T, dim=1)
    log_pt = F.log_softmax(maybe_standardize(zbar, standardize) / T, dim=1)
    per = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(dim=1) * (T * T)
    return _masked_mean(per, valid)


def nicd_loss(z_s: Tensor, nb_logits: Tensor, neg: Tensor, T: float, standardize: bool = False) -> Tensor:
    """Mean over negatives of cos(softmax(z_s/T), softmax(z_n/T)), averaged over samples with a negative.
    Softmax vectors are positive, so both norms are at least 1/sqrt(C): the cosine is always defined.
    standardize: z-score z_s and every neighbour's logits per sample first (methods.md §8b)."""
    p_s = F.softmax(maybe_standardize(z_s.float(), standardize) / T, dim=1)
    p_n = F.softmax(maybe_standardize(nb_logits.float(), standardize) / T, dim=2)
    cos = (p_s.unsqueeze(1) * p_n).sum(dim=2) / (p_s.norm(dim=1, keepdim=True) * p_n.norm(dim=2))
    negf = neg.to(cos.dtype)
    per = (cos * negf).sum(dim=1) / negf.sum(dim=1).clamp_min(1.0)
    return _masked_mean(per, neg.any(dim=1))


RETRIEVALS = ("class", "joint")


@dataclass(frozen=True)
class NICDParams:
    k: int = 8  # neighbours per sample (kdcompress default, [U] in the paper; docs/methods-notes.md)
    T: float = 4.0
    mode: str = "dynamic"  # dynamic: query with the augmented view each step; static: precomputed once
    retrieval: str = "class"  # class: K nearest same-class (PICD) / other-class (NICD); joint: one top-K, split
    standardize: bool = False  # logit standardisation before the softmax (Sun et al., CVPR 2024)

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        check_number("T", self.T, positive=True)  # finite and > 0
        for name, allowed in (("mode", MODES), ("retrieval", RETRIEVALS), ("weighting", WEIGHTINGS)):
            value = getattr(self, name, allowed[0])
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


@dataclass(frozen=True)
class PICDParams(NICDParams):
    weighting: str = "mean"  # mean | similarity (softmax(sim / 0.1) over the positives)


class _Retrieval:
    """One term's access to the shared bank: prepare / save / load it, and fetch a batch's neighbours.
    `side` is "same" (PICD) or "other" (NICD) for class-conditional retrieval, None for the joint top-K."""

    def __init__(self, term: str, k: int, mode: str, side: str | None):
        self.term, self.k, self.mode, self.side = term, k, mode, side
        self.bank: MemoryBank | None = None

    def prepare(self, ctx: PrepareContext) -> None:
        n = len(ctx.train_split)
        if n < self.k + 1:
            raise UsageError(f"{self.term}.k={self.k} needs at least {self.k + 1} training samples; "
                             f"the training split has {n}")

        def build() -> MemoryBank:
            bank = MemoryBank.from_teacher(ctx.teacher_outputs(), ctx.device)
            ctx.console.print(f"ickd: memory bank of {len(bank)} x {bank.dim} teacher features "
                              f"({bank.backend} search on {bank.device})")
            return bank

        self.bank = ctx.cached(BANK_KEY, build)
        if self.mode == "static":
            self.bank.static_neighbours(self.k, self.side)

    def state(self) -> dict[str, Tensor]:
        assert self.bank is not None
        return self.bank.state(static_ks=(self.k,) if self.mode == "static" else (), side=self.side)

    def load(self, state: dict[str, Tensor], ctx: PrepareContext) -> None:
        self.bank = ctx.cached(BANK_KEY, lambda: MemoryBank.from_state(state, ctx.device))
        self.bank.adopt_static(state)

    def fetch(self, t: ModelOut | None, batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(neighbour teacher logits (B, K, C), same-class mask (B, K), other-class mask (B, K), sims (B, K)).
        Padding entries (the sample's own index, see memory.py) are in neither mask."""
        if self.bank is None:
            raise RuntimeError(f"{self.term}: the memory bank is missing; the trainer calls prepare() first")
        own = batch.index.to(self.bank.device)
        y = batch.y.to(self.bank.device)
        if self.mode == "static":
            ids, sims = self.bank.static_lookup(own, self.k, self.side)
        else:
            assert t is not None and t.embed is not None
            ids, sims = self.bank.neighbours(t.embed, own, self.k, y, self.side)
        nb_y = self.bank.labels[ids]
        real = ids != own.view(-1, 1)
        return self.bank.logits[ids], (nb_y == y.view(-1, 1)) & real, nb_y != y.view(-1, 1), sims


def _needs(mode: str) -> frozenset[str]:
    base = {NEED_LOGITS, NEED_LABELS, NEED_INDEX}
    return frozenset(base | {NEED_TEACHER_EMBED}) if mode == "dynamic" else frozenset(base)


class _InContext(Loss):
    """PICD and NICD: one term over the shared bank; SIDE picks which neighbours it retrieves and uses."""

    SIDE: str = "same"
    NEEDS = _needs("dynamic")  # the class-level superset; an instance in static mode needs no teacher feature
    reference = "Zhu, Li, Wang 2025, arXiv:2501.07040 (IC-KD; kdcompress variant)"

    def __init__(self, params: NICDParams, ctx: LossContext):
        super().__init__(params, ctx)
        self.NEEDS = _needs(params.mode)
        side = self.SIDE if params.retrieval == "class" else None
        self.retrieval = _Retrieval("picd" if self.SIDE == "same" else "nicd", params.k, params.mode, side)

    def prepare(self, ctx: PrepareContext) -> None:
        self.retrieval.prepare(ctx)

    def prepared_state(self) -> dict[str, Tensor]:
        return self.retrieval.state()

    def load_prepared(self, state: dict[str, Tensor], ctx: PrepareContext) -> None:
        self.retrieval.load(state, ctx)

    def _value(self, z_s: Tensor, nb_logits: Tensor, mask: Tensor, sims: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, s: ModelOut, t: ModelOut | None, batch) -> tuple[Tensor, dict[str, Tensor]]:
        nb_logits, pos, neg, sims = self.retrieval.fetch(t, batch)
        z_s = s.logits
        mask = (pos if self.SIDE == "same" else neg).to(z_s.device)
        value = self._value(z_s, nb_logits.to(z_s.device), mask, sims.to(z_s.device))
        # `valid`: the fraction of the batch with at least one positive (picd) / negative (nicd)
        return value, {"valid": mask.any(dim=1).float().mean()}


@LOSSES.register("picd")
class PICD(_InContext):
    """IC-KD positive in-context distillation, kdcompress variant (Zhu et al. 2025, arXiv:2501.07040)."""

    Params = PICDParams
    SIDE = "same"

    def _value(self, z_s: Tensor, nb_logits: Tensor, mask: Tensor, sims: Tensor) -> Tensor:
        p = self.params
        return picd_loss(z_s, nb_logits, mask, p.T, sims, p.weighting, p.standardize)


@LOSSES.register("nicd")
class NICD(_InContext):
    """IC-KD negative in-context distillation, kdcompress variant (Zhu et al. 2025, arXiv:2501.07040)."""

    Params = NICDParams
    SIDE = "other"

    def _value(self, z_s: Tensor, nb_logits: Tensor, mask: Tensor, sims: Tensor) -> Tensor:
        return nicd_loss(z_s, nb_logits, mask, self.params.T, self.params.standardize)
