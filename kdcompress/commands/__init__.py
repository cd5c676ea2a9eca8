"""The subcommands. Each is `run(flags, console) -> Outcome`: it turns the flags into typed options, makes
one call (to the pipeline where stages are composed; to the one stage a command uses otherwise), and returns
the JSON-able result plus how to show it. cli.py only parses flags and looks the command up in COMMANDS; it
never imports a stage itself (so `--help` stays instant). Order: cli -> commands -> pipeline -> stages."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Outcome:
    """What a command hands back: `result` (printed by --json, strict JSON), `show` (the human view on
    stdout) and `check` (raises the documented error after the result was printed, e.g. a failed gate)."""

    result: dict[str, Any] | None
    show: Callable[[], None] | None = None
    check: Callable[[], None] | None = field(default=None)

    def __post_init__(self) -> None:
        # every --json output is one JSON object (a pipeline reads each the same way); None: a silent rank
        if self.result is not None and not isinstance(self.result, dict):
            raise TypeError(f"a command's result must be a dict for --json, got {type(self.result).__name__}")


# command name -> "module:function" under kdcompress.commands
COMMANDS = {
    "distill": "distill:run_distill",
    "demo": "distill:run_demo",
    "teacher train": "distill:run_teacher_train",
    "export": "export:run_export",
    "validate": "validate:run_validate",
    "report": "report:run_report",
    "select": "select:run_select_command",
    "profile": "profile:run_profile",
    "teacher inspect": "inspect:run_inspect",
    "doctor": "doctor:run_doctor",
    "presets list": "presets:run_list",
    "presets show": "presets:run_show",
    "predict": "predict:run_predict",
    "students list": "students:run_list",
}


def resolve(name: str) -> Callable[..., Outcome]:
    module, _, func = COMMANDS[name].partition(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), func)
