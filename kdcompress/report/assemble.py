"""The headers every report.json starts with (schema version, kind, machine) and the data section."""

from __future__ import annotations

import datetime as _dt
from typing import Any

import torch

from .. import __version__
from ..core.splits import DataSplits
from ..core.system import machine_fingerprint


def data_json(spec: str, splits: DataSplits) -> dict[str, Any]:
    return {"spec": spec, "name": splits.name, "classes": list(splits.classes),
            "sizes": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}}


def header(kind: str) -> dict[str, Any]:
    return {"schema_version": 1, "kind": kind, "kdcompress_version": __version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "machine": machine_fingerprint() | {"torch": torch.__version__}}
