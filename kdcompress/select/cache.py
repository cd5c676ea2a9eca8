"""The latency cache of select: measured latencies (and, in capacity.json beside it, capacities) on disk,
keyed by what changes them: machine fingerprint, provider, ORT settings, input shape, batch, candidate."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from ..core.config import RuntimeConfig
from ..core.jsonstore import JsonStore
from ..runtime import LatencyStats, SessionSettings
from ..core.spec import InputSpec
from ..core.system import cache_root, machine_fingerprint


def cache_path() -> Path:
    return cache_root() / "latency.json"


class LatencyCache(JsonStore):
    """Measured latencies on disk (core.jsonstore), keyed by what changes them. A broken or read-only cache
    only costs time: it is re-measured or left unwritten, never trusted half-read."""

    def __init__(self, path: Path | None = None, enabled: bool = True):
        super().__init__(path or cache_path(), enabled)
        self.fingerprint = machine_fingerprint()

    def key(self, name: str, model, spec: InputSpec, num_classes: int, runtime: RuntimeConfig, batch: int,
            precision: str = "fp32") -> str:
        raw = json.dumps([name, repr(model), list(spec.shape), num_classes, runtime.provider, runtime.threads or 1,
                          batch, self.fingerprint] + ([] if precision == "fp32" else [precision]),
                         sort_keys=True, default=str)
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    def get(self, key: str) -> LatencyStats | None:
        e = self.entries.get(key)
        if not isinstance(e, dict):
            return None
        try:
            return LatencyStats(**{k: v for k, v in e.items() if k not in ("confirmed", "settings", "graph", "draws")})
        except TypeError:
            return None

    def settings(self, key: str) -> SessionSettings | None:
        e = self.entries.get(key)
        try:
            return SessionSettings.from_json(e["settings"]) if isinstance(e, dict) and e.get("settings") else None
        except Exception:
            return None

    def confirmed(self, key: str) -> bool:
        e = self.entries.get(key)
        return isinstance(e, dict) and e.get("confirmed") is True and self.get(key) is not None

    def draws(self, key: str) -> list[LatencyStats]:
        """The confirmation's measurements of a confirmed entry (this process first, then fresh ones), so a
        later confirmation at another budget only adds draws; [] for an entry confirmed before they were
        kept (it is confirmed again)."""
        e = self.entries.get(key)
        try:
            return [LatencyStats(**d) for d in e["draws"]] if isinstance(e, dict) and e.get("confirmed") is True else []
        except (KeyError, TypeError):
            return []

    def graph(self, key: str) -> str:
        """Which export the entry was measured on; entries from before screening existed were "ship"."""
        e = self.entries.get(key)
        return str(e.get("graph", "ship")) if isinstance(e, dict) else "ship"

    def put(self, key: str, stats: LatencyStats, confirmed: bool = False,
            settings: SessionSettings | None = None, graph: str = "ship",
            draws: list[LatencyStats] | None = None) -> None:
        self.put_json(key, {**asdict(stats), "confirmed": confirmed, "graph": graph,
                            **({"settings": settings.to_json()} if settings else {}),
                            **({"draws": [asdict(d) for d in draws]} if draws else {})})
