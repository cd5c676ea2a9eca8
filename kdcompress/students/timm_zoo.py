"""timm's mobile families for large inputs (the larger side above 64 px, as the torchvision families),
built with pretrained=False (random init, nothing is downloaded; `--student-init pretrained` loads cached
weights) and any channel count (timm's in_chans).

timm models already follow the zoo's interface: forward_features, forward_head(f, pre_logits=True),
get_classifier(). `embed_dim` is set to the width of forward_head(pre_logits=True) (timm's
head_hidden_size where the head has a hidden layer, as MobileNetV3's conv_head, else num_features).
Registered names are `timm_` + timm's name. Only families that export with the dynamo exporter and
match in ONNX Runtime are listed (tests/test_students.py checks each; the whole zoo under -m slow).
"""

from __future__ import annotations

from torch import nn

from .registry import StudentSpec, register

LARGE_MIN_INPUT = 65  # as torchvision_zoo.LARGE_MIN_INPUT
PREFIX = "timm_"

TIMM_FAMILIES: dict[str, tuple[str, ...]] = {
    "mobilenetv3": ("mobilenetv3_small_050", "mobilenetv3_small_075", "mobilenetv3_small_100",
                    "mobilenetv3_large_075", "mobilenetv3_large_100"),
    "mobilenetv4": ("mobilenetv4_conv_small", "mobilenetv4_conv_medium"),
    "efficientnet": ("efficientnet_lite0", "efficientnet_b0"),
    "ghostnet": ("ghostnet_050", "ghostnet_100"),
    "lcnet": ("lcnet_050", "lcnet_075", "lcnet_100"),
    # mobilevit_xxs exports with the dynamo exporter at 32 px with ORT parity (max |diff| 6e-8, timm 1.0.31).
    # RepViT exports too, but its classifier is a RepVitClassifier (BN+Linear, fused for deployment), not the
    # one Linear the zoo's interface promises, so it is left out.
    "mobilevit": ("mobilevit_xxs", "mobilevit_xs"),
    "fastvit": ("fastvit_t8",),  # exports at 32 px, max |diff| 5e-10
}


def build_timm(num_classes: int, in_channels: int = 3, *, arch: str) -> nn.Module:
    import timm

    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    model.embed_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
    return model


def timm_name(student: str) -> str | None:
    """The timm model name of a registered timm student, or None for another family."""
    return student[len(PREFIX):] if student.startswith(PREFIX) else None


for _family, _archs in TIMM_FAMILIES.items():
    for _arch in _archs:
        register(StudentSpec(PREFIX + _arch, f"timm_{_family}", build_timm, {"arch": _arch},
                             min_input=LARGE_MIN_INPUT))
