"""From raw candidate scores ℓ to an action prior p(a|s) (SPEC F3) and the LLM prior that asks a backend.

F3: p(a_i|s) = (1−ε)·softmax(ℓ/τ)_i + ε/n. The floor ε keeps full support, so every
log-ratio between two priors on the same candidate set is bounded (needed by F5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from priorcache.errors import BackendError, ConfigError


@dataclass(frozen=True)
class PriorConfig:
    """F3's softmax temperature τ and floor ε."""

    temperature: float = 1.0
    floor: float = 0.05

    def __post_init__(self) -> None:
        if not np.isfinite(self.temperature) or self.temperature <= 0:
            raise ConfigError(f"prior temperature τ must be a finite number > 0, got {self.temperature}")
        if not 0.0 <= self.floor < 1.0:
            raise ConfigError(f"prior floor ε must be in [0, 1), got {self.floor}")


def check_candidates(candidates: Sequence[str]) -> list[str]:
    """Return the candidates as a list, refusing an empty list or duplicates."""
    candidates = list(candidates)
    if not candidates:
        raise ConfigError("the candidate action list is empty: a prior needs at least one action")
    if len(set(candidates)) != len(candidates):
        dupes = sorted({a for a in candidates if candidates.count(a) > 1})
        raise ConfigError(f"duplicate candidate actions: {dupes}")
    return candidates


def check_scores(scores: np.ndarray, candidates: Sequence[str], source: str) -> np.ndarray:
    """Refuse scores of the wrong length or that are NaN/±inf, naming the offending actions."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(candidates),):
        raise BackendError(f"{source} returned {scores.shape} scores for {len(candidates)} candidate actions")
    bad = ~np.isfinite(scores)
    if bad.any():
        named = {candidates[i]: float(scores[i]) for i in np.flatnonzero(bad)[:5]}
        raise BackendError(f"{source} returned non-finite scores for actions {named}")
    return scores


def log_prior(scores: np.ndarray, config: PriorConfig = PriorConfig()) -> np.ndarray:
    """F3: log p = log((1−ε)·softmax(ℓ/τ) + ε/n), computed in log space."""
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[-1]
    if n == 0:
        raise ConfigError("cannot form a prior over an empty candidate list")
    z = scores / config.temperature
    log_softmax = z - np.logaddexp.reduce(z, axis=-1, keepdims=True)
    if config.floor == 0.0:
        return log_softmax
    return np.logaddexp(np.log1p(-config.floor) + log_softmax, np.log(config.floor / n))
