"""The KdError hierarchy. The CLI turns each into one line on stderr and a distinct exit code."""

from __future__ import annotations


class KdError(Exception):
    """A failure the user can act on: printed as one line, never a traceback."""

    exit_code = 1
    quiet = False  # True: already reported by another process of a distributed run; exit without a line

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(KdError):
    """A flag, preset key or name that does not exist or has the wrong type."""

    exit_code = 2


class InputError(KdError):
    """A file or dataset that is missing, corrupt or inconsistent."""

    exit_code = 3


class BudgetError(KdError):
    """No student candidate meets the latency budget."""

    exit_code = 4


class GateError(KdError):
    """Validation ran, but a gate (agreement, accuracy drop, budget) failed."""

    exit_code = 5


class TrainingError(KdError):
    """Training diverged (NaN/inf loss); the last good checkpoint is kept."""

    exit_code = 6


class EnvironmentProblem(KdError):
    """The machine cannot do what was asked (CUDA without a GPU, a missing provider)."""

    exit_code = 7


class Interrupted(KdError):
    """SIGINT/SIGTERM stopped the run; a consistent checkpoint was kept. Exit code 128 + the signal."""

    exit_code = 130

    def __init__(self, message: str, signum: int = 2):
        super().__init__(message)
        self.exit_code = 128 + signum
