"""A warm selection without torch: what select needs of a teacher, remembered by the file's sha256.

Importing torch takes 1.5-2.2 s on the 2-vCPU VM, more than a warm selection needs in all (its
measurements, the zoo's capacities and the teacher's FLOPs are cached). So `kdcompress select` remembers,
in teachers.json beside the latency cache, a summary of every teacher file it loaded: classes, input spec,
architecture, parameters and FLOPs, and the text the latency cache keys the teacher by. The key is the
file's sha256 and size, the load options, and the kdcompress and torch versions (read from the installed
package metadata, without importing torch). When the summary is known, the selection runs with a
LazyTeacher, and torch is imported only if something turns out not to be cached (a new budget that needs
a confirmation, a new candidate): then the real teacher is loaded as before.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..core.fsguard import file_sha256
from ..core.spec import Capacity, InputSpec
from .cache import LatencyCache, cache_path

SUMMARY_FORMAT = 1


@dataclass(frozen=True)
class TeacherSummary:
    arch: str
    classes: tuple[str, ...]
    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    params: int
    flops: int
    model_text: str  # repr(model): the latency cache's key for the teacher

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(self.shape, self.mean, self.std)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TeacherSummary:
        return cls(str(d["arch"]), tuple(str(c) for c in d["classes"]), tuple(int(v) for v in d["shape"]),
                   tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]), int(d["params"]),
                   int(d["flops"]), str(d["model_text"]))


class LazyTeacher:
    """Stands for the teacher's model in select(): its capacity and cache key from the summary; the real
    model (`model()`) only when something has to be measured."""

    def __init__(self, summary: TeacherSummary, load: Callable[[], Any]):
        self.summary, self._load, self._model = summary, load, None

    @property
    def capacity(self) -> Capacity:
        return Capacity(self.summary.params, self.summary.flops)

    def model(self):
        if self._model is None:
            self._model = self._load()
        return self._model

    def __repr__(self) -> str:  # the latency cache keys a model by its repr
        return self.summary.model_text


def resolve(model):
    """The real model behind a LazyTeacher (loading it), or `model` itself."""
    return model.model() if isinstance(model, LazyTeacher) else model


def _versions() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "none"
    return [__version__, torch_version]


def summary_key(path: Path, options: dict[str, Any]) -> str | None:
    """The key of a teacher file's summary; None for what is not a regular file (a folder) or unreadable."""
    try:
        p = Path(path)
        if not p.is_file():
            return None
        digest, size = file_sha256(p), p.stat().st_size
    except OSError:
        return None
    raw = json.dumps([SUMMARY_FORMAT, digest, size, options, _versions()], sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def store() -> LatencyCache:
    """teachers.json in the cache root (a JSON dict, read tolerantly and saved atomically)."""
    return LatencyCache(cache_path().with_name("teachers.json"))


def known_summary(key: str | None) -> TeacherSummary | None:
    """The summary kept under `key` (None: no key, as with --no-cache), or None."""
    if key is None:
        return None
    try:
        return TeacherSummary.from_json(store().get_json(key))
    except (KeyError, TypeError, ValueError):
        return None


def remember(key: str, teacher, capacity: Capacity) -> TeacherSummary:
    """Keep the summary of a loaded teacher (kdcompress.teacher.Teacher) under `key`; returns it."""
    spec = teacher.input_spec
    s = TeacherSummary(teacher.arch, tuple(teacher.classes), tuple(spec.shape), tuple(spec.mean), tuple(spec.std),
                       capacity.params, capacity.flops, repr(teacher.model))
    st = store()
    st.put_json(key, {**asdict(s), "path": str(teacher.path)})
    st.save()
    return s
