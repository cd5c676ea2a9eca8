"""SIGINT/SIGTERM during training: stop at the next step boundary with a consistent checkpoint.

While `GracefulStop` is active, a signal inside a `deferring()` region (the training loop) only records
the request; the trainer looks at `requested` after each step, writes a checkpoint at that step boundary
and raises `Interrupted`. Outside such a region (the teacher pass of prepare(), say) there is no step to
finish, so the signal raises `Interrupted` at once; every file is written atomically, so nothing is left
half-written either way.

A repeated signal within REPEAT_S of the first is the same event delivered twice (Ctrl-C under torchrun
reaches a worker from the terminal and again from the launcher) and is ignored. A second SIGINT after that
is the user insisting: it abandons the step at once, keeping the previous checkpoint.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from ..core.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)
REPEAT_S = 1.0


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class GracefulStop:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._first_at = 0.0
        self._defer = 0
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> GracefulStop:
        # Python delivers signals to the main thread only; elsewhere (a thread running train()) the default
        # handlers stay and a signal interrupts as it always did.
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._old[s] = signal.getsignal(s)
                signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()

    @contextmanager
    def deferring(self) -> Iterator[None]:
        self._defer += 1
        try:
            yield
        finally:
            self._defer -= 1

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.signum is None:
            self.signum, self._first_at = signum, now
            if not self._defer:
                raise Interrupted(f"interrupted by {signal_name(signum)}; rerun the same command to resume "
                                  "from the last checkpoint", signum)
            return
        if signum == signal.SIGINT and now - self._first_at > REPEAT_S:
            raise Interrupted("interrupted again; stopped at once without a new checkpoint; rerun the same "
                              "command to resume from the last one", signum)
