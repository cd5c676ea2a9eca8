"""A warm selection without torch: what select needs of a teacher, remembered by the file's sha256.

Importing torch takes seconds, more than a warm selection needs in all (benchmarks/RESULTS.md,
"select_coldstart after the fresh-process confirmation"; its
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

from ..core.config import RuntimeConfig
from ..core.fsguard import file_sha256
from ..runtime import LatencyStats, make_session, measure_latency
from ..core.spec import Capacity, InputSpec
from .cache import LatencyCache, cache_path

SUMMARY_FORMAT = 2  # 2: FLOPs from the loaded Teacher (None when unknown; an ONNX teacher's from its graph)


@dataclass(frozen=True)
class TeacherSummary:
    arch: str
    classes: tuple[str, ...]
    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    params: int
    flops: int | None  # None: not countable (a TorchScript module torch's counter cannot run); never 0 for unknown
    model_text: str  # repr(model): the latency cache's key for the teacher
    onnx_layout: str | None = None  # an ONNX teacher run in ORT: its graph's input layout (measured on its file)

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
                   None if d["flops"] is None else int(d["flops"]), str(d["model_text"]),
                   None if d.get("onnx_layout") is None else str(d["onnx_layout"]))


class LazyTeacher:
    """Stands for the teacher's model in select(): its capacity and cache key from the summary; the real
    model (`model()`) only when something has to be measured."""

    def __init__(self, summary: TeacherSummary, load: Callable[[], Any], path: Path | None = None):
        self.summary, self._load, self._model, self.path = summary, load, None, path

    @property
    def onnx_file(self) -> tuple[Path, str] | None:
        """(file, input layout) of an ONNX teacher: measured on its own graph, never re-exported."""
        if self.summary.onnx_layout is None or self.path is None:
            return None
        return self.path, self.summary.onnx_layout

    @property
    def capacity(self) -> Capacity:
        """params and FLOPs; FLOPs None when the teacher's cannot be counted (select then filters on none)."""
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


def summary_of(teacher) -> TeacherSummary:
    """What select needs of a loaded teacher (kdcompress.teacher.Teacher): its params and FLOPs as the loader
    counted them (FLOPs None when unknown), never re-counted on the module (an ORT-run module counts 0)."""
    spec = teacher.input_spec
    layout = getattr(teacher.model, "layout", "NCHW") if teacher.format == "onnx" else None
    return TeacherSummary(teacher.arch, tuple(teacher.classes), tuple(spec.shape), tuple(spec.mean),
                          tuple(spec.std), int(teacher.params), teacher.flops, repr(teacher.model), layout)


def remember(key: str, summary: TeacherSummary, path: Path) -> None:
    """Keep `summary` of the teacher file at `path` under `key` in teachers.json."""
    st = store()
    st.put_json(key, {**asdict(summary), "path": str(path)})
    st.save()


def measure_file(path: Path, layout: str, spec: InputSpec, runtime: RuntimeConfig, batch: int) -> LatencyStats:
    """An ONNX teacher's latency on its own file (ORT reads any external data beside it), fed in its layout:
    exporting the ORT-run module would trace no graph at all."""
    c, h, w = spec.shape
    sess = make_session(Path(path), runtime.provider, runtime.threads)
    return measure_latency(sess, (batch, h, w, c) if layout == "NHWC" else (batch, c, h, w))
