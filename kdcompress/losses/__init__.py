"""Loss registry. Importing this package registers every built-in loss (one method per module)."""

from . import ce, kd  # noqa: F401  (registration side effect)
from . import ickd, nd  # noqa: F401  (feature-based losses: ND, IC-KD's picd/nicd)
from .base import LOSSES, Loss, LossContext, ModelOut, Objective, PrepareContext, warmup_factor

__all__ = ["LOSSES", "Loss", "LossContext", "ModelOut", "Objective", "PrepareContext", "warmup_factor"]
