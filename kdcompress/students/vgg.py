"""VGG with batch norm for small inputs (Simonyan & Zisserman 2015; the CIFAR form of CRD/mdistiller):
five groups of 3x3 conv-BN-ReLU, a 2x2 max-pool after each of the first four, global average pooling and
one linear layer. vgg8 / vgg11 / vgg13 differ in convs per group; `_xW` scales every width by W.
"""

from __future__ import annotations

from torch import Tensor, nn

from .head import PooledHead
from .registry import StudentSpec, register, width_tag

CONFIGS = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
}


class VGGCifar(PooledHead):
    def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 8, width: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for g, group in enumerate(CONFIGS[depth]):
            for ch in group:
                c = max(8, int(ch * width))
                layers += [nn.Conv2d(c_in, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
                c_in = c
            if g < 4:
                # ceil_mode: an 8-px input reaches 1x1 after three pools; the fourth keeps it at 1x1
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.init_head(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)


for _d in CONFIGS:
    for _w in (0.25, 0.5, 1.0):
        register(StudentSpec(f"vgg{_d}_x{width_tag(_w)}", "vgg_cifar", VGGCifar, {"depth": _d, "width": _w},
                             max_input=64))
