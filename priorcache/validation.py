"""Checks of plain values shared by every layer: numbers, integers and config mappings.

It sits at the package root, below envs/ and cache/, so that every layer uses one definition.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

import numpy as np

from priorcache.errors import ConfigError

T = TypeVar("T")


def is_number(x: Any) -> bool:
    """A real number; bools are not (``True`` as a threshold is a typo, not 1.0)."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def config_from_dict(cls: type[T], data: Mapping[str, Any], what: str) -> T:
    """``cls(**data)``, refusing keys that are not parameters: a typo must not be silently ignored."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a {what} config must be a mapping, got {type(data).__name__}")
    known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ConfigError(f"unknown {what} config key(s) {unknown}; known keys are {known}")
    return cls(**dict(data))


def is_json_int(x: Any) -> bool:
    """An integer as JSON gives it back (bools are not)."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_json_number(x: Any) -> bool:
    """A finite JSON number (bools are not)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
