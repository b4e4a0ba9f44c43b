"""The formulas about a prior's error, each in its one home (docs/design.md): F1, F5 and F6.

F1 (posterior): π(a|s) = p(a|s)·exp(Q(s,a)/α) / Z(s), Z(s) = Σ_a p(a|s)·exp(Q(s,a)/α), in log space
so that 1 to 1,000 candidates and extreme Q values neither overflow nor lose the prior.

F5 (the cache's audit): with p̃ the served prior and p the fresh one on the same actions,
ε(s) = max_a |log p̃(a|s) − log p(a|s)|, and under the same Q and α: |log Z̃ − log Z| ≤ ε(s) and
KL(π̃‖π) ≤ 2ε(s). Why: log π̃ − log π = (log p̃ − log p) − (log Z̃ − log Z), and Z̃/Z = E_π[p̃/p] is a
mean of ratios within e^(±ε), so both terms are at most ε in absolute value. An audit reports ε, the
KL and the bound 2ε, so a violated bound (a bug) or a loose one (the usual KL ≪ 2ε) shows.

F6 (threshold form): for unit embeddings a hit at cosine ≥ δ lies within distance √(2(1−δ)), so an
L-Lipschitz log-prior gives ε(s) ≤ L·√(2(1−δ)) + ε_stale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from priorcache.errors import ConfigError


def _check_alpha(alpha: float) -> None:
    if not (np.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"temperature α must be a finite number > 0, got {alpha}")


def posterior_logits(log_prior: np.ndarray, q_values: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """F1: (log π, log Z) with log π = log p + Q/α − log Z."""
    log_prior = np.asarray(log_prior, dtype=np.float64)
    q_values = np.asarray(q_values, dtype=np.float64)
    if log_prior.shape != q_values.shape or log_prior.ndim != 1 or log_prior.size == 0:
        raise ConfigError(f"prior {log_prior.shape} and Q {q_values.shape} must be the same non-empty 1-D shape")
    _check_alpha(alpha)
    if not np.all(np.isfinite(q_values)):
        raise ConfigError("Q values contain NaN or ±inf")
    logits = log_prior + q_values / alpha
    log_z = float(np.logaddexp.reduce(logits))
    return logits - log_z, log_z


def posterior_log_probs(log_prior: np.ndarray, q_values: np.ndarray, alpha: float) -> np.ndarray:
    """F1 in log space: log π = log p + Q/α − log Z."""
    return posterior_logits(log_prior, q_values, alpha)[0]


def kl_divergence(log_p: np.ndarray, log_q: np.ndarray) -> float:
    """KL(p‖q) for two distributions given as log-probabilities on the same support."""
    p = np.exp(log_p)
    return float(max(0.0, np.sum(p * (log_p - log_q))))


def f6_distance(similarity: np.ndarray | float) -> np.ndarray:
    """F6: ‖e − e'‖ = √(2(1 − cos)) for unit embeddings (cosines a hair above 1 count as distance 0)."""
    return np.sqrt(np.clip(2.0 * (1.0 - np.asarray(similarity, dtype=np.float64)), 0.0, None))


@dataclass(frozen=True)
class Audit:
    """One F5 measurement: ε (nats), KL(π̃‖π) (nats), the bound 2ε, and |log Z̃ − log Z|."""

    epsilon: float
    kl: float
    kl_bound: float
    log_z_gap: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {"epsilon": self.epsilon, "kl": self.kl, "kl_bound": self.kl_bound, "log_z_gap": self.log_z_gap}


def _as_log_probs(values: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ConfigError(f"{name} must be a non-empty 1-D vector, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name} contains NaN or ±inf")
    return arr


def f5_audit(
    served_log_prior: np.ndarray,
    fresh_log_prior: np.ndarray,
    q_values: np.ndarray | None = None,
    alpha: float = 1.0,
) -> Audit:
    """F5 between a served and a fresh prior, given as log-probabilities on the same actions.

    ``q_values`` (zeros when None: the audit then compares the priors themselves) and ``alpha`` are
    the agent's, so the KL is the one its behaviour actually incurs."""
    served = _as_log_probs(served_log_prior, "served prior")
    fresh = _as_log_probs(fresh_log_prior, "fresh prior")
    if served.shape != fresh.shape:
        raise ConfigError(f"served {served.shape} and fresh {fresh.shape} priors must be on the same actions")
    if q_values is None:
        q = np.zeros_like(served)
    else:
        q = np.asarray(q_values, dtype=np.float64)
        if q.shape != served.shape:
            raise ConfigError(f"Q values {q.shape} must align with the {served.size} actions")
    epsilon = float(np.max(np.abs(served - fresh)))
    log_pi_served, log_z_served = posterior_logits(served, q, alpha)
    log_pi_fresh, log_z_fresh = posterior_logits(fresh, q, alpha)
    kl = kl_divergence(log_pi_served, log_pi_fresh)
    return Audit(epsilon=epsilon, kl=kl, kl_bound=2.0 * epsilon, log_z_gap=abs(log_z_served - log_z_fresh))
