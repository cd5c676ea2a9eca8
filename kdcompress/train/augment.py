"""Training-time augmentation, applied per batch on the training device inside the step (so it runs on the
GPU too and the teacher and the student see the same augmented view).

Two sources of draws, one way of applying them (`shift_flip`, then `blend` when images are mixed):
  * `augment(x, mode, generator, mixing)`: fresh draws from a CPU generator (the online teacher);
  * `view_draws(index, view, seed, mode)`: the draws of view slot `view` of samples `index`, a pure function
    of (seed, index, view), so the teacher-output cache (teacher_cache.py) can replay exactly the view the
    teacher saw when it was built, on any device, in any batch order.

Mixing (`train.mix`, for function matching, Beyer et al. CVPR 2022): each (already shifted/cropped) image is
blended with a partner image, mixup (lambda x_i + (1 - lambda) x_j) or cutmix (a box of x_j pasted into x_i,
of area fraction 1 - lambda), lambda ~ U(0, 1) (= Beta(1, 1)) drawn per sample. Online, the partner is
x[perm[i]] for a permutation of the batch drawn from the step's generator (a sample may draw itself, as in
timm's batch mixup). Replayed, the partner of view v of sample i is `partner_of(i, v)`, never i itself, and
its crop, lambda and the cutmix box are pure functions of (seed, i, v) as well, so a cached view carries
everything the teacher saw. Labels are not mixed: a mixed batch is for logit-matching losses only (the
losses stage refuses label terms with it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_M31 = 2**31 - 1
MIXINGS = ("none", "mixup", "cutmix")
# The last key of each `mix` hash: 1-3 the view's crop (view_draws stream 0), 4-6 its partner's crop (stream
# _PARTNER_CROP = 1), 7 the epoch's view slot (teacher_cache.epoch_views), 8-10 the mixing uniforms, 11 the partner.
_PARTNER_CROP, _UNIFORMS, _PARTNER = 1, 8, 11


def pad_of(mode: str) -> int:
    return 1 if mode == "shift" else 4


def augment(x: Tensor, mode: str, generator: torch.Generator | None = None, mixing: str = "none") -> Tensor:
    """Batch-wise random translation (zero padding, then a random crop back to size) and optional
    horizontal flip, vectorised with gathers so it runs on the GPU too. `shift`: pad 1 (small images such
    as digits; no flip, digits are not mirror-symmetric). `crop_flip`: pad 4 + flip (CIFAR recipe).
    Then, with `mixing` mixup or cutmix, each image is blended with a partner from the same batch."""
    return mix_batch(shift_crop(x, mode, generator), mixing, generator)


def shift_crop(x: Tensor, mode: str, generator: torch.Generator | None) -> Tensor:
    if mode == "none":
        return x
    b = x.shape[0]
    pad, dev = pad_of(mode), x.device
    # The draws come from a CPU generator (one checkpointable state whatever the device) and reach a GPU
    # through pinned memory without blocking: a plain .to(cuda) would synchronise the stream every step.
    oy = _to(torch.randint(0, 2 * pad + 1, (b,), generator=generator), dev)
    ox = _to(torch.randint(0, 2 * pad + 1, (b,), generator=generator), dev)
    flip = _to(torch.rand((b,), generator=generator) < 0.5, dev) if mode == "crop_flip" else None
    return shift_flip(x, pad, oy, ox, flip)


def mix_batch(x: Tensor, mixing: str, generator: torch.Generator | None) -> Tensor:
    """Online mixing: partner = x[perm[i]] (perm drawn from `generator`), uniforms (lambda, box centre) too;
    no draw at all when `mixing` is none, so an unmixed run's generator stream is what it always was."""
    if mixing == "none":
        return x
    b = x.shape[0]
    perm = _to(torch.randperm(b, generator=generator), x.device)
    u = _to(torch.rand((b, 3), generator=generator), x.device)
    return blend(x, x[perm], u, mixing)


def blend(a: Tensor, b: Tensor, u: Tensor, mixing: str) -> Tensor:
    """Mix images `a` with partners `b` (both (B, C, H, W)) given per-sample uniforms u (B, 3) in [0, 1):
    lambda = u[:, 0]. mixup: lambda a + (1 - lambda) b (separate elementwise ops, each correctly rounded, so
    the same bits on every device).
    cutmix: a box of b pasted into a, of side round(sqrt(1 - lambda) * size), centred at (u1 H, u2 W) and
    clipped to the image (CutMix, Yun et al. 2019; its clipped area is what it is: labels are not mixed)."""
    if mixing == "mixup":
        lam = u[:, 0].to(a.dtype).view(-1, 1, 1, 1)
        return lam * a + (1.0 - lam) * b
    if mixing != "cutmix":
        raise ValueError(f"unknown mixing {mixing!r}; expected one of {', '.join(MIXINGS)}")
    _, _, h, w = a.shape
    side = torch.sqrt(1.0 - u[:, 0].double())
    rows = _span(u[:, 1].double(), side, h)
    cols = _span(u[:, 2].double(), side, w)
    box = (rows[:, :, None] & cols[:, None, :]).unsqueeze(1)  # (B, 1, H, W)
    return torch.where(box, b, a)


def _span(centre: Tensor, side: Tensor, size: int) -> Tensor:
    """(B, size) bool: the pixels of a segment of length round(side * size) centred at floor(centre * size)."""
    length = torch.round(side * size).long()
    c = torch.floor(centre * size).long()
    lo = (c - length // 2).clamp(0, size)
    hi = (c - length // 2 + length).clamp(0, size)
    pos = torch.arange(size, device=centre.device)
    return (pos[None, :] >= lo[:, None]) & (pos[None, :] < hi[:, None])


def shift_flip(x: Tensor, pad: int, oy: Tensor, ox: Tensor, flip: Tensor | None) -> Tensor:
    """Pad by `pad`, crop back to size at per-sample offsets (oy, ox) in [0, 2 pad], flip where `flip`.

    One gather over the flattened padded image: out[b, c, i, j] = xp[b, c, oy_b + i, ox_b + j'] with
    j' = w - 1 - j where the sample is flipped, else j (pure data movement: the values are those of the
    pad -> row gather -> column gather -> where(flip) formula it replaced, without its intermediates)."""
    b, c, h, w = x.shape
    dev = x.device
    wp = w + 2 * pad
    xp = F.pad(x, (pad, pad, pad, pad)).view(b, c, (h + 2 * pad) * wp)
    j = torch.arange(w, device=dev)
    cols = ox[:, None] + (torch.where(flip[:, None], w - 1 - j, j) if flip is not None else j)  # (b, w)
    rows = (oy[:, None] + torch.arange(h, device=dev)) * wp  # (b, h): flat offset of each source row
    idx = (rows[:, :, None] + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return xp.gather(2, idx).view(b, c, h, w)


def mix(*keys: Tensor | int) -> Tensor:
    """A vectorised integer hash of int64 keys into [0, 2**31 - 1): every product stays below 2**62, so it
    is exact (and identical) on every device."""
    h: Tensor | None = None
    for i, k in enumerate(keys):
        k = torch.as_tensor(k, dtype=torch.int64) % _M31
        h = k if h is None else (h * 48271 + k + 12345 * (i + 1)) % _M31
        for _ in range(2):
            h = (h ^ (h >> 13)) % _M31
            h = (h * 1103515245 + 12345) % _M31
    assert h is not None
    return h


def view_draws(index: Tensor, view: Tensor | int, seed: int, mode: str,
               stream: int = 0) -> tuple[Tensor, Tensor, Tensor | None]:
    """(oy, ox, flip) of view slot `view` of the samples `index` (on index's device). stream 0: the sample's
    own crop; stream 1 (`_PARTNER_CROP`): the crop of its mixing partner's image in that view."""
    pad = pad_of(mode)
    index = index.to(torch.int64)
    view = torch.as_tensor(view, dtype=torch.int64, device=index.device)
    k = 3 * stream
    oy = mix(seed, index, view, k + 1) % (2 * pad + 1)
    ox = mix(seed, index, view, k + 2) % (2 * pad + 1)
    flip = (mix(seed, index, view, k + 3) % 2).bool() if mode == "crop_flip" else None
    return oy, ox, flip


def partner_of(index: Tensor, view: Tensor | int, seed: int, n: int) -> Tensor:
    """The mixing partner of view slot `view` of samples `index` in a training split of n (>= 2) samples:
    uniform over the other n - 1 samples, never the sample itself."""
    index = index.to(torch.int64)
    view = torch.as_tensor(view, dtype=torch.int64, device=index.device)
    return (index + 1 + mix(seed, index, view, _PARTNER) % (n - 1)) % n


def mix_uniforms(index: Tensor, view: Tensor | int, seed: int) -> Tensor:
    """(B, 3) float32 uniforms in [0, 1) of view slot `view` of samples `index`: lambda and the cutmix
    box centre, multiples of 2**-23 (the top 23 bits of the hash, exact in float32 on every device)."""
    index = index.to(torch.int64)
    view = torch.as_tensor(view, dtype=torch.int64, device=index.device)
    h = torch.stack([mix(seed, index, view, _UNIFORMS + k) for k in range(3)], dim=-1)
    return (h >> 8).float() * 2.0**-23


def augment_view(x: Tensor, index: Tensor, view: Tensor | int, seed: int, mode: str, mixing: str = "none",
                 px: Tensor | None = None) -> Tensor:
    """The replayable view `view` of the samples `index` (rows of x). With mixing, `px` holds the raw images
    of their partners, `partner_of(index, view, seed, n)`, which get their own replayable crop."""
    index = index.to(x.device)
    a = _crop_view(x, index, view, seed, mode, 0)
    if mixing == "none":
        return a
    if px is None:
        raise ValueError("a mixed view needs its partners' images (px)")
    b = _crop_view(px, index, view, seed, mode, _PARTNER_CROP)
    return blend(a, b, mix_uniforms(index, view, seed), mixing)


def _crop_view(x: Tensor, index: Tensor, view: Tensor | int, seed: int, mode: str, stream: int) -> Tensor:
    if mode == "none":
        return x
    oy, ox, flip = view_draws(index, view, seed, mode, stream)
    return shift_flip(x, pad_of(mode), oy, ox, flip)


def _to(t: Tensor, device: torch.device) -> Tensor:
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
