"""The prior cache's entries and what finds them: the exact map, the prompt-prefix partitions, the
vector index and eviction. Not locked itself: the cache calls it under its lock, so the invariants
(size ≤ K, one entry per exact key, index and entries in step) hold at every release of that lock.
A load fills a new table (``loaded``) that this one then ``adopt``s, so a load that fails part-way
leaves the entries as they were.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from priorcache.cache.eviction import EvictionPolicy
from priorcache.cache.index import make_index
from priorcache.cache.records import CacheEntry
from priorcache.prior.divergence import Audit
from priorcache.prior.interface import Prior


@dataclass
class Match:
    """A planned hit: the matched entry's prior as it was when planned (priors are immutable)."""

    entry_id: int
    version: int
    kind: str  # "exact" | "similar" | "shadow"
    similarity: float
    prior: Prior
    coverage: float
    refresh: bool
    epoch: int  # the table's load generation: ids of an earlier one may name other entries now
    refresh_rate: float  # r in force when the refresh was drawn: an audit stands for 1/r hits


class EntryTable:
    """Entries by id, by exact (prefix hash, state text) and by key vector within a prefix partition."""

    def __init__(
        self, index_kind: str, dim: int, capacity: int, eviction: EvictionPolicy, forget: Callable[[int], None]
    ) -> None:
        """``forget(entry_id)`` is called when an entry goes or starts to stand for another state."""
        self.index_kind, self.dim = index_kind, dim
        self.eviction = eviction
        self.forget = forget
        self.index = make_index(index_kind, dim, capacity)
        self.entries: dict[int, CacheEntry] = {}
        self.exact: dict[tuple[str, str], int] = {}
        self.partition_size: dict[str, int] = {}
        self.prefixes: dict[str, str] = {}  # prefix hash → prefix text, kept for saved caches' readers
        self.next_id = 0
        self.epoch = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self.entries)

    def by_state(self, p_hash: str, state_text: str) -> CacheEntry | None:
        eid = self.exact.get((p_hash, state_text))
        return None if eid is None else self.entries[eid]

    def nearest(self, p_hash: str, emb: np.ndarray) -> tuple[CacheEntry, float] | None:
        """The most similar entry of partition ``p_hash`` and its cosine; None when the partition is empty."""
        if not self.partition_size.get(p_hash):
            return None
        total = len(self.index)
        k = min(total, 16)
        while True:
            ids, sims = self.index.search(emb, k)
            for i, s in zip(ids.tolist(), sims.tolist()):
                entry = self.entries.get(int(i))
                if entry is not None and entry.prefix_hash == p_hash:
                    return entry, float(min(1.0, max(-1.0, s)))
            if k >= total:
                return None
            # Widen until the best same-prefix entry shows up: exact indexes then find it for sure.
            k = min(total, 4 * k)

    def _planned(self, match: Match) -> CacheEntry | None:
        return self.entries.get(match.entry_id) if match.epoch == self.epoch else None

    # --- changes --------------------------------------------------------------------------------
    def apply_hit(self, match: Match, partial: Prior | None, now: int) -> None:
        entry = self._planned(match)
        if entry is None:  # evicted or reloaded meanwhile: the served prior stands, nothing to merge
            return
        entry.hit_count += 1
        entry.last_used_step = max(entry.last_used_step, now)
        if partial is not None and entry.version == match.version:
            entry.prior = entry.prior.merge(partial)  # F7: entries are extended by partial results
            entry.version += 1

    def apply_refresh(
        self,
        match: Match,
        p_hash: str,
        prefix: str,
        state_text: str,
        emb: np.ndarray | None,
        fresh: Prior,
        audit: Audit,
        now: int,
        capacity: int,
    ) -> None:
        entry = self._planned(match)
        if entry is None or entry.version != match.version:
            # Changed or gone while the LLM ran: keep the fresh prior as an ordinary insert.
            if emb is not None:
                self.upsert(p_hash, prefix, state_text, emb, fresh, now, capacity)
            return
        if entry.state_text == state_text:
            # Same state and prompt: values of actions outside today's candidates are still valid.
            entry.prior = entry.prior.merge(fresh)
        else:
            # The entry now stands for the current state: its other values belonged to another one,
            # and so did its own audits.
            self.forget(entry.id)
            other = self.exact.get((p_hash, state_text))
            if other is not None and other != entry.id:
                self.remove(other)
            del self.exact[(entry.prefix_hash, entry.state_text)]
            entry.state_text = state_text
            self.exact[(p_hash, state_text)] = entry.id
            entry.prior = fresh
            if emb is not None:
                entry.key = emb.copy()
                self.index.remove(np.array([entry.id], dtype=np.int64))
                self.index.add(np.array([entry.id], dtype=np.int64), emb[None, :])
        entry.hit_count += 1
        entry.refresh_count += 1
        entry.last_used_step = max(entry.last_used_step, now)
        entry.last_audit = audit
        entry.version += 1

    def upsert(
        self, p_hash: str, prefix: str, state_text: str, emb: np.ndarray, prior: Prior, now: int, capacity: int
    ) -> int:
        """Insert a fresh prior (evicting at ``capacity``), or extend the entry of the same state."""
        eid = self.exact.get((p_hash, state_text))
        if eid is not None:
            # The same state and prompt asked again (another thread, or too few candidates known):
            # extend its prior rather than keep two entries for one state.
            entry = self.entries[eid]
            entry.prior = entry.prior.merge(prior)
            entry.last_used_step = max(entry.last_used_step, now)
            entry.version += 1
            return eid
        while len(self.entries) >= capacity:
            self._evict(now)
        eid = self.next_id
        self.next_id += 1
        self.insert(CacheEntry(eid, p_hash, state_text, emb.copy(), prior, now, now), prefix)
        return eid

    def insert(self, entry: CacheEntry, prefix: str | None) -> None:
        self.entries[entry.id] = entry
        self.exact[(entry.prefix_hash, entry.state_text)] = entry.id
        self.partition_size[entry.prefix_hash] = self.partition_size.get(entry.prefix_hash, 0) + 1
        if prefix is not None:
            self.prefixes.setdefault(entry.prefix_hash, prefix)
        self.index.add(np.array([entry.id], dtype=np.int64), entry.key[None, :])
        self.next_id = max(self.next_id, entry.id + 1)

    def remove(self, eid: int) -> None:
        entry = self.entries.pop(eid)
        self.forget(eid)
        del self.exact[(entry.prefix_hash, entry.state_text)]
        left = self.partition_size[entry.prefix_hash] - 1
        if left:
            self.partition_size[entry.prefix_hash] = left
        else:
            del self.partition_size[entry.prefix_hash]
            self.prefixes.pop(entry.prefix_hash, None)
        self.index.remove(np.array([eid], dtype=np.int64))

    def _evict(self, now: int) -> int:
        victim = self.eviction.victim(self.entries.values(), now)
        self.remove(victim)
        self.evictions += 1
        return victim

    def evict_to(self, capacity: int, now: int) -> list[int]:
        """After K shrank (meta update, warm start, smaller cache loading a bigger save); the evicted ids."""
        evicted = []
        while len(self.entries) > capacity:
            evicted.append(self._evict(now))
        return evicted

    # --- loading (all or nothing: see PriorCache.load_state_dict) -------------------------------
    def loaded(self, entries: list[CacheEntry], prefixes: dict[str, str], clock: int, capacity: int) -> EntryTable:
        """A new table like this one holding validated ``entries``, their steps rebased onto ``clock``
        (ages survive). This table is not touched, and the new one tells no controller what it
        evicts (``forget`` does nothing there): the caller forgets those ids once it commits."""
        table = EntryTable(self.index_kind, self.dim, capacity, self.eviction, lambda eid: None)
        shift = clock - max((e.last_used_step for e in entries), default=clock)
        for e in entries:
            e.created_step += shift
            e.last_used_step += shift
            table.insert(e, prefixes.get(e.prefix_hash))
        return table

    def forget_all(self) -> None:
        """Tell the controller every entry goes (ids of a loaded table may name other states)."""
        for eid in self.entries:
            self.forget(eid)

    def adopt(self, other: EntryTable) -> None:
        """Take over ``other``'s entries and index (from ``loaded``): plain assignments, nothing that can fail.

        A new epoch: matches planned against the previous entries no longer apply. Ids keep growing
        past every id this table gave out, so a new entry never reuses the id of one it forgot."""
        self.index, self.entries, self.exact = other.index, other.entries, other.exact
        self.partition_size, self.prefixes = other.partition_size, other.prefixes
        self.next_id = max(self.next_id, other.next_id)
        self.evictions += other.evictions
        self.epoch += 1

    def check(self, capacity: int) -> None:
        """Invariants, for tests: size ≤ K, one entry per exact key, index in step with the entries."""
        assert len(self.entries) <= capacity
        assert len(self.index) == len(self.entries)
        assert len(self.exact) == len(self.entries)
        for key, eid in self.exact.items():
            e = self.entries[eid]
            assert (e.prefix_hash, e.state_text) == key
        counts: dict[str, int] = {}
        for e in self.entries.values():
            counts[e.prefix_hash] = counts.get(e.prefix_hash, 0) + 1
            assert e.prior.actions
        assert counts == self.partition_size
