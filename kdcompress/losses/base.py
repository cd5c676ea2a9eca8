"""The loss contract, the LOSSES registry and `Objective`, which combines weighted, warmed-up terms.

A loss is an nn.Module registered under its kind with:
  * `Params`: a frozen dataclass of hyperparameters (what a preset's `params` table and `--set` fill);
  * `NEEDS`: what the trainer must supply (core.types NEED_*); the trainer never branches on loss types;
  * `forward(s, t, batch) -> (value, parts)`: the unweighted value and named sub-terms;
  * optionally `prepare(ctx)`: work over the training set before epoch 1 (ND centres, IC-KD bank). A loss
    that defines it also defines `prepared_state() -> dict[str, Tensor]` and `load_prepared(state, ctx)`;
    the trainer saves that state once in the run directory and a resumed run loads it instead of
    recomputing. Prepared tensors are kept out of `state_dict()` (non-persistent buffers or plain
    attributes), so the per-epoch checkpoint does not rewrite a large bank every epoch.
Weights and warm-up live in `Objective`, never inside a loss. All maths runs in fp32 from log-softmax.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..core.build import build_dataclass
from ..core.config import LossTerm
from ..core.errors import UsageError
from ..core.registry import Registry
from ..core.types import NEED_LOGITS, NEED_TEACHER_LOGITS, LossContext, ModelOut, PrepareContext
from .logspace import maybe_standardize


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


class LogitLoss(Loss):
    """A loss on (student, teacher) logits whose Params carry `standardize` (logit standardisation, Sun et al.,
    CVPR 2024, arXiv:2403.01427; methods.md §8b): `pair()` gives the two logit tensors, z-scored per sample
    when it is on, so every logit loss applies the option the same way, before its temperature softmax."""

    NEEDS = frozenset({NEED_LOGITS, NEED_TEACHER_LOGITS})
    MIN_CLASSES: ClassVar[int] = 1  # e.g. 2 for the losses that split off the target class

    def __init__(self, params: Any, ctx: LossContext):
        super().__init__(params, ctx)
        if ctx.num_classes < self.MIN_CLASSES:
            raise UsageError(f"{type(self).__name__.lower()} needs at least {self.MIN_CLASSES} classes, "
                             f"got {ctx.num_classes}")

    def pair(self, s: ModelOut, t: ModelOut | None) -> tuple[Tensor, Tensor]:
        if t is None:
            raise RuntimeError(f"{type(self).__name__.lower()} needs teacher logits")
        on = bool(getattr(self.params, "standardize", False))
        return maybe_standardize(s.logits, on), maybe_standardize(t.logits, on)


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

    def _preparable(self) -> dict[str, Loss]:
        return {k: m for k, m in self.losses.items() if callable(getattr(m, "prepare", None))}

    @property
    def needs_prepare(self) -> bool:
        return bool(self._preparable())

    def prepare(self, ctx: PrepareContext) -> None:
        for loss in self._preparable().values():
            loss.prepare(ctx)

    def prepared_state(self) -> dict[str, dict[str, Tensor]]:
        """Per term, the tensors its prepare() produced. Terms sharing an object (one IC-KD bank) return the
        same tensors, and torch.save writes a shared storage once."""
        return {k: m.prepared_state() for k, m in self._preparable().items()}

    def load_prepared(self, state: dict[str, dict[str, Tensor]], ctx: PrepareContext) -> None:
        mine = self._preparable()
        if set(state) != set(mine):
            raise KeyError(f"prepared state holds terms {sorted(state)}, the objective has {sorted(mine)}")
        for k, m in mine.items():
            m.load_prepared(state[k], ctx)

    def weights(self, epoch: int) -> dict[str, float]:
        return {t.key: t.weight * warmup_factor(epoch, t.warmup_epochs) for t in self.terms}

    def forward(self, s: ModelOut, t: ModelOut | None, batch: Any, epoch: int,
                host_parts: bool = True) -> tuple[Tensor, dict[str, Any]]:
        """host_parts=True: parts are Python floats. The step engine passes False and gets detached 0-d
        tensors, which it sums on the device, because reading a GPU value every step stalls the host."""
        s32 = s.float()
        t32 = t.float() if t is not None else None
        total = s.logits.new_zeros((), dtype=torch.float32)
        parts: dict[str, Any] = {}
        read = (lambda v: float(v.detach())) if host_parts else (lambda v: v.detach())
        for key, w in self.weights(epoch).items():
            value, sub = self.losses[key](s32, t32, batch)
            parts[key] = read(value)
            for name, v in sub.items():
                parts[f"{key}.{name}"] = read(v)
            if w != 0.0:
                total = total + w * value
        return total, parts
