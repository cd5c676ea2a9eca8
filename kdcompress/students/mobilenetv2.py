"""MobileNetV2 for small inputs (Sandler et al., "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018), CIFAR form: the stem and the second stage keep stride 1 (a 32-px image ends at
4x4 instead of 1x1). Channels scale with the width multiplier, rounded to multiples of 8 as in the paper's
code; the final 1x1 conv stays at 1280 unless the multiplier is above 1. `mobilenetv2_x0_5` is width 0.5.
"""

from __future__ import annotations

from torch import Tensor, nn

from .head import PooledHead
from .registry import StudentSpec, register, width_tag

# (expansion t, output channels c, repeats n, first stride s); stage 2's stride is 1 for small inputs
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1))


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round to a multiple of `divisor`, never more than 10% below `v` (the reference implementation's rule)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(c_out)]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = [conv_bn(c_in, hidden, 1)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, c_out, 1, act=False)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2Cifar(PooledHead):
    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0, dropout: float = 0.0):
        super().__init__()
        c = make_divisible(32 * width)
        layers: list[nn.Module] = [conv_bn(in_channels, c, 3, 1)]
        for t, ch, n, s in SETTINGS:
            c_out = make_divisible(ch * width)
            for i in range(n):
                layers.append(InvertedResidual(c, c_out, s if i == 0 else 1, t))
                c = c_out
        last = make_divisible(1280 * max(1.0, width))
        layers.append(conv_bn(c, last, 1))
        self.features = nn.Sequential(*layers)
        self.init_head(last, num_classes, pre=nn.Dropout(dropout))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)


for _w in (0.25, 0.35, 0.5, 0.75, 1.0):
    register(StudentSpec(f"mobilenetv2_x{width_tag(_w)}", "mobilenetv2_cifar", MobileNetV2Cifar,
                         {"width": _w}, max_input=64))
