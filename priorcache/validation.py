"""Checks of plain values shared by every layer: numbers, integers, config mappings and run seeds.

It sits at the package root, below envs/ and cache/, so that every layer uses one definition.
"""

from __future__ import annotations

import math
from collections import Counter
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


#: The most seeds one run or benchmark takes: each seed trains its own agent, so more is a typo
#: (``0-1000000``), and the list is written into config.json.
MAX_SEEDS = 1000
#: The largest seed. Seeds reach ``torch.manual_seed`` (64-bit), ``np.random.default_rng`` and
#: gymnasium's ``reset(seed=...)`` (non-negative), and ``episode_seed`` multiplies them by 100,003;
#: 2**31 - 1 keeps every one of those, and any 32-bit consumer, in range.
MAX_SEED = 2**31 - 1


def check_seeds(seeds: Any) -> list[int]:
    """``seeds`` as a list of plain ints; a ConfigError unless it is a non-empty list of at most
    ``MAX_SEEDS`` distinct integers in [0, ``MAX_SEED``] (a repeated seed would replay the same agent
    and be recorded twice under one name)."""
    if isinstance(seeds, (str, bytes, Mapping)) or not hasattr(seeds, "__len__"):
        raise ConfigError(f"seeds must be a list of integers, got {type(seeds).__name__} {seeds!r:.80}")
    # The count first: a huge list is refused before it is scanned.
    if len(seeds) > MAX_SEEDS:
        raise ConfigError(f"at most {MAX_SEEDS} seeds per run, got {len(seeds)}")
    if len(seeds) == 0:
        raise ConfigError("at least one seed is needed")
    bad = [s for s in seeds if not is_int(s) or not 0 <= s <= MAX_SEED]
    if bad:
        raise ConfigError(f"seeds must be integers in [0, {MAX_SEED}], got {bad[:5]!r:.200}")
    counts = Counter(int(s) for s in seeds)
    repeated = sorted(s for s, n in counts.items() if n > 1)
    if repeated:
        raise ConfigError(f"seed(s) {repeated[:20]} given more than once; each seed must be distinct")
    return [int(s) for s in seeds]
