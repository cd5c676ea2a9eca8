"""Training-time augmentation, applied per batch on the training device inside the step (so it runs on the
GPU too and the teacher and the student see the same augmented view).

Two sources of draws, one way of applying them (`shift_flip`):
  * `augment(x, mode, generator)`: fresh draws from a CPU generator (the online teacher);
  * `view_draws(index, view, seed, mode)`: the draws of view slot `view` of samples `index`, a pure function
    of (seed, index, view), so the teacher-output cache (teacher_cache.py) can replay exactly the view the
    teacher saw when it was built, on any device, in any batch order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_M31 = 2**31 - 1


def pad_of(mode: str) -> int:
    return 1 if mode == "shift" else 4


def augment(x: Tensor, mode: str, generator: torch.Generator | None = None) -> Tensor:
    """Batch-wise random translation (zero padding, then a random crop back to size) and optional
    horizontal flip, vectorised with gathers so it runs on the GPU too. `shift`: pad 1 (small images such
    as digits; no flip, digits are not mirror-symmetric). `crop_flip`: pad 4 + flip (CIFAR recipe)."""
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


def view_draws(index: Tensor, view: Tensor | int, seed: int, mode: str) -> tuple[Tensor, Tensor, Tensor | None]:
    """(oy, ox, flip) of view slot `view` of the samples `index` (on index's device)."""
    pad = pad_of(mode)
    index = index.to(torch.int64)
    view = torch.as_tensor(view, dtype=torch.int64, device=index.device)
    oy = mix(seed, index, view, 1) % (2 * pad + 1)
    ox = mix(seed, index, view, 2) % (2 * pad + 1)
    flip = (mix(seed, index, view, 3) % 2).bool() if mode == "crop_flip" else None
    return oy, ox, flip


def augment_view(x: Tensor, index: Tensor, view: Tensor | int, seed: int, mode: str) -> Tensor:
    """The replayable view `view` of the samples `index` (rows of x)."""
    if mode == "none":
        return x
    oy, ox, flip = view_draws(index.to(x.device), view, seed, mode)
    return shift_flip(x, pad_of(mode), oy, ox, flip)


def _to(t: Tensor, device: torch.device) -> Tensor:
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
