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
from ..core.spec import InputSpec


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


@dataclass(frozen=True)
class Capacity:
    params: int
    flops: int  # forward FLOPs at batch 1 (torch.utils.flop_counter: a multiply-add counts 2)


def capacity(model: nn.Module, spec: InputSpec) -> Capacity:
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in model.parameters())
    was_training = model.training
    model.eval()
    x = torch.zeros((1, *spec.shape))
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    model.train(was_training)
    return Capacity(params, int(fc.get_total_flops()))

