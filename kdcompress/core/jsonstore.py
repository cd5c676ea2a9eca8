"""A JSON dict on disk that only saves time: the latency cache, the teacher summaries and the FLOPs memo.

Read tolerantly (a missing, broken or non-dict file reads as empty: what it held is measured again) and
saved atomically. A save merges: it re-reads the file and writes what this process put over it, so two
processes sharing the cache (two selects, or the ranks of a torchrun job) keep each other's entries
instead of the last writer's alone. An unwritable file is skipped: it costs time, never a run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import KdError
from .runio import atomic_write_json


class JsonStore:
    """`entries` is what was on disk when read, with this process's puts over it."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self.entries: dict[str, Any] = self._load() if enabled else {}
        self._puts: dict[str, Any] = {}

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def dirty(self) -> bool:
        return bool(self._puts)

    def get_json(self, key: str) -> Any:
        return self.entries.get(key)

    def put_json(self, key: str, value: Any) -> None:
        self.entries[key] = value
        self._puts[key] = value

    def save(self) -> None:
        """Write this process's puts over what the file holds now (nothing to do when there are none)."""
        if not (self.enabled and self._puts):
            return
        merged = {**self._load(), **self._puts}
        try:
            atomic_write_json(self.path, merged)
        except (OSError, KdError):  # an optimisation: an unwritable store is left unwritten
            return
        self.entries = {**merged, **self.entries}
        self._puts = {}
