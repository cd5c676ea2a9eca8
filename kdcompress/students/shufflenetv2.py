"""ShuffleNetV2 for small inputs (Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design", ECCV 2018), CIFAR form: a 3x3 stride-1 stem and no max-pool, so a 32-px image ends
at 4x4. Stages of 4 / 8 / 4 units with the paper's channel table per width; each unit splits the channels,
transforms one half and shuffles the two halves back together. `shufflenetv2_x0_5` is width 0.5.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .head import PooledHead
from .registry import StudentSpec, register, width_tag

STAGE_REPEATS = (4, 8, 4)
# the paper's Table 5: stage output channels and the final 1x1 conv, per width multiplier
CHANNELS = {0.5: (48, 96, 192, 1024), 1.0: (116, 232, 464, 1024), 1.5: (176, 352, 704, 1024),
            2.0: (244, 488, 976, 2048)}


def channel_shuffle(x: Tensor, groups: int = 2) -> Tensor:
    # unflatten/flatten instead of view(b, ...) keeps the batch axis symbolic for the ONNX export
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


def _cbr(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(c_out)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ShuffleUnit(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.stride = stride
        half = c_out // 2
        # a stride-1 unit passes half of its input through untouched; a stride-2 unit has two branches
        b_in = c_in if stride > 1 else c_in // 2
        self.branch2 = nn.Sequential(_cbr(b_in, half, 1), _cbr(half, half, 3, stride, groups=half, relu=False),
                                     _cbr(half, half, 1))
        self.branch1 = (nn.Sequential(_cbr(c_in, c_in, 3, stride, groups=c_in, relu=False), _cbr(c_in, half, 1))
                        if stride > 1 else None)

    def forward(self, x: Tensor) -> Tensor:
        if self.branch1 is None:
            a, b = x.chunk(2, dim=1)
            out = torch.cat((a, self.branch2(b)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out)


class ShuffleNetV2Cifar(PooledHead):
    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        if width not in CHANNELS:
            raise ValueError(f"ShuffleNetV2 width must be one of {sorted(CHANNELS)}, got {width}")
        *stage_ch, last = CHANNELS[width]
        layers: list[nn.Module] = [_cbr(in_channels, 24, 3)]
        c = 24
        for reps, c_out in zip(STAGE_REPEATS, stage_ch, strict=True):
            for i in range(reps):
                layers.append(ShuffleUnit(c, c_out, 2 if i == 0 else 1))
                c = c_out
        layers.append(_cbr(c, last, 1))
        self.features = nn.Sequential(*layers)
        self.init_head(last, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)


for _w in CHANNELS:
    register(StudentSpec(f"shufflenetv2_x{width_tag(_w)}", "shufflenetv2_cifar", ShuffleNetV2Cifar,
                         {"width": _w}, max_input=64))
