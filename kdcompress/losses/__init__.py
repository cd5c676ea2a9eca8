"""Loss registry. Importing this package registers every built-in loss (one method per module)."""

from . import bickd, ce, dist, dkd, gdkd, kd, nkd  # noqa: F401  (registration side effect)
from .base import LOSSES, Loss, LossContext, ModelOut, Objective, warmup_factor

__all__ = ["LOSSES", "Loss", "LossContext", "ModelOut", "Objective", "warmup_factor"]
