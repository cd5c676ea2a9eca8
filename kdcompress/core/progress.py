"""The one look of every long bar (training, export, validate): a description, a bar that takes what the other
columns leave of the line (an 80-column terminal included), the percentage, the time elapsed, "eta" and the
time remaining, then a short status. On the command's console (stderr), only where it is a terminal: piped
output and --json's stdout never see it.

A stage that does long work takes a `Reporter` (duck-typed: `plan`, `step`, `advance`) and reports units of
work it knows in advance; `SILENT` is the reporter of a caller that shows nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

# what the fixed columns take: "100%" (4), elapsed "0:00:12" (7), "eta" (3), remaining (7), and the six
# one-space gaps between the seven columns
FIXED_COLUMNS = 27
MAX_BAR = 40


class Reporter(Protocol):
    def plan(self, units: int) -> None:
        """Add `units` of work, known in advance, to the total."""

    def step(self, what: str) -> None:
        """Say what runs now (the status column)."""

    def advance(self, units: int = 1) -> None:
        """`units` of the planned work are done."""


class _Silent:
    def plan(self, units: int) -> None:
        pass

    def step(self, what: str) -> None:
        pass

    def advance(self, units: int = 1) -> None:
        pass


SILENT: Reporter = _Silent()


class StepsTo(_Silent):
    """A Reporter that only passes what runs now to `say` (a caller that logs lines rather than drawing a bar,
    e.g. benchmarks/select_adherence.py, as select()'s `report`)."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self._say = say

    def step(self, what: str) -> None:
        self._say(what)


def bar_width(console_width: int, desc: str, status_width: int) -> int:
    """The bar's width: what the line leaves beside the other columns, between 5 and MAX_BAR."""
    return max(5, min(MAX_BAR, console_width - FIXED_COLUMNS - status_width - len(desc)))


def mean_rate_left(elapsed: float | None, completed: float, total: float | None) -> float | None:
    """Seconds left at the task's mean rate so far (elapsed / units done x units left), None before any unit."""
    if not elapsed or not completed or total is None:
        return None
    return max(0.0, elapsed / completed * (total - completed))


def _remaining_column() -> Any:
    """rich's time-remaining column, which estimates from the recent rate, falling back to the task's mean rate
    where rich has no estimate because the total just grew (rich forgets its rate then, and a Bar's total
    grows as work is planned: the teacher cache and the ranking decide some of select's work as it goes)."""
    from rich.progress import TimeRemainingColumn
    from rich.text import Text

    class Remaining(TimeRemainingColumn):
        def render(self, task: Any) -> Any:
            left = None if task.finished or task.time_remaining is not None else mean_rate_left(
                task.elapsed, task.completed, task.total)
            if left is None:
                return super().render(task)
            minutes, seconds = divmod(int(left), 60)
            return Text(f"{minutes // 60:d}:{minutes % 60:02d}:{seconds:02d}", style="progress.remaining")
    return Remaining()


def eta_progress(console: Any, desc: str, status_width: int) -> Any:
    """A rich Progress with the columns every long bar has; disabled where the console is quiet or no
    terminal. Its tasks carry a `status` field (at most `status_width` characters, the caller's to keep)."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"),
                    BarColumn(bar_width=bar_width(console.width, desc, status_width)), TaskProgressColumn(),
                    TimeElapsedColumn(), TextColumn("eta"), _remaining_column(),
                    TextColumn("{task.fields[status]}"), console=console, transient=False,
                    disable=console.quiet or not console.is_terminal)


class Bar:
    """A Reporter drawn as one eta_progress task: the total grows as work is planned; the status is cut to
    its width so the line never wraps; every step and advance is drawn at once."""

    def __init__(self, progress: Any, desc: str, status_width: int) -> None:
        self._progress = progress
        self._width = status_width
        self._task = progress.add_task(desc, total=None, status="")
        self._total = 0

    def plan(self, units: int) -> None:
        self._total += units
        self._progress.update(self._task, total=self._total)

    def step(self, what: str) -> None:
        text = what if len(what) <= self._width else what[:self._width - 1] + "…"
        self._progress.update(self._task, status=text, refresh=True)

    def advance(self, units: int = 1) -> None:
        # drawn now, not at the next tick: a short step still shows (and a test sees every frame)
        self._progress.advance(self._task, units)
        self._progress.refresh()

    def finish(self) -> None:
        """All done: work planned in case it was needed (a confirmation select did not need) counts as done."""
        self._progress.update(self._task, completed=self._total, refresh=True)


@contextmanager
def eta_bar(console: Any, desc: str, status_width: int = 30) -> Iterator[Bar]:
    """A Bar over work its user plans as it goes (module doc), shown while the block runs; on a narrow
    console the status gives up columns before the bar goes below 5."""
    status_width = max(10, min(status_width, console.width - FIXED_COLUMNS - len(desc) - 5))
    progress = eta_progress(console, desc, status_width)
    with progress:
        bar = Bar(progress, desc, status_width)
        yield bar
        bar.finish()
        bar.step("done")
