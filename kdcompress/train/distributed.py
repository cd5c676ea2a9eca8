"""Multi-process training under torchrun: who this process is, the process groups, and the few collectives
the pipeline and the trainer need.

`torchrun --nproc_per_node N -m kdcompress distill ...` sets RANK, WORLD_SIZE, LOCAL_RANK (and
LOCAL_WORLD_SIZE) in every worker; `setup()` reads them, picks NCCL when training on CUDA (each process on
cuda:LOCAL_RANK) and gloo on the CPU, and returns a `Dist`. Without those variables (or with WORLD_SIZE=1)
it returns the single-process `Dist`, whose collectives are no-ops, so the trainer has one code path.

Roles: rank 0 alone touches the run directory (checkpoints, student.pt, ONNX, reports, selection); it runs
the work that must happen once (latency measurement, the losses' prepare(): ND centres, the IC-KD bank) and
broadcasts the result (`on_main`). Only rank 0 needs to see the run directory, so multi-node runs need no
shared filesystem. Control messages (objects, flags, metric sums) go over a separate gloo group with a long
timeout, because rank 0 may measure latency or export for many minutes while the others wait, and because
a gloo message never synchronises a GPU stream.

An error that rank 0 raises inside `on_main` / `main_first` is re-raised on every rank with the same exit
code; on the other ranks it is marked quiet, so the user reads it once.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from ..core.errors import EnvironmentProblem, KdError, UsageError

T = TypeVar("T")
CONTROL_TIMEOUT = _dt.timedelta(hours=4)  # rank 0 may select / export / validate while the others wait
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    backend: str = "none"  # none | gloo | nccl
    control: Any = field(default=None, compare=False, repr=False)  # the gloo group for control messages

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------------------------ collectives

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier(group=self.control)

    def broadcast(self, obj: Any = None) -> Any:
        """Rank 0's `obj` on every rank (pickled over the control group)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj, group=self.control)
        return out

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks of a small tensor (moved to the CPU: it travels on the gloo group)."""
        v = values.detach().to("cpu", torch.float64).clone()
        if self.enabled:
            torch.distributed.all_reduce(v, op=torch.distributed.ReduceOp.SUM, group=self.control)
        return v

    def max(self, values: torch.Tensor) -> torch.Tensor:
        v = values.detach().to("cpu", torch.float64).clone()
        if self.enabled:
            torch.distributed.all_reduce(v, op=torch.distributed.ReduceOp.MAX, group=self.control)
        return v

    def average_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Mean of the gradients over ranks, for trainable parts outside the DDP-wrapped student (a loss's
        projector). One flat all-reduce on the main group (NCCL on GPU: it stays on the device)."""
        if not self.enabled:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank, so all ranks validate and save
        one model."""
        if self.enabled:
            for b in module.buffers():
                torch.distributed.broadcast(b, src=0)

    # ------------------------------------------------------------------------------------ roles

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 only and hand its result to every rank. If it fails there, every rank raises
        the same error (quiet on the others)."""
        return self._main_then_others(fn, share=True)

    def main_first(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0, then (if it succeeded) on the others: downloads, caches and the first
        error happen once."""
        return self._main_then_others(fn, share=False)

    def _main_then_others(self, fn: Callable[[], T], share: bool) -> T:
        """Rank 0 runs `fn` and broadcasts its outcome; the others re-raise its failure, then either take
        rank 0's result (`share`) or run `fn` themselves."""
        if not self.enabled:
            return fn()
        if self.is_main:
            try:
                out = fn()
            except BaseException as e:
                self.broadcast(_failure(e))
                raise
            self.broadcast(("ok", out if share else None))
            return out
        status = self.broadcast()
        if status[0] != "ok":
            raise _follow(status)
        return status[1] if share else fn()

    def quiet(self, err: KdError) -> KdError:
        """`err` marked quiet on ranks other than 0: a decision all ranks took together is reported once."""
        if not self.is_main:
            err.quiet = True
        return err


SINGLE = Dist()


def _failure(e: BaseException) -> tuple[str, str, int]:
    if isinstance(e, KdError):
        return ("err", e.message, e.exit_code)
    if isinstance(e, KeyboardInterrupt):
        return ("err", "interrupted", 130)
    return ("err", f"rank 0 failed: {type(e).__name__}", 70)


def _follow(status: tuple[str, str, int]) -> KdError:
    err = KdError(status[1])
    err.exit_code = status[2]
    err.quiet = True
    return err


def env_world() -> tuple[int, int, int, int] | None:
    """(rank, world, local_rank, local_world) from torchrun's variables, or None outside torchrun."""
    if "WORLD_SIZE" not in os.environ:
        return None
    try:
        vals = {k: int(os.environ[k]) for k in ENV_VARS}
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", vals["WORLD_SIZE"]))
    except KeyError as e:
        raise UsageError(f"WORLD_SIZE is set but {e.args[0]} is not; start distributed runs with torchrun") from None
    except ValueError:
        raise UsageError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    rank, world, local = vals["RANK"], vals["WORLD_SIZE"], vals["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise UsageError(f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
    return rank, world, local, local_world


def setup(device: str) -> tuple[Dist, torch.device]:
    """Join torchrun's process group (when there is one) and choose this process's training device."""
    from ..core.system import resolve_device

    env = env_world()
    if env is None or env[1] == 1:
        return SINGLE, resolve_device(device)
    rank, world, local, local_world = env
    if device.startswith("cuda:"):
        raise UsageError(f"--device {device}: under torchrun each process trains on cuda:LOCAL_RANK; "
                         "pass --device cuda (or auto)")
    dev = resolve_device(device)
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise EnvironmentProblem(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s) "
                                     "here; start at most that many processes per node")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist = torch.distributed
    try:
        if not dist.is_initialized():
            dist.init_process_group(backend, device_id=dev if backend == "nccl" else None)
            atexit.register(_shutdown)
        control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    except (RuntimeError, ValueError) as e:  # no MASTER_ADDR (WORLD_SIZE set by something else), a dead peer
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise EnvironmentProblem(f"cannot join the distributed job (RANK {rank} of {world}, {backend}): {first}; "
                                 "start multi-process runs with torchrun") from None
    return Dist(rank, world, local, local_world, backend, control), dev


def _shutdown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
