"""The training loop: distillation (or plain CE for teachers), validation each epoch, best weights kept,
atomic per-epoch checkpoints and resume, NaN guard, rich progress. bf16 autocast + channels_last on CUDA.

Epochs are 1-indexed everywhere (warm-up omega(e) = min(e/E_w, 1) and the LR schedule), and the
learning rate is derived from the epoch number, so a resumed run needs no scheduler state.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from .config import InputSpec, Preset, TrainConfig
from .data import DataSplits, augment, normalize
from .errors import EnvironmentProblem, InputError, TrainingError, UsageError
from .infer import accuracy, predict
from .losses import LossContext, ModelOut, Objective, PrepareContext
from .losses.base import NEED_STUDENT_EMBED, NEED_TEACHER_EMBED, NEED_TEACHER_LOGITS
from .runio import RunDir, atomic_torch_save, safe_torch_load
from .students import build_student, logits_and_embed
from .teacher import Teacher, save_checkpoint


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
    resumed_from_epoch: int

    def to_json(self) -> dict[str, Any]:
        return {"arch": self.arch, "checkpoint": str(self.checkpoint), "epochs": self.epochs,
                "best_epoch": self.best_epoch, "best_val_accuracy": self.best_val_accuracy,
                "final_val_accuracy": self.final_val_accuracy, "history": list(self.history),
                "seconds": round(self.seconds, 3), "device": self.device,
                "resumed_from_epoch": self.resumed_from_epoch}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EnvironmentProblem(f"--device {name} was requested but no CUDA GPU is available here")
    return torch.device(name)


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate for 1-indexed `epoch`. step: x gamma for each milestone already passed (epochs
    151-180 of mdistiller's 240 run at lr/10); cosine: half-cosine from lr to 0 over the run."""
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** sum(epoch > m for m in cfg.scaled_milestones())
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / cfg.epochs))


def _optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


def _forward(model: nn.Module, x: torch.Tensor, want_embed: bool) -> ModelOut:
    if want_embed:
        logits, emb = logits_and_embed(model, x)
        return ModelOut(logits, emb)
    return ModelOut(model(x))


def _prepare(objective: Objective, ctx: PrepareContext, run: RunDir, fingerprint: dict[str, Any]) -> None:
    """Run the losses' prepare() once and save the result, or load what an earlier run of the same
    configuration saved (the fingerprint guards a prepared.pt left by a different configuration)."""
    if run.prepared.exists():
        saved = safe_torch_load(run.prepared)
        if isinstance(saved, dict) and saved.get("fingerprint") == fingerprint:
            objective.load_prepared(saved["losses"], ctx)
            ctx.console.print(f"[dim]reusing prepared state from {run.prepared}[/]")
            return
    objective.prepare(ctx)
    atomic_torch_save({"fingerprint": fingerprint, "losses": objective.prepared_state()}, run.prepared)


def train(*, arch: str, splits: DataSplits, spec: InputSpec, preset: Preset, teacher: Teacher | None,
          run: RunDir, device: torch.device, fingerprint: dict[str, Any], console: Console | None = None,
          restart: bool = False) -> TrainResult:
    console = console or Console(stderr=True)
    cfg = preset.train
    if preset.needs_teacher and teacher is None:
        raise UsageError(f"preset '{preset.name}' distils from a teacher; give --teacher")
    if teacher is not None and teacher.num_classes != splits.num_classes:
        raise InputError(f"teacher has {teacher.num_classes} classes but the data has {splits.num_classes}")
    if len(splits.train) < 2:
        raise InputError(f"training split of {splits.name} has {len(splits.train)} sample(s); need at least 2")
    if restart and run.checkpoints.exists():
        shutil.rmtree(run.checkpoints)
    run.prepare()

    torch.manual_seed(cfg.seed)
    student = build_student(arch, splits.num_classes, spec).to(device)
    cuda = device.type == "cuda"
    if cuda:
        student = student.to(memory_format=torch.channels_last)
    t_model = teacher.model.to(device).eval() if teacher is not None else None
    if cuda and t_model is not None:
        t_model = t_model.to(memory_format=torch.channels_last)
    ctx = LossContext(splits.num_classes, getattr(student, "embed_dim", None),
                      teacher.embed_dim if teacher is not None else None)
    objective = Objective(preset.terms, ctx).to(device)
    needs = objective.needs
    s_embed = NEED_STUDENT_EMBED in needs
    t_needed = bool(needs & {NEED_TEACHER_LOGITS, NEED_TEACHER_EMBED})
    t_embed = NEED_TEACHER_EMBED in needs
    if teacher is not None:
        teacher.check_needs(needs, preset.name)
    opt = _optimizer(cfg, [p for p in student.parameters()] + [p for p in objective.parameters()])

    start_epoch, history, best = 1, [], {"acc": -1.0, "epoch": 0}
    if run.last_checkpoint.exists():
        ck = safe_torch_load(run.last_checkpoint)
        if ck.get("fingerprint") != fingerprint:
            raise UsageError(f"{run.root} holds a run with a different configuration; "
                             "use --restart to start over or another --out")
        student.load_state_dict(ck["student"])
        objective.load_state_dict(ck["objective"])
        opt.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["rng"]["torch"])
        start_epoch, history, best = ck["epoch"] + 1, list(ck["history"]), dict(ck["best"])
        console.print(f"[dim]resuming {run.root} after epoch {ck['epoch']}[/]")
    resumed_from = start_epoch - 1

    gen = torch.Generator().manual_seed(cfg.seed + 1)
    aug_mode = splits.default_augment if cfg.augment == "auto" else cfg.augment
    bs = min(cfg.batch_size, len(splits.train))
    if objective.needs_prepare and start_epoch <= cfg.epochs:
        assert t_model is not None  # preparing losses distil, and needs_teacher was checked above
        _prepare(objective, PrepareContext(t_model, splits.train, spec, device, splits.num_classes, console, bs),
                 run, fingerprint)
    steps = splits.train.num_batches(bs, drop_last=True)
    t0 = time.perf_counter()
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("{task.fields[status]}"), console=console,
                        transient=False, disable=not console.is_terminal)
    with progress:
        task = progress.add_task(f"train {arch}", total=cfg.epochs * steps,
                                 completed=(start_epoch - 1) * steps, status="")
        for epoch in range(start_epoch, cfg.epochs + 1):
            lr = lr_at(cfg, epoch)
            for g in opt.param_groups:
                g["lr"] = lr
            student.train()
            sums: dict[str, float] = {}
            n_steps = 0
            for batch in splits.train.batches(bs, shuffle=True, drop_last=True, seed=cfg.seed, epoch=epoch):
                batch = batch.to(device)
                x = normalize(augment(batch.x, aug_mode, gen), spec)
                if cuda:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                    t_out = None
                    if t_needed and t_model is not None:
                        with torch.inference_mode():
                            t_raw = teacher.outputs(x, t_embed)  # any format: see Teacher.outputs
                        t_out = ModelOut(t_raw.logits.clone(),
                                         None if t_raw.embed is None else t_raw.embed.clone())
                    s_out = _forward(student, x, s_embed)
                loss, parts = objective(s_out, t_out, batch, epoch)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"loss became {float(loss)} at epoch {epoch} (terms: "
                        + ", ".join(f"{k}={v:.4g}" for k, v in parts.items())
                        + f"); stopped, the last good checkpoint is {run.last_checkpoint}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                n_steps += 1
                sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                progress.advance(task)
            val_acc = accuracy(predict(student, splits.val, spec, device), splits.val.y)
            row = {"epoch": epoch, "lr": lr, "val_accuracy": round(val_acc, 6),
                   **{k: round(v / max(n_steps, 1), 6) for k, v in sums.items()}}
            history.append(row)
            if val_acc > best["acc"]:
                best = {"acc": val_acc, "epoch": epoch}
                atomic_torch_save({k: v.detach().cpu().clone() for k, v in student.state_dict().items()},
                                  run.checkpoints / "best.pt")
            atomic_torch_save({
                "fingerprint": fingerprint, "epoch": epoch, "student": student.state_dict(),
                "objective": objective.state_dict(), "optimizer": opt.state_dict(),
                "rng": {"torch": torch.get_rng_state()}, "history": history, "best": best,
            }, run.last_checkpoint)
            progress.update(task, status=f"epoch {epoch}/{cfg.epochs} loss {row['loss']:.3f} val {val_acc:.3f}")
            if not console.is_terminal:
                console.print(f"epoch {epoch}/{cfg.epochs}  loss {row['loss']:.4f}  val_acc {val_acc:.4f}")

    if not history:
        raise InputError(f"{run.last_checkpoint} has no completed epoch")
    best_state = safe_torch_load(run.checkpoints / "best.pt")
    student.load_state_dict(best_state)
    final = history[-1]["val_accuracy"]
    save_checkpoint(run.student, student, arch, splits.classes, spec,
                    metrics={"val_accuracy": best["acc"], "best_epoch": best["epoch"],
                             "final_val_accuracy": final, "preset": preset.name, "data": splits.name})
    return TrainResult(arch, run.student, cfg.epochs, int(best["epoch"]), float(best["acc"]), float(final),
                       tuple(history), time.perf_counter() - t0, str(device), resumed_from)
