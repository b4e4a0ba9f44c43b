"""The prior cache's records: an entry, what a lookup served and cost, and the running counters."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from priorcache.prior.divergence import Audit
from priorcache.prior.interface import Prior


@dataclass
class CacheEntry:
    """One cached prior: its key e(φ(s)) (a unit vector), the state and prompt prefix it was asked
    for, and its bookkeeping (created/last-used step, hit and refresh counts, last F5 audit)."""

    id: int
    prefix_hash: str
    state_text: str
    key: np.ndarray
    prior: Prior
    created_step: int
    last_used_step: int
    hit_count: int = 0
    refresh_count: int = 0
    last_audit: Audit | None = None
    # Bumped whenever the prior or the state change, so a partial result computed outside the lock
    # is merged only into the entry it was computed for.
    version: int = 0

    def copy(self) -> CacheEntry:
        """A copy safe to hand out: the key is copied, the prior is immutable."""
        return replace(self, key=self.key.copy())

    @property
    def scores(self) -> dict[str, float]:
        """The raw F7 score map of a categorical prior (a copy)."""
        return self.prior.score_map  # type: ignore[attr-defined]


@dataclass
class LookupCost:
    """LLM and encoder cost of one lookup, full and partial calls apart; summed into the counters."""

    llm_time_s: float = 0.0
    prompt_tokens: int = 0
    continuation_tokens: int = 0
    partial_llm_time_s: float = 0.0
    partial_prompt_tokens: int = 0
    partial_continuation_tokens: int = 0
    encode_time_s: float = 0.0
    adaptation_time_s: float = 0.0  # shadow audits, meta-optimiser and KL-budget work
    # Wall time of LLM and encoder calls, taken out of the cache's own lookup time (never summed).
    external_wall_s: float = 0.0

    @contextmanager
    def timed(self, *names: str) -> Iterator[None]:
        """Add the block's wall time to each named field."""
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            for name in names:
                setattr(self, name, getattr(self, name) + elapsed)


@dataclass
class PriorLookup:
    """What one lookup served and what it cost.

    ``prior`` is the served prior, on exactly ``candidates``. ``hit``: served without a full LLM call
    (a partial F7 call may still have been made; see ``partial_calls``). ``llm_time_s`` and the token
    counts cover every LLM call of the lookup, full and partial. ``lookup_time_s`` is the cache's own
    work, without LLM and encoder time."""

    candidates: list[str]
    prior: Prior
    kind: str  # "uncached" | "miss" | "exact" | "similar" | "refresh"
    hit: bool
    similarity: float | None
    cost: LookupCost
    lookup_time_s: float
    llm_calls: int = 0
    partial_calls: int = 0
    audit: Audit | None = None
    embedding: np.ndarray | None = None
    coverage: float | None = None  # share of the candidates the matched entry knew
    entry_id: int | None = None
    # The audit this lookup took, as logged (refresh of a hit, or shadow audit of a near-miss).
    audit_record: dict[str, Any] | None = None
    # Set when this lookup closed a meta-optimiser window (adaptive mode): that update's record.
    meta_update: dict[str, Any] | None = None

    @property
    def log_prior(self) -> np.ndarray:
        """log p(a|s) of ``candidates`` in their order."""
        return self.prior.log_prob(self.candidates)

    @property
    def scores(self) -> np.ndarray:
        """The served raw F3 scores of a categorical prior, in ``candidates`` order."""
        return self.prior.scores  # type: ignore[attr-defined]

    @property
    def llm_time_s(self) -> float:
        return self.cost.llm_time_s + self.cost.partial_llm_time_s

    @property
    def prompt_tokens(self) -> int:
        return self.cost.prompt_tokens + self.cost.partial_prompt_tokens

    @property
    def continuation_tokens(self) -> int:
        return self.cost.continuation_tokens + self.cost.partial_continuation_tokens

    @property
    def encode_time_s(self) -> float:
        return self.cost.encode_time_s


@dataclass
class CacheCounters:
    """Counters since the cache was built; ``stats()`` reports them with derived rates."""

    lookups: int = 0
    uncached: int = 0
    exact_hits: int = 0
    similar_hits: int = 0
    misses: int = 0
    refreshes: int = 0
    coverage_rejections: int = 0
    llm_calls: int = 0
    partial_calls: int = 0
    llm_time_s: float = 0.0
    prompt_tokens: int = 0
    continuation_tokens: int = 0
    partial_llm_time_s: float = 0.0
    partial_prompt_tokens: int = 0
    partial_continuation_tokens: int = 0
    partial_actions: int = 0
    floor_filled: int = 0
    audits: int = 0
    epsilon_sum: float = 0.0
    epsilon_max: float = 0.0
    kl_sum: float = 0.0
    kl_max: float = 0.0
    encode_time_s: float = 0.0
    lookup_time_s: float = 0.0
    shadow_audits: int = 0
    adaptation_time_s: float = 0.0

    def add_cost(self, cost: LookupCost) -> None:
        for f in fields(LookupCost):
            if f.name != "external_wall_s":
                setattr(self, f.name, getattr(self, f.name) + getattr(cost, f.name))

    def add_audit(self, audit: Audit) -> None:
        self.audits += 1
        self.epsilon_sum += audit.epsilon
        self.epsilon_max = max(self.epsilon_max, audit.epsilon)
        self.kl_sum += audit.kl
        self.kl_max = max(self.kl_max, audit.kl)

    def stats(self) -> dict[str, Any]:
        """The counters with the rates and means derived from them (``PriorCache.stats``)."""
        hits, n = self.exact_hits + self.similar_hits, self.lookups
        out: dict[str, Any] = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("epsilon_sum", "epsilon_max", "kl_sum", "kl_max")
        }
        out.update(
            {
                "hits": hits,
                "mean_epsilon": self.epsilon_sum / self.audits if self.audits else None,
                "max_epsilon": self.epsilon_max if self.audits else None,
                "mean_kl": self.kl_sum / self.audits if self.audits else None,
                "max_kl": self.kl_max if self.audits else None,
                "hit_rate": hits / n if n else 0.0,
                "query_rate": (self.llm_calls + self.partial_calls) / n if n else 0.0,
                "full_query_rate": self.llm_calls / n if n else 0.0,
            }
        )
        return out
