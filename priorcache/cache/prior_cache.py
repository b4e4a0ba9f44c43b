"""The prior cache (SPEC §4): serves LLM action priors for similar states instead of asking the LLM.

An entry holds the raw per-action scores ℓ of one state (F7: a map action text → score, so entries
can be extended), its key vector e(φ(s)), the state text, the prompt prefix it was scored under,
and its bookkeeping (created/last-used step, hit count, refresh count, last F5 audit).

Lookup (our design where the paper is silent):
1. ``mode == "none"``: a full LLM call every time, nothing stored (the uncached reference).
2. Exact fast path: the same prompt prefix and the same state text.
3. Nearest neighbour by cosine among the entries *of the same prompt prefix* (a prior scored
   under one goal must never be served for another). A hit needs ``sim ≥ δ`` (F6 turns δ into a
   bound on ε) and candidate coverage ``≥ min_coverage`` (F7: serving an entry that knows few of
   the current candidates gives KL of nats, not hundredths).
4. On a hit, with probability r, refresh: a full call anyway, the fresh prior is served, the entry
   replaced, and F5 measured between the prior that would have been served and the fresh one.
   In the ``adaptive`` and ``kl-budget`` modes a miss whose nearest entry lay just under δ is
   audited too ("shadow" audit): the LLM was called anyway, so what that entry would have served is
   measured against the fresh prior for free. These audits are what lets δ move down on evidence.
5. Otherwise F7 completes the served prior: known actions keep their scores, unknown candidates are
   scored in one partial LLM call (or given the entry's floor score), absent actions are dropped,
   then F3 normalises. Partial calls are counted as LLM queries of their own kind.
6. A miss makes a full call and inserts (evicting at capacity by utility, LRU or LFU).

K, δ and r are live values (``params()``): fixed in ``static``; moved by the meta-optimiser of
:mod:`priorcache.cache.meta` in ``adaptive``; δ set by :mod:`priorcache.cache.kl_budget` (globally
or per entry) in ``kl-budget``, with K and r as configured.

LLM and encoder calls run outside the lock; everything that reads or changes the entries runs
inside it, so lookups from several threads are safe and the invariants (size ≤ K, one entry per
exact key, index and entries in step) hold at every release of the lock.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import numpy as np

from priorcache.cache.index import make_index
from priorcache.cache.kl_audit import Audit, audit_prior
from priorcache.cache.kl_budget import KLBudgetConfig, KLBudgetController
from priorcache.cache.meta import CacheParams, MetaConfig, MetaOptimiser, check_theta
from priorcache.cache.validation import config_from_dict, is_int, is_number
from priorcache.errors import BackendError, ConfigError
from priorcache.prior.action_prior import PriorConfig, check_candidates, check_scores, log_prior
from priorcache.prior.base import LLMBackend, Prompt

if TYPE_CHECKING:  # the encoder module is another engineer's; only its protocol is needed here
    from priorcache.cache.encoder import Encoder

MODES = ("none", "static", "adaptive", "kl-budget")
EVICTION_POLICIES = ("utility", "lru", "lfu")
UNKNOWN_CANDIDATE_POLICIES = ("partial", "floor")

# How many audits ``audit_log`` keeps: enough for a meta-optimiser window, bounded memory.
AUDIT_LOG_SIZE = 4096


@dataclass(frozen=True)
class CacheConfig:
    """Parameters of the prior cache; every value is checked on construction."""

    mode: str = "static"
    # K: a TextWorld/ALFWorld run visits hundreds to a few thousand distinct state texts; 2048 keys
    # of 384 float32 are 3 MB and an exact search over them takes well under a millisecond.
    capacity: int = 2048
    # δ for MiniLM cosine on room descriptions: near-duplicates score > 0.95, different rooms of one
    # game 0.6–0.85. 0.92 sits above the different-room band with margin and still catches
    # near-duplicates (a changed item or count); F6: ‖e(s) − e(s')‖ ≤ √(2·0.08) ≈ 0.4.
    similarity_threshold: float = 0.92
    # r: 5 % of hits become audits, an unbiased F5 sample at a query-rate cost of ≤ 0.05.
    refresh_rate: float = 0.05
    eviction: str = "utility"
    # A few episodes (TextWorld episodes run 50–100 steps): an entry unused for that long has its
    # hit count halved, so priors of rooms no longer visited make way.
    utility_half_life: float = 500.0
    unknown_candidates: str = "partial"
    # Below half the candidates known, a partial call costs about as much as a full one (the prompt
    # dominates, F9) while the served ranking is mostly another state's: count it as a miss.
    min_coverage: float = 0.5
    # "numpy" is exact; an ANN kind ("auto"/"hnsw") is only worth it for K in the tens of thousands.
    index: str = "auto"
    # Seed of the refresh draws, so a run's sequence of audits is reproducible; None: OS entropy.
    seed: Optional[int] = 0
    # Used by mode "adaptive" only: the meta-optimiser (K, δ, r above are its starting point).
    meta: MetaConfig = field(default_factory=MetaConfig)
    # Used by mode "kl-budget" only: target KL and confidence (δ above is not used; K and r are).
    kl_budget: KLBudgetConfig = field(default_factory=KLBudgetConfig)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown cache mode {self.mode!r}; choose one of {list(MODES)}")
        if not is_int(self.capacity) or self.capacity < 1:
            raise ConfigError(f"capacity K must be an integer ≥ 1, got {self.capacity!r}")
        if not is_number(self.similarity_threshold) or not -1.0 <= self.similarity_threshold <= 1.0:
            raise ConfigError(f"similarity_threshold δ must be a number in [-1, 1], got {self.similarity_threshold!r}")
        if not is_number(self.refresh_rate) or not 0.0 <= self.refresh_rate <= 1.0:
            raise ConfigError(f"refresh_rate r must be a number in [0, 1], got {self.refresh_rate!r}")
        if self.eviction not in EVICTION_POLICIES:
            raise ConfigError(f"eviction must be one of {list(EVICTION_POLICIES)}, got {self.eviction!r}")
        if (not is_number(self.utility_half_life) or not math.isfinite(self.utility_half_life)
                or self.utility_half_life <= 0):
            raise ConfigError(f"utility_half_life must be a finite number of steps > 0, got {self.utility_half_life!r}")
        if self.unknown_candidates not in UNKNOWN_CANDIDATE_POLICIES:
            raise ConfigError(f"unknown_candidates must be one of {list(UNKNOWN_CANDIDATE_POLICIES)}, "
                              f"got {self.unknown_candidates!r}")
        if not is_number(self.min_coverage) or not 0.0 <= self.min_coverage <= 1.0:
            raise ConfigError(f"min_coverage must be a fraction in [0, 1], got {self.min_coverage!r}")
        if not isinstance(self.index, str) or not self.index:
            raise ConfigError(f"index must be an index kind name such as 'numpy', got {self.index!r}")
        if self.seed is not None and (not is_int(self.seed) or self.seed < 0):
            raise ConfigError(f"seed must be an integer ≥ 0 or None, got {self.seed!r}")
        if isinstance(self.meta, Mapping):
            object.__setattr__(self, "meta", MetaConfig.from_dict(self.meta))
        if isinstance(self.kl_budget, Mapping):
            object.__setattr__(self, "kl_budget", KLBudgetConfig.from_dict(self.kl_budget))
        if not isinstance(self.meta, MetaConfig):
            raise ConfigError(f"meta must be a MetaConfig or a mapping, got {type(self.meta).__name__}")
        if not isinstance(self.kl_budget, KLBudgetConfig):
            raise ConfigError(f"kl_budget must be a KLBudgetConfig or a mapping, got {type(self.kl_budget).__name__}")
        if self.mode == "adaptive":
            (k_lo, k_hi), (d_lo, d_hi), (r_lo, r_hi) = (self.meta.capacity_bounds, self.meta.threshold_bounds,
                                                        self.meta.refresh_bounds)
            if not (k_lo <= self.capacity <= k_hi and d_lo <= self.similarity_threshold <= d_hi
                    and r_lo <= self.refresh_rate <= r_hi):
                raise ConfigError(
                    f"adaptive mode starts from K={self.capacity}, δ={self.similarity_threshold}, "
                    f"r={self.refresh_rate}, which must lie inside the meta bounds K {self.meta.capacity_bounds}, "
                    f"δ {self.meta.threshold_bounds}, r {self.meta.refresh_bounds}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CacheConfig":
        """Build from a mapping, refusing keys that are not parameters (a typo must not be ignored)."""
        return config_from_dict(cls, data, "cache")


@dataclass
class CacheEntry:
    """One cached prior (SPEC §4). ``scores`` is F7's raw map action → ℓ; ``key`` a unit vector."""

    id: int
    prefix_hash: str
    state_text: str
    key: np.ndarray
    scores: dict[str, float]
    created_step: int
    last_used_step: int
    hit_count: int = 0
    refresh_count: int = 0
    last_audit: Optional[Audit] = None
    # Bumped whenever the scores or the state change, so a partial result computed outside the lock
    # is merged only into the entry it was computed for.
    version: int = 0

    def copy(self) -> "CacheEntry":
        return CacheEntry(self.id, self.prefix_hash, self.state_text, self.key.copy(), dict(self.scores),
                          self.created_step, self.last_used_step, self.hit_count, self.refresh_count,
                          self.last_audit, self.version)


@dataclass
class PriorLookup:
    """What one lookup served and what it cost.

    ``hit``: served without a full LLM call (a partial F7 call may still have been made; see
    ``partial_calls``). ``llm_time_s`` and the token counts cover every LLM call of the lookup, full
    and partial. ``lookup_time_s`` is the cache's own work, without LLM and encoder time."""

    candidates: list[str]
    scores: np.ndarray
    log_prior: np.ndarray
    kind: str  # "uncached" | "miss" | "exact" | "similar" | "refresh"
    hit: bool
    similarity: Optional[float]
    llm_calls: int
    partial_calls: int
    llm_time_s: float
    prompt_tokens: int
    continuation_tokens: int
    audit: Optional[Audit]
    embedding: Optional[np.ndarray]
    encode_time_s: float
    lookup_time_s: float
    coverage: Optional[float] = None  # share of the candidates the matched entry knew
    entry_id: Optional[int] = None
    # The audit this lookup took, as logged (refresh of a hit, or shadow audit of a near-miss).
    audit_record: Optional[dict[str, Any]] = None
    # Set when this lookup closed a meta-optimiser window (adaptive mode): that update's record.
    meta_update: Optional[dict[str, Any]] = None


def prefix_hash(prefix: str) -> str:
    """The partition key of a prompt prefix (sha256, hex): entries never cross partitions."""
    return hashlib.sha256(prefix.encode("utf-8")).hexdigest()


@dataclass
class _Cost:
    """LLM and encoder cost of one lookup, split by call kind."""

    llm_time_s: float = 0.0
    prompt_tokens: int = 0
    continuation_tokens: int = 0
    partial_time_s: float = 0.0
    partial_prompt_tokens: int = 0
    partial_continuation_tokens: int = 0
    encode_time_s: float = 0.0
    external_wall_s: float = 0.0  # measured wall time of LLM and encoder calls, excluded from lookup time
    adaptation_time_s: float = 0.0  # shadow audits, meta-optimiser and KL-budget work


@dataclass
class _Match:
    """A planned hit: a snapshot of the matched entry, taken under the lock."""

    entry_id: int
    version: int
    kind: str  # "exact" | "similar"
    similarity: float
    known: dict[str, float]  # the entry's scores for the current candidates
    floor: float  # the entry's lowest score, F7's cheap fill for unknown candidates
    coverage: float
    refresh: bool
    epoch: int  # the cache's load generation: ids of an earlier one may name other entries now
    refresh_rate: float  # r in force when the refresh was drawn: an audit stands for 1/r hits


@dataclass
class _Nearest:
    """What the similarity search found for one lookup."""

    match: Optional[_Match]  # the hit, when sim ≥ δ and the entry covers enough candidates
    similarity: Optional[float]  # of the nearest same-prompt entry; None when the partition is empty
    servable: bool  # that entry covers enough candidates to be served at some δ
    rejected_for_coverage: bool  # sim ≥ δ, but too few candidates known
    shadow: Optional[_Match]  # a near-miss (floor ≤ sim < δ) to audit for free on the miss's LLM call


@dataclass
class _Counters:
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
    partial_time_s: float = 0.0
    partial_prompt_tokens: int = 0
    partial_continuation_tokens: int = 0
    partial_actions: int = 0
    floor_filled: int = 0
    evictions: int = 0
    audits: int = 0
    epsilon_sum: float = 0.0
    epsilon_max: float = 0.0
    kl_sum: float = 0.0
    kl_max: float = 0.0
    encode_time_s: float = 0.0
    lookup_time_s: float = 0.0
    shadow_audits: int = 0
    adaptation_time_s: float = 0.0  # meta-optimiser / KL-budget work and shadow audits


class PriorCache:
    """Serves F3 priors for states, from the cache when a similar state was scored before (SPEC §4)."""

    def __init__(
        self,
        config: CacheConfig | Mapping[str, Any],
        encoder: "Encoder",
        backend: LLMBackend,
        prior_config: PriorConfig = PriorConfig(),
    ) -> None:
        if isinstance(config, Mapping):
            config = CacheConfig.from_dict(config)
        if not isinstance(config, CacheConfig):
            raise ConfigError(f"config must be a CacheConfig or a mapping, got {type(config).__name__}")
        if not isinstance(prior_config, PriorConfig):
            raise ConfigError(f"prior_config must be a PriorConfig, got {type(prior_config).__name__}")
        dim = getattr(encoder, "dim", None)
        if not is_int(dim) or dim < 1:
            raise ConfigError(f"the encoder must have an integer dim ≥ 1, got {dim!r}")
        self.config = config
        self.encoder = encoder
        self.backend = backend
        self.prior_config = prior_config
        self.dim = int(dim)
        self._lock = threading.RLock()
        self._save_lock = threading.Lock()  # one save at a time per cache (see store.py)
        self._params = CacheParams(config.capacity, float(config.similarity_threshold), float(config.refresh_rate))
        self._meta: Optional[MetaOptimiser] = None
        self._kl_budget: Optional[KLBudgetController] = None
        self._shadow_floor: Optional[float] = None  # misses at similarity ≥ this get shadow audits
        if config.mode == "adaptive":
            self._meta = MetaOptimiser(config.meta, self._params, seed=config.seed)
            self._params = self._meta.params
            self._shadow_floor = config.meta.threshold_bounds[0]
        elif config.mode == "kl-budget":
            self._kl_budget = KLBudgetController(config.kl_budget)
            self._params.similarity_threshold = self._kl_budget.threshold()
            self._shadow_floor = config.kl_budget.min_threshold
        self._meta_log: deque[dict[str, Any]] = deque(maxlen=AUDIT_LOG_SIZE)
        self._index = make_index(config.index, self.dim, config.capacity)
        self._entries: dict[int, CacheEntry] = {}
        self._exact: dict[tuple[str, str], int] = {}
        self._partition_size: dict[str, int] = {}
        self._prefixes: dict[str, str] = {}  # prefix hash → prefix text, kept for saved caches' readers
        self._next_id = 0
        self._epoch = 0
        self._clock = 0
        self._rng = np.random.default_rng(config.seed)
        self._counters = _Counters()
        self._audit_log: deque[dict[str, Any]] = deque(maxlen=AUDIT_LOG_SIZE)

    # --- public API -------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def encoder_name(self) -> str:
        return str(getattr(self.encoder, "name", type(self.encoder).__name__))

    @property
    def backend_name(self) -> str:
        return str(getattr(self.backend, "name", type(self.backend).__name__))

    def lookup(
        self,
        state_text: str,
        prompt: Prompt,
        candidates: Sequence[str],
        q_values: Optional[np.ndarray] = None,
        alpha: float = 1.0,
        embedding: Optional[np.ndarray] = None,
        step: Optional[int] = None,
    ) -> PriorLookup:
        """The prior for ``candidates`` in the state ``state_text`` asked with ``prompt``.

        ``q_values``/``alpha`` are only used by refresh audits (F5 is measured on the agent's own
        posterior); ``embedding`` is e(state_text) when the caller already has it; ``step`` is the
        clock for recency and utility (an internal lookup counter when None)."""
        start = time.perf_counter()
        if not isinstance(state_text, str):
            raise ConfigError(f"state_text must be a string, got {type(state_text).__name__}")
        if not isinstance(getattr(prompt, "prefix", None), str):
            raise ConfigError("prompt must be a Prompt with a string prefix")
        cands = check_candidates(candidates)
        q = self._check_q(q_values, len(cands), alpha)
        emb = self._check_embedding(embedding) if embedding is not None else None
        if step is not None and (not is_int(step) or step < 0):
            raise ConfigError(f"step must be an integer ≥ 0 or None, got {step!r}")
        cost = _Cost()

        if self.config.mode == "none":
            fresh = self._call_backend(prompt, cands, cost, partial=False)
            with self._lock:
                self._tick(step)
                c = self._counters
                c.uncached += 1
                self._count_common(cost, start, llm_calls=1, partial_calls=0)
            return self._result(cands, fresh, "uncached", False, None, 1, 0, cost, None, emb, start)

        p_hash = prefix_hash(prompt.prefix)
        with self._lock:
            now = self._tick(step)
            evictions_before = self._counters.evictions
            match = self._plan_exact(p_hash, state_text, cands)
        near = _Nearest(match, 1.0, True, False, None) if match is not None else None
        if near is None:
            if emb is None:
                emb = self._encode(state_text, cost)
            with self._lock:
                near = self._plan_similar(p_hash, emb, cands)
        match = near.match

        if match is None:
            fresh = self._call_backend(prompt, cands, cost, partial=False)
            fresh_map = dict(zip(cands, fresh.tolist()))
            shadow_audit = None
            if near.shadow is not None:  # free audit: what the near-miss entry would have served
                t = time.perf_counter()
                shadow_audit = audit_prior(self._would_serve(near.shadow, cands, fresh_map), fresh, q, alpha,
                                           self.prior_config)
                cost.adaptation_time_s += time.perf_counter() - t
            with self._lock:
                eid = self._upsert(p_hash, prompt.prefix, state_text, emb, fresh_map, now)
                c = self._counters
                c.misses += 1
                c.coverage_rejections += int(near.rejected_for_coverage)
                record = None
                if shadow_audit is not None:
                    record = self._log_audit(now, near.shadow, shadow_audit, served=False, cost=cost)
                update = self._adapt(near, cost, evictions_before, now, hit=False, full_call=True, partial_call=False)
                self._count_common(cost, start, llm_calls=1, partial_calls=0)
            return self._result(cands, fresh, "miss", False, near.similarity, 1, 0, cost, None, emb, start,
                                entry_id=eid, audit_record=record, meta_update=update)

        if match.refresh:
            fresh = self._call_backend(prompt, cands, cost, partial=False)
            fresh_map = dict(zip(cands, fresh.tolist()))
            audit = audit_prior(self._would_serve(match, cands, fresh_map), fresh, q, alpha, self.prior_config)
            with self._lock:
                self._apply_refresh(match, p_hash, prompt.prefix, state_text, emb, fresh_map, audit, now)
                c = self._counters
                c.refreshes += 1
                c.audits += 1
                c.epsilon_sum += audit.epsilon
                c.epsilon_max = max(c.epsilon_max, audit.epsilon)
                c.kl_sum += audit.kl
                c.kl_max = max(c.kl_max, audit.kl)
                record = self._log_audit(now, match, audit, served=True, cost=cost)
                update = self._adapt(near, cost, evictions_before, now, hit=False, full_call=True, partial_call=False)
                self._count_common(cost, start, llm_calls=1, partial_calls=0)
            return self._result(cands, fresh, "refresh", False, match.similarity, 1, 0, cost, audit, emb, start,
                                coverage=match.coverage, entry_id=match.entry_id, audit_record=record,
                                meta_update=update)

        # A hit: F7 completion of the candidates the entry does not know.
        unknown = [a for a in cands if a not in match.known]
        partial_map: dict[str, float] = {}
        if unknown and self.config.unknown_candidates == "partial":
            partial_map = dict(zip(unknown, self._call_backend(prompt, unknown, cost, partial=True).tolist()))
        served = np.array([match.known[a] if a in match.known else partial_map.get(a, match.floor) for a in cands])
        partial_calls = int(bool(partial_map))
        with self._lock:
            self._apply_hit(match, partial_map, now)
            c = self._counters
            if match.kind == "exact":
                c.exact_hits += 1
            else:
                c.similar_hits += 1
            c.partial_actions += len(partial_map)
            c.floor_filled += len(unknown) - len(partial_map)
            update = self._adapt(near, cost, evictions_before, now, hit=True, full_call=False,
                                 partial_call=bool(partial_calls))
            self._count_common(cost, start, llm_calls=0, partial_calls=partial_calls)
        return self._result(cands, served, match.kind, True, match.similarity, 0, partial_calls, cost, None, emb,
                            start, coverage=match.coverage, entry_id=match.entry_id, meta_update=update)

    def params(self) -> dict[str, Any]:
        """The live K, δ and r (in ``kl-budget`` mode with per-entry thresholds, δ is the global one)."""
        with self._lock:
            return self._params.to_dict()

    @property
    def learns_from_outcomes(self) -> bool:
        """Whether ``observe_reward`` / ``observe_td`` are used (adaptive mode); an agent skips the work otherwise."""
        return self._meta is not None

    def observe_reward(self, reward: float) -> None:
        """The agent's reward for its last step: the return term of the meta-optimiser (adaptive mode)."""
        if self._meta is None:
            return
        if not (is_number(reward) and math.isfinite(reward)):
            raise ConfigError(f"reward must be a finite number, got {reward!r}")
        with self._lock:
            t = time.perf_counter()
            self._meta.record_reward(float(reward))
            self._counters.adaptation_time_s += time.perf_counter() - t

    def observe_td(self, hit: bool, td_sum: float, count: int) -> None:
        """Summed |TD error| of ``count`` replayed transitions that acted on a cached (``hit``) or a fresh
        prior: the meta-optimiser prices KL higher when cached priors train worse (adaptive mode)."""
        if self._meta is None or count == 0:
            return
        if not (is_number(td_sum) and math.isfinite(td_sum) and td_sum >= 0) or not is_int(count) or count < 0:
            raise ConfigError(f"observe_td needs a finite td_sum ≥ 0 and an integer count ≥ 0, got {td_sum!r}, {count!r}")
        with self._lock:
            t = time.perf_counter()
            self._meta.record_td(hit, float(td_sum), int(count))
            self._counters.adaptation_time_s += time.perf_counter() - t

    def meta_log(self) -> list[dict[str, Any]]:
        """The meta-optimiser's window records (adaptive mode), oldest first."""
        with self._lock:
            return [dict(u) for u in self._meta_log]

    def stats(self) -> dict[str, Any]:
        """Counters since construction. ``hit_rate`` = hits / lookups (a hit makes no full LLM call);
        ``query_rate`` = lookups that asked the LLM anything (full or partial) / lookups;
        ``full_query_rate`` counts full calls only."""
        with self._lock:
            c = self._counters
            hits = c.exact_hits + c.similar_hits
            n = c.lookups
            return {
                "mode": self.config.mode,
                "lookups": n,
                "hits": hits,
                "exact_hits": c.exact_hits,
                "similar_hits": c.similar_hits,
                "misses": c.misses,
                "refreshes": c.refreshes,
                "uncached": c.uncached,
                "coverage_rejections": c.coverage_rejections,
                "llm_calls": c.llm_calls,
                "partial_calls": c.partial_calls,
                "llm_time_s": c.llm_time_s,
                "prompt_tokens": c.prompt_tokens,
                "continuation_tokens": c.continuation_tokens,
                "partial_llm_time_s": c.partial_time_s,
                "partial_prompt_tokens": c.partial_prompt_tokens,
                "partial_continuation_tokens": c.partial_continuation_tokens,
                "partial_actions": c.partial_actions,
                "floor_filled": c.floor_filled,
                "evictions": c.evictions,
                "size": len(self._entries),
                "capacity": self.config.capacity,
                "audits": c.audits,
                "mean_epsilon": c.epsilon_sum / c.audits if c.audits else None,
                "max_epsilon": c.epsilon_max if c.audits else None,
                "mean_kl": c.kl_sum / c.audits if c.audits else None,
                "max_kl": c.kl_max if c.audits else None,
                "hit_rate": hits / n if n else 0.0,
                "query_rate": (c.llm_calls + c.partial_calls) / n if n else 0.0,
                "full_query_rate": c.llm_calls / n if n else 0.0,
                "encode_time_s": c.encode_time_s,
                "lookup_time_s": c.lookup_time_s,
                "params": self._params.to_dict(),
                "shadow_audits": c.shadow_audits,
                "adaptation_time_s": c.adaptation_time_s,
                "meta_updates": self._meta.updates if self._meta is not None else 0,
                "kl_budget": self._kl_budget.summary() if self._kl_budget is not None else None,
            }

    def audit_log(self) -> list[dict[str, Any]]:
        """The most recent refresh audits (step, kind, similarity, coverage, ε, KL, bound), oldest first."""
        with self._lock:
            return [dict(a) for a in self._audit_log]

    def entries(self) -> list[CacheEntry]:
        """Copies of the entries, in insertion order."""
        with self._lock:
            return [e.copy() for e in self._entries.values()]

    def save(self, directory: str | Path) -> None:
        """Write the entries to ``directory`` atomically (see :mod:`priorcache.cache.store`)."""
        from priorcache.cache import store

        store.save(self, directory)

    def load(self, directory: str | Path, *, check_backend: bool = True) -> None:
        """Replace the entries with a saved cache's, after validating all of it (CacheFormatError)."""
        from priorcache.cache import store

        store.load(self, directory, check_backend=check_backend)

    # --- planning (under the lock) ------------------------------------------------------------
    def _tick(self, step: Optional[int]) -> int:
        if step is None:
            self._clock += 1
            return self._clock
        self._clock = max(self._clock, int(step))
        return int(step)

    def _make_match(self, entry: CacheEntry, kind: str, similarity: float, cands: list[str],
                    draw_refresh: bool = True) -> _Match:
        known = {a: entry.scores[a] for a in cands if a in entry.scores}
        r = self._params.refresh_rate
        refresh = draw_refresh and r > 0 and bool(self._rng.random() < r)
        return _Match(entry.id, entry.version, kind, similarity, known, min(entry.scores.values()),
                      len(known) / len(cands), refresh, self._epoch, r)

    def _threshold_for(self, entry_id: int) -> float:
        if self._kl_budget is not None and self.config.kl_budget.per_entry:
            return self._kl_budget.threshold(entry_id)
        return self._params.similarity_threshold

    def _coverage(self, entry: CacheEntry, cands: list[str]) -> tuple[int, float]:
        known = sum(a in entry.scores for a in cands)
        return known, known / len(cands)

    def _plan_exact(self, p_hash: str, state_text: str, cands: list[str]) -> Optional[_Match]:
        eid = self._exact.get((p_hash, state_text))
        if eid is None:
            return None
        entry = self._entries[eid]
        known, coverage = self._coverage(entry, cands)
        # The same state under the same prompt: a partial call scores the unknown candidates exactly
        # as a full call would, so coverage only matters when they would get the floor score.
        # An entry knowing none of them is no hit at all.
        if known == 0 or (self.config.unknown_candidates == "floor" and coverage < self.config.min_coverage):
            return None
        return self._make_match(entry, "exact", 1.0, cands)

    def _nearest_in_partition(self, p_hash: str, emb: np.ndarray) -> Optional[tuple[CacheEntry, float]]:
        if not self._partition_size.get(p_hash):
            return None
        total = len(self._index)
        k = min(total, 16)
        while True:
            ids, sims = self._index.search(emb, k)
            for i, s in zip(ids.tolist(), sims.tolist()):
                entry = self._entries.get(int(i))
                if entry is not None and entry.prefix_hash == p_hash:
                    return entry, float(min(1.0, max(-1.0, s)))
            if k >= total:
                return None
            # Widen until the best same-prefix entry shows up: exact indexes then find it for sure.
            k = min(total, 4 * k)

    def _plan_similar(self, p_hash: str, emb: np.ndarray, cands: list[str]) -> _Nearest:
        found = self._nearest_in_partition(p_hash, emb)
        if found is None:
            return _Nearest(None, None, False, False, None)
        entry, sim = found
        known, coverage = self._coverage(entry, cands)
        servable = known > 0 and coverage >= self.config.min_coverage
        if sim < self._threshold_for(entry.id):
            shadow = None
            if servable and self._shadow_floor is not None and sim >= self._shadow_floor:
                shadow = self._make_match(entry, "shadow", sim, cands, draw_refresh=False)
            return _Nearest(None, sim, servable, False, shadow)
        if not servable:
            return _Nearest(None, sim, False, True, None)
        return _Nearest(self._make_match(entry, "similar", sim, cands), sim, True, False, None)

    def _would_serve(self, match: _Match, cands: list[str], fresh_map: dict[str, float]) -> np.ndarray:
        """The scores a hit on ``match`` would have served. With partial completion its unknown
        candidates would have been scored with this very prompt, i.e. exactly as in the fresh call."""
        fill = fresh_map if self.config.unknown_candidates == "partial" else None
        return np.array([match.known.get(a, fill[a] if fill is not None else match.floor) for a in cands])

    def _log_audit(self, now: int, match: _Match, audit: Audit, *, served: bool, cost: _Cost) -> dict[str, Any]:
        """Keep the audit in the log and hand it to the mode's adaptation (under the lock)."""
        t = time.perf_counter()
        # A refresh is drawn with probability r among hits, so it stands for 1/r of them; a shadow
        # audit is taken on every eligible near-miss.
        rate = match.refresh_rate if served else 1.0
        record = {"step": now, "kind": match.kind, "served": served, "similarity": match.similarity,
                  "coverage": match.coverage, "entry_id": match.entry_id, **audit.to_dict(),
                  "refresh_rate": rate, "weight": 1.0 / rate}
        self._audit_log.append(record)
        if not served:
            self._counters.shadow_audits += 1
        if self._meta is not None:
            self._meta.record_audit(match.similarity, audit.kl, 1.0 / rate, served)
        if self._kl_budget is not None:
            self._kl_budget.observe(match.similarity, audit.kl, entry_id=match.entry_id, weight=1.0 / rate)
            self._params.similarity_threshold = self._kl_budget.threshold()
        cost.adaptation_time_s += time.perf_counter() - t
        return dict(record)

    def _adapt(self, near: _Nearest, cost: _Cost, evictions_before: int, now: int, *, hit: bool,
               full_call: bool, partial_call: bool) -> Optional[dict[str, Any]]:
        """Feed the lookup to the meta-optimiser (adaptive mode) and apply a finished window's update."""
        if self._meta is None:
            return None
        t = time.perf_counter()
        update = self._meta.record_lookup(near.similarity, near.servable, hit, full_call, partial_call,
                                          evictions=self._counters.evictions - evictions_before)
        if update is not None:
            self._params = self._meta.params
            self._evict_to_capacity()
            update["step"] = now
            self._meta_log.append(update)
        cost.adaptation_time_s += time.perf_counter() - t
        return dict(update) if update is not None else None

    # --- state changes (under the lock) ---------------------------------------------------------
    def _apply_hit(self, match: _Match, partial_map: dict[str, float], now: int) -> None:
        entry = self._entries.get(match.entry_id) if match.epoch == self._epoch else None
        if entry is None:  # evicted or reloaded meanwhile: the served prior stands, nothing to merge
            return
        entry.hit_count += 1
        entry.last_used_step = max(entry.last_used_step, now)
        if partial_map and entry.version == match.version:
            entry.scores.update(partial_map)  # F7: raw-score maps are extended by partial results
            entry.version += 1

    def _apply_refresh(self, match: _Match, p_hash: str, prefix: str, state_text: str,
                       emb: Optional[np.ndarray], fresh_map: dict[str, float], audit: Audit, now: int) -> None:
        entry = self._entries.get(match.entry_id) if match.epoch == self._epoch else None
        if entry is None or entry.version != match.version:
            # Changed or gone while the LLM ran: keep the fresh prior as an ordinary insert.
            if emb is not None:
                self._upsert(p_hash, prefix, state_text, emb, fresh_map, now)
            return
        if entry.state_text == state_text:
            # Same state and prompt: scores of actions outside today's candidates are still valid.
            entry.scores.update(fresh_map)
        else:
            # The entry now stands for the current state: its other scores belonged to another one,
            # and so did its own audits.
            if self._kl_budget is not None:
                self._kl_budget.forget(entry.id)
            other = self._exact.get((p_hash, state_text))
            if other is not None and other != entry.id:
                self._remove(other)
            del self._exact[(entry.prefix_hash, entry.state_text)]
            entry.state_text = state_text
            self._exact[(p_hash, state_text)] = entry.id
            entry.scores = dict(fresh_map)
            if emb is not None:
                entry.key = emb.copy()
                self._index.remove(np.array([entry.id], dtype=np.int64))
                self._index.add(np.array([entry.id], dtype=np.int64), emb[None, :])
        entry.hit_count += 1
        entry.refresh_count += 1
        entry.last_used_step = max(entry.last_used_step, now)
        entry.last_audit = audit
        entry.version += 1

    def _upsert(self, p_hash: str, prefix: str, state_text: str, emb: np.ndarray,
                scores: dict[str, float], now: int) -> int:
        eid = self._exact.get((p_hash, state_text))
        if eid is not None:
            # The same state and prompt scored again (another thread, or too few candidates known):
            # extend its map rather than keep two entries for one state.
            entry = self._entries[eid]
            entry.scores.update(scores)
            entry.last_used_step = max(entry.last_used_step, now)
            entry.version += 1
            return eid
        while len(self._entries) >= self._params.capacity:
            self._remove(self._victim(now))
            self._counters.evictions += 1
        eid = self._next_id
        self._next_id += 1
        self._insert(CacheEntry(eid, p_hash, state_text, emb.copy(), dict(scores), now, now), prefix)
        return eid

    def _insert(self, entry: CacheEntry, prefix: Optional[str]) -> None:
        self._entries[entry.id] = entry
        self._exact[(entry.prefix_hash, entry.state_text)] = entry.id
        self._partition_size[entry.prefix_hash] = self._partition_size.get(entry.prefix_hash, 0) + 1
        if prefix is not None:
            self._prefixes.setdefault(entry.prefix_hash, prefix)
        self._index.add(np.array([entry.id], dtype=np.int64), entry.key[None, :])

    def _remove(self, eid: int) -> None:
        entry = self._entries.pop(eid)
        if self._kl_budget is not None:
            self._kl_budget.forget(eid)
        del self._exact[(entry.prefix_hash, entry.state_text)]
        left = self._partition_size[entry.prefix_hash] - 1
        if left:
            self._partition_size[entry.prefix_hash] = left
        else:
            del self._partition_size[entry.prefix_hash]
            self._prefixes.pop(entry.prefix_hash, None)
        self._index.remove(np.array([eid], dtype=np.int64))

    def _evict_to_capacity(self) -> None:
        """After K shrank (meta update, warm start, smaller cache loading a bigger save)."""
        while len(self._entries) > self._params.capacity:
            self._remove(self._victim(self._clock))
            self._counters.evictions += 1

    def _victim(self, now: int) -> int:
        policy = self.config.eviction
        if policy == "lru":
            rank = lambda e: (e.last_used_step, e.id)  # noqa: E731
        elif policy == "lfu":
            rank = lambda e: (e.hit_count, e.last_used_step, e.id)  # noqa: E731
        else:
            half_life = self.config.utility_half_life

            # Utility = uses decayed by the age since the last use. The insertion counts as one use:
            # with the bare hit count every fresh entry (0 hits) would be the next victim while an
            # entry hit once long ago (utility 2^-age, still > 0) would never go.
            def rank(e: CacheEntry) -> tuple[float, int, int]:
                age = max(0, now - e.last_used_step)
                return ((e.hit_count + 1) * 0.5 ** (age / half_life), e.last_used_step, e.id)
        return min(self._entries.values(), key=rank).id

    def _count_common(self, cost: _Cost, start: float, *, llm_calls: int, partial_calls: int) -> None:
        c = self._counters
        c.lookups += 1
        c.llm_calls += llm_calls
        c.partial_calls += partial_calls
        c.llm_time_s += cost.llm_time_s
        c.prompt_tokens += cost.prompt_tokens
        c.continuation_tokens += cost.continuation_tokens
        c.partial_time_s += cost.partial_time_s
        c.partial_prompt_tokens += cost.partial_prompt_tokens
        c.partial_continuation_tokens += cost.partial_continuation_tokens
        c.encode_time_s += cost.encode_time_s
        c.adaptation_time_s += cost.adaptation_time_s
        c.lookup_time_s += max(0.0, time.perf_counter() - start - cost.external_wall_s)

    # --- outside calls (never under the lock) ---------------------------------------------------
    def _call_backend(self, prompt: Prompt, actions: list[str], cost: _Cost, *, partial: bool) -> np.ndarray:
        t = time.perf_counter()
        result = self.backend.score([prompt], [actions], length_normalise=True)
        wall = time.perf_counter() - t
        cost.external_wall_s += wall
        source = f"LLM backend {self.backend_name!r}"
        got = getattr(result, "scores", None)
        if got is None or len(got) != 1:
            raise BackendError(f"{source} returned {0 if got is None else len(got)} score vectors for 1 prompt")
        scores = check_scores(got[0], actions, source)
        reported = getattr(result, "wall_time_s", None)
        # The backend's own timing is the spec's measure; a missing or bogus one falls back to ours.
        llm_time = float(reported) if is_number(reported) and math.isfinite(reported) and reported >= 0 else wall
        prompt_tokens = int(getattr(result, "prompt_tokens", 0) or 0)
        cont_tokens = int(getattr(result, "continuation_tokens", 0) or 0)
        if partial:
            cost.partial_time_s += llm_time
            cost.partial_prompt_tokens += prompt_tokens
            cost.partial_continuation_tokens += cont_tokens
        else:
            cost.llm_time_s += llm_time
            cost.prompt_tokens += prompt_tokens
            cost.continuation_tokens += cont_tokens
        return scores

    def _encode(self, state_text: str, cost: _Cost) -> np.ndarray:
        t = time.perf_counter()
        out = np.asarray(self.encoder.encode([state_text]), dtype=np.float32)
        wall = time.perf_counter() - t
        cost.encode_time_s += wall
        cost.external_wall_s += wall
        if out.shape != (1, self.dim):
            raise ConfigError(f"encoder {self.encoder_name!r} returned shape {out.shape} for one text, "
                              f"expected (1, {self.dim})")
        return self._unit(out[0], f"encoder {self.encoder_name!r} output")

    def _check_embedding(self, embedding: np.ndarray) -> np.ndarray:
        arr = np.asarray(embedding, dtype=np.float32)
        if arr.size != self.dim or arr.ndim > 2 or (arr.ndim == 2 and arr.shape[0] != 1):
            raise ConfigError(f"embedding has shape {arr.shape}, but encoder {self.encoder_name!r} gives "
                              f"{self.dim}-dimensional vectors: pass a ({self.dim},) vector")
        return self._unit(arr.reshape(self.dim), "embedding")

    @staticmethod
    def _unit(v: np.ndarray, what: str) -> np.ndarray:
        if not np.all(np.isfinite(v)):
            raise ConfigError(f"{what} contains NaN or ±inf")
        norm = float(np.linalg.norm(v))
        if norm == 0.0:
            raise ConfigError(f"{what} is the zero vector; cosine similarity needs a direction")
        # Cosine = inner product only for unit vectors; renormalising costs nothing and
        # protects the index from a caller's unnormalised vector.
        return (v / norm).astype(np.float32)

    @staticmethod
    def _check_q(q_values: Optional[np.ndarray], n: int, alpha: float) -> Optional[np.ndarray]:
        if not (is_number(alpha) and math.isfinite(alpha) and alpha > 0):
            raise ConfigError(f"temperature α must be a finite number > 0, got {alpha!r}")
        if q_values is None:
            return None
        q = np.asarray(q_values, dtype=np.float64)
        if q.shape != (n,):
            raise ConfigError(f"q_values has shape {q.shape}, expected ({n},) for {n} candidates")
        if not np.all(np.isfinite(q)):
            raise ConfigError("q_values contain NaN or ±inf")
        return q

    def _result(self, cands: list[str], scores: np.ndarray, kind: str, hit: bool, similarity: Optional[float],
                llm_calls: int, partial_calls: int, cost: _Cost, audit: Optional[Audit],
                emb: Optional[np.ndarray], start: float, *, coverage: Optional[float] = None,
                entry_id: Optional[int] = None, audit_record: Optional[dict[str, Any]] = None,
                meta_update: Optional[dict[str, Any]] = None) -> PriorLookup:
        scores = np.asarray(scores, dtype=np.float64)
        lp = log_prior(scores, self.prior_config)
        return PriorLookup(
            candidates=cands, scores=scores, log_prior=lp, kind=kind, hit=hit, similarity=similarity,
            llm_calls=llm_calls, partial_calls=partial_calls,
            llm_time_s=cost.llm_time_s + cost.partial_time_s,
            prompt_tokens=cost.prompt_tokens + cost.partial_prompt_tokens,
            continuation_tokens=cost.continuation_tokens + cost.partial_continuation_tokens,
            audit=audit, embedding=emb, encode_time_s=cost.encode_time_s,
            lookup_time_s=max(0.0, time.perf_counter() - start - cost.external_wall_s),
            coverage=coverage, entry_id=entry_id, audit_record=audit_record, meta_update=meta_update,
        )

    # --- persistence hooks for store.py ---------------------------------------------------------
    def _adaptation_state(self) -> dict[str, Any]:
        with self._lock:
            return {"mode": self.config.mode, "params": self._params.to_dict(),
                    "meta_theta": self._meta.theta.tolist() if self._meta is not None else None,
                    "kl_budget": self._kl_budget.to_dict() if self._kl_budget is not None else None}

    def _check_adaptation_state(self, state: Any) -> Callable[[], None]:
        """Validate a saved ``adaptation`` state (ConfigError) and return what applies it to this cache.

        What a cache takes over depends on its own mode: an adaptive cache continues from the saved θ,
        a kl-budget cache from the saved audits; any other pairing keeps this cache's configured
        values (the saved ones are for the record)."""
        if state is None:
            return lambda: None
        if not isinstance(state, Mapping) or set(state) != {"mode", "params", "meta_theta", "kl_budget"}:
            raise ConfigError("it must be {mode, params, meta_theta, kl_budget}")
        if self._meta is not None and state["meta_theta"] is not None:
            theta = check_theta(state["meta_theta"]).tolist()

            def restore() -> None:
                with self._lock:
                    self._meta.load_theta(theta)
                    self._params = self._meta.params
                    self._evict_to_capacity()
            return restore
        if self._kl_budget is not None and state["kl_budget"] is not None:
            KLBudgetController(self.config.kl_budget).load_dict(state["kl_budget"])  # validates
            saved = state["kl_budget"]

            def restore() -> None:
                with self._lock:
                    self._kl_budget.load_dict(saved)
                    self._params.similarity_threshold = self._kl_budget.threshold()
            return restore
        return lambda: None

    def _snapshot(self) -> tuple[list[CacheEntry], dict[str, str], int]:
        with self._lock:
            return [e.copy() for e in self._entries.values()], dict(self._prefixes), self._clock

    def _replace_entries(self, entries: list[CacheEntry], prefixes: dict[str, str]) -> None:
        """Install validated entries, rebasing their steps onto this cache's clock (ages survive)."""
        with self._lock:
            if self._kl_budget is not None:  # loaded ids may name other states than the audited ones
                for eid in self._entries:
                    self._kl_budget.forget(eid)
            index = make_index(self.config.index, self.dim, self.config.capacity)
            self._index = index
            self._entries = {}
            self._exact = {}
            self._partition_size = {}
            self._prefixes = {}
            self._epoch += 1
            shift = self._clock - max((e.last_used_step for e in entries), default=self._clock)
            for e in entries:
                e = e.copy()
                e.created_step += shift
                e.last_used_step += shift
                self._insert(e, prefixes.get(e.prefix_hash))
                self._next_id = max(self._next_id, e.id + 1)
            self._evict_to_capacity()

    def _assert_consistent(self) -> None:
        """Invariants, for tests: size ≤ K, one entry per exact key, index in step with the entries."""
        with self._lock:
            assert len(self._entries) <= self._params.capacity
            assert len(self._index) == len(self._entries)
            assert len(self._exact) == len(self._entries)
            for key, eid in self._exact.items():
                e = self._entries[eid]
                assert (e.prefix_hash, e.state_text) == key
            counts: dict[str, int] = {}
            for e in self._entries.values():
                counts[e.prefix_hash] = counts.get(e.prefix_hash, 0) + 1
                assert e.scores and all(math.isfinite(s) for s in e.scores.values())
            assert counts == self._partition_size
