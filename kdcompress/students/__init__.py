"""The student zoo: a registry of builders `build(num_classes, InputSpec) -> nn.Module`.

Every model follows one interface (timm's): `forward_features(x)` -> feature map, `forward_head(f,
pre_logits=False)` -> logits (or the pooled penultimate embedding with pre_logits=True),
`get_classifier()` -> the final layer, and `embed_dim` (core.types.logits_and_embed uses it). Importing
this package registers every family.
"""

from . import cifar_resnet, mobilenetv2, shufflenetv2, timm_zoo, tiny, torchvision_zoo, vgg, wrn  # noqa: F401  (registration)
from .checkpoint import load_checkpoint, model_from_kdcompress_dict
from .init import initialise
from .registry import STUDENTS, Capacity, StudentSpec, build_student, capacity, register, width_tag

__all__ = ["STUDENTS", "Capacity", "StudentSpec", "build_student", "capacity", "initialise", "load_checkpoint",
           "model_from_kdcompress_dict", "register", "width_tag"]
