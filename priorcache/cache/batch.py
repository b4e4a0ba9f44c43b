"""Batched lookups (``PriorCache.lookup_batch``): what one lookup of a batch asks for, and the prior
cache's batched outside calls, one backend call and one encoder call for a whole batch, with their
cost shared out over the lookups that took part. Never called under the cache's lock.

A batch's LLM call (and encoder call) is one wall-clock interval and one token count for several
lookups. Each lookup books an even share of the wall time and tokens (integer shares that add up to
the totals), so the cache's counters, the sums over lookups, still equal what the calls cost.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from priorcache.cache.calls import unit_vector
from priorcache.cache.records import LookupCost
from priorcache.errors import BackendError, ConfigError
from priorcache.prior.action_prior import check_scores
from priorcache.prior.base import LLMBackend, Prompt
from priorcache.validation import is_number


@dataclass(frozen=True)
class LookupRequest:
    """The arguments of one :meth:`PriorCache.lookup <priorcache.cache.prior_cache.PriorCache.lookup>`
    call, for a batch of them."""

    state_text: str
    prompt: Prompt
    candidates: Sequence[str]
    q_values: np.ndarray | None = None
    alpha: float = 1.0
    embedding: np.ndarray | None = None
    step: int | None = None


@dataclass
class LLMCall:
    """One prompt's scoring within a batch's backend call, and the lookup cost it is booked in."""

    prompt: Prompt
    actions: list[str]
    cost: LookupCost
    partial: bool  # an F7 partial call (booked under the partial_* fields)


def even_shares(total: int, n: int) -> list[int]:
    """``total`` split into ``n`` integers that differ by at most one and add up to ``total``."""
    base, extra = divmod(int(total), n)
    return [base + (1 if i < extra else 0) for i in range(n)]


def ask_backend_batch(backend: LLMBackend, name: str, calls: Sequence[LLMCall]) -> list[np.ndarray]:
    """F3 scores of every call's actions from ONE backend call; each call books an even share of
    its wall time and tokens in its cost (as a partial F7 call when ``partial``)."""
    if not calls:
        return []
    t = time.perf_counter()
    result = backend.score([c.prompt for c in calls], [c.actions for c in calls], length_normalise=True)
    wall = time.perf_counter() - t
    source = f"LLM backend {name!r}"
    got = getattr(result, "scores", None)
    if got is None or len(got) != len(calls):
        raise BackendError(
            f"{source} returned {0 if got is None else len(got)} score vectors for {len(calls)} prompt(s)"
        )
    scores = [check_scores(row, c.actions, source) for row, c in zip(got, calls)]
    reported = getattr(result, "wall_time_s", None)
    # The backend's own timing is the measure; a missing or bogus one falls back to ours.
    llm_time = float(reported) if is_number(reported) and math.isfinite(reported) and reported >= 0 else wall
    n = len(calls)
    prompt_tokens = even_shares(int(getattr(result, "prompt_tokens", 0) or 0), n)
    continuation_tokens = even_shares(int(getattr(result, "continuation_tokens", 0) or 0), n)
    for call, p_tokens, c_tokens in zip(calls, prompt_tokens, continuation_tokens):
        call.cost.external_wall_s += wall / n
        prefix = "partial_" if call.partial else ""
        for field, value in (
            ("llm_time_s", llm_time / n),
            ("prompt_tokens", p_tokens),
            ("continuation_tokens", c_tokens),
        ):
            setattr(call.cost, prefix + field, getattr(call.cost, prefix + field) + value)
    return scores


def encode_states(encoder: Any, name: str, dim: int, texts: list[str], costs: list[LookupCost]) -> list[np.ndarray]:
    """e(φ(s)) of every text from ONE encoder call, as unit float32 vectors; each cost books an even
    share of the encoder's time."""
    if not texts:
        return []
    start = time.perf_counter()
    out = np.asarray(encoder.encode(texts), dtype=np.float32)
    elapsed = time.perf_counter() - start
    if out.shape != (len(texts), dim):
        raise ConfigError(
            f"encoder {name!r} returned shape {out.shape} for {len(texts)} texts, expected ({len(texts)}, {dim})"
        )
    for cost in costs:
        cost.encode_time_s += elapsed / len(texts)
        cost.external_wall_s += elapsed / len(texts)
    return [unit_vector(row, f"encoder {name!r} output") for row in out]
