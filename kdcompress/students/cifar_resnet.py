"""CIFAR-style ResNets (He et al. 2016, the variants of CRD/mdistiller): 3x3 stem, three stages of
BasicBlocks, depth = 6n + 2. `resnetNxK` multiplies the widths by K (resnet8x4/resnet32x4: 32-64-128-256).
"""

from __future__ import annotations

from torch import Tensor, nn

from .head import PooledHead
from .registry import StudentSpec, register


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(PooledHead):
    def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 20,
                 widths: tuple[int, int, int, int] = (16, 16, 32, 64)):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        blocks: list[nn.Module] = []
        c_in = widths[0]
        for stage, c_out in enumerate(widths[1:]):
            for i in range(n):
                blocks.append(BasicBlock(c_in, c_out, 2 if (stage > 0 and i == 0) else 1))
                c_in = c_out
        self.layers = nn.Sequential(*blocks)
        self.init_head(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:
        return self.layers(self.stem(x))


def _widths(k: int) -> tuple[int, int, int, int]:
    # CRD's xK variants: stem 32, stages 64/128/256 for K=4; plain: 16, 16/32/64.
    return (16, 16, 32, 64) if k == 1 else (8 * k, 16 * k, 32 * k, 64 * k)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    register(StudentSpec(f"resnet{_depth}", "cifar_resnet", CifarResNet,
                         {"depth": _depth, "widths": _widths(1)}, max_input=64))
for _depth, _k in ((8, 2), (20, 2), (8, 4), (14, 4), (20, 4), (32, 4)):
    register(StudentSpec(f"resnet{_depth}x{_k}", "cifar_resnet", CifarResNet,
                         {"depth": _depth, "widths": _widths(_k)}, max_input=64))
