"""ONNX Runtime session factory and the one latency harness (used by select, validate and benchmarks).

Settings follow what was measured on the project's machines (ENVIRONMENT.md §4): the provider named
explicitly and checked after creation (onnxruntime-gpu lists CUDA even where it cannot run), intra-op
threads 1 by default (small models gain nothing from 2 at batch 1), inter-op 1, sequential execution,
ORT_ENABLE_ALL, spinning left on.
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..core.errors import EnvironmentProblem, InputError
from ..core.fsguard import regular_file
from ..core.spec import STATS

# The latency statistics a budget or a gate may name: one list for select, distill and validate alike.

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def error_cause(e: BaseException, limit: int = 400) -> str:
    """One line of an ONNX / ONNX Runtime error that keeps its cause: ORT's "[ONNXRuntimeError] : 1 : FAIL :"
    prefix goes, whitespace collapses, and a long text keeps its end (where the reason is: "Unsupported
    model IR version: 11, max supported IR version: 10") rather than being cut before it."""
    import re

    text = " ".join(str(e).split()) or type(e).__name__
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    if len(text) > limit:
        text = f"{text[:limit // 3]} ... {text[-(limit - limit // 3):]}"
    return text


@functools.cache
def ort_max_opset() -> int:
    """The newest ai.onnx opset this ONNX Runtime loads, probed once with a one-node graph (ORT exposes no
    such number; onnx's own newest opset is often beyond it)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    so = ort.SessionOptions()
    so.log_severity_level = 4
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    for opset in range(onnx.defs.onnx_opset_version(), 6, -1):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
        try:
            ort.InferenceSession(model.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
            return opset
        except Exception:
            continue
    return 7


def check_onnx(path: Path) -> None:
    """Validate an ONNX file before anything loads it: exists, parses, passes the full checker."""
    import onnx

    path = Path(path)
    regular_file(path, "ONNX file", expected="an .onnx file")  # a FIFO or a device would block the reader
    if not path.is_file():
        raise InputError(f"ONNX file not found: {path}")
    if path.stat().st_size == 0:
        raise InputError(f"ONNX file is empty: {path}")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # onnx raises ValidationError, DecodeError, InferenceError, OSError ...
        raise InputError(f"{path} is not a valid ONNX model: {error_cause(e)}") from None


OPT_LEVELS = ("basic", "extended", "all")
EXEC_MODES = ("sequential", "parallel")


@dataclass(frozen=True)
class SessionSettings:
    """The ONNX Runtime session options that change latency. Written into the ONNX metadata
    (`ort_settings`) and report.json so a deployment can reproduce the measured latency."""

    threads: int = 1  # intra-op threads
    opt_level: str = "all"  # graph optimisation level: basic | extended | all
    execution: str = "sequential"  # sequential | parallel (inter-op threads = 2 when parallel)

    def __post_init__(self) -> None:
        if self.threads < 1 or self.opt_level not in OPT_LEVELS or self.execution not in EXEC_MODES:
            raise InputError(f"invalid ONNX Runtime settings {self.to_json()}: threads >= 1, opt_level one of "
                             f"{', '.join(OPT_LEVELS)}, execution one of {', '.join(EXEC_MODES)}")

    def to_json(self) -> dict[str, int | str]:
        return asdict(self)

    @classmethod
    def from_json(cls, d) -> SessionSettings:
        if not isinstance(d, dict):
            raise InputError(f"ONNX Runtime settings must be an object, got {d!r}")
        try:
            return cls(int(d.get("threads", 1)), str(d.get("opt_level", "all")), str(d.get("execution", "sequential")))
        except (TypeError, ValueError):
            raise InputError(f"invalid ONNX Runtime settings {d!r}") from None


def stored_settings(model: Path | bytes) -> SessionSettings | None:
    """The `ort_settings` a kdcompress ONNX file carries in its metadata (what select measured with), or None."""
    import json

    import onnx

    try:
        proto = (onnx.load_from_string(model) if isinstance(model, bytes)
                 else onnx.load(str(model), load_external_data=False))
        raw = next((p.value for p in proto.metadata_props if p.key == "ort_settings"), None)
        return SessionSettings.from_json(json.loads(raw)) if raw else None
    except Exception:  # a foreign or damaged entry: the defaults, not a failure
        return None


def settings_grid(cpu_limit: int) -> list[SessionSettings]:
    """The small sweep: intra-op threads 1..cpu_limit x optimisation level x execution mode."""
    return [SessionSettings(t, lvl, mode) for t in range(1, max(1, cpu_limit) + 1)
            for lvl in ("extended", "all") for mode in EXEC_MODES]


def make_session(model: Path | bytes, provider: str = "cpu", threads: int | None = None,
                 settings: SessionSettings | None = None):
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise EnvironmentProblem(f"unknown provider '{provider}'; choose cpu, cuda or tensorrt")
    s = settings or SessionSettings(threads or 1)
    so = ort.SessionOptions()
    so.intra_op_num_threads = s.threads
    so.inter_op_num_threads = 2 if s.execution == "parallel" else 1
    so.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if s.execution == "parallel"
                         else ort.ExecutionMode.ORT_SEQUENTIAL)
    so.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[s.opt_level]
    so.log_severity_level = 3  # failed-provider fallbacks are reported by us, in one line
    wanted = PROVIDERS[provider]
    available = ort.get_available_providers()
    if wanted[0] not in available:
        raise EnvironmentProblem(
            f"ONNX Runtime provider {wanted[0]} is not installed (available: {', '.join(available)}); "
            "for cuda install the `gpu` extra (onnxruntime-gpu) instead of onnxruntime")
    src = str(model) if isinstance(model, Path) else model
    try:
        sess = ort.InferenceSession(src, sess_options=so, providers=[p for p in wanted if p in available])
    except Exception as e:
        where = f" {model}" if isinstance(model, Path) else ""
        raise InputError(f"ONNX Runtime cannot load the model{where}: {error_cause(e)}") from None
    if sess.get_providers()[0] != wanted[0]:
        raise EnvironmentProblem(
            f"{wanted[0]} is installed but could not start here (no GPU or missing CUDA libraries); "
            f"ONNX Runtime fell back to {sess.get_providers()[0]}")
    return sess


@dataclass(frozen=True)
class LatencyStats:
    p50: float
    p90: float
    p99: float
    mean: float
    min: float
    iters: int
    batch: int
    throughput: float  # images per second at this batch size (batch / mean latency)

    def to_json(self) -> dict[str, float | int]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def stat(self, name: str) -> float:
        if name not in STATS:
            raise ValueError(f"unknown latency statistic {name!r}; one of {', '.join(STATS)}")
        return float(getattr(self, name))


def measure_latency(session, shape: tuple[int, ...], *, warmup: int = 20, min_iters: int = 100,
                    min_time_s: float = 0.3, max_iters: int = 5000, seed: int = 0) -> LatencyStats:
    """Wall-clock latency of `session.run` on one fixed random input of `shape` (batch first).

    Warm-up first (at least `warmup` runs), then at least `min_iters` runs and at least `min_time_s`
    seconds (capped at `max_iters`), so the percentiles of fast models rest on thousands of samples.
    """
    inp = session.get_inputs()[0]
    # fed in the graph input's own type (a third-party fp16 model may take float16)
    dtype = {"tensor(float16)": np.float16, "tensor(double)": np.float64}.get(inp.type, np.float32)
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    feed = {inp.name: x}
    out_names = [o.name for o in session.get_outputs()]  # every output: a graph's whole work, logits or not
    run = session.run
    for _ in range(warmup):
        run(out_names, feed)
    times: list[float] = []
    t_start = time.perf_counter()
    while len(times) < max_iters:
        t0 = time.perf_counter_ns()
        run(out_names, feed)
        times.append((time.perf_counter_ns() - t0) / 1e6)
        if len(times) >= min_iters and time.perf_counter() - t_start >= min_time_s:
            break
    arr = np.asarray(times)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    mean = float(arr.mean())
    return LatencyStats(float(p50), float(p90), float(p99), mean, float(arr.min()), len(arr), shape[0],
                        shape[0] * 1000.0 / mean)


def sweep_settings(
    model: Path | bytes, shape: tuple[int, ...], provider: str, cpu_limit: int, stat: str = "p50",
    min_time_s: float = 0.15,
) -> tuple[SessionSettings, LatencyStats, list[tuple[SessionSettings, LatencyStats]]]:
    """Time `model` under every setting of the grid (short runs) and return the best by `stat`, its
    stats and the whole table. Ties within 2% go to fewer threads, then sequential (less to go wrong)."""
    rows = []
    for s in settings_grid(cpu_limit):
        rows.append((s, measure_latency(make_session(model, provider, settings=s), shape, min_time_s=min_time_s,
                                        min_iters=50)))
    best_ms = min(r.stat(stat) for _, r in rows)
    near = [(s, r) for s, r in rows if r.stat(stat) <= 1.02 * best_ms]
    s, r = min(near, key=lambda sr: (sr[0].threads, sr[0].execution != "sequential", sr[1].stat(stat)))
    return s, r, rows
