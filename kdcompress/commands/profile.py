"""`kdcompress profile DIR`: time the candidate ladder that `select --export-candidates DIR` wrote, on the
machine this runs on (the deployment target), and write DIR/latency.json for `--latency-table`.

Imports only onnxruntime and numpy (through runtime.latencytable): the target needs no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.progress import eta_bar
from ..runtime import profile_dir
from ..core.system import cpu_limit
from . import Outcome, render


def run_profile(f: dict[str, Any], console) -> Outcome:
    directory = Path(f["directory"])
    out = Path(f["out"]) if f["out"] else directory / "latency.json"
    with eta_bar(console, "profile") as bar:
        table = profile_dir(directory, provider=f["provider"], threads=f["threads"], tune=f["tune"],
                            cpu_limit=cpu_limit(), out=out, processes=f["processes"], progress=bar)
    if table["unstable"]:
        key, spread = max(table["unstable"].items(), key=lambda kv: kv[1])
        others = f" ({len(table['unstable']) - 1} other model(s) too)" if len(table["unstable"]) > 1 else ""
        console.print(f"[yellow]warning:[/] {key}'s {table['processes']} processes measured up to {spread:.2f}x apart "
                      f"({table['stat']}){others}: latency on this machine depends on the process or on other "
                      "load; the table keeps the slowest, so leave headroom or profile with more --processes")
    console.print(f"wrote {out}")
    result = {"latency_table": str(out), **table}

    return Outcome(result, lambda: render.profile_table(table))
