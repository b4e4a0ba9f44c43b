"""The posterior sampler (F1, docs/design.md) with the hit-rate-tied temperature schedule (F2).

F1 itself (π ∝ p·exp(Q/α), in log space) lives in :mod:`priorcache.prior.divergence`; this module samples from it.
F2: α_t = α_min + (α_0 − α_min)·(1 − h_t), h_t an exponential moving average of cache hits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from priorcache.errors import ConfigError
from priorcache.prior.divergence import posterior_log_probs


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
