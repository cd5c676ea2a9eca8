"""ND: the Norm and Direction of the student's penultimate feature (the "++" of KD++ / DKD++).

Wang, Xu, Zhang, Wang, Zhou. "Improving Knowledge Distillation via Regularizing Feature Norm and
Direction". arXiv:2305.17007 (2023); code WangYZ1608/Knowledge-Distillation-via-ND.

Per sample, with e_y the unit-length teacher class centre of the sample's label,
    L_nd,b = 1 - <f^s_b, e_y> / max(||f^s_b||, ||f^t_b||),
and the term is the mean over the samples whose class has a centre (the weight lambda_nd is the term's
weight in the preset). When ||f^s|| >= ||f^t|| it is 1 - cos(f^s, e_y); below the teacher's norm it also
rewards a longer projection, pushing the student's norm up to at least that sample's teacher norm.

The centres are the per-class means of the teacher's penultimate features over the training split, computed
once in prepare(): teacher in eval mode, un-augmented images, full precision, per class sum then divide
(the repo used augmented images and rounded to 4 decimals; kdcompress's choice, methods.md §5 [D]).

When the embedding sizes differ, a training-only projector BatchNorm1d(d_s) -> Dropout(0.5) ->
Linear(d_s -> d_t) (the repo's EmbTrans) maps the student feature to the teacher's size. It is a submodule of
this loss, so its parameters are in the optimizer through Objective.parameters(); export sees the student only.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core.errors import UsageError
from ..core.types import (
    NEED_LABELS,
    NEED_LOGITS,
    NEED_STUDENT_EMBED,
    NEED_TEACHER_EMBED,
    LossContext,
    ModelOut,
    PrepareContext,
)
from .base import LOSSES, Loss

_EPS = 1e-12  # only guards an all-zero pair of features; any real feature norm is far above it


def class_centres(embed: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class mean of `embed` (N, d): the sum per class divided by the count, accumulated in float64.
    Returns (centres (C, d) fp32, valid (C,) bool); a class with no sample, or a zero-length mean (no
    direction), is invalid and its row is 0."""
    sums = torch.zeros(num_classes, embed.shape[1], dtype=torch.float64, device=embed.device)
    sums.index_add_(0, labels, embed.double())
    counts = torch.bincount(labels, minlength=num_classes).to(embed.device)
    centres = (sums / counts.clamp_min(1).unsqueeze(1).double()).float()
    valid = (counts > 0) & (centres.norm(dim=1) > 0)
    return centres * valid.unsqueeze(1), valid


def nd_loss(f_s: Tensor, f_t: Tensor, centres: Tensor, valid: Tensor, y: Tensor) -> Tensor:
    """Mean over samples with a valid centre of 1 - <f_s, e_y> / max(||f_s||, ||f_t||); 0 if none has one.
    `centres` may have any length per class: only the direction e_y = c_y / ||c_y|| is used."""
    f_s, f_t = f_s.float(), f_t.float()
    e = centres.float() / centres.float().norm(dim=1, keepdim=True).clamp_min(_EPS)
    e_y = e[y]
    denom = torch.maximum(f_s.norm(dim=1), f_t.norm(dim=1)).clamp_min(_EPS)
    per = 1.0 - (f_s * e_y).sum(dim=1) / denom
    mask = valid[y].to(per.dtype)
    # Masked samples contribute 0 (not NaN: e_y is the zero vector there), and the mean is over the others.
    return (per * mask).sum() / mask.sum().clamp_min(1.0)


@dataclass(frozen=True)
class NDParams:
    """ND has no hyperparameter of its own: lambda_nd is the term's weight, and the projector (used only
    when the embedding sizes differ) is fixed by the paper's code."""


@LOSSES.register("nd")
class ND(Loss):
    """Feature norm and direction loss of KD++/DKD++ (Wang et al. 2023, arXiv:2305.17007)."""

    Params = NDParams
    NEEDS = frozenset({NEED_LOGITS, NEED_LABELS, NEED_STUDENT_EMBED, NEED_TEACHER_EMBED})
    reference = "Wang et al. 2023, arXiv:2305.17007 (KD++/DKD++)"

    def __init__(self, params: NDParams, ctx: LossContext):
        super().__init__(params, ctx)
        d_s, d_t = ctx.student_embed_dim, ctx.teacher_embed_dim
        if d_s is None or d_t is None:
            raise UsageError("nd needs the penultimate embedding size of both student and teacher "
                             f"(student {d_s}, teacher {d_t})")
        self.projector: nn.Module | None = None
        if d_s != d_t:
            self.projector = nn.Sequential(nn.BatchNorm1d(d_s), nn.Dropout(0.5), nn.Linear(d_s, d_t))
        # Non-persistent: prepared state is saved once in prepared.pt, not in every epoch's checkpoint.
        self.register_buffer("centres", torch.zeros(ctx.num_classes, d_t), persistent=False)
        self.register_buffer("valid", torch.zeros(ctx.num_classes, dtype=torch.bool), persistent=False)
        self._prepared = False
        self._warned_b1 = False

    def prepare(self, ctx: PrepareContext) -> None:
        out = ctx.teacher_outputs()
        centres, valid = class_centres(out.embed, out.labels, self.ctx.num_classes)
        self._set(centres, valid, ctx)
        ctx.console.print(f"nd: teacher class centres for {int(valid.sum())}/{len(valid)} classes")

    def prepared_state(self) -> dict[str, Tensor]:
        return {"centres": self.centres.detach().cpu(), "valid": self.valid.detach().cpu()}

    def load_prepared(self, state: dict[str, Tensor], ctx: PrepareContext) -> None:
        self._set(state["centres"], state["valid"], ctx)

    def _set(self, centres: Tensor, valid: Tensor, ctx: PrepareContext) -> None:
        if tuple(centres.shape) != tuple(self.centres.shape):
            raise ValueError(f"nd: centres of shape {tuple(centres.shape)}, expected {tuple(self.centres.shape)}")
        self.centres.copy_(centres)
        self.valid.copy_(valid)
        missing = [i for i, v in enumerate(valid.tolist()) if not v]
        if missing:
            ctx.console.print(f"[yellow]warning:[/] nd: class(es) {', '.join(map(str, missing[:10]))}"
                              f"{' ...' if len(missing) > 10 else ''} have no training sample (no centre); "
                              "their samples are left out of the nd term")
        self._prepared = True

    def forward(self, s: ModelOut, t: ModelOut | None, batch) -> tuple[Tensor, dict[str, Tensor]]:
        if not self._prepared:
            raise RuntimeError("nd: teacher class centres are missing; the trainer calls prepare() first")
        assert t is not None and s.embed is not None and t.embed is not None
        f_s = s.embed
        if self.projector is not None:
            if self.training and f_s.shape[0] == 1:
                # BatchNorm1d cannot train on one sample (methods.md §11.4); the trainer drops last batches,
                # so this only happens to direct callers: skip the term rather than fail.
                if not self._warned_b1:
                    warnings.warn("nd: batch of 1 in training mode; the projector's BatchNorm cannot run, "
                                  "term skipped", stacklevel=2)
                    self._warned_b1 = True
                return f_s.sum() * 0.0, {}
            f_s = self.projector(f_s.float())
        return nd_loss(f_s, t.embed, self.centres, self.valid, batch.y), {}
