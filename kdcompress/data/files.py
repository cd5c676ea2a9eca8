"""Real datasets from disk: image folders, CSV lists, and the torchvision datasets' own file formats.

    imagefolder:/path       /path/{train,val,test}/<class>/*.jpg, or /path/<class>/*.jpg (split 70/10/20,
                            stratified, fixed seed); missing val or test splits are carved from train
    csv:/path/file.csv      header with `path` and `label` columns (an optional `split` column of
                            train/val/test); relative paths are resolved against the CSV's folder
    cifar10:/root           the python version's pickled batches (cifar-10-batches-py/)
    cifar100:/root          cifar-100-python/ (fine labels)
    mnist:/root             idx files (MNIST/raw/, raw/ or the root itself; .gz too)
    fashionmnist:/root      idx files (FashionMNIST/raw/, raw/ or the root)

Class names (the one rule of core.classes, the same for folders and CSV labels): names are strings;
when all are integers they sort by value (folders 0..11 -> labels 0..11), otherwise as strings.
16-bit grey images are brought to 8 bits by value / 257 (rounded), not clipped.

Options follow the path after commas: `load=auto|memory|stream` and `workers=N` (decoding processes).
Nothing is downloaded unless distill is given `--set data.download=true` (torchvision's downloaders then fill
the root).

Images become float tensors in [0, 1] of the target shape (the teacher's): channels converted (grey ->
RGB by replication, RGB -> grey by ITU-R 601 luma), resized so the image covers the target, then centre
cropped. Small datasets are decoded once into memory; above MEMORY_LIMIT (or with load=stream) a split
decodes per batch (imagesplits.py), so a big folder never has to fit in RAM.
"""

from __future__ import annotations

import csv
import gzip
import math
import pickle
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from ..core.classes import class_order
from ..core.errors import InputError, UsageError
from ..core.splits import DataSplits, TensorSplit
from ..core.runio import regular_file
from .imagesplits import IMAGE_EXTENSIONS, array_split, conform, file_split, image_shape
from .splitting import carve, split_indices

KINDS = ("imagefolder", "csv", "cifar10", "cifar100", "mnist", "fashionmnist")
OPTIONS = ("load", "workers")
VAL_FROM_TRAIN = 0.125  # = 0.1 / (0.7 + 0.1): the same share as the 70/10/20 split
TEST_FROM_TRAIN = 0.2 / 0.9

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")


def parse_path_spec(spec: str) -> tuple[str, Path, dict[str, str]]:
    """`kind:/some/path[,load=stream][,workers=4]`; options are peeled from the right, so a path may hold
    commas as long as no comma-separated tail looks like an option."""
    kind, _, rest = spec.partition(":")
    parts = rest.split(",")
    opts: dict[str, str] = {}
    while len(parts) > 1 and parts[-1].partition("=")[0].strip() in OPTIONS and "=" in parts[-1]:
        k, _, v = parts.pop().partition("=")
        opts[k.strip()] = v.strip()
    path = ",".join(parts).strip()
    if not path:
        raise UsageError(f"data spec '{spec}' needs a path, e.g. {kind}:/data/{kind}")
    load = opts.get("load", "auto")
    if load not in ("auto", "memory", "stream"):
        raise UsageError(f"data spec '{spec}': load must be auto, memory or stream, got '{load}'")
    if "workers" in opts and not (opts["workers"].isdigit()):
        raise UsageError(f"data spec '{spec}': workers must be an integer >= 0, got '{opts['workers']}'")
    return kind, Path(path).expanduser(), opts


def load(spec: str, shape: tuple[int, int, int] | None, *, download: bool = False) -> DataSplits:
    kind, path, opts = parse_path_spec(spec)
    load_mode = opts.get("load", "auto")
    workers = int(opts["workers"]) if "workers" in opts else None
    if kind == "imagefolder":
        return _files(f"imagefolder:{path.name}", _scan_imagefolder(path), shape, load_mode, workers)
    if kind == "csv":
        return _files(f"csv:{path.name}", _read_csv(path), shape, load_mode, workers)
    if kind in ("cifar10", "cifar100"):
        arrays = _read_cifar(kind, path, download)
    else:
        arrays = _read_mnist(kind, path, download)
    return _arrays(kind, *arrays, shape=shape, load_mode=load_mode)


def native_shape(spec: str) -> tuple[int, int, int] | None:
    """An image-file dataset's own (C, H, W), from its listing and first image (what `load` takes when no
    shape is given), without decoding the rest; None for the array kinds, which are read whole anyway."""
    kind, path, _ = parse_path_spec(spec)
    if kind == "imagefolder":
        return _first_image_shape(_scan_imagefolder(path))
    if kind == "csv":
        return _first_image_shape(_read_csv(path))
    return None


def conform_splits(splits: DataSplits, shape: tuple[int, int, int]) -> DataSplits:
    """In-memory data (digits, synthetic) brought to the teacher's shape with the same transform."""
    from dataclasses import replace

    def f(s: TensorSplit) -> TensorSplit:
        return TensorSplit(conform(s.x, shape), s.y)

    return replace(splits, train=f(splits.train), val=f(splits.val), test=f(splits.test), shape=shape,
                   native_shape=splits.native_shape or splits.shape)


def _check_classes(where: str, classes: tuple[str, ...], counts: dict[str, int]) -> None:
    if not classes or sum(counts.values()) == 0:
        raise InputError(f"no images found in {where} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    if len(classes) < 2:
        raise InputError(f"{where} has one class only ('{classes[0]}'); classification needs at least 2")


# --------------------------------------------------------------------------------- file lists

Listing = tuple[tuple[str, ...], dict[str, list[tuple[Path, int]]]]  # classes, {split: [(path, label)]}


def _images_in(folder: Path) -> list[Path]:
    out = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not any(q.startswith(".") for q in p.parts[-2:]):
            out.append(p)
    return out


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _scan_imagefolder(root: Path) -> Listing:
    if not root.exists():
        raise InputError(f"image folder not found: {root}")
    if not root.is_dir():
        raise InputError(f"imagefolder: {root} is not a directory")
    named = {d.name.lower(): d for d in _class_dirs(root)}
    aliases = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}
    split_dirs = {s: next((named[a] for a in names if a in named), None) for s, names in aliases.items()}
    if split_dirs["train"] is None:
        if any(split_dirs.values()):
            raise InputError(f"{root} has {'/'.join(d.name for d in split_dirs.values() if d)} but no train/ folder")
        split_dirs = {"all": root}
    base = split_dirs.get("train") or root
    classes = class_order(d.name for d in _class_dirs(base))  # the one rule (core.classes)
    index = {c: i for i, c in enumerate(classes)}
    listing: dict[str, list[tuple[Path, int]]] = {}
    counts: dict[str, int] = {}
    for split, folder in split_dirs.items():
        if folder is None:
            continue
        rows: list[tuple[Path, int]] = []
        for d in _class_dirs(folder):
            if d.name not in index:
                raise InputError(f"{folder}/{d.name}: class '{d.name}' is not in {base} (its classes: "
                                 f"{', '.join(classes[:5])}{' ...' if len(classes) > 5 else ''})")
            files = _images_in(d)
            rows += [(p, index[d.name]) for p in files]
            counts[d.name] = counts.get(d.name, 0) + len(files)
        listing[split] = rows
    _check_classes(str(root), classes, counts)
    empty = [c for c in classes if counts.get(c, 0) == 0]
    if empty:
        raise InputError(f"{base}/{empty[0]} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return classes, listing


def _read_csv(path: Path) -> Listing:
    regular_file(path, "CSV file", expected="a .csv file")  # a FIFO would block the reader
    if not path.is_file():
        raise InputError(f"CSV file not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = [h for h in (reader.fieldnames or []) if h is not None]
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path} is not a readable CSV file: {e}") from None
    keys = {h.strip().lower(): h for h in header}
    twice = next((k for k in ("path", "label", "split") if [h.strip().lower() for h in header].count(k) > 1), None)
    if twice:
        raise InputError(f"{path}: the header has two `{twice}` columns ({', '.join(header)}); keep one")
    if "path" not in keys or "label" not in keys:
        raise InputError(f"{path}: needs `path` and `label` columns, found {', '.join(header) or 'none'}")
    if not rows:
        raise InputError(f"{path} has no rows (expected one row per image after the `path,label` header)")
    labels = [str(r[keys["label"]] or "").strip() for r in rows]
    if any(not lab for lab in labels):
        raise InputError(f"{path}: row {labels.index('') + 2} has an empty label")
    classes = class_order(labels)  # the one rule (core.classes), as for image folders
    index = {c: i for i, c in enumerate(classes)}
    listing: dict[str, list[tuple[Path, int]]] = {}
    seen: dict[Path, tuple[int, str]] = {}  # image -> (row, label) where it was first listed
    for n, (r, lab) in enumerate(zip(rows, labels, strict=True), start=2):
        p = Path(str(r[keys["path"]] or "").strip()).expanduser()
        p = p if p.is_absolute() else path.parent / p
        if not p.is_file():
            raise InputError(f"{path}: row {n}: image not found: {p}")
        first = seen.setdefault(p.resolve(), (n, lab))
        if first[1] != lab:  # one image under two names: whichever won, half its rows would be mislabelled
            raise InputError(f"{path}: row {n} labels {p.name} '{lab}' but row {first[0]} labels it '{first[1]}'")
        split = str(r.get(keys["split"]) or "").strip().lower() if "split" in keys else "all"
        if split not in ("all", "train", "val", "test"):
            raise InputError(f"{path}: row {n}: split must be train, val or test, got '{split}'")
        listing.setdefault(split, []).append((p, index[lab]))
    if "all" in listing and len(listing) > 1:
        raise InputError(f"{path}: some rows name a split and some do not")
    if "all" not in listing and "train" not in listing:
        raise InputError(f"{path}: the split column names no train rows")
    _check_classes(str(path), classes, {c: labels.count(c) for c in classes})
    return classes, listing


def _three_splits(listing: dict, y_all: dict) -> dict[str, tuple[str, np.ndarray]]:
    """Indices into each listed split for train/val/test: one pool split 70/10/20, or missing val/test
    carved from train (stratified, fixed seed)."""
    if "all" in listing:
        tr, va, te = split_indices(y_all["all"])
        return {"train": ("all", tr), "val": ("all", va), "test": ("all", te)}
    y = y_all["train"]
    idx = np.arange(len(y))
    out = {}
    if "test" not in listing:
        idx, test = carve(idx, y, TEST_FROM_TRAIN)
        out["test"] = ("train", test)
    if "val" not in listing:
        idx, val = carve(idx, y, VAL_FROM_TRAIN)
        out["val"] = ("train", val)
    out["train"] = ("train", idx)
    for s in ("val", "test"):
        if s not in out:
            out[s] = (s, np.arange(len(y_all[s])))
    return out


def _first_image_shape(listing: Listing) -> tuple[int, int, int]:
    """A file dataset's own (C, H, W): its first training image's (image_shape)."""
    rows = listing[1]
    return image_shape(rows.get("train", rows.get("all"))[0][0])


def _files(name: str, listing: Listing, shape, load_mode: str, workers: int | None) -> DataSplits:
    classes, rows = listing
    native = _first_image_shape(listing)
    shape = shape or native
    y_all = {s: np.array([lab for _, lab in r], dtype=np.int64) for s, r in rows.items()}
    picks = _three_splits(rows, y_all)
    total = sum(len(i) for _, i in picks.values())
    mode = _mode(load_mode, total, shape)
    splits = {}
    for s, (src, idx) in picks.items():
        paths = tuple(str(rows[src][i][0]) for i in idx)
        splits[s] = file_split(paths, torch.from_numpy(y_all[src][idx]), shape, workers, in_memory=mode == "memory")
    return DataSplits(name, splits["train"], splits["val"], splits["test"], classes, shape, "crop_flip", native)


MEMORY_LIMIT = 2 << 30  # bytes of float32 images held in RAM before splits switch to per-batch decoding


def _mode(load_mode: str, n: int, shape) -> str:
    if load_mode != "auto":
        return load_mode
    return "memory" if n * int(np.prod(shape)) * 4 <= MEMORY_LIMIT else "stream"


# --------------------------------------------------------------------------------- array datasets


def _arrays(kind: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
            classes: tuple[str, ...], *, shape, load_mode: str) -> DataSplits:
    """uint8 (N, C, H, W) arrays with official train/test sets; val is carved from train."""
    native = tuple(int(v) for v in x_train.shape[1:])
    shape = shape or native
    if len(y_train) == 0 or len(y_test) == 0:
        raise InputError(f"{kind}: the {'train' if len(y_train) == 0 else 'test'} set is empty")
    if len(np.unique(y_train)) < 2:
        raise InputError(f"{kind}: the training set holds one class only")
    tr, va = carve(np.arange(len(y_train)), y_train, VAL_FROM_TRAIN)
    mode = _mode(load_mode, len(y_train) + len(y_test), shape)
    parts = [(x_train[tr], y_train[tr]), (x_train[va], y_train[va]), (x_test, y_test)]
    splits = [array_split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64)), shape,
                          in_memory=mode == "memory") for x, y in parts]
    augment = "crop_flip" if kind.startswith("cifar") else "shift"
    return DataSplits(kind, *splits, classes, shape, augment, native)  # type: ignore[arg-type]


class _ArrayUnpickler(pickle.Unpickler):
    """The CIFAR batches are pickles: allow only what a dict of numpy arrays needs, so a tampered file
    cannot run code (plain pickle.load would call whatever the file names)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"),
               ("_codecs", "encode")}  # how Python 3 writes bytes into a protocol-2 pickle (a pure function)

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"'{module}.{name}' is not allowed in a dataset file")


def _unpickle(path: Path) -> dict:
    regular_file(path, "dataset file")
    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise InputError(f"{path} is not a CIFAR batch file: {e}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path} is not a CIFAR batch file (holds a {type(obj).__name__})")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _download(kind: str, root: Path, train: bool) -> None:
    import torchvision

    cls = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "mnist": "MNIST", "fashionmnist": "FashionMNIST"}[kind]
    try:
        getattr(torchvision.datasets, cls)(str(root), train=train, download=True)
    except Exception as e:  # URLError without a network, checksum errors, disk full ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"could not download {kind} into {root}: {first[:200]}") from None


def _find_or_download(find, kind: str, root: Path, download: bool, expected: str):
    """What `find()` locates under root; with download (distill's data.download), fetch both splits first when it
    finds nothing."""
    found = find()
    if found is None and download:
        _download(kind, root, True)
        _download(kind, root, False)
        found = find()
    if found is None:
        raise InputError(f"{kind} not found under {root} (expected {expected}); put it there, or let distill fetch it: "
                         "--set data.download=true")
    return found


def _read_cifar(kind: str, root: Path, download: bool):
    sub = "cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python"
    train_names = None if kind == "cifar10" else ["train"]
    want = "data_batch_1 ... test_batch" if kind == "cifar10" else "train, test, meta"

    def find() -> Path | None:
        for d in (root / sub, root):
            if (d / ("test_batch" if kind == "cifar10" else "test")).is_file():
                return d
        return None

    d = _find_or_download(find, kind, root, download, f"{root / sub}/ with {want}")
    names = train_names or sorted((p.name for p in d.glob("data_batch_*")), key=lambda n: int(n.rsplit("_", 1)[1])
                                  if n.rsplit("_", 1)[1].isdigit() else 0)
    if not names:
        raise InputError(f"{kind}: no training batches (data_batch_N) in {d}")
    label_key = "labels" if kind == "cifar10" else "fine_labels"

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        b = _unpickle(d / name)
        try:
            x = np.asarray(b["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(b[label_key], dtype=np.int64)
        except (KeyError, ValueError) as e:
            raise InputError(f"{d / name} is not a {kind} batch: {e}") from None
        if len(x) != len(y):
            raise InputError(f"{d / name}: {len(x)} images but {len(y)} labels")
        return x, y

    parts = [read(n) for n in names]
    x_tr, y_tr = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    x_te, y_te = read("test_batch" if kind == "cifar10" else "test")
    meta_name, meta_key = ("batches.meta", "label_names") if kind == "cifar10" else ("meta", "fine_label_names")
    classes: tuple[str, ...] | None = None
    if (d / meta_name).is_file():
        names_ = _unpickle(d / meta_name).get(meta_key)
        classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names_) if names_ else None
    if classes is None:
        classes = CIFAR10_CLASSES if kind == "cifar10" else tuple(str(i) for i in range(100))
    top = int(max(y_tr.max(), y_te.max()))
    if top >= len(classes) or min(y_tr.min(), y_te.min()) < 0:
        raise InputError(f"{kind} in {d}: label {top} is outside the {len(classes)} classes")
    return x_tr, y_tr, x_te, y_te, classes


def _read_idx(path: Path) -> np.ndarray:
    """The idx format of MNIST: 0x0000, a dtype code (0x08 = uint8), the rank, big-endian int32 sizes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: a gzip stream corrupted inside
        raise InputError(f"cannot read {path}: {e}") from None
    if not data:
        raise InputError(f"{path} is empty (0 bytes); replace it with the dataset's idx file")
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise InputError(f"{path} is not an idx file of unsigned bytes")
    ndim = data[3]
    if not 1 <= ndim <= 4 or len(data) < 4 + 4 * ndim:
        raise InputError(f"{path}: its idx header is broken ({ndim} dimensions in a {len(data)}-byte file)")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = data[4 + 4 * ndim:]
    if 0 in dims:
        raise InputError(f"{path} holds no items (its header says {dims}); replace it with the dataset's idx file")
    want = math.prod(dims)  # Python integers: a header of 4e9 x 4e9 x 4e9 does not wrap around
    if len(body) != want:
        what = "truncated" if len(body) < want else "longer than its header says"
        raise InputError(f"{path} is {what}: its header says {dims} = {want:,} bytes but it holds {len(body):,}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims).copy()  # writable, for torch.from_numpy


def _read_mnist(kind: str, root: Path, download: bool):
    sub = "MNIST" if kind == "mnist" else "FashionMNIST"
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

    def find() -> list[Path] | None:
        for d in (root / sub / "raw", root / "raw", root):
            files = [next((d / (s + ext) for ext in ("", ".gz") if (d / (s + ext)).is_file()), None) for s in stems]
            if all(files):
                return files  # type: ignore[return-value]
        return None

    files = _find_or_download(find, kind, root, download, f"{root / sub / 'raw'}/ with {', '.join(stems)}")
    x_tr, y_tr, x_te, y_te = (_read_idx(p) for p in files)
    for x, y, p in ((x_tr, y_tr, files[0]), (x_te, y_te, files[2])):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise InputError(f"{p}: images {x.shape} and labels {y.shape} do not match")
    classes = tuple(str(i) for i in range(10)) if kind == "mnist" else FASHION_CLASSES
    if max(int(y_tr.max()), int(y_te.max())) >= 10:
        raise InputError(f"{kind} in {root}: labels must be 0..9")
    return x_tr[:, None], y_tr.astype(np.int64), x_te[:, None], y_te.astype(np.int64), classes
