"""F5 as the cache measures it (categorical priors): ε, KL(π̃‖π) and the bound 2ε."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from priorcache.errors import ConfigError
from priorcache.prior.action_prior import PriorConfig, log_prior
from priorcache.prior.divergence import Audit
from tests.cache._fakes import audit_prior


def test_identical_scores_give_zero_error() -> None:
    s = np.array([-1.0, -2.0, -0.5])
    a = audit_prior(s, s, np.array([1.0, 0.0, -1.0]), 0.5)
    assert a == Audit(0.0, 0.0, 0.0, 0.0)


def test_a_constant_shift_of_the_scores_is_no_error() -> None:
    # F3's softmax ignores a common offset, so a stale entry off by a constant serves the same prior.
    s = np.array([-1.0, -2.0, -0.5])
    a = audit_prior(s, s + 3.0)
    assert a.epsilon < 1e-12 and a.kl < 1e-12


def test_hand_computed_two_action_case() -> None:
    # p̃ = (1/2, 1/2), p = (3/4, 1/4) with τ = 1, no floor and Q = 0.
    cfg = PriorConfig(temperature=1.0, floor=0.0)
    a = audit_prior(np.array([0.0, 0.0]), np.array([math.log(3.0), 0.0]), prior_config=cfg)
    assert a.epsilon == pytest.approx(math.log(2.0))
    assert a.kl == pytest.approx(0.5 * math.log(4.0 / 3.0))
    assert a.kl_bound == pytest.approx(2 * math.log(2.0))
    assert a.log_z_gap == pytest.approx(0.0, abs=1e-12)  # Q = 0: both Z are 1


def test_q_values_change_the_kl_but_not_epsilon() -> None:
    served, fresh = np.array([0.0, -1.0, -3.0]), np.array([-1.0, 0.0, -3.0])
    flat = audit_prior(served, fresh)
    # Q puts nearly all posterior mass on the third action, where both priors agree closely.
    peaked = audit_prior(served, fresh, np.array([0.0, 0.0, 20.0]), alpha=1.0)
    assert peaked.epsilon == pytest.approx(flat.epsilon)
    assert peaked.kl < flat.kl / 100


def test_floor_bounds_epsilon() -> None:
    # With floor ε_f every p(a) ≥ ε_f/n and ≤ 1, so |log p̃ − log p| ≤ log(n/ε_f) however far apart ℓ are.
    cfg = PriorConfig(temperature=1.0, floor=0.1)
    a = audit_prior(np.array([100.0, -100.0]), np.array([-100.0, 100.0]), prior_config=cfg)
    assert a.epsilon <= math.log(2 / 0.1) + 1e-9
    assert a.kl <= a.kl_bound


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(served_scores=np.array([0.0, 1.0]), fresh_scores=np.array([0.0])),
        dict(served_scores=np.array([]), fresh_scores=np.array([])),
        dict(served_scores=np.array([0.0, np.nan]), fresh_scores=np.array([0.0, 1.0])),
        dict(served_scores=np.array([0.0, 1.0]), fresh_scores=np.array([0.0, np.inf])),
        dict(served_scores=np.array([0.0, 1.0]), fresh_scores=np.array([0.0, 1.0]), q_values=np.array([1.0])),
        dict(served_scores=np.array([0.0, 1.0]), fresh_scores=np.array([0.0, 1.0]), alpha=0.0),
        dict(served_scores=np.array([0.0, 1.0]), fresh_scores=np.array([0.0, 1.0]), q_values=np.array([1.0, np.nan])),
    ],
)
def test_bad_inputs_are_refused(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        audit_prior(**kwargs)


finite = st.floats(min_value=-30.0, max_value=30.0, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    pool=st.integers(min_value=1, max_value=12),
    alpha=st.floats(min_value=0.01, max_value=100.0),
    temperature=st.floats(min_value=0.1, max_value=5.0),
    floor=st.sampled_from([0.0, 0.01, 0.05, 0.3]),
)
def test_f5_bounds_hold(data: st.DataObject, pool: int, alpha: float, temperature: float, floor: float) -> None:
    """F5 on random priors, Q, α, and a random subset of a candidate pool (as F7 serves it)."""
    served_pool = np.array(data.draw(st.lists(finite, min_size=pool, max_size=pool)))
    fresh_pool = np.array(data.draw(st.lists(finite, min_size=pool, max_size=pool)))
    q_pool = np.array(data.draw(st.lists(st.floats(-50.0, 50.0), min_size=pool, max_size=pool)))
    subset = data.draw(st.lists(st.integers(0, pool - 1), min_size=1, max_size=pool, unique=True))
    served, fresh, q = served_pool[subset], fresh_pool[subset], q_pool[subset]
    cfg = PriorConfig(temperature=temperature, floor=floor)

    a = audit_prior(served, fresh, q, alpha, cfg)

    # Recompute everything independently of the audit's own arithmetic.
    lp_served, lp_fresh = log_prior(served, cfg), log_prior(fresh, cfg)
    eps = float(np.max(np.abs(lp_served - lp_fresh)))
    log_z_served = float(np.logaddexp.reduce(lp_served + q / alpha))
    log_z_fresh = float(np.logaddexp.reduce(lp_fresh + q / alpha))
    log_pi_served = lp_served + q / alpha - log_z_served
    log_pi_fresh = lp_fresh + q / alpha - log_z_fresh
    kl = float(np.sum(np.exp(log_pi_served) * (log_pi_served - log_pi_fresh)))

    assert a.epsilon == pytest.approx(eps, abs=1e-9)
    assert a.kl == pytest.approx(max(kl, 0.0), abs=1e-9)
    assert a.kl_bound == pytest.approx(2 * a.epsilon)
    assert abs(log_z_served - log_z_fresh) <= eps + 1e-9
    assert a.log_z_gap <= a.epsilon + 1e-9
    assert kl <= 2 * eps + 1e-9
    assert a.kl <= a.kl_bound + 1e-9
