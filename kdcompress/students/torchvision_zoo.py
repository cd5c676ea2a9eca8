"""torchvision families for large inputs (the larger side above 64 px), built with weights=None (random
init, nothing is downloaded) and wrapped to the zoo's interface.

Each family is cut into three parts: `features` (image -> feature map), `pre` (the layers between global
pooling and the final linear layer: dropout, or MobileNetV3's hidden Linear-Hardswish) and `fc` (the final
linear layer), so that `fc(forward_head(f, pre_logits=True)) == forward(x)`. The stem conv is replaced
when the input does not have 3 channels.

SqueezeNet 1.1 is the one changed architecture: its torchvision head is a 1x1 conv to the classes, ReLU,
then global pooling, which has no embedding followed by a linear classifier. Here the head is global
pooling, dropout and a linear layer over the 512 channels (the same parameter count).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .head import PooledHead
from .registry import StudentSpec, register

LARGE_MIN_INPUT = 65  # the larger image side above which the torchvision families are plausible


class TorchvisionStudent(PooledHead):
    def __init__(self, features: nn.Module, pre: nn.Module, fc: nn.Linear):
        super().__init__()
        self.features = features
        self.init_head(fc.in_features, fc.out_features, pre=pre, fc=fc)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)


def replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the stem's 3-channel conv for one that takes `in_channels` (same geometry, fresh init)."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels == in_channels:
                    return
                new = nn.Conv2d(in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                                child.dilation, child.groups, child.bias is not None, child.padding_mode)
                nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
                if new.bias is not None:
                    nn.init.zeros_(new.bias)
                setattr(parent, name, new)
                return
    raise ValueError(f"{type(model).__name__} has no Conv2d to adapt to {in_channels} input channels")


# Each splitter takes a torchvision model and returns (features, pre, fc).
def _split_classifier_seq(m: nn.Module, feats: nn.Module) -> tuple[nn.Module, nn.Module, nn.Linear]:
    head = list(m.classifier)  # [..., Linear]: everything before the last Linear is pre-logits
    return feats, nn.Sequential(*head[:-1]), head[-1]


def _mobilenet_v3(m) -> tuple[nn.Module, nn.Module, nn.Linear]:
    return _split_classifier_seq(m, m.features)


def _efficientnet(m) -> tuple[nn.Module, nn.Module, nn.Linear]:
    return _split_classifier_seq(m, m.features)


def _mnasnet(m) -> tuple[nn.Module, nn.Module, nn.Linear]:
    return _split_classifier_seq(m, m.layers)


def _shufflenet(m) -> tuple[nn.Module, nn.Module, nn.Linear]:
    return nn.Sequential(m.conv1, m.maxpool, m.stage2, m.stage3, m.stage4, m.conv5), nn.Identity(), m.fc


def _regnet(m) -> tuple[nn.Module, nn.Module, nn.Linear]:
    return nn.Sequential(m.stem, m.trunk_output), nn.Identity(), m.fc


def _resnet(m) -> tuple[nn.Module, nn.Module, nn.Linear]:
    feats = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4)
    return feats, nn.Identity(), m.fc


def _squeezenet(m) -> tuple[nn.Module, nn.Module, nn.Linear]:
    c = m.classifier[1].in_channels
    fc = nn.Linear(c, m.classifier[1].out_channels)
    nn.init.normal_(fc.weight, 0, 0.01)
    nn.init.zeros_(fc.bias)
    return m.features, nn.Dropout(0.5), fc


def build_torchvision(num_classes: int, in_channels: int = 3, *, arch: str,
                      split: Callable[[nn.Module], tuple[nn.Module, nn.Module, nn.Linear]]) -> nn.Module:
    # here, not at import: torchvision pulls in torch._dynamo (seconds; benchmarks/RESULTS.md, "select_coldstart")
    import torchvision.models as tvm

    model = getattr(tvm, arch)(weights=None, num_classes=num_classes)
    if in_channels != 3:
        replace_first_conv(model, in_channels)
    return TorchvisionStudent(*split(model))


FAMILIES: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "mobilenet_v3": (_mobilenet_v3, ("mobilenet_v3_small", "mobilenet_v3_large")),
    "shufflenet_v2": (_shufflenet, ("shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5",
                                    "shufflenet_v2_x2_0")),
    "mnasnet": (_mnasnet, ("mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3")),
    "efficientnet": (_efficientnet, ("efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3")),
    "regnet": (_regnet, ("regnet_x_400mf", "regnet_y_400mf", "regnet_x_800mf", "regnet_y_800mf",
                         "regnet_x_1_6gf", "regnet_y_1_6gf")),
    "resnet": (_resnet, ("resnet18", "resnet34", "resnet50")),
    "squeezenet": (_squeezenet, ("squeezenet1_1",)),
}

for _family, (_split, _archs) in FAMILIES.items():
    for _arch in _archs:
        register(StudentSpec(_arch, f"tv_{_family}",
                             build_torchvision, {"arch": _arch, "split": _split}, min_input=LARGE_MIN_INPUT))
