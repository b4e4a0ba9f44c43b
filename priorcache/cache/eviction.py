"""Eviction policies of the prior cache: which entry goes when the cache is full (K entries).

``utility`` (the default, our design) ranks entries by their uses decayed by the age since the last
use; ``lru`` and ``lfu`` are there for comparison. A policy sees copies of nothing: it ranks the live
entries under the cache's lock and returns the victim's id.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

from priorcache.cache.records import CacheEntry
from priorcache.errors import ConfigError


class EvictionPolicy(ABC):
    """Picks the entry to evict at step ``now``."""

    name: str

    def victim(self, entries: Iterable[CacheEntry], now: int) -> int:
        return min(entries, key=lambda e: self.rank(e, now)).id

    @abstractmethod
    def rank(self, entry: CacheEntry, now: int) -> tuple:
        """Lower ranks go first; every rank ends in the id, so ties break the same way every run."""


class UtilityEviction(EvictionPolicy):
    """Utility = (hits + 1)·2^(−age / half-life), age = steps since the last use.

    The insertion counts as one use: with the bare hit count every fresh entry (0 hits) would be the
    next victim while an entry hit once long ago (utility 2^−age, still > 0) would never go."""

    name = "utility"

    def __init__(self, half_life: float) -> None:
        self.half_life = half_life

    def rank(self, entry: CacheEntry, now: int) -> tuple[float, int, int]:
        age = max(0, now - entry.last_used_step)
        return ((entry.hit_count + 1) * 0.5 ** (age / self.half_life), entry.last_used_step, entry.id)


class LRUEviction(EvictionPolicy):
    name = "lru"

    def rank(self, entry: CacheEntry, now: int) -> tuple[int, int]:
        return (entry.last_used_step, entry.id)


class LFUEviction(EvictionPolicy):
    name = "lfu"

    def rank(self, entry: CacheEntry, now: int) -> tuple[int, int, int]:
        return (entry.hit_count, entry.last_used_step, entry.id)


EVICTION_POLICIES = ("utility", "lru", "lfu")


def make_eviction(name: str, utility_half_life: float) -> EvictionPolicy:
    if name == "utility":
        return UtilityEviction(utility_half_life)
    if name == "lru":
        return LRUEviction()
    if name == "lfu":
        return LFUEviction()
    raise ConfigError(f"eviction must be one of {list(EVICTION_POLICIES)}, got {name!r}")
