"""The student zoo: a registry of builders `build(num_classes, InputSpec) -> nn.Module`.

Every model follows one interface (timm's): `forward_features(x)` -> feature map, `forward_head(f,
pre_logits=False)` -> logits (or the pooled penultimate embedding with pre_logits=True),
`get_classifier()` -> the final layer, and `embed_dim`. ND and IC-KD use the embedding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.registry import Registry
from ..core.spec import Capacity, InputSpec


@dataclass(frozen=True)
class StudentSpec:
    name: str
    family: str
    builder: Callable[..., nn.Module]
    kwargs: dict[str, Any] = field(default_factory=dict)
    # The input regime, on the image's larger side: CIFAR-style nets suit small images (max_input=64),
    # the torchvision families large ones (min_input=65). One side for both bounds leaves no gap between.
    max_input: int | None = None
    min_input: int | None = None

    def suits(self, spec: InputSpec) -> bool:
        side = max(spec.shape[1:])
        return (self.max_input is None or side <= self.max_input) and (self.min_input is None or side >= self.min_input)

    def build(self, num_classes: int, spec: InputSpec) -> nn.Module:
        return self.builder(num_classes=num_classes, in_channels=spec.shape[0], **self.kwargs)


STUDENTS: Registry[StudentSpec] = Registry("student", entry_point_group="kdcompress.students")


def register(spec: StudentSpec) -> None:
    STUDENTS.register(spec.name, spec)


def build_student(name: str, num_classes: int, spec: InputSpec) -> nn.Module:
    return STUDENTS.get(name).build(num_classes, spec)


def width_tag(w: float) -> str:
    """0.5 -> '0_5', 1.0 -> '1_0', 0.25 -> '0_25': width multipliers in registered names."""
    s = f"{w:g}"
    return (s if "." in s else s + ".0").replace(".", "_")


def capacity(model: nn.Module, spec: InputSpec, *, memo: bool = False) -> Capacity:
    """Parameters and batch-1 forward FLOPs. With `memo`, the FLOPs come from flops.json in the cache root
    when this architecture was counted before (flops_key): the count runs a forward under FlopCounterMode,
    whose first use in a process imports torch._dynamo (benchmarks/RESULTS.md, "select_coldstart after the
    fresh-process confirmation"), which a warm `select` need not pay."""
    params = sum(p.numel() for p in model.parameters())
    layers = weighted_layers(model)
    key = flops_key(model, spec, params) if memo else None
    if key is not None and (known := _FlopsMemo.get(key)) is not None:
        return Capacity(params, known, layers)
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    x = torch.zeros((1, *spec.shape))
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    model.train(was_training)
    flops = int(fc.get_total_flops())
    if key is not None:
        _FlopsMemo.put(key, flops)
    return Capacity(params, flops, layers)


def weighted_layers(model: nn.Module) -> int:
    """Convolutions and linear layers in the module tree (each a kernel launch at inference)."""
    return sum(1 for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)))


def flops_key(model: nn.Module, spec: InputSpec, params: int) -> str | None:
    """What fixes a model's FLOPs at an input shape: its module tree (repr: every layer's type and
    hyper-parameters), its parameter count, the source of every non-torch module class (a changed forward
    changes the key), the input shape and the torch and kdcompress versions. None (not memoised) for
    TorchScript, whose repr does not show its code, and for a class whose source cannot be read."""
    import hashlib
    import inspect
    import json

    from .. import __version__

    if isinstance(model, torch.jit.ScriptModule):
        return None
    sources = []
    for cls in sorted({type(m) for m in model.modules()}, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
        if cls.__module__.split(".")[0] == "torch":
            continue
        try:
            sources.append([cls.__module__, cls.__qualname__, inspect.getsource(cls)])
        except (OSError, TypeError):
            return None
    raw = json.dumps([repr(model), params, list(spec.shape), sources, torch.__version__, __version__])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


class _FlopsMemo:
    """flops.json in the cache root (core.jsonstore): {key: flops}. Read once per process; a broken or
    unwritable file only costs a recount."""

    store = None  # the JsonStore, opened on first use (again when the cache root moves)

    @classmethod
    def _open(cls):
        from ..core.system import cache_root

        path = cache_root() / "flops.json"
        if cls.store is None or cls.store.path != path:
            from ..core.jsonstore import JsonStore

            cls.store = JsonStore(path)
        return cls.store

    @classmethod
    def get(cls, key: str) -> int | None:
        v = cls._open().get_json(key)
        return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None

    @classmethod
    def put(cls, key: str, flops: int) -> None:
        st = cls._open()
        st.put_json(key, flops)
        st.save()
