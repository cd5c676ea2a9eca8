"""Typed building of frozen dataclasses from untyped values (TOML tables, `--set` strings, CLI lists).

Every problem is a UsageError naming the key as the user spells it (`train.lr`, `kd.T`, `--mean`).
"""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import fields
from typing import Any

from .errors import UsageError
from .registry import did_you_mean

# --------------------------------------------------------------------------------------------- typing


def coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        for a in args:
            try:
                return coerce(a, value, key)
            except UsageError:
                continue
        raise UsageError(f"{key}={value!r} has the wrong type (expected {tp})")
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{key}={value!r} must be a list")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(coerce(inner, v, key) for v in value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{key}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise UsageError(f"{key}={value!r} must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{key}={value!r} must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UsageError(f"{key}={value!r} must be a string")
        return value
    return value


def build_dataclass(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """cls(**values) with unknown keys and wrong types reported as `prefix.key` (the --set spelling)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls) if f.init]
    kwargs = {}
    for k, v in values.items():
        if k not in names:
            raise UsageError(f"unknown key '{prefix}.{k}'{did_you_mean(k, names)}; {prefix} has: {', '.join(names)}")
        kwargs[k] = coerce(hints[k], v, f"{prefix}.{k}")
    try:
        return cls(**kwargs)
    except UsageError:
        raise
    except (ValueError, TypeError) as e:
        raise UsageError(f"{prefix}: {e}") from None


# --------------------------------------------------------------------------------------------- --set


def parse_value(text: str) -> Any:
    """A --set value: TOML-like literals (true/false, numbers, [lists]) or a bare string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    if text.strip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise UsageError(f"--set value {text!r} is not a valid list") from None
    return text


def parse_floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    """`--mean 0.485,0.456,0.406` -> a tuple of finite floats (None passes through)."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{flag} must be comma-separated numbers, got '{text}'") from None
    if not values:
        raise UsageError(f"{flag} must be comma-separated numbers, got '{text}'")
    if not all(math.isfinite(v) for v in values):
        raise UsageError(f"{flag} values must be finite numbers, got '{text}'")
    return values
