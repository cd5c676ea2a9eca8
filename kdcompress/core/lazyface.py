"""A package face that imports each name's module only when the name is first asked for (PEP 562): the
runtime face stays free of torch for `profile` and fresh-process draws, and the pipeline face lets a warm
`select` run without importing the training stack."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, face: dict[str, str]) -> Callable[[str], Any]:
    """The module `__getattr__` of `package`: name -> getattr(package.face[name], name)."""

    def __getattr__(name: str) -> Any:
        if name not in face:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{face[name]}"), name)

    return __getattr__
