"""Loss registry. Importing this package registers every built-in loss (one method per module)."""

from . import bickd, ce, dist, dkd, gdkd, ickd, kd, nd, nkd  # noqa: F401  (registration side effect)
from .base import LOSSES, Loss, LossContext, ModelOut, Objective, PrepareContext, warmup_factor

__all__ = ["LOSSES", "Loss", "LossContext", "ModelOut", "Objective", "PrepareContext", "warmup_factor"]
