"""The posterior sampler (SPEC F1) with the hit-rate-tied temperature schedule (F2).

F1: π(a|s) = p(a|s)·exp(Q(s,a)/α) / Z(s), computed in log space so that 1 to 1,000 candidates
and extreme Q values neither overflow nor lose the prior.
F2: α_t = α_min + (α_0 − α_min)·(1 − h_t), h_t an exponential moving average of cache hits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from priorcache.errors import ConfigError


def posterior_log_probs(log_prior: np.ndarray, q_values: np.ndarray, alpha: float) -> np.ndarray:
    """F1 in log space: log π = log p + Q/α − log Z."""
    log_prior = np.asarray(log_prior, dtype=np.float64)
    q_values = np.asarray(q_values, dtype=np.float64)
    if log_prior.shape != q_values.shape or log_prior.ndim != 1 or log_prior.size == 0:
        raise ConfigError(f"prior {log_prior.shape} and Q {q_values.shape} must be the same non-empty 1-D shape")
    if not (np.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"temperature α must be a finite number > 0, got {alpha}")
    if not np.all(np.isfinite(q_values)):
        raise ConfigError("Q values contain NaN or ±inf")
    logits = log_prior + q_values / alpha
    return logits - np.logaddexp.reduce(logits)


def kl_divergence(log_p: np.ndarray, log_q: np.ndarray) -> float:
    """KL(p‖q) for two distributions given as log-probabilities on the same support."""
    p = np.exp(log_p)
    return float(max(0.0, np.sum(p * (log_p - log_q))))


@dataclass
class TemperatureSchedule:
    """F2: the posterior cools (α → α_min) as the cache hit rate's moving average rises."""

    alpha_0: float = 1.0
    alpha_min: float = 0.1
    ema_decay: float = 0.99
    hit_rate: float = 0.0

    def __post_init__(self) -> None:
        if not (0 < self.alpha_min <= self.alpha_0):
            raise ConfigError(f"need 0 < α_min ≤ α_0, got α_min={self.alpha_min}, α_0={self.alpha_0}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    @property
    def alpha(self) -> float:
        return self.alpha_min + (self.alpha_0 - self.alpha_min) * (1.0 - self.hit_rate)

    def update(self, hit: bool) -> float:
        self.hit_rate = self.ema_decay * self.hit_rate + (1.0 - self.ema_decay) * float(hit)
        return self.alpha


@dataclass
class PosteriorSampler:
    """Samples an action index from F1; ``schedule`` supplies α (F2)."""

    schedule: TemperatureSchedule = field(default_factory=TemperatureSchedule)
    rng: np.random.Generator = field(default_factory=np.random.default_rng)

    def distribution(self, log_prior: np.ndarray, q_values: np.ndarray) -> np.ndarray:
        return np.exp(posterior_log_probs(log_prior, q_values, self.schedule.alpha))

    def sample(self, log_prior: np.ndarray, q_values: np.ndarray) -> tuple[int, np.ndarray]:
        probs = self.distribution(log_prior, q_values)
        probs = probs / probs.sum()  # guard against rounding before Generator.choice
        return int(self.rng.choice(probs.size, p=probs)), probs
