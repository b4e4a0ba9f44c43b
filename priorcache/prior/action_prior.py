"""F3, from raw candidate scores ℓ to an action prior p(a|s), and the categorical ``Prior`` kind.

F3: p(a_i|s) = (1−ε)·softmax(ℓ/τ)_i + ε/n. The floor ε keeps full support, so every
log-ratio between two priors on the same candidate set is bounded (needed by F5).

F7: a categorical prior keeps raw scores ℓ per action text, not probabilities, so a cached one can
be restricted to another candidate set (unknown candidates filled by a partial call or the floor
score) and extended by later scores; F3 normalises over whatever set is served.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from priorcache.errors import BackendError, ConfigError
from priorcache.prior.interface import Prior


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


class CategoricalPrior(Prior):
    """F3 over text actions from a map action → raw score ℓ (F7), with F3's τ and ε in ``config``."""

    kind = "categorical"

    def __init__(self, scores: Mapping[str, float], config: PriorConfig = PriorConfig()) -> None:
        if not scores:
            raise ConfigError("a categorical prior needs at least one action score")
        self._scores = dict(scores)
        self.config = config

    def __repr__(self) -> str:
        return f"CategoricalPrior({self._scores!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CategoricalPrior) and self._scores == other._scores and self.config == other.config

    # The prior is immutable, so what derives from its scores is computed once, on first use (the
    # decision loop asks for the log-prior and the support of the same served prior).
    @cached_property
    def actions(self) -> tuple[str, ...]:
        return tuple(self._scores)

    @property
    def score_map(self) -> dict[str, float]:
        """A copy of the raw scores ℓ, action → score."""
        return dict(self._scores)

    @property
    def scores(self) -> np.ndarray:
        """The raw scores ℓ in ``actions`` order."""
        return np.fromiter(self._scores.values(), dtype=np.float64, count=len(self._scores))

    @cached_property
    def _log_probs(self) -> np.ndarray:
        return log_prior(self.scores, self.config)

    @property
    def floor_score(self) -> float:
        """F7's cheap fill for an unknown candidate: the lowest score this prior holds."""
        return min(self._scores.values())

    def log_prob(self, actions: Sequence[str]) -> np.ndarray:
        full = self._log_probs
        if tuple(actions) == self.actions:
            return full.copy()
        index = {a: i for i, a in enumerate(self._scores)}
        missing = [a for a in actions if a not in index]
        if missing:
            raise ConfigError(f"actions {missing[:5]} are not in this prior's support")
        return full[[index[a] for a in actions]]

    def sample(self, rng: np.random.Generator) -> str:
        probs = np.exp(self.log_prob(self.actions))
        return self.actions[int(rng.choice(probs.size, p=probs / probs.sum()))]

    @classmethod
    def from_scores(
        cls, actions: Sequence[str], scores: np.ndarray, config: PriorConfig = PriorConfig()
    ) -> CategoricalPrior:
        arr = np.asarray(scores, dtype=np.float64)
        if arr.shape != (len(actions),) or not np.all(np.isfinite(arr)):
            raise ConfigError(f"need one finite score per action ({len(actions)}), got {arr!r}")
        return cls(dict(zip(actions, arr.tolist())), config)

    def restrict(self, candidates: Sequence[str], fill: Prior | None = None) -> CategoricalPrior:
        fill_map = fill.score_map if isinstance(fill, CategoricalPrior) else {}
        floor = self.floor_score
        own = self._scores
        return CategoricalPrior({a: own[a] if a in own else fill_map.get(a, floor) for a in candidates}, self.config)

    def merge(self, newer: Prior) -> CategoricalPrior:
        if not isinstance(newer, CategoricalPrior):
            raise ConfigError(f"cannot merge a {newer.kind} prior into a categorical one")
        return CategoricalPrior({**self._scores, **newer._scores}, self.config)

    def to_payload(self) -> dict[str, Any]:
        return {"scores": {a: float(s) for a, s in self._scores.items()}}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], config: PriorConfig = PriorConfig()) -> CategoricalPrior:
        return cls(scores_from_payload(payload, "categorical", "action"), config)


def scores_from_payload(payload: Any, kind: str, item: str) -> dict[str, float]:
    """The ``{"scores": {name: raw score}}`` payload of a scored prior kind, checked: ConfigError naming
    the ``kind`` and the ``item``s (actions, skills) whose scores are not finite numbers."""
    if not isinstance(payload, Mapping) or set(payload) != {"scores"}:
        raise ConfigError(f"a {kind} prior payload must be {{scores: {{{item}: score}}}}")
    scores = payload["scores"]
    if not isinstance(scores, Mapping) or not scores:
        raise ConfigError(f"scores must be a non-empty map {item} → score")
    bad = [
        a
        for a, s in scores.items()
        if not isinstance(a, str) or isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s)
    ]
    if bad:
        raise ConfigError(f"non-finite or non-numeric scores for {item}s {bad[:5]}")
    return {a: float(s) for a, s in scores.items()}
