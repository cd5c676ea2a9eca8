"""`train.teacher_cache=auto` (the default): use the teacher-output cache where it pays, and say why.

The cache costs `cache_views` (N) teacher passes over the training split once; the online teacher costs one
pass per epoch. A training step costs about three forward passes of the student, so with a teacher of r times
the student's FLOPs the online teacher is r / (3 + r) of a KD step, and over E >= MIN_EPOCHS_PER_VIEW x N epochs
the cache saves at least half of that. The cache is used when the teacher is at least MIN_COST_RATIO times the
student's FLOPs (a saving of at least a fifth of the run) and the run has those epochs. The
other conditions are the ones the cache itself needs: a preset that reads the teacher, a teacher file (its
sha256 keys the cache), data that can replay a mixed view, and room on the cache's disk. Each refusal is a
reason, recorded beside the decision (report.json `training.teacher_cache`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any

from ..core.config import TrainConfig
from ..core.splits import RandomAccess, Split
from .teacher_cache import MARGIN_BYTES, cache_root, estimate_bytes, stored_k

MIN_COST_RATIO = 2.0  # teacher FLOPs / student FLOPs (RESULTS.md, "Issue 26, stop 33"; docs/teacher-cache.md)
MIN_EPOCHS_PER_VIEW = 2


@dataclass(frozen=True)
class CacheDecision:
    requested: str  # auto | off | views
    used: str  # off | views
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"requested": self.requested, "used": self.used, "reason": self.reason}


@dataclass(frozen=True)
class CacheFacts:
    """What the decision reads: the teacher's and student's FLOPs per image (None: unknown), whether the
    preset reads the teacher (logits or embedding) and its embedding size, and whether the teacher is a file."""

    teacher_flops: int | None
    student_flops: int | None
    reads_teacher: bool
    teacher_file: bool
    embed_dim: int | None = None


def _free_bytes() -> int:
    probe = cache_root()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _why_not(cfg: TrainConfig, facts: CacheFacts, split: Split, num_classes: int) -> str | None:
    """The first reason the cache does not pay or cannot serve this run, or None."""
    if not facts.reads_teacher:
        return "the preset does not read the teacher"
    if not facts.teacher_file:
        return "the teacher is not a file (no sha256 to key the cache)"
    if cfg.mix != "none" and not isinstance(split, RandomAccess):
        return f"train.mix={cfg.mix} over a split decoded from files per batch cannot replay mixed views"
    if not facts.teacher_flops or not facts.student_flops:
        return "the teacher's or the student's FLOPs are unknown"
    ratio = facts.teacher_flops / facts.student_flops
    if ratio < MIN_COST_RATIO:
        return f"the teacher is {ratio:.1f}x the student's FLOPs (the cache pays from {MIN_COST_RATIO:g}x)"
    if cfg.epochs < MIN_EPOCHS_PER_VIEW * cfg.cache_views:
        return (f"{cfg.epochs} epochs: building {cfg.cache_views} views costs {cfg.cache_views} teacher passes, "
                f"which pays from {MIN_EPOCHS_PER_VIEW * cfg.cache_views} epochs")
    need = estimate_bytes(len(split), cfg.cache_views, num_classes, stored_k(num_classes, cfg.cache_topk),
                          facts.embed_dim)
    if 2 * need + MARGIN_BYTES > _free_bytes():
        return f"the cache (about {need / 2**20:.0f} MiB) does not fit on {cache_root()}'s disk"
    return None


def decide_cache(cfg: TrainConfig, facts: CacheFacts, split: Split, num_classes: int) -> CacheDecision:
    """off / views as asked; with auto, views unless a reason says it does not pay or cannot serve the run."""
    if cfg.teacher_cache != "auto":
        return CacheDecision(cfg.teacher_cache, cfg.teacher_cache, "asked for (train.teacher_cache)")
    why = _why_not(cfg, facts, split, num_classes)
    if why is not None:
        return CacheDecision("auto", "off", why)
    ratio = facts.teacher_flops / facts.student_flops  # type: ignore[operator]
    return CacheDecision("auto", "views", f"the teacher is {ratio:.0f}x the student's FLOPs and the run has "
                                          f"{cfg.epochs} epochs for {cfg.cache_views} cached views")
