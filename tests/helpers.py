"""Helpers shared by several test modules (kept out of the test files so none imports another)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from kdcompress import losses, students
from kdcompress.core.config import Preset
from kdcompress.core.spec import InputSpec
from kdcompress.core.splits import TensorSplit
from kdcompress.core.types import PrepareContext, TeacherOutputs
from kdcompress.students.tiny import TinyCNN
from kdcompress.teacher.model import EMBED_TIMM, Teacher


def train_factories(arch: str, num_classes: int, spec: InputSpec, preset: Preset) -> dict:
    """The make_student / make_objective arguments train() takes (the pipeline composes the same)."""
    return {"make_student": lambda: students.build_student(arch, num_classes, spec),
            "make_objective": lambda ctx: losses.Objective(preset.terms, ctx)}


def zoo_teacher(model: nn.Module, arch: str, spec: InputSpec, classes: tuple[str, ...]) -> Teacher:
    """A zoo module wrapped as the Teacher every stage sees (the timm-style embedding route)."""
    return Teacher(model=model.eval(), arch=arch, classes=classes, input_spec=spec, embed_dim=model.embed_dim,
                   params=sum(p.numel() for p in model.parameters()), path=Path("<memory>"), sha256="0" * 64,
                   embed_via=EMBED_TIMM)


def random_outputs(n: int = 60, d: int = 16, c: int = 3, seed: int = 0) -> TeacherOutputs:
    g = torch.Generator().manual_seed(seed)
    return TeacherOutputs(torch.randn(n, d, generator=g), torch.randn(n, c, generator=g) * 3,
                          torch.arange(n) % c)


def make_ctx(n: int = 40, classes: int = 3, seed: int = 0, labels: torch.Tensor | None = None) -> PrepareContext:
    """A real PrepareContext: a small random TinyCNN teacher over random 1x8x8 images."""
    torch.manual_seed(seed)
    spec = InputSpec((1, 8, 8), (0.5,), (0.25,))
    teacher = zoo_teacher(TinyCNN(classes, in_channels=1, width=8), "tinycnn_w8", spec,
                          tuple(str(i) for i in range(classes)))
    y = labels if labels is not None else torch.arange(n) % classes
    split = TensorSplit(torch.rand(len(y), 1, 8, 8, generator=torch.Generator().manual_seed(seed)), y)
    return PrepareContext(teacher, split, spec, torch.device("cpu"), classes,
                          Console(file=io.StringIO(), width=200), batch_size=16)


def randomize_bn_stats(model: nn.Module, mean: tuple[float, float] = (-0.2, 0.2),
                       var: tuple[float, float] = (0.5, 1.5)) -> nn.Module:
    """Non-trivial BatchNorm running statistics (drawn from the global torch RNG), so that a wrong weight load
    or a parity bug shows in the outputs instead of hiding behind mean 0 / var 1."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(*mean)
                mod.running_var.uniform_(*var)
    return model


def sigterm_at_step(monkeypatch, epoch: int, step: int):
    """Send this process a real SIGTERM right after training step `step` (1-based) of epoch `epoch`; the
    trainer's own handler catches it, as it would a `kill` from outside. Returns the original
    StepEngine.step, for a test that puts it back before resuming."""
    import os
    import signal

    from kdcompress.train.step import StepEngine

    seen: dict[int, int] = {}
    orig = StepEngine.step

    def stepped(self, batch, ep, gen):
        out = orig(self, batch, ep, gen)
        seen[ep] = seen.get(ep, 0) + 1
        if ep == epoch and seen[ep] == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(StepEngine, "step", stepped)
    return orig


def tree_hash(root: Path, dirs: bool = True) -> dict[str, str]:
    """Every path under `root` -> its sha256 ("dir" for a directory; directories left out with dirs=False): two
    equal snapshots mean a command changed, added and removed nothing."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*")) if dirs or p.is_file()}


def latency_table(path: Path, names: tuple[str, ...],
                  precisions: tuple[str, ...] = ("fp32", "int8")) -> dict[str, float]:
    """A latency.json as `kdcompress profile` writes it, for `names` at tiny_teacher's input (1x8x8, 3 classes):
    every figure given here, so `select --latency-table` measures nothing. Returns key -> p50; int8 is slower
    than fp32."""
    from kdcompress.core.spec import InputSpec
    from kdcompress.runtime.latencytable import TABLE_FORMAT, model_key
    from kdcompress.students.registry import STUDENTS, capacity

    spec = InputSpec((1, 8, 8), (0.5,), (0.25,))
    models, p50s = {}, {}
    for i, name in enumerate(names):
        cap = capacity(STUDENTS.get(name).build(3, spec), spec)
        for j, prec in enumerate(precisions):
            p50 = round(0.012345 * (i + 1) + 0.001 * j + 0.0000432, 7)
            lat = {"p50": p50, "p90": p50 * 1.2, "p99": p50 * 1.3, "mean": p50, "min": p50 * 0.9, "iters": 200,
                   "batch": 1, "throughput": 1000 / p50}
            models[model_key(name, prec)] = {"name": name, "precision": prec, "params": cap.params,
                                             "flops": cap.flops, "latency_ms": lat,
                                             "settings": {"threads": 1, "opt_level": "all",
                                                          "execution": "sequential"}}
            p50s[model_key(name, prec)] = p50
    path.write_text(json.dumps({"format": TABLE_FORMAT, "input_shape": [1, 8, 8], "num_classes": 3, "batch": 1,
                                "provider": "cpu", "machine": {"cpu": "target"}, "tuned": False, "processes": 1,
                                "stat": "p50", "unstable": {}, "models": models}))
    return p50s
