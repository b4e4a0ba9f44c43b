"""Planning a lookup (docs/design.md, "The prior cache", lookup order): a request's arguments checked,
the hit rule that decides which entry, if any, a lookup may be served from, and the LLM call the
plan then needs. Shared by ``PriorCache.lookup`` and ``PriorCache.lookup_batch``, which search under
the cache's lock, make the planned call outside it and apply the outcome
(:mod:`priorcache.cache.prior_cache`).

The hit rule: an exact key (same prompt prefix, same state text) first; otherwise the nearest entry
by cosine among those of the same prompt prefix, a hit when ``sim ≥ δ`` and it knows at least
``min_coverage`` of the candidates (F7). A hit is a refresh with probability r (an audited full
call); a near-miss at or above the controller's shadow floor is kept for a free audit. Nothing here
changes an entry; the only state is the random generator that draws refreshes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from priorcache.cache.batch import LLMCall, LookupRequest
from priorcache.cache.calls import check_embedding, check_q
from priorcache.cache.config import CacheConfig
from priorcache.cache.controllers import CacheController
from priorcache.cache.entry_table import EntryTable, Match
from priorcache.cache.records import CacheEntry, LookupCost
from priorcache.errors import ConfigError
from priorcache.prior.action_prior import check_candidates
from priorcache.prior.base import Prompt
from priorcache.prior.interface import Prior
from priorcache.validation import is_int


def prefix_hash(prefix: str) -> str:
    """The partition key of a prompt prefix (sha256, hex): entries never cross partitions."""
    return hashlib.sha256(prefix.encode("utf-8")).hexdigest()


@dataclass
class Nearest:
    """What the similarity search found for one lookup."""

    match: Match | None  # the hit, when sim ≥ δ and the entry covers enough candidates
    similarity: float | None  # of the nearest same-prompt entry; None when the partition is empty
    servable: bool  # that entry covers enough candidates to be served at some δ
    rejected_for_coverage: bool  # sim ≥ δ, but too few candidates known
    shadow: Match | None  # a near-miss (floor ≤ sim < δ) to audit for free on the miss's LLM call


@dataclass
class Checked:
    """A lookup's arguments after checking; ``emb`` is filled in when the cache encodes the state."""

    state_text: str
    prompt: Prompt
    cands: list[str]
    q: np.ndarray | None
    alpha: float
    emb: np.ndarray | None
    step: int | None
    p_hash: str


@dataclass
class Planned:
    """A lookup between planning (under the lock) and finishing: what the search found, the clock
    it was planned at, and its kind: "uncached", "miss", "refresh" or "hit"."""

    near: Nearest | None
    now: int
    kind: str


def exact_hit(match: Match) -> Nearest:
    """What the search found when the exact fast path hit."""
    return Nearest(match, 1.0, True, False, None)


def plan_of(near: Nearest, now: int) -> Planned:
    """The plan for what the search found: a miss, a refresh or a hit."""
    if near.match is None:
        return Planned(near, now, "miss")
    return Planned(near, now, "refresh" if near.match.refresh else "hit")


def check_request(request: LookupRequest, dim: int, encoder_name: str) -> Checked:
    """A request's arguments checked (ConfigError otherwise), candidates and Q as the cache uses them."""
    if not isinstance(request.state_text, str):
        raise ConfigError(f"state_text must be a string, got {type(request.state_text).__name__}")
    prompt = request.prompt
    if not isinstance(getattr(prompt, "prefix", None), str):
        raise ConfigError("prompt must be a Prompt with a string prefix")
    cands = check_candidates(request.candidates)
    q = check_q(request.q_values, len(cands), request.alpha)
    emb = check_embedding(request.embedding, dim, encoder_name) if request.embedding is not None else None
    step = request.step
    if step is not None and (not is_int(step) or step < 0):
        raise ConfigError(f"step must be an integer ≥ 0 or None, got {step!r}")
    return Checked(request.state_text, prompt, cands, q, request.alpha, emb, step, prefix_hash(prompt.prefix))


def call_of(request: Checked, plan: Planned, cost: LookupCost, unknown_candidates: str) -> LLMCall | None:
    """The LLM call a planned lookup needs: a full one (uncached, miss, refresh), a partial one
    for the candidates a hit's entry does not know (F7, ``partial`` mode), or none."""
    if plan.kind != "hit":
        return LLMCall(request.prompt, request.cands, cost, partial=False)
    known = set(plan.near.match.prior.actions)
    unknown = [a for a in request.cands if a not in known]
    if unknown and unknown_candidates == "partial":
        return LLMCall(request.prompt, unknown, cost, partial=True)
    return None


def would_serve(match: Match, cands: list[str], fresh: Prior, unknown_candidates: str) -> Prior:
    """The prior a hit on ``match`` would have served. With partial completion its unknown
    candidates would have been scored with this very prompt, i.e. exactly as in the fresh call."""
    return match.prior.restrict(cands, fill=fresh if unknown_candidates == "partial" else None)


class Planner:
    """The hit rule over the cache's entries and its controller's K, δ, r. Called under the cache's lock."""

    def __init__(self, config: CacheConfig, table: EntryTable, controller: CacheController) -> None:
        self.config = config
        self.table = table
        self.controller = controller
        self.rng = np.random.default_rng(config.seed)  # refresh draws

    def exact(self, p_hash: str, state_text: str, cands: list[str]) -> Match | None:
        """The exact fast path: the entry of this very prompt prefix and state text, when servable."""
        entry = self.table.by_state(p_hash, state_text)
        if entry is None:
            return None
        known, coverage = _coverage(entry, cands)
        # The same state under the same prompt: a partial call scores the unknown candidates exactly
        # as a full call would, so coverage only matters when they would get the floor score.
        # An entry knowing none of them is no hit at all.
        if known == 0 or (self.config.unknown_candidates == "floor" and coverage < self.config.min_coverage):
            return None
        return self._match(entry, "exact", 1.0, coverage)

    def similar(self, p_hash: str, emb: np.ndarray, cands: list[str]) -> Nearest:
        """The nearest entry of the same prompt prefix: a hit, a shadow near-miss, or a miss."""
        found = self.table.nearest(p_hash, emb)
        if found is None:
            return Nearest(None, None, False, False, None)
        entry, sim = found
        known, coverage = _coverage(entry, cands)
        servable = known > 0 and coverage >= self.config.min_coverage
        if sim < self.controller.threshold_for(entry.id):
            shadow = None
            floor = self.controller.shadow_floor
            if servable and floor is not None and sim >= floor:
                shadow = self._match(entry, "shadow", sim, coverage, draw_refresh=False)
            return Nearest(None, sim, servable, False, shadow)
        if not servable:
            return Nearest(None, sim, False, True, None)
        return Nearest(self._match(entry, "similar", sim, coverage), sim, True, False, None)

    def _match(
        self, entry: CacheEntry, kind: str, similarity: float, coverage: float, draw_refresh: bool = True
    ) -> Match:
        r = self.controller.params.refresh_rate
        refresh = draw_refresh and r > 0 and bool(self.rng.random() < r)
        return Match(entry.id, entry.version, kind, similarity, entry.prior, coverage, refresh, self.table.epoch, r)


def _coverage(entry: CacheEntry, cands: list[str]) -> tuple[int, float]:
    known = set(entry.prior.actions)
    n = sum(a in known for a in cands)
    return n, n / len(cands)
