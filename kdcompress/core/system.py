"""Facts about this machine and process: the CPUs it may use, its fingerprint, the training device."""

from __future__ import annotations

import atexit
import contextlib
import os
import platform
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import EnvironmentProblem

if TYPE_CHECKING:  # torch is imported where it is used: `kdcompress profile` runs without it
    import torch


def cache_root() -> Path:
    """Where kdcompress keeps what it can recompute (latencies, FLOP counts, teacher outputs):
    $KDCOMPRESS_CACHE, else $XDG_CACHE_HOME/kdcompress, else ~/.cache/kdcompress."""
    root = os.environ.get("KDCOMPRESS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "kdcompress")
    return Path(root)


def cpu_limit() -> int:
    """CPUs this process may really use: the affinity mask, capped by a cgroup v2/v1 CPU quota."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = None
    try:
        q, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if q != "max":
            quota = float(q) / float(period)
    except (OSError, ValueError):
        try:
            q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
            period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            if q > 0:
                quota = q / period
        except (OSError, ValueError):
            pass
    if quota is not None:
        n = min(n, max(1, int(quota)))
    return max(1, n)


def machine_fingerprint() -> dict[str, object]:
    import onnxruntime as ort

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpus": cpu_limit(), "machine": platform.machine(), "system": platform.system(),
            "python": platform.python_version(), "onnxruntime": ort.__version__}


def resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EnvironmentProblem(f"--device {name} was requested but no CUDA GPU is available here")
    return torch.device(name)


def cap_threads(requested: int | None) -> tuple[int, str | None]:
    """ORT intra-op threads: 1 unless asked (batch-1 latency of small models is best there, ENVIRONMENT.md
    §4), and never more than the CPUs this container may use: oversubscribed threads only add noise.
    Returns (threads, a warning when the request was capped). The one rule for select, validate, distill."""
    limit = cpu_limit()
    if requested is None:
        return 1, None
    if requested > limit:
        return limit, f"--threads {requested} exceeds this container's CPU limit ({limit}); using {limit}"
    return requested, None


@contextlib.contextmanager
def process_settings(device: torch.device) -> Iterator[None]:
    """The process-wide switches a training run wants, set once by the entry point and restored on exit
    (a library caller's process is left as it was): cuDNN autotuning on CUDA (training shapes are fixed by
    drop_last, so convolutions are tuned once). faiss's BLAS threshold is scoped to each bank search."""
    import torch

    old_bench = torch.backends.cudnn.benchmark
    try:
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.backends.cudnn.benchmark = old_bench


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` for a block, restored after. select builds, FLOP-counts and
    exports dozens of tiny models at batch 1-2: a second thread only adds synchronisation, and on a shared
    machine every parallel region waits for a descheduled thread (benchmarks/RESULTS.md, "Figures moved out
    of code comments"). Where torch is not imported yet (a warm selection may
    never need it: select.warm) this does not import it, and a block that does import it runs with torch's
    default threads."""
    if "torch" not in sys.modules:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def exit_now(code: object) -> None:
    """End the process after the atexit handlers and a flush, skipping the interpreter's teardown (cli.main:
    unloading torch's libraries is a good part of a warm `select`: benchmarks/RESULTS.md, "select_coldstart
    after the fresh-process confirmation"). `code` is sys.exit's: None, an int, or a message (status 1)."""
    if code is not None and not isinstance(code, int):  # sys.exit("message"): the message, status 1
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()  # logging, multiprocessing and tempfile clean-ups, as a normal exit runs them
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said
            pass
    os._exit(code or 0)
