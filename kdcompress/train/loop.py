"""The training loop: distillation (or plain CE for teachers), validation each epoch, best weights kept,
checkpoints and resume, NaN guard, SIGINT/SIGTERM, torchrun, progress. The step itself (bf16 autocast,
channels_last, DDP, torch.compile) is step.py's; `train.teacher_cache=views` replaces the teacher's forward
by reads of its outputs on seeded views (teacher_cache.py). `_Session` holds a run's state, one job a method.

Epochs are 1-indexed everywhere (warm-up omega(e) = min(e/E_w, 1) and the LR schedule), and the learning
rate is derived from the epoch number, so a resumed run needs no scheduler state; bf16 needs no GradScaler.

Never lose a run. `checkpoints/last.pt` (student, optimizer, objective incl. a projector, epoch, RNG states,
history, best) is written atomically after every epoch and when SIGINT/SIGTERM arrives: the current step
finishes and the checkpoint records the step boundary reached (`step` batches of the next epoch). A resumed
run skips exactly those batches of the same deterministic permutation and restores every RNG state and the
epoch's partial loss sums, so an interrupted run ends with the weights an uninterrupted one would have.
(Mid-epoch resume needs the same number of processes; epoch-boundary resume works with any.) The global
torch RNG and the augmentation generator are re-seeded from (seed, epoch, rank) at each epoch start, so an
epoch-boundary checkpoint needs no RNG state at all. A NaN/inf loss stops the run (exit 6) before any
checkpoint of the diverged weights is written. Under torchrun, rank 0 alone reads and writes the run
directory and broadcasts what the others need (distributed.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from ..core.checkpoint import save_checkpoint
from ..core.infer import shard_hits
from ..core.config import Preset, TrainConfig
from ..core.errors import InputError, Interrupted, TrainingError, UsageError
from ..core.runio import RunDir, atomic_torch_save, safe_torch_load
from ..core.progress import eta_progress
from ..core.spec import InputSpec
from ..core.splits import DataSplits
from ..core.types import NEED_TEACHER_EMBED, NEED_TEACHER_LOGITS, LossContext, PrepareContext, TeacherLike
from .distributed import SINGLE, Dist
from .epochlog import METRICS_CSV, TensorBoardLog, write_metrics_csv
from .interrupt import GracefulStop, signal_name
from .step import Feeder, StepEngine
from .teacher_cache import TeacherCache, cache_key, load_or_build, stored_k

POLL_STEPS = 16  # GPU or torchrun: steps between looks at the NaN guard and stop requests (each is a sync)


@dataclass(frozen=True)
class TrainResult:
    arch: str
    checkpoint: Path
    epochs: int
    best_epoch: int
    best_val_accuracy: float
    final_val_accuracy: float
    history: tuple[dict[str, Any], ...]
    seconds: float
    device: str
    resumed_from_epoch: int  # a mid-epoch resume: the epoch it continued; else the last finished one (0: fresh)
    world_size: int = 1
    resumed_from_step: int = 0  # a mid-epoch resume: the batches of resumed_from_epoch done before it

    def to_json(self) -> dict[str, Any]:
        return {"arch": self.arch, "checkpoint": str(self.checkpoint), "epochs": self.epochs,
                "best_epoch": self.best_epoch, "best_val_accuracy": self.best_val_accuracy,
                "final_val_accuracy": self.final_val_accuracy, "history": list(self.history),
                "seconds": round(self.seconds, 3), "device": self.device, "world_size": self.world_size,
                "resumed_from_epoch": self.resumed_from_epoch, "resumed_from_step": self.resumed_from_step}


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate for 1-indexed `epoch`. step: x gamma for each milestone already passed (epochs
    151-180 of mdistiller's 240 run at lr/10); cosine: half-cosine from lr to 0 over the run."""
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** sum(epoch > m for m in cfg.scaled_milestones())
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / cfg.epochs))


def _optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    # foreach: multi-tensor updates, bitwise equal to the loop (tests/test_speed_identity.py);
    # not fused (rounds differently)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay, foreach=True)


def epoch_seed(seed: int, epoch: int, rank: int, stream: int) -> int:
    """Independent seeds per (run seed, epoch, rank, stream): 0 the global torch RNG, 1 augmentation."""
    h = hashlib.blake2b(f"{seed}:{epoch}:{rank}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & (2**63 - 1)


def _prepare(objective: nn.Module, ctx: PrepareContext, run: RunDir, fingerprint: dict[str, Any]) -> Any:
    """Run the losses' prepare() once and save the result, or load what an earlier run of the same
    configuration saved (the fingerprint guards a prepared.pt left by a different configuration; an
    unreadable one is recomputed: it is derived data). Returns the prepared state (CPU tensors)."""
    if run.prepared.exists():
        try:
            saved = safe_torch_load(run.prepared)
        except InputError as e:
            ctx.console.print(f"[yellow]warning:[/] {e.message}; recomputing it")
            saved = None
        if isinstance(saved, dict) and saved.get("fingerprint") == fingerprint:
            objective.load_prepared(saved["losses"], ctx)
            ctx.console.print(f"[dim]reusing prepared state from {run.prepared}[/]")
            return saved["losses"]
    objective.prepare(ctx)
    state = objective.prepared_state()
    atomic_torch_save({"fingerprint": fingerprint, "losses": state}, run.prepared)
    return state


# train settings that change what is logged, not what is trained: a resumed run may turn them on or off
LOG_ONLY = ("tensorboard",)


def comparable(fp: dict[str, Any], ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """The part of a run's fingerprint a resume must match: without the `ignore` keys and the LOG_ONLY settings."""
    out = {k: v for k, v in fp.items() if k not in ignore}
    preset = out.get("preset")
    if isinstance(preset, dict) and isinstance(preset.get("train"), dict):
        out["preset"] = {**preset, "train": {k: v for k, v in preset["train"].items() if k not in LOG_ONLY}}
    return out


def _read_checkpoint(run: RunDir, fingerprint: dict[str, Any], ignore: tuple[str, ...] = ()) -> dict[str, Any] | None:
    if not run.last_checkpoint.exists():
        return None
    try:
        ck = safe_torch_load(run.last_checkpoint)
    except InputError as e:
        raise InputError(f"{e.message}; use --restart to start over") from None
    if not isinstance(ck, dict) or not {"fingerprint", "epoch", "student", "optimizer"} <= set(ck):
        raise InputError(f"{run.last_checkpoint} is not a kdcompress training checkpoint; use --restart to start over")
    got, keep = ck.get("fingerprint"), lambda fp: comparable(fp, ignore)
    if not isinstance(got, dict) or keep(got) != keep(fingerprint):
        diff = config_diff(keep(got) if isinstance(got, dict) else {}, keep(fingerprint))
        raise UsageError(f"{run.root} holds a run with a different configuration ({diff}); "
                         "use --restart to start over or another --out")
    return ck


def config_diff(old: Any, new: Any, prefix: str = "", limit: int = 4) -> str:
    """The dotted keys whose values differ between two fingerprints, with both values (the first `limit`)."""
    rows = list(_differences(old, new, prefix))
    shown = [f"{k}: {_short(a)} -> {_short(b)}" for k, a, b in rows[:limit]]
    return "; ".join(shown) + (f"; and {len(rows) - limit} more" if len(rows) > limit else "") or "unreadable"


def _differences(old: Any, new: Any, prefix: str):
    if isinstance(old, dict) and isinstance(new, dict):
        for k in dict.fromkeys([*old, *new]):
            yield from _differences(old.get(k), new.get(k), f"{prefix}{k}.")
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            yield from _differences(a, b, f"{prefix}{i}.")
    elif old != new:
        yield prefix.rstrip("."), old, new


def _short(v: Any, width: int = 40) -> str:
    text = "unset" if v is None else str(v)
    return text if len(text) <= width else text[: width - 3] + "..."


def check_resumable(run: RunDir, fingerprint: dict[str, Any], ignore: tuple[str, ...] = ()) -> None:
    """Refuse, before anything is written, a run directory whose checkpoint has another configuration
    (or cannot be read): the same check training makes when it resumes. Keys in `ignore` are not compared
    (`distill --rank trial` checks before its trials have chosen the architecture)."""
    _read_checkpoint(run, fingerprint, ignore)


def _rng_state(gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "aug": gen.get_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _accumulate(sums: dict[str, torch.Tensor], loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
    """Running sums on the device, in float64; nothing is read back to the host here."""
    for k, v in (("loss", loss), *parts.items()):
        v = torch.as_tensor(v, device=loss.device).double()
        sums[k] = sums[k] + v if k in sums else v


def _elapsed(since: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the step's kernels are asynchronous: count them finished
    return time.perf_counter() - since


def evaluate(model: nn.Module, split: Any, spec: InputSpec, device: torch.device, dist: Dist = SINGLE,
             batch_size: int = 256) -> float:
    """Top-1 accuracy (fp32, eval mode) over `split`, each rank scoring its shard (core.infer, the one
    evaluation loop); a sample a rank saw twice (shards are padded to equal length) counts once, so the
    result equals a single process's."""
    hit = shard_hits(model, split, spec, device, batch_size, rank=dist.rank, world=dist.world)
    if len(split) == 0:
        return float("nan")
    return float(dist.max(hit).sum() / len(split))


def train(*, arch: str, splits: DataSplits, spec: InputSpec, preset: Preset, teacher: TeacherLike | None,
          run: RunDir, device: torch.device, fingerprint: dict[str, Any], make_student: Callable[[], nn.Module],
          make_objective: Callable[[LossContext], nn.Module], console: Console | None = None,
          restart: bool = False, dist: Dist = SINGLE, compile: bool = False) -> TrainResult:
    """Train `make_student()` (built after seeding) against `make_objective(ctx)` (the losses stage's
    Objective, composed by the pipeline: the trainer never imports a loss or a zoo model)."""
    console = console or Console(stderr=True)
    if preset.needs_teacher and teacher is None:
        raise UsageError(f"preset '{preset.name}' distils from a teacher; give --teacher")
    if teacher is not None and teacher.num_classes != splits.num_classes:
        raise InputError(f"teacher has {teacher.num_classes} classes but the data has {splits.num_classes}")
    if len(splits.train) < 2:
        raise InputError(f"training split of {splits.name} has {len(splits.train)} sample(s); need at least 2")

    with contextlib.ExitStack() as held:

        def setup_dir() -> None:  # rank 0: the run directory, locked for the whole training
            run.prepare()
            held.enter_context(run.lock())
            if restart:
                run.discard_checkpoints()  # only the files training writes there
            run.remove_stale_tmp()

        dist.on_main(setup_dir)
        with GracefulStop() as stop:
            session = _Session(arch=arch, splits=splits, spec=spec, preset=preset, teacher=teacher, run=run,
                               device=device, fingerprint=fingerprint, console=console, dist=dist, stop=stop)
            session.build(make_student, make_objective)
            session.restore()
            session.setup_steps(compile)
            session.run_epochs()
            return session.finish()


class _Session:
    """One training run, its jobs one method each: build (seeded models, optimizer), restore (the
    checkpoint), setup_steps (losses' prepare, teacher cache, step engine), run_epochs / _epoch / _poll /
    _end_epoch (the loop, the NaN and stop polling), save, finish (best weights -> student.pt)."""

    def __init__(self, *, arch: str, splits: DataSplits, spec: InputSpec, preset: Preset,
                 teacher: TeacherLike | None, run: RunDir, device: torch.device, fingerprint: dict[str, Any],
                 console: Console, dist: Dist, stop: GracefulStop):
        self.arch, self.splits, self.spec, self.preset, self.teacher = arch, splits, spec, preset, teacher
        self.run, self.device, self.fingerprint, self.console, self.dist, self.stop = (
            run, device, fingerprint, console, dist, stop)
        self.cfg: TrainConfig = preset.train
        self.cuda = device.type == "cuda"
        self.gen = torch.Generator()
        self.start_epoch, self.skip, self.partial = 1, 0, None
        self.history: list[dict[str, Any]] = []
        self.tensorboard = TensorBoardLog(self.run.root)
        self.best: dict[str, Any] = {"acc": -1.0, "epoch": 0}

    def build(self, make_student: Callable[[], nn.Module], make_objective: Callable[[LossContext], nn.Module]) -> None:
        torch.manual_seed(self.cfg.seed)
        student = make_student().to(self.device)
        self.student = student.to(memory_format=torch.channels_last) if self.cuda else student
        if self.teacher is not None:
            self.teacher = self.teacher.to(self.device)  # eval mode, channels_last on CUDA
        t_dim = self.teacher.embed_dim if self.teacher is not None else None
        ctx = LossContext(self.splits.num_classes, getattr(self.student, "embed_dim", None), t_dim)
        self.objective = make_objective(ctx).to(self.device)
        if self.teacher is not None:
            self.teacher.check_needs(self.objective.needs, self.preset.name)
        self.opt = _optimizer(self.cfg,
                              [p for p in self.student.parameters()] + [p for p in self.objective.parameters()])

    def restore(self) -> None:
        dist, run = self.dist, self.run
        ck = dist.on_main(lambda: _read_checkpoint(run, self.fingerprint))
        if ck is not None:
            self.skip = skip = int(ck.get("step", 0))
            if skip and ck.get("world", 1) != dist.world:
                raise dist.quiet(UsageError(
                    f"{run.last_checkpoint} was written mid-epoch by {ck.get('world', 1)} process(es); resume it "
                    f"with that many (this run has {dist.world}) or use --restart"))
            self.student.load_state_dict(ck["student"])
            self.objective.load_state_dict(ck["objective"])
            self.opt.load_state_dict(ck["optimizer"])
            self.start_epoch, self.history, self.best = ck["epoch"] + 1, list(ck["history"]), dict(ck["best"])
            if skip:
                rng = ck["rng"]
                torch.set_rng_state(rng["torch"][dist.rank])
                self.gen.set_state(rng["aug"][dist.rank])
                if self.cuda and rng["cuda"][dist.rank] is not None:
                    torch.cuda.set_rng_state(rng["cuda"][dist.rank], self.device)
                self.partial = {"sums": ck["partial"]["sums"][dist.rank], "seconds": ck["partial"]["seconds"]}
            where = f"epoch {ck['epoch'] + 1} step {skip}" if skip else f"after epoch {ck['epoch']}"
            self.console.print(f"[dim]resuming {run.root} {where}[/]")
        self.resumed_from = (self.start_epoch, self.skip) if self.skip else (self.start_epoch - 1, 0)

    def setup_steps(self, compile: bool) -> None:
        cfg, splits, teacher, dist = self.cfg, self.splits, self.teacher, self.dist
        self.aug_mode = splits.default_augment if cfg.augment == "auto" else cfg.augment
        self.bs = bs = min(cfg.batch_size, len(splits.train))
        if self.objective.needs_prepare and self.start_epoch <= cfg.epochs:
            assert teacher is not None  # preparing losses distil, and needs_teacher was checked above
            pctx = PrepareContext(teacher, splits.train, self.spec, self.device, splits.num_classes, self.console, bs)
            state = dist.on_main(lambda: _prepare(self.objective, pctx, self.run, self.fingerprint))
            if not dist.is_main:
                self.objective.load_prepared(state, pctx)
        self.feeder = Feeder(splits.train, self.device, bs, cfg.seed, dist)
        self.engine = StepEngine(student=self.student, objective=self.objective, opt=self.opt,
                                 teacher=teacher.outputs if teacher is not None else None, spec=self.spec,
                                 device=self.device, aug_mode=self.aug_mode, dist=dist, compile=compile,
                                 cache=self._teacher_cache(), mixing=cfg.mix, take=self.feeder.take)
        self.steps = splits.train.num_batches(bs, drop_last=True, world=dist.world)
        self.poll_every = POLL_STEPS if (self.cuda or dist.enabled) else 1
        self.t0 = time.perf_counter()

    def _teacher_cache(self) -> TeacherCache | None:
        """train.teacher_cache=views: the teacher's outputs on the seeded views, read or built once."""
        cfg, teacher, needs = self.cfg, self.teacher, self.objective.needs
        if cfg.teacher_cache != "views" or teacher is None or self.start_epoch > cfg.epochs:  # auto: decided
            return None
        if not needs & {NEED_TEACHER_LOGITS, NEED_TEACHER_EMBED}:
            return None
        sha = getattr(teacher, "sha256", None) or self.fingerprint.get("teacher")
        if not sha:
            raise UsageError("train.teacher_cache=views needs a teacher with a sha256 (a teacher file); "
                             "use train.teacher_cache=off")
        want_embed = NEED_TEACHER_EMBED in needs
        c = self.splits.num_classes
        key = cache_key(teacher_sha256=sha, data=self.fingerprint.get("data", self.splits.name), mixing=cfg.mix,
                        split=self.splits.train, spec=self.spec, mode=self.aug_mode, views=cfg.cache_views,
                        seed=cfg.seed, k=stored_k(c, cfg.cache_topk), num_classes=c, embed=want_embed)
        cache = self.dist.main_first(lambda: load_or_build(
            teacher.outputs, key=key, split=self.splits.train, spec=self.spec, device=self.device,
            embed_dim=teacher.embed_dim, batch_size=self.bs, amp=self.cuda, console=self.console,
            record=self.run.root / "teacher_cache.json" if self.dist.is_main else None))
        return cache.to(self.device) if self.cuda else cache

    def save(self, epoch_done: int, step: int, sums: dict[str, torch.Tensor], seconds: float) -> None:
        dist = self.dist
        rngs = dist.gather(_rng_state(self.gen, self.device))
        part = dist.gather({k: float(v) for k, v in sums.items()}) if step else None
        if dist.is_main:
            atomic_torch_save({
                "format": "kdcompress.train-state", "fingerprint": self.fingerprint, "epoch": epoch_done,
                "step": step, "world": dist.world, "student": self.student.state_dict(),
                "objective": self.objective.state_dict(), "optimizer": self.opt.state_dict(),
                "rng": {k: [r[k] for r in rngs] for k in ("torch", "aug", "cuda")},
                "partial": {"sums": part, "seconds": seconds} if step else None,
                "history": self.history, "best": self.best}, self.run.last_checkpoint)

    def run_epochs(self) -> None:
        cfg, console = self.cfg, self.console
        desc = f"train {self.arch}"
        # the status "ep 12/240 loss 1.234 val 0.987" needs about 31 columns beside the bar and its times
        progress = eta_progress(console, desc, status_width=31)
        with progress, self.stop.deferring():
            task = progress.add_task(desc, total=cfg.epochs * self.steps,
                                     completed=(self.start_epoch - 1) * self.steps + self.skip, status="")
            for epoch in range(self.start_epoch, cfg.epochs + 1):
                lr = lr_at(cfg, epoch)
                for g in self.opt.param_groups:
                    g["lr"] = lr
                sums, seconds = self._epoch(epoch, lambda: progress.advance(task))
                row = self._end_epoch(epoch, lr, sums, seconds)
                # drawn at once: each epoch's line shows, however fast the epoch (a tiny run included)
                progress.update(task, refresh=True, status=f"ep {epoch}/{cfg.epochs} loss {row.get('loss', 0):.3f} "
                                                           f"val {row['val_accuracy']:.3f}")
                if not console.is_terminal:
                    console.print(f"epoch {epoch}/{cfg.epochs}  loss {row.get('loss', 0):.4f}  "
                                  f"val_acc {row['val_accuracy']:.4f}")
                if self.dist.max(torch.tensor([float(self.stop.requested)]))[0]:
                    raise self.dist.quiet(Interrupted(
                        f"interrupted by {signal_name(self.stop.signum or 15)} after epoch {epoch}; checkpoint "
                        f"saved to {self.run.last_checkpoint}; rerun the same command to resume",
                        self.stop.signum or 15))
        if not self.history:
            raise InputError(f"{self.run.last_checkpoint} has no completed epoch")

    def _epoch(self, epoch: int, advance: Callable[[], None]) -> tuple[dict[str, torch.Tensor], float]:
        """The steps of one epoch (from the resumed step boundary on); returns the loss sums and seconds."""
        sums: dict[str, torch.Tensor] = {}
        seconds = 0.0
        if self.skip and self.partial is not None:
            sums = {k: torch.tensor(v, dtype=torch.float64, device=self.device)
                    for k, v in self.partial["sums"].items()}
            seconds = self.partial["seconds"]
        else:
            torch.manual_seed(epoch_seed(self.cfg.seed, epoch, self.dist.rank, 0))
            self.gen.manual_seed(epoch_seed(self.cfg.seed, epoch, self.dist.rank, 1))
        self.student.train()
        self.objective.train()
        t_epoch = time.perf_counter()
        done = self.skip
        for batch in self.feeder.epoch(epoch, self.skip):
            loss, parts = self.engine.step(batch, epoch, self.gen)
            _accumulate(sums, loss, parts)
            done += 1
            advance()
            if done % self.poll_every == 0 or done == self.steps:
                self._poll(epoch, done, sums, loss, parts, seconds, t_epoch)
        self.skip, self.partial = 0, None
        return sums, seconds + _elapsed(t_epoch, self.device)

    def _poll(self, epoch: int, done: int, sums: dict[str, torch.Tensor], loss: torch.Tensor,
              parts: dict[str, torch.Tensor], seconds: float, t_epoch: float) -> None:
        """The NaN guard and the stop request, agreed over ranks (one host sync)."""
        dist, run, steps = self.dist, self.run, self.steps
        bad, stopping = (bool(v) for v in dist.max(torch.stack([
            (~torch.isfinite(sums["loss"])).double().cpu(),
            torch.tensor(float(self.stop.requested), dtype=torch.float64)])))
        if bad:
            kept = (f"the last good checkpoint is kept at {run.last_checkpoint}"
                    if run.last_checkpoint.exists() else "no epoch had finished, so there is no checkpoint")
            raise dist.quiet(TrainingError(
                f"loss became {float(loss)} at epoch {epoch} (step {done}/{steps}; terms: "
                + ", ".join(f"{k}={float(v):.4g}" for k, v in parts.items())
                + f"); stopped; {kept}; lower train.lr or check the data"))
        if stopping and done < steps:
            self.save(epoch - 1, done, sums, seconds + _elapsed(t_epoch, self.device))
            signum = self.stop.signum or 15
            raise dist.quiet(Interrupted(
                f"interrupted by {signal_name(signum)} at epoch {epoch} step {done}/{steps}; "
                f"checkpoint saved to {run.last_checkpoint}; rerun the same command to resume", signum))

    def _end_epoch(self, epoch: int, lr: float, sums: dict[str, torch.Tensor], seconds: float) -> dict[str, Any]:
        """Epoch means over ranks, validation, best weights, the epoch-boundary checkpoint."""
        dist, steps = self.dist, self.steps
        keys = list(sums)
        totals = dist.sum(torch.stack([sums[k].cpu() for k in keys])) if keys else torch.zeros(0)
        dist.broadcast_buffers(self.student)
        val_acc = evaluate(self.student, self.splits.val, self.spec, self.device, dist)
        row = {"epoch": epoch, "lr": lr, "val_accuracy": round(val_acc, 6),
               **{k: round(float(v) / (steps * dist.world), 6) for k, v in zip(keys, totals, strict=True)},
               "train_seconds": round(seconds, 4)}
        self.history.append(row)
        if dist.is_main:
            write_metrics_csv(self.run.root / METRICS_CSV, self.history)
            if self.cfg.tensorboard:
                self.tensorboard.log(self.history)
        if val_acc > self.best["acc"]:
            self.best = {"acc": val_acc, "epoch": epoch}
            if dist.is_main:
                atomic_torch_save({k: v.detach().cpu().clone() for k, v in self.student.state_dict().items()},
                                  self.run.checkpoints / "best.pt")
        self.save(epoch, 0, {}, seconds)
        return row

    def finish(self) -> TrainResult:
        run, history, best = self.run, self.history, self.best

        def write() -> None:
            self.student.load_state_dict(safe_torch_load(run.checkpoints / "best.pt"))
            save_checkpoint(run.student, self.student, self.arch, self.splits.classes, self.spec,
                            metrics={"val_accuracy": best["acc"], "best_epoch": best["epoch"],
                                     "final_val_accuracy": history[-1]["val_accuracy"], "preset": self.preset.name,
                                     "data": self.splits.name})

        self.dist.on_main(write)
        return TrainResult(self.arch, run.student, self.cfg.epochs, int(best["epoch"]), float(best["acc"]),
                           float(history[-1]["val_accuracy"]), tuple(history), time.perf_counter() - self.t0,
                           str(self.device), self.resumed_from[0], self.dist.world, self.resumed_from[1])
