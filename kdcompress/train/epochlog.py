"""What each finished epoch leaves in the run directory besides its checkpoint: RUN/metrics.csv (always) and
RUN/tensorboard/ (train.tensorboard=true)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.runio import atomic_write_bytes

METRICS_CSV = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"


class TensorBoardLog:
    """train.tensorboard=true: each epoch's row (lr, validation accuracy, loss terms, seconds) as scalars in
    RUN/tensorboard/, the writer opened at the first epoch logged and flushed after each. A run that turns it
    on when it resumes (RUN/tensorboard/ absent) logs the epochs before the resume too, from the history."""

    def __init__(self, root: Path):
        self.root, self.writer = root, None

    def log(self, history: list[dict[str, Any]]) -> None:
        """Log the last row of `history` (and, at the writer's first opening in a new directory, the rows
        before it)."""
        rows = history[-1:]
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            fresh = not (self.root / TENSORBOARD_DIR).exists()
            self.writer = SummaryWriter(log_dir=str(self.root / TENSORBOARD_DIR))
            rows = history if fresh else rows
        for row in rows:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, row["epoch"])
        self.writer.flush()


def write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    """The run's per-epoch history as CSV (epoch, lr, validation accuracy, each loss term, seconds), rewritten
    whole and atomically after every epoch, so a resumed run's file is the same as an uninterrupted one's."""
    import csv
    import io

    columns = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(path, buf.getvalue().encode())
