"""Wide ResNets for small inputs (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016), in the
CIFAR form used by CRD/mdistiller: depth = 6n + 4, widths 16 / 16k / 32k / 64k, pre-activation blocks
(BN-ReLU-conv), a 1x1 projection where the shape changes, no dropout. `wrnD_K` is depth D, width K.
"""

from __future__ import annotations

from torch import Tensor, nn

from .head import PooledHead
from .registry import StudentSpec, register


class PreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.relu = nn.ReLU()
        self.proj = None if (c_in == c_out and stride == 1) else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a = self.relu(self.bn1(x))
        # the projection sees the pre-activated input (as in the paper's code) so both paths share the BN
        skip = x if self.proj is None else self.proj(a)
        out = self.conv2(self.relu(self.bn2(self.conv1(a))))
        return out + skip


class WideResNet(PooledHead):
    def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 16, widen: int = 1):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        c_in = widths[0]
        for stage, c_out in enumerate(widths[1:]):
            for i in range(n):
                blocks.append(PreActBlock(c_in, c_out, 2 if (stage > 0 and i == 0) else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        # pre-activation nets end un-normalised: the final BN-ReLU belongs to the features
        self.final = nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU())
        self.init_head(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.final(self.blocks(self.stem(x)))


for _depth, _k in ((10, 1), (16, 1), (16, 2), (28, 1), (40, 1), (16, 4), (40, 2), (28, 2)):
    register(StudentSpec(f"wrn{_depth}_{_k}", "wrn", WideResNet, {"depth": _depth, "widen": _k}, max_input=64))
