"""`kdcompress report`: re-render report.md and the plots from report.json."""

from __future__ import annotations

from typing import Any

from ..report import rerender
from . import Outcome, render


def run_report(f: dict[str, Any], console) -> Outcome:
    run = f["run"]
    r = rerender(run)
    root = run if run.is_dir() else run.parent
    return Outcome(r, lambda: render.report_lines({**r, "_root": str(root)}))
