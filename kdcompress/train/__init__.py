"""The train stage: the loop (loop.py), the step engine (step.py), augmentation on the device, torchrun/DDP
(distributed.py) and SIGINT/SIGTERM handling (interrupt.py). It trains whatever student and objective the
pipeline hands it; it imports no other stage."""

from .cachechoice import CacheDecision, CacheFacts, decide_cache
from .distributed import SINGLE, Dist
from .distributed import setup as setup_distributed
from .loop import TrainResult, check_resumable, evaluate, train
from .probe import epoch_seconds
from .teacher_cache import check_training

__all__ = ["SINGLE", "CacheDecision", "CacheFacts", "Dist", "TrainResult", "decide_cache", "check_resumable",
           "check_training", "epoch_seconds", "evaluate", "setup_distributed", "train"]
