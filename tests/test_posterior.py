"""F1 posterior and F2 temperature schedule."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from priorcache.errors import ConfigError
from priorcache.posterior import PosteriorSampler, TemperatureSchedule
from priorcache.prior.action_prior import PriorConfig, log_prior
from priorcache.prior.divergence import kl_divergence, posterior_log_probs


def test_posterior_matches_direct_formula():
    p = np.array([0.5, 0.3, 0.2])
    q = np.array([0.0, 1.0, -2.0])
    alpha = 0.7
    direct = p * np.exp(q / alpha)
    direct /= direct.sum()
    np.testing.assert_allclose(np.exp(posterior_log_probs(np.log(p), q, alpha)), direct, rtol=1e-12)


def test_zero_q_returns_prior():
    lp = log_prior(np.array([-1.0, -3.0, -0.5]))
    np.testing.assert_allclose(posterior_log_probs(lp, np.zeros(3), 1.0), lp, atol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 10, 1000])
def test_stable_for_sizes_and_extreme_q(n):
    rng = np.random.default_rng(n)
    lp = log_prior(rng.normal(size=n) * 5)
    for scale in (0.0, 1e3, 1e8):
        q = rng.normal(size=n) * scale
        for alpha in (1e-4, 1.0, 1e4):
            lpi = posterior_log_probs(lp, q, alpha)
            assert np.all(np.isfinite(lpi))
            assert np.isclose(np.exp(lpi).sum(), 1.0)
    # An overwhelming Q picks its action even at a tiny prior.
    q = np.zeros(n)
    q[-1] = 1e9
    assert np.argmax(posterior_log_probs(lp, q, 1e-3)) == n - 1


def test_invalid_inputs_rejected():
    with pytest.raises(ConfigError, match="α"):
        posterior_log_probs(np.zeros(2), np.zeros(2), 0.0)
    with pytest.raises(ConfigError, match="NaN"):
        posterior_log_probs(np.zeros(2), np.array([0.0, np.nan]), 1.0)
    with pytest.raises(ConfigError, match="shape"):
        posterior_log_probs(np.zeros(2), np.zeros(3), 1.0)
    with pytest.raises(ConfigError, match="shape"):
        posterior_log_probs(np.zeros(0), np.zeros(0), 1.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-50, 50), min_size=1, max_size=30), st.floats(0.01, 100.0), st.integers(0, 10_000))
def test_posterior_maximises_kl_regularised_value(scores, alpha, seed):
    """F1 is the argmax of E_π[Q] − α·KL(π‖p): no random distribution does better."""
    n = len(scores)
    lp = log_prior(np.array(scores))
    q = np.random.default_rng(seed).normal(size=n) * 3
    lpi = posterior_log_probs(lp, q, alpha)
    best = np.exp(lpi) @ q - alpha * kl_divergence(lpi, lp)
    other = np.random.default_rng(seed + 1).dirichlet(np.ones(n))
    other_lp = np.log(np.clip(other, 1e-300, None))
    assert best >= other @ q - alpha * kl_divergence(other_lp, lp) - 1e-7


def test_f3_floor_and_normalisation():
    cfg = PriorConfig(temperature=0.5, floor=0.1)
    p = np.exp(log_prior(np.array([0.0, -100.0, -200.0, -1.0]), cfg))
    assert np.isclose(p.sum(), 1.0)
    assert p.min() >= 0.1 / 4 - 1e-12
    assert np.argmax(p) == 0
    with pytest.raises(ConfigError, match="floor"):
        PriorConfig(floor=1.0)
    with pytest.raises(ConfigError, match="temperature"):
        PriorConfig(temperature=0.0)


def test_temperature_cools_as_hit_rate_rises():
    sched = TemperatureSchedule(alpha_0=1.0, alpha_min=0.2, ema_decay=0.9)
    assert sched.alpha == pytest.approx(1.0)
    alphas = [sched.update(True) for _ in range(200)]
    assert all(a2 <= a1 for a1, a2 in zip(alphas, alphas[1:]))
    assert alphas[-1] == pytest.approx(0.2, abs=1e-6)
    for _ in range(200):
        sched.update(False)
    assert sched.alpha == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ConfigError):
        TemperatureSchedule(alpha_0=0.1, alpha_min=0.5)


def test_sampler_frequencies_follow_posterior():
    sampler = PosteriorSampler(TemperatureSchedule(1.0, 1.0), np.random.default_rng(0))
    lp = np.log(np.array([0.2, 0.3, 0.5]))
    q = np.array([1.0, 0.0, -1.0])
    expected = sampler.distribution(lp, q)
    counts = np.bincount([sampler.sample(lp, q)[0] for _ in range(20_000)], minlength=3) / 20_000
    np.testing.assert_allclose(counts, expected, atol=0.015)
