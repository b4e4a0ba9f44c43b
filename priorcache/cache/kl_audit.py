"""The cache's audit of its own error (SPEC F5), measured on exactly the prior it served (F7).

Given the raw scores ℓ̃ the cache served (after F7 completion) and the fresh scores ℓ of a full
LLM call, both on the current candidate set, F3 turns each into a prior (p̃, p) and F1 into a
posterior (π̃, π) under the same Q and α. F5 states

    ε(s) = max_a |log p̃(a|s) − log p(a|s)|,   |log Z̃ − log Z| ≤ ε(s),   KL(π̃‖π) ≤ 2ε(s).

Why the bound holds: log π̃ − log π = (log p̃ − log p) − (log Z̃ − log Z), and Z̃/Z is a
p-weighted average of p̃/p, so both terms are at most ε in absolute value.
The audit reports the measured ε and KL next to the bound 2ε, so a violated bound (a bug) or a
loose one (the usual case: KL ≪ 2ε) is visible in the statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from priorcache.errors import ConfigError
from priorcache.posterior import kl_divergence
from priorcache.prior.action_prior import PriorConfig, log_prior


@dataclass(frozen=True)
class Audit:
    """One F5 measurement: ε (nats), KL(π̃‖π) (nats), the bound 2ε, and |log Z̃ − log Z|."""

    epsilon: float
    kl: float
    kl_bound: float
    log_z_gap: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {"epsilon": self.epsilon, "kl": self.kl, "kl_bound": self.kl_bound, "log_z_gap": self.log_z_gap}


def _as_scores(scores: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ConfigError(f"{name} must be a non-empty 1-D score vector, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name} contains NaN or ±inf")
    return arr


def audit_prior(
    served_scores: np.ndarray,
    fresh_scores: np.ndarray,
    q_values: Optional[np.ndarray] = None,
    alpha: float = 1.0,
    prior_config: PriorConfig = PriorConfig(),
) -> Audit:
    """F5 between the served prior (from ``served_scores``) and the fresh one (``fresh_scores``).

    Both score vectors are raw F3 scores ℓ aligned to the same candidate list; ``q_values``
    (zeros when None: the audit then compares the priors themselves) and ``alpha`` are the ones
    the agent samples with, so the KL is the one the agent's behaviour actually incurs.
    """
    served = _as_scores(served_scores, "served_scores")
    fresh = _as_scores(fresh_scores, "fresh_scores")
    if served.shape != fresh.shape:
        raise ConfigError(f"served {served.shape} and fresh {fresh.shape} scores must be on the same candidates")
    if q_values is None:
        q = np.zeros_like(served)
    else:
        q = np.asarray(q_values, dtype=np.float64)
        if q.shape != served.shape:
            raise ConfigError(f"Q values {q.shape} must align with the {served.size} candidates")
        if not np.all(np.isfinite(q)):
            raise ConfigError("Q values contain NaN or ±inf")
    if not (np.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"temperature α must be a finite number > 0, got {alpha}")

    log_p_served = log_prior(served, prior_config)
    log_p_fresh = log_prior(fresh, prior_config)
    epsilon = float(np.max(np.abs(log_p_served - log_p_fresh)))

    # F1 in log space, keeping log Z so the F5 partition-function bound can be checked too.
    logits_served = log_p_served + q / alpha
    logits_fresh = log_p_fresh + q / alpha
    log_z_served = float(np.logaddexp.reduce(logits_served))
    log_z_fresh = float(np.logaddexp.reduce(logits_fresh))
    kl = kl_divergence(logits_served - log_z_served, logits_fresh - log_z_fresh)
    return Audit(epsilon=epsilon, kl=kl, kl_bound=2.0 * epsilon, log_z_gap=abs(log_z_served - log_z_fresh))
