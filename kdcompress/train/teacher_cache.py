"""The teacher-output cache (`train.teacher_cache=views`): the frozen teacher runs once, before training, over
`cache_views` (N) replayable augmented views of every training sample; training then reads its outputs
instead of running it in every step.

* Views. View slot v of sample i is augment.view_draws(i, v, seed): a pure function of (seed, i, v), so the
  student is trained on exactly the view the teacher saw, in any batch order and on any device. Each epoch
  picks one of the N slots per sample, again a pure function (seed, epoch, i): a resumed run needs no state.
  With train.mix (mixup, cutmix) a view is also mixed with a partner: its index augment.partner_of(i, v),
  the partner's crop, lambda and the cutmix box are pure functions of (seed, i, v) too, and the partner's
  image is fetched from the training split by index (a split held in memory: core.splits.RandomAccess).
* Storage. fp16. With C <= FULL_MAX_CLASSES classes (or cache_topk >= C) the teacher's logits are kept
  whole. Above that only the top-k log-probabilities (and their class ids) are kept and the rest of the
  distribution is reconstructed as in FKD (Shen & Xing 2021): the remaining probability mass is spread
  uniformly over the other C - k classes, and the losses receive log-probabilities as logits (a softmax
  of them, at T = 1, is that distribution). The teacher's embedding is stored too when a loss needs it.
* Where. In a key-addressed shared directory, `$KDCOMPRESS_CACHE/teacher-outputs/<key>.pt` (default
  ~/.cache/kdcompress, the same root as the latency cache), not in the run directory: every preset of a
  comparison runs in its own --out, and the cache is the same for all of them (it depends only on the
  teacher and the views), so it is built once for all. The key is the teacher's sha256, the data (spec
  string, size, a hash of the labels), the input normalisation, the augmentation mode, the mixing (so a
  cache built without mixup is never read by a run with it), N, the view seed, k and whether embeddings
  are stored. The run directory records the key and path in teacher_cache.json.
* Size. Estimated before it is built and refused, in one line with the estimate, when the disk (or its
  free space less a margin) cannot take it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core import system
from ..core.config import TrainConfig
from ..core.errors import EnvironmentProblem, InputError, UsageError
from ..core.runio import atomic_torch_save, atomic_write_json, safe_torch_load
from ..core.spec import InputSpec
from ..core.splits import DataSplits, RandomAccess, Split, normalize
from ..core.types import ModelOut
from .augment import augment_view, blend, mix, mix_uniforms, pad_of, partner_of, shift_flip, view_draws

FULL_MAX_CLASSES = 100  # up to this many classes the logits are stored whole
AUTO_TOPK = 20  # above it: the top 20 (FKD keeps the top-k soft labels of each crop)
MARGIN_BYTES = 256 * 2**20  # free space left over after the cache (and its temporary copy) is written
FORMAT = "kdcompress.teacher-cache"


def cache_root() -> Path:
    """The latency cache's root (core.system.cache_root), teacher-outputs/ in it."""
    return system.cache_root() / "teacher-outputs"


def stored_k(num_classes: int, topk: int) -> int:
    if topk:
        return min(topk, num_classes)
    return num_classes if num_classes <= FULL_MAX_CLASSES else AUTO_TOPK


def estimate_bytes(n: int, views: int, num_classes: int, k: int, embed_dim: int | None) -> int:
    per = 2 * k + (2 * k if k < num_classes else 0) + 2 * (embed_dim or 0)  # fp16 values, int16 class ids
    return n * views * per + 64 * 1024


def _human(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if b < 1024 or unit == "TiB":
            return f"{b:.1f} {unit}" if unit != "B" else f"{int(b)} B"
        b /= 1024
    return f"{b:.1f} TiB"


def check_space(directory: Path, need: int, what: str) -> None:
    """Refuse (EnvironmentProblem, one line) when `need` bytes would not fit on `directory`'s disk."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if 2 * need + MARGIN_BYTES > free:  # the temporary copy and the file exist at the moment of the rename
        raise EnvironmentProblem(
            f"the teacher-output cache needs about {_human(need)} ({what}; twice that while it is written, "
            f"plus {_human(MARGIN_BYTES)} headroom) but {probe} has {_human(free)} free; "
            "lower train.cache_views, set train.cache_topk, point KDCOMPRESS_CACHE at a larger disk, "
            "or use train.teacher_cache=off")


@dataclass
class TeacherCache:
    """The stored outputs: values (N, V, k) fp16 (logits when k == C, else top-k log-probabilities),
    classes (N, V, k) int16 when k < C, embed (N, V, d) fp16 or None. `mixing` (train.mix) says whether
    each view is mixed with a partner image."""

    values: Tensor
    classes: Tensor | None
    embed: Tensor | None
    num_classes: int
    seed: int
    mode: str
    mixing: str = "none"

    def __post_init__(self) -> None:
        # The draws of every (sample, slot), hashed once here: per step they are a few gathers instead of
        # ~100 small tensor ops of hashing (a fifth of a cached step of a tiny student, measured).
        n, v = self.values.shape[:2]
        dev = self.values.device
        self._epoch: tuple[int, Tensor] | None = None
        idx = torch.arange(n, device=dev).repeat_interleave(v)
        slot = torch.arange(v, device=dev).repeat(n)
        self._draws = _crop_table(idx, slot, self.seed, self.mode, 0, (n, v))
        self._partner = self._pdraws = self._uniforms = None
        if self.mixing != "none":
            self._partner = partner_of(idx, slot, self.seed, n).view(n, v)
            self._pdraws = _crop_table(idx, slot, self.seed, self.mode, 1, (n, v))
            self._uniforms = mix_uniforms(idx, slot, self.seed).view(n, v, 3)

    @property
    def views(self) -> int:
        return int(self.values.shape[1])

    def to(self, device: torch.device) -> TeacherCache:
        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return TeacherCache(self.values.to(device), mv(self.classes), mv(self.embed), self.num_classes,
                            self.seed, self.mode, self.mixing)

    def epoch_views(self, index: Tensor, epoch: int) -> Tensor:
        """The view slot each sample is trained on in `epoch` (a pure function of seed, epoch, index;
        computed for the whole split once per epoch)."""
        if self._epoch is None or self._epoch[0] != epoch:
            every = torch.arange(self.values.shape[0], device=self.values.device)
            self._epoch = (epoch, mix(self.seed, epoch, every, 7) % self.views)
        return self._epoch[1][index.to(self._epoch[1].device, torch.int64)].to(index.device)

    def partners(self, index: Tensor, view: Tensor) -> Tensor:
        """The training-split indices of the mixing partners of (sample, view) pairs (augment.partner_of)."""
        assert self._partner is not None, "partners of an unmixed cache"
        dev = self._partner.device
        return self._partner[index.to(dev, torch.int64), view.to(dev, torch.int64)].to(index.device)

    def inputs(self, x: Tensor, index: Tensor, view: Tensor, px: Tensor | None = None) -> Tensor:
        """The images of view `view` of samples `index` (un-normalised); the same as
        augment.augment_view(x, index, view, seed, mode, mixing, px), px the partners' raw images."""
        a = self._crop(self._draws, x, index, view)
        if self.mixing == "none":
            return a
        assert self._uniforms is not None and px is not None, "a mixed view needs its partners' images"
        b = self._crop(self._pdraws, px, index, view)
        u = self._uniforms[index.to(self._uniforms.device, torch.int64), view.to(self._uniforms.device, torch.int64)]
        return blend(a, b, u.to(x.device), self.mixing)

    def _crop(self, table: Tensor | None, x: Tensor, index: Tensor, view: Tensor) -> Tensor:
        if table is None:
            return x
        d = table[:, index.to(table.device, torch.int64), view.to(table.device, torch.int64)]
        d = d.to(x.device).long()
        return shift_flip(x, pad_of(self.mode), d[0], d[1], d[2].bool() if self.mode == "crop_flip" else None)

    def lookup(self, index: Tensor, view: Tensor) -> ModelOut:
        """fp32 teacher logits (reconstructed when top-k) and embedding for (sample, view) pairs."""
        idx = index.to(self.values.device, torch.int64)
        v = view.to(self.values.device, torch.int64)
        vals = self.values[idx, v].float()
        emb = None if self.embed is None else self.embed[idx, v].float()
        if self.classes is None:
            return ModelOut(vals, emb)
        return ModelOut(reconstruct(vals, self.classes[idx, v].long(), self.num_classes), emb)


def _crop_table(idx: Tensor, slot: Tensor, seed: int, mode: str, stream: int, nv: tuple[int, int]) -> Tensor | None:
    """(3, N, V) uint8: oy, ox, flip of every (sample, slot) (stream 0 its own crop, 1 its partner's)."""
    if mode == "none":
        return None
    oy, ox, flip = view_draws(idx, slot, seed, mode, stream)
    return torch.stack([oy, ox, flip.long() if flip is not None else torch.zeros_like(oy)]).view(3, *nv).to(torch.uint8)


def reconstruct(top_logp: Tensor, top_cls: Tensor, num_classes: int) -> Tensor:
    """Full log-probabilities from the top-k ones: the remaining mass spread uniformly (FKD)."""
    k = top_logp.shape[1]
    rest = (1.0 - top_logp.exp().sum(1, keepdim=True)).clamp_min(1e-8)
    fill = torch.log(rest / max(num_classes - k, 1))
    out = fill.expand(-1, num_classes).clone()
    return out.scatter(1, top_cls, top_logp)


def cache_key(*, teacher_sha256: str, data: Any, split: Split, spec: InputSpec, mode: str, views: int, seed: int,
              k: int, num_classes: int, embed: bool, mixing: str = "none") -> dict[str, Any]:
    labels = hashlib.sha256(split.y.to(torch.int64).numpy().tobytes()).hexdigest()[:16]
    return {"format": FORMAT, "version": 1, "teacher_sha256": teacher_sha256, "data": str(data), "n": len(split),
            "labels": labels, "mean": list(spec.mean), "std": list(spec.std), "augment": mode, "mix": mixing,
            "views": views, "seed": seed, "k": k, "num_classes": num_classes, "embed": embed}


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


@torch.inference_mode()
def build(teacher_fn, split: Split, spec: InputSpec, device: torch.device, *, mode: str, views: int, seed: int, k: int,
          num_classes: int, embed_dim: int | None, batch_size: int, amp: bool, mixing: str = "none") -> TeacherCache:
    """Run `teacher_fn(x_normalised, want_embed) -> ModelOut` over every (sample, view slot). With mixing,
    each view's partner images are read from `split` by index (it must be RandomAccess)."""
    n = len(split)
    partner_images = _partner_images(split, mixing, device)
    values = torch.zeros(n, views, k, dtype=torch.float16)
    classes = torch.zeros(n, views, k, dtype=torch.int16) if k < num_classes else None
    embed = torch.zeros(n, views, embed_dim, dtype=torch.float16) if embed_dim else None
    for b in split.batches(batch_size):
        x0 = b.x.to(device)
        for v in range(views):
            px = partner_images(partner_of(b.index, v, seed, n)) if partner_images is not None else None
            x = normalize(augment_view(x0, b.index, v, seed, mode, mixing, px), spec)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = teacher_fn(x, embed is not None)
            logits = out.logits.float().cpu()
            if classes is None:
                values[b.index, v] = logits.half()
            else:
                top = torch.log_softmax(logits, 1).topk(k, 1)
                values[b.index, v] = top.values.half()
                classes[b.index, v] = top.indices.to(torch.int16)
            if embed is not None:
                embed[b.index, v] = out.embed.float().cpu().half()
    return TeacherCache(values, classes, embed, num_classes, seed, mode, mixing)


def check_training(cfg: TrainConfig, splits: DataSplits) -> None:
    """Refuse a training configuration this data cannot serve: a mixed teacher-output cache over a split
    that has no cheap access by index. The pipeline asks before it writes anything; a direct train() call
    meets the same refusal when the cache is built (before the first step)."""
    if cfg.teacher_cache == "views":
        check_mixable(splits.train, cfg.mix)
    if cfg.tensorboard:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise EnvironmentProblem("train.tensorboard=true needs the tensorboard package: pip install tensorboard "
                                     "(or leave it off; metrics.csv holds the same per-epoch figures)")


def check_mixable(split: Split, mixing: str) -> None:
    """A mixed cache replays partner images by index: refuse (one line, the fix) a split that cannot."""
    if mixing != "none" and not isinstance(split, RandomAccess):
        raise UsageError(f"train.mix={mixing} with train.teacher_cache=views fetches each view's partner image by "
                         "index, which a training split decoded from files per batch cannot do cheaply; add "
                         ",load=memory to --data or use train.teacher_cache=off")


def _partner_images(split: Split, mixing: str, device: torch.device) -> Callable[[Tensor], Tensor] | None:
    if mixing == "none":
        return None
    check_mixable(split, mixing)
    return lambda j: split.take(j.cpu()).to(device)  # type: ignore[attr-defined]


def load_or_build(teacher_fn, *, key: dict[str, Any], split: Split, spec: InputSpec, device: torch.device,
                  embed_dim: int | None, batch_size: int, amp: bool, console, record: Path | None) -> TeacherCache:
    """The cache for `key`: read from the shared directory when a complete one is there, else built (after
    the size check) and written atomically. `record` (the run directory's teacher_cache.json) names it."""
    path = cache_root() / f"{key_digest(key)}.pt"
    cache = _read(path, key, console)
    built = None
    if cache is None:
        n, v, k, c = key["n"], key["views"], key["k"], key["num_classes"]
        need = estimate_bytes(n, v, c, k, embed_dim if key["embed"] else None)
        check_space(path.parent, need, f"{n} samples x {v} views x {k} of {c} logits"
                    + (f" + {embed_dim}-d embeddings" if key["embed"] else ""))
        t0 = time.perf_counter()
        cache = build(teacher_fn, split, spec, device, mode=key["augment"], views=v, seed=key["seed"], k=k,
                      num_classes=c, embed_dim=embed_dim if key["embed"] else None, batch_size=batch_size, amp=amp,
                      mixing=key["mix"])
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"format": FORMAT, "key": key, "values": cache.values, "classes": cache.classes,
                           "embed": cache.embed}, path)
        built = round(time.perf_counter() - t0, 3)
        console.print(f"teacher-output cache: {n} x {v} views built in {built:.1f} s -> {path}")
    if record is not None:
        atomic_write_json(record, {"key": key, "path": str(path), "bytes": path.stat().st_size,
                                   "built_seconds": built})
    return cache


def _read(path: Path, key: dict[str, Any], console) -> TeacherCache | None:
    if not path.exists():
        return None
    try:
        saved = safe_torch_load(path)
    except InputError as e:
        console.print(f"[yellow]warning:[/] {e.message}; rebuilding the teacher-output cache")
        return None
    if not isinstance(saved, dict) or saved.get("key") != key:
        return None
    console.print(f"[dim]reusing the teacher-output cache {path}[/]")
    return TeacherCache(saved["values"], saved["classes"], saved["embed"], key["num_classes"], key["seed"],
                        key["augment"], key["mix"])
