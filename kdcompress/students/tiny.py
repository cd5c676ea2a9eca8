"""TinyCNN: the smallest rung of the ladder (two or three conv-BN-ReLU layers, global pool, linear)."""

from __future__ import annotations

from torch import Tensor, nn

from .head import PooledHead
from .registry import StudentSpec, register


class TinyCNN(PooledHead):
    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 16, depth: int = 2):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, c = in_channels, width
        for i in range(depth):
            stride = 1 if i == 0 else 2
            layers += [nn.Conv2d(c_in, c, 3, stride, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in, c = c, c * 2
        self.features = nn.Sequential(*layers)
        self.init_head(c_in, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)


for _w, _d in ((8, 2), (16, 2), (32, 3)):
    register(StudentSpec(f"tinycnn_w{_w}", "tinycnn", TinyCNN, {"width": _w, "depth": _d}, max_input=64))
