"""Training-time augmentation, applied per batch on the training device inside the step (so it runs on the
GPU too and the teacher and the student see the same augmented view)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def augment(x: Tensor, mode: str, generator: torch.Generator | None = None) -> Tensor:
    """Batch-wise random translation (zero padding, then a random crop back to size) and optional
    horizontal flip, vectorised with gathers so it runs on the GPU too. `shift`: pad 1 (small images such
    as digits; no flip, digits are not mirror-symmetric). `crop_flip`: pad 4 + flip (CIFAR recipe)."""
    if mode == "none":
        return x
    b, c, h, w = x.shape
    pad = 1 if mode == "shift" else 4
    dev = x.device
    # The draws come from a CPU generator (one checkpointable state whatever the device) and reach a GPU
    # through pinned memory without blocking: a plain .to(cuda) would synchronise the stream every step.
    oy = _to(torch.randint(0, 2 * pad + 1, (b,), generator=generator), dev)
    ox = _to(torch.randint(0, 2 * pad + 1, (b,), generator=generator), dev)
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = (oy[:, None] + torch.arange(h, device=dev)[None, :])[:, None, :, None].expand(b, c, h, w + 2 * pad)
    xp = xp.gather(2, rows)
    cols = (ox[:, None] + torch.arange(w, device=dev)[None, :])[:, None, None, :].expand(b, c, h, w)
    out = xp.gather(3, cols)
    if mode == "crop_flip":
        flip = _to(torch.rand((b,), generator=generator) < 0.5, dev).view(b, 1, 1, 1)
        out = torch.where(flip, out.flip(3), out)
    return out


def _to(t: Tensor, device: torch.device) -> Tensor:
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
