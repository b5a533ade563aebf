"""Typed values of config fields, from YAML, the environment (always strings) or flags: each
parser takes the value and the field's path, and a bad value is a ConfigError naming both."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Any


class ConfigError(ValueError):
    """A configuration field is missing or has a bad value."""


def as_int(value: Any, where: str, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = int(value)
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    if not ok or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ConfigError(f"config field '{where}' must be an integer {bound}, got {value!r}")
    return int(value)


def as_float(value: Any, where: str, minimum: float) -> float:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < minimum:
        raise ConfigError(f"config field '{where}' must be a number >= {minimum}, got {value!r}")
    return float(value)


def as_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no",
                                                      "off"):
        return value.lower() in ("1", "true", "yes", "on")
    raise ConfigError(f"config field '{where}' must be true or false, got {value!r}")


def optional_port(value: Any, where: str) -> int | None:
    if value is None or (isinstance(value, str) and value.lower() in ("", "none", "off")):
        return None
    return as_int(value, where, 0, 65535)


def unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.lower() in ("", "none", "off"))


def as_str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"config field '{where}' must be a non-empty string, got {value!r}")
    return value


def as_mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"config field '{where}' must be a mapping, got {value!r}")
    return value


def check_keys(raw: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ConfigError(
            f"config {where} has unknown field(s) {unknown}; allowed: {sorted(allowed)}"
        )
