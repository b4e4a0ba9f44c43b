"""The adaptive mode's meta-optimiser: surrogate gradient directions, convergence on a synthetic
stream with a known optimum, bounds, and its wiring into the prior cache."""

from __future__ import annotations

import math

import numpy as np
import pytest

from priorcache.cache.meta import CacheParams, MetaConfig, MetaOptimiser, fit_kl_model
from priorcache.cache.prior_cache import CacheConfig, PriorCache
from priorcache.errors import ConfigError
from priorcache.prior.base import Prompt
from tests.cache._fakes import FakeBackend, HashEncoder, at_cosine


def _feed_window(meta: MetaOptimiser, sims: np.ndarray) -> None:
    for s in sims:
        meta.record_lookup(float(s), servable=True, hit=False, full_call=True, partial_call=False)


def test_raising_delta_lowers_the_soft_hit_rate_and_the_kl():
    meta = MetaOptimiser(MetaConfig(update_every=10_000), CacheParams(2048, 0.9, 0.05))
    rng = np.random.default_rng(0)
    _feed_window(meta, rng.uniform(0.7, 1.0, 500))
    for s in rng.uniform(0.8, 1.0, 50):
        meta.record_audit(float(s), 0.1 * math.sqrt(2 * (1 - s)), weight=1.0, served=False)
    low, high = meta.surrogate(0.85, 0.05), meta.surrogate(0.95, 0.05)
    # fewer soft hits at a higher δ: more queries, less KL served
    assert high["query_rate"] > low["query_rate"]
    assert high["expected_kl"] < low["expected_kl"]
    # and the analytic derivatives agree in sign with those finite differences
    mid = meta.surrogate(0.9, 0.05)
    assert mid["dq_dtheta_delta"] > 0 and mid["dkappa_dtheta_delta"] < 0
    # refreshing more costs queries and lowers the KL served
    assert mid["dq_dtheta_r"] > 0 and mid["dkappa_dtheta_r"] < 0


def test_surrogate_derivative_matches_finite_differences():
    meta = MetaOptimiser(MetaConfig(update_every=10_000), CacheParams(2048, 0.9, 0.05))
    rng = np.random.default_rng(1)
    _feed_window(meta, rng.uniform(0.8, 1.0, 300))
    for s in rng.uniform(0.8, 1.0, 40):
        meta.record_audit(float(s), 0.2 * (1 - s), weight=1.0, served=False)

    def at_theta(theta: float) -> dict:
        return meta.surrogate(1 / (1 + math.exp(-theta)), 0.05)

    theta, h = math.log(0.9 / 0.1), 1e-5
    mid = at_theta(theta)
    fd_q = (at_theta(theta + h)["query_rate"] - at_theta(theta - h)["query_rate"]) / (2 * h)
    fd_k = (at_theta(theta + h)["expected_kl"] - at_theta(theta - h)["expected_kl"]) / (2 * h)
    assert mid["dq_dtheta_delta"] == pytest.approx(fd_q, rel=1e-4)
    assert mid["dkappa_dtheta_delta"] == pytest.approx(fd_k, rel=1e-4)


def _simulate(start_delta: float, slope: float, windows: int, seed: int, **cfg) -> list[float]:
    """A stream with known KL(s) = slope·√(2(1−s)): hits at s ≥ δ, refresh audits on a share r of
    them, shadow audits on near-misses (as the cache takes them). Returns δ after every window."""
    config = MetaConfig(update_every=100, **cfg)
    meta = MetaOptimiser(config, CacheParams(2048, start_delta, 0.05), seed=seed)
    rng = np.random.default_rng(seed)
    trajectory = []
    floor = config.threshold_bounds[0]
    for _ in range(windows * config.update_every):
        p = meta.params
        s = float(rng.uniform(0.6, 1.0))
        kl = slope * math.sqrt(2 * (1 - s)) * float(rng.uniform(0.5, 1.5))
        hit = s >= p.similarity_threshold
        refresh = hit and rng.random() < p.refresh_rate
        if refresh:
            meta.record_audit(s, kl, weight=1 / p.refresh_rate, served=True)
        elif not hit and s >= floor:
            meta.record_audit(s, kl, weight=1.0, served=False)
        meta.record_reward(float(rng.normal()))  # return carries no signal here: pure noise
        if meta.record_lookup(s, True, hit and not refresh, not hit or refresh, False) is not None:
            trajectory.append(meta.center.similarity_threshold)
    return trajectory


@pytest.mark.parametrize("start", [0.97, 0.81])
def test_optimiser_moves_delta_towards_the_known_optimum(start):
    # J = −q − 20·κ with KL(s) = 0.1·d(s): the marginal hit is worth it while 20·KL(δ) < 1, so
    # δ* solves 0.1·√(2(1−δ)) = 0.05, i.e. δ* = 0.875 (independent of r).
    optimum = 1 - 0.5**2 / 2
    trajectory = _simulate(start, slope=0.1, windows=240, seed=3)
    final = float(np.mean(trajectory[-40:]))
    assert abs(final - optimum) < 0.03, (start, final)
    assert abs(final - optimum) < abs(start - optimum) / 2


def test_a_riskier_similarity_profile_gives_a_higher_threshold():
    safe = np.mean(_simulate(0.9, slope=0.05, windows=200, seed=4)[-40:])
    risky = np.mean(_simulate(0.9, slope=0.2, windows=200, seed=4)[-40:])
    assert risky > safe + 0.03


@pytest.mark.parametrize("kl_weight", [0.0, 1e6])
def test_parameters_stay_inside_their_bounds(kl_weight):
    config = MetaConfig(
        update_every=20,
        kl_weight=kl_weight,
        learning_rate=0.5,
        perturbation=0.5,
        threshold_bounds=(0.85, 0.95),
        refresh_bounds=(0.03, 0.2),
        capacity_bounds=(8, 64),
    )
    meta = MetaOptimiser(config, CacheParams(32, 0.9, 0.1), seed=0)
    rng = np.random.default_rng(0)
    seen = []
    for _ in range(4000):
        s = float(rng.uniform(0.7, 1.0))
        meta.record_audit(s, 0.3 * (1 - s), weight=1.0, served=False)
        meta.record_reward(float(rng.normal()))
        meta.record_lookup(s, True, s > 0.9, s <= 0.9, False, evictions=int(rng.random() < 0.3))
        seen.append(meta.params)
    assert all(8 <= p.capacity <= 64 for p in seen)
    assert all(0.85 - 1e-12 <= p.similarity_threshold <= 0.95 + 1e-12 for p in seen)
    assert all(0.03 - 1e-12 <= p.refresh_rate <= 0.2 + 1e-12 for p in seen)
    final = meta.center.similarity_threshold
    # no KL price: δ runs to its floor; an enormous one: to its ceiling
    assert final == pytest.approx(0.85 if kl_weight == 0 else 0.95, abs=0.01)
    assert len({p.capacity for p in seen}) > 1  # evictions happen, so K is explored


def _feed(meta: MetaOptimiser, rng: np.random.Generator, lookups: int) -> list[CacheParams]:
    seen = []
    for _ in range(lookups):
        s = float(rng.uniform(0.7, 1.0))
        meta.record_audit(s, 0.3 * (1 - s), weight=1.0, served=bool(rng.random() < 0.5))
        meta.record_reward(float(rng.normal()))
        meta.record_td(bool(rng.random() < 0.5), float(rng.random()), 1)
        meta.record_lookup(s, True, s > 0.9, s <= 0.9, False, evictions=int(rng.random() < 0.3))
        seen.append(meta.params)
    return seen


def test_run_time_state_continues_the_optimiser_exactly():
    """Stopped mid-window and mid-pair, then restored into a fresh optimiser through JSON: the two
    go on with the same perturbations, windows and Adam steps as one that was never stopped."""
    import json

    config = MetaConfig(update_every=7)
    whole = MetaOptimiser(config, CacheParams(256, 0.9, 0.1), seed=0)
    stopped = MetaOptimiser(config, CacheParams(256, 0.9, 0.1), seed=0)
    _feed(whole, np.random.default_rng(1), 53)
    _feed(stopped, np.random.default_rng(1), 53)
    resumed = MetaOptimiser(config, CacheParams(256, 0.9, 0.1), seed=99)
    resumed.load_runtime_state(json.loads(json.dumps(stopped.runtime_state())))
    assert _feed(resumed, np.random.default_rng(2), 60) == _feed(whole, np.random.default_rng(2), 60)
    assert resumed.updates == whole.updates > 10 and np.array_equal(resumed.theta, whole.theta)


@pytest.mark.parametrize(
    ("key", "value"), [("adam", {"m": [0, 0], "v": [0, 0, 0], "t": 0}), ("updates", -1), ("rng", 3), ("td", [[0, 0]])]
)
def test_a_damaged_run_time_state_is_refused_and_changes_nothing(key, value):
    meta = MetaOptimiser(MetaConfig(update_every=7), CacheParams(256, 0.9, 0.1), seed=0)
    _feed(meta, np.random.default_rng(1), 20)
    before = meta.runtime_state()
    with pytest.raises(ConfigError, match="damaged meta-optimiser state"):
        meta.load_runtime_state({**before, key: value})
    assert meta.runtime_state() == before


def test_capacity_rests_while_the_cache_never_evicts():
    meta = MetaOptimiser(MetaConfig(update_every=10), CacheParams(100, 0.9, 0.05), seed=0)
    rng = np.random.default_rng(0)
    for _ in range(1000):
        meta.record_reward(float(rng.normal()))
        meta.record_lookup(float(rng.uniform(0.5, 1)), True, False, True, False)
        assert meta.params.capacity == 100


def test_kl_fit_recovers_a_known_line_and_stays_non_negative():
    rng = np.random.default_rng(0)
    s = rng.uniform(0.6, 1.0, 400)
    kl = 0.01 + 0.3 * np.sqrt(2 * (1 - s)) + rng.normal(0, 0.002, s.size)
    a, b = fit_kl_model(s, kl, np.ones_like(s), prior_slope=0.25, prior_audits=0)
    assert a == pytest.approx(0.01, abs=0.003) and b == pytest.approx(0.3, abs=0.01)
    # a decreasing cloud must not give a negative slope
    a, b = fit_kl_model(s, 0.5 - 0.3 * np.sqrt(2 * (1 - s)), np.ones_like(s), 0.25, 0)
    assert b == 0.0 and a > 0
    # no audits: the cautious prior
    assert fit_kl_model([], [], [], prior_slope=0.25, prior_audits=10) == pytest.approx((0.0, 0.25), abs=1e-9)


def test_td_gap_prices_kl_when_cached_priors_train_worse():
    meta = MetaOptimiser(MetaConfig(), CacheParams(2048, 0.9, 0.05))
    assert meta.td_gap() == 0.0
    meta.record_td(True, 3.0, 10)
    meta.record_td(False, 2.0, 10)
    assert meta.td_gap() == pytest.approx(0.5)
    meta.record_td(True, 100.0, 1)
    assert meta.td_gap() == 2.0  # capped


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        (dict(update_every=1), "update_every"),
        (dict(kl_weight=-1), "kl_weight"),
        (dict(learning_rate=0), "learning_rate"),
        (dict(threshold_bounds=(0.9, 0.8)), "threshold_bounds"),
        (dict(threshold_bounds=(0.5, 1.0)), "threshold_bounds"),
        (dict(capacity_bounds=(0, 10)), "capacity_bounds"),
        (dict(refresh_bounds=(0.1,)), "refresh_bounds"),
        (dict(soft_hit_temperature=float("nan")), "soft_hit"),
    ],
)
def test_bad_meta_config_is_refused(kwargs, named):
    with pytest.raises(ConfigError, match=named):
        MetaConfig(**kwargs)


def test_meta_config_round_trips_through_json_lists():
    config = MetaConfig(threshold_bounds=(0.7, 0.95))
    again = MetaConfig.from_dict({**config.to_dict(), "threshold_bounds": [0.7, 0.95]})
    assert again == config


# --- in the cache -------------------------------------------------------------------------------
GOAL = Prompt("Goal: find the key.\n", "")
ACTIONS = ["go north", "take key", "take apple", "look"]


def test_adaptive_cache_updates_its_parameters_and_keeps_its_invariants():
    config = CacheConfig(
        mode="adaptive",
        capacity=16,
        similarity_threshold=0.9,
        refresh_rate=0.1,
        meta={"update_every": 10, "capacity_bounds": (4, 16), "learning_rate": 0.3},
    )
    cache = PriorCache(config, HashEncoder(), FakeBackend())
    rng = np.random.default_rng(0)
    updates, audits = [], []
    for i in range(400):
        state = f"room {int(rng.integers(0, 40))}"
        emb = at_cosine(float(rng.uniform(0.75, 1.0)))
        out = cache.lookup(
            state, Prompt(GOAL.prefix, state), ACTIONS, embedding=emb, step=i, q_values=rng.normal(size=len(ACTIONS))
        )
        cache.observe_reward(float(rng.random() < 0.1))
        if out.meta_update is not None:
            updates.append(out.meta_update)
        if out.audit_record is not None:
            audits.append(out.audit_record)
        cache._assert_consistent()
        p = cache.params()
        assert 4 <= p["capacity"] <= 16 and 0.8 <= p["similarity_threshold"] <= 0.99
        assert 0.02 <= p["refresh_rate"] <= 0.25
    assert len(updates) == 40 and len(cache.meta_log()) == 40
    assert {
        "capacity",
        "similarity_threshold",
        "refresh_rate",
        "query_rate",
        "expected_kl",
        "objective",
        "return_rate",
    } <= set(updates[0])
    shadows = [a for a in audits if a["kind"] == "shadow"]
    served = [a for a in audits if a["served"]]
    assert shadows and served
    assert all(not a["served"] and a["weight"] == 1.0 for a in shadows)
    assert all(a["weight"] == pytest.approx(1 / a["refresh_rate"]) for a in served)
    assert all(a["kl"] <= a["kl_bound"] + 1e-9 for a in audits)  # F5 on both kinds
    stats = cache.stats()
    assert stats["meta_updates"] == 40 and stats["shadow_audits"] == len(shadows)
    assert stats["adaptation_time_s"] > 0


def test_static_mode_takes_no_shadow_audits_and_never_moves():
    cache = PriorCache(CacheConfig(mode="static", refresh_rate=0.0), HashEncoder(), FakeBackend())
    rng = np.random.default_rng(0)
    for i in range(100):
        out = cache.lookup(
            f"room {i}", Prompt(GOAL.prefix, f"room {i}"), ACTIONS, embedding=at_cosine(float(rng.uniform(0.8, 1.0)))
        )
        assert out.audit_record is None and out.meta_update is None
    assert cache.params() == {"capacity": 2048, "similarity_threshold": 0.92, "refresh_rate": 0.0}
    assert cache.stats()["shadow_audits"] == 0
