"""Image decoding, the eval transform, and splits that decode or resize per batch.

The transform (the same for files and arrays): convert the channel count to the target's, resize so the
image covers the target (aspect kept, bilinear with antialiasing), centre-crop to the target. An image
that already has the target size is left as it is. Training augmentation is separate (data.augment).

FileSplit decodes image files per batch through a torch DataLoader (worker processes that persist from
one epoch to the next, pinned memory when a GPU is present), ArraySplit converts a uint8 array per batch;
both have TensorSplit's interface (`y`, `len()`, `batches(...)`, `num_batches(...)`), so the trainer,
inference and validation take any.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.errors import InputError
from ..core.splits import Batch, TensorSplit, batch_indices, count_batches

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")


def cover_size(h: int, w: int, th: int, tw: int) -> tuple[int, int]:
    """The smallest aspect-preserving size that covers (th, tw)."""
    s = max(th / h, tw / w)
    return max(th, round(h * s)), max(tw, round(w * s))


def conform(x: Tensor, shape: tuple[int, int, int], chunk: int = 1024) -> Tensor:
    """(N, C, h, w) uint8 or float in [0, 1] -> float32 (N, *shape) in [0, 1], in chunks to bound memory."""
    c, th, tw = shape
    out = torch.empty((x.shape[0], c, th, tw), dtype=torch.float32)
    for i in range(0, x.shape[0], chunk):
        out[i:i + chunk] = _conform(x[i:i + chunk], shape)
    return out


def _conform(x: Tensor, shape: tuple[int, int, int]) -> Tensor:
    c, th, tw = shape
    x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
    have = x.shape[1]
    if have in (2, 4):  # grey + alpha, RGB + alpha: drop alpha
        x = x[:, : have - 1]
        have -= 1
    if have != c:
        if have == 1 and c == 3:
            x = x.expand(-1, 3, -1, -1)
        elif have == 3 and c == 1:
            x = (x * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
        else:
            raise InputError(f"cannot turn {have}-channel images into the {c} channels the model takes")
    h, w = x.shape[-2:]
    if (h, w) != (th, tw):
        nh, nw = cover_size(h, w, th, tw)
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        top, left = (nh - th) // 2, (nw - tw) // 2
        x = x[:, :, top:top + th, left:left + tw]
    return x.clamp(0.0, 1.0)


def image_shape(path: Path) -> tuple[int, int, int]:
    """(C, H, W) a dataset takes from its first image when no teacher fixes the shape: 1 channel for grey
    modes, else 3."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return (1 if im.mode in GREY_MODES else 3, im.height, im.width)
    except Exception as e:
        raise InputError(f"cannot read image {path}: {_first(e)}") from None


def decode(path: str, shape: tuple[int, int, int]) -> np.ndarray:
    """One image file -> uint8 (C, H, W) of `shape` (PIL resizes with its antialiasing filters)."""
    from PIL import Image

    c, th, tw = shape
    if c not in (1, 3):
        raise InputError(f"image files give 1 or 3 channels; the model takes {c}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. PIL's note on palette images with transparency
        with Image.open(path) as im:
            im = im.convert("L" if c == 1 else "RGB") if im.mode not in WIDE_GREY else _grey16_to_8(im, c)
            w, h = im.size
            nh, nw = cover_size(h, w, th, tw)
            if (nh, nw) != (h, w):
                im = im.resize((nw, nh), Image.Resampling.BILINEAR)
            top, left = (nh - th) // 2, (nw - tw) // 2
            if (nh, nw) != (th, tw):
                im = im.crop((left, top, left + tw, top + th))
            arr = np.asarray(im, dtype=np.uint8)
    return arr[None].copy() if c == 1 else arr.transpose(2, 0, 1).copy()


WIDE_GREY = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # 16-bit grey PNG/TIFF (mode I: 32-bit ints)


def _grey16_to_8(im, c: int):
    """16-bit grey -> 8-bit by rounding value / 257, which maps 0..65535 onto 0..255 exactly (65535 -> 255,
    257 k -> k); PIL's own convert("L") clips instead, so every value above 255 became white. A mode-I image
    is read as 16-bit too (values clipped to 0..65535 first)."""
    from PIL import Image

    a = np.asarray(im).astype(np.float64)
    a8 = np.rint(np.clip(a, 0, 65535) / 257.0).astype(np.uint8)
    out = Image.fromarray(a8)  # a 2-D uint8 array is mode L
    return out if c == 1 else out.convert("RGB")


def _first(e: BaseException) -> str:
    return ((str(e).strip().splitlines() or [type(e).__name__])[0] or type(e).__name__)[:200]


class _Decoder(torch.utils.data.Dataset):
    """Runs in the DataLoader's workers. A bad file is reported as data, not raised, so the main process
    can turn it into one clean line (an exception from a worker arrives wrapped in its traceback)."""

    def __init__(self, paths: tuple[str, ...], shape: tuple[int, int, int]):
        self.paths = paths
        self.shape = shape

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, str]:
        try:
            return torch.from_numpy(decode(self.paths[i], self.shape)), ""
        except InputError as e:
            return torch.zeros(self.shape, dtype=torch.uint8), e.message
        except Exception as e:  # PIL.UnidentifiedImageError, truncated files, OSError ...
            return torch.zeros(self.shape, dtype=torch.uint8), f"cannot read image {self.paths[i]}: {_first(e)}"


def _collate(items: list[tuple[Tensor, str]]) -> tuple[Tensor, list[str]]:
    return torch.stack([x for x, _ in items]).float().div_(255.0), [e for _, e in items if e]


def default_workers(n: int) -> int:
    """Decoding processes: none for a few images (start-up is not worth it), else up to 4 per training
    process, sharing the CPUs with the other processes torchrun started on this node."""
    import os

    from ..core.system import cpu_limit

    if n < 1024:
        return 0
    local_world = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, min(4, cpu_limit() // local_world))


def decode_batches(paths: tuple[str, ...], chunks: list[Tensor], shape: tuple[int, int, int],
                   workers: int | None) -> Iterator[Tensor]:
    """A one-off pass (loading a split into memory)."""
    loader = torch.utils.data.DataLoader(
        _Decoder(paths, shape), batch_sampler=[c.tolist() for c in chunks], collate_fn=_collate,
        num_workers=default_workers(len(paths)) if workers is None else workers,
        pin_memory=torch.cuda.is_available())
    for x, errors in loader:
        if errors:
            raise InputError(errors[0])
        yield x


class _BatchList(torch.utils.data.Sampler):
    """A batch sampler whose batches are replaced before each pass, so one DataLoader, and its persistent
    workers, serves every epoch. The sampler is iterated in the main process, so the workers see the new
    batches without being restarted."""

    def __init__(self) -> None:
        self.chunks: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)


@dataclass(frozen=True)
class FileSplit:
    """Image files decoded per batch: memory holds one batch per worker, not the dataset."""

    paths: tuple[str, ...]
    y: Tensor
    shape: tuple[int, int, int]
    workers: int | None = None
    _loader: Any = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.paths)

    def _pass(self, chunks: list[Tensor]) -> Iterator[Tensor]:
        if self._loader is None:
            n = default_workers(len(self.paths)) if self.workers is None else self.workers
            sampler = _BatchList()
            loader = torch.utils.data.DataLoader(
                _Decoder(self.paths, self.shape), batch_sampler=sampler, collate_fn=_collate, num_workers=n,
                pin_memory=torch.cuda.is_available(), persistent_workers=n > 0)
            object.__setattr__(self, "_loader", (loader, sampler))
        loader, sampler = self._loader
        sampler.chunks = [c.tolist() for c in chunks]
        for x, errors in loader:
            if errors:
                raise InputError(errors[0])
            yield x

    def batches(self, batch_size: int, *, shuffle: bool = False, drop_last: bool = False, seed: int = 0,
                epoch: int = 0, rank: int = 0, world: int = 1, skip: int = 0) -> Iterator[Batch]:
        chunks = batch_indices(len(self), batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                               epoch=epoch, rank=rank, world=world)[skip:]
        for idx, x in zip(chunks, self._pass(chunks), strict=True):
            yield Batch(x, self.y[idx], idx)

    def num_batches(self, batch_size: int, drop_last: bool = False, world: int = 1) -> int:
        return count_batches(len(self), batch_size, drop_last, world)


@dataclass(frozen=True)
class ArraySplit:
    """A uint8 (N, C, h, w) array converted to the target shape per batch (4x less memory than float32,
    and far less when the target is larger than the stored images)."""

    src: Tensor
    y: Tensor
    shape: tuple[int, int, int]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def batches(self, batch_size: int, *, shuffle: bool = False, drop_last: bool = False, seed: int = 0,
                epoch: int = 0, rank: int = 0, world: int = 1, skip: int = 0) -> Iterator[Batch]:
        for idx in batch_indices(len(self), batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                                 epoch=epoch, rank=rank, world=world)[skip:]:
            yield Batch(_conform(self.src[idx], self.shape), self.y[idx], idx)

    def num_batches(self, batch_size: int, drop_last: bool = False, world: int = 1) -> int:
        return count_batches(len(self), batch_size, drop_last, world)

    def take(self, index: Tensor) -> Tensor:
        """The images of samples `index`, converted as `batches` converts them (core.splits.RandomAccess)."""
        return _conform(self.src[index], self.shape)


def file_split(paths: tuple[str, ...], y: Tensor, shape: tuple[int, int, int], workers: int | None,
               *, in_memory: bool) -> TensorSplit | FileSplit:
    if not in_memory:
        return FileSplit(paths, y, shape, workers)
    chunks = batch_indices(len(paths), 256)
    x = torch.empty((len(paths), *shape), dtype=torch.float32)
    for idx, xb in zip(chunks, decode_batches(paths, chunks, shape, workers), strict=True):
        x[idx] = xb
    return TensorSplit(x, y)


def array_split(src: Tensor, y: Tensor, shape: tuple[int, int, int], *, in_memory: bool) -> TensorSplit | ArraySplit:
    return TensorSplit(conform(src, shape), y) if in_memory else ArraySplit(src, y, shape)
