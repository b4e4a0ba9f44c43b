"""The kl-budget mode: a UCB on audited KL (F5) picks the lowest similarity threshold (F6) meeting a target."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from priorcache.cache.kl_budget import (
    CLOSED_THRESHOLD,
    MAX_AUDITS,
    MAX_ENTRY_AUDITS,
    KLBudgetConfig,
    KLBudgetController,
    kl_ucb,
)
from priorcache.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# kl_ucb
# ---------------------------------------------------------------------------------------------


def test_unweighted_ucb_is_the_plain_t_bound() -> None:
    x = [0.1, 0.2, 0.3]  # mean 0.2, s = 0.1, t_{0.95, 2} = 2.919985580355516
    assert kl_ucb(x) == pytest.approx(0.2 + 2.919985580355516 * 0.1 / math.sqrt(3), rel=1e-12)
    rng = np.random.default_rng(0)
    y = rng.exponential(0.05, size=37)
    # One-sided at 0.9 = upper end of scipy's two-sided 0.8 interval.
    upper = stats.t.interval(0.8, df=y.size - 1, loc=y.mean(), scale=stats.sem(y))[1]
    assert kl_ucb(y, confidence=0.9) == pytest.approx(upper, rel=1e-12)


def test_weighted_ucb_by_hand() -> None:
    x, w = np.array([0.1, 0.2, 0.4]), np.array([1.0, 1.0, 2.0])
    v1, v2 = 4.0, 6.0
    n_eff = v1 * v1 / v2  # Kish: 16/6
    mean = (0.1 + 0.2 + 0.8) / 4
    var = (0.1 - mean) ** 2 + (0.2 - mean) ** 2 + 2 * (0.4 - mean) ** 2
    var /= v1 - v2 / v1  # reliability weights: 1/(n−1) for equal weights
    expected = mean + stats.t.ppf(0.95, n_eff - 1) * math.sqrt(var / n_eff)
    assert kl_ucb(x, w) == pytest.approx(expected, rel=1e-12)
    # Only relative weights matter, and equal weights are the unweighted bound.
    assert kl_ucb(x, 7.5 * w) == pytest.approx(expected, rel=1e-12)
    assert kl_ucb(x, [3.0, 3.0, 3.0]) == pytest.approx(kl_ucb(x), rel=1e-12)


def test_ucb_grows_with_confidence_and_is_exact_for_constant_kls() -> None:
    x = [0.01, 0.05, 0.02, 0.2, 0.03]
    assert kl_ucb(x, confidence=0.99) > kl_ucb(x, confidence=0.9) > np.mean(x)
    assert kl_ucb([0.04] * 10) == pytest.approx(0.04)


def test_ucb_is_infinite_without_two_effective_audits() -> None:
    assert kl_ucb([]) == math.inf
    assert kl_ucb([0.1]) == math.inf
    assert kl_ucb([0.1, 0.2], [1.0, 1000.0]) == math.inf  # n_eff ≈ 1.002


@pytest.mark.parametrize(
    "kls, weights, confidence",
    [
        ([0.1, float("nan")], None, 0.95),
        ([0.1, float("inf")], None, 0.95),
        ([0.1, -0.2], None, 0.95),
        ([0.1, 0.2], [1.0, 0.0], 0.95),
        ([0.1, 0.2], [1.0, -1.0], 0.95),
        ([0.1, 0.2], [1.0, float("nan")], 0.95),
        ([0.1, 0.2], [1.0], 0.95),
        ([[0.1, 0.2]], None, 0.95),
        ([0.1, 0.2], None, 0.5),
        ([0.1, 0.2], None, 1.0),
    ],
)
def test_ucb_refuses_bad_input(kls, weights, confidence) -> None:
    with pytest.raises(ConfigError):
        kl_ucb(kls, weights, confidence)


# ---------------------------------------------------------------------------------------------
# KLBudgetConfig
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(target_kl=0.0), "target_kl"),
        (dict(target_kl=float("inf")), "target_kl"),
        (dict(target_kl=True), "target_kl"),
        (dict(confidence=0.5), "confidence"),
        (dict(confidence=1.0), "confidence"),
        (dict(per_entry=1), "per_entry"),
        (dict(min_audits=1), "min_audits"),
        (dict(min_audits=20.0), "min_audits"),
        (dict(min_entry_audits=True), "min_entry_audits"),
        (dict(min_threshold=-1.5), "min_threshold"),
        (dict(max_threshold=1.01), "max_threshold"),
        (dict(min_threshold=0.9, max_threshold=0.9), "min_threshold"),
        (dict(max_threshold=False), "max_threshold"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        KLBudgetConfig(**kwargs)


def test_config_dict_round_trip_and_unknown_keys() -> None:
    cfg = KLBudgetConfig(target_kl=0.02, per_entry=True, min_audits=30)
    assert KLBudgetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="target_kll.*known keys.*target_kl"):
        KLBudgetConfig.from_dict({"target_kll": 0.1})
    with pytest.raises(ConfigError):
        KLBudgetConfig.from_dict([("target_kl", 0.1)])


# ---------------------------------------------------------------------------------------------
# The threshold rule
# ---------------------------------------------------------------------------------------------


def _linear_stream(ctl: KLBudgetController, rng: np.random.Generator, n: int, c: float = 1.0) -> None:
    """KL = c·(1 − sim)·U(0.5, 1.5), sim ~ U[0.5, 1]: E[KL of hits at δ] = c·(1 − δ)/2 in closed form."""
    for _ in range(n):
        s = rng.uniform(0.5, 1.0)
        ctl.observe(s, c * (1.0 - s) * rng.uniform(0.5, 1.5))


def test_no_evidence_serves_no_similarity_hits() -> None:
    cfg = KLBudgetConfig()
    ctl = KLBudgetController(cfg)
    assert ctl.threshold() == CLOSED_THRESHOLD
    for s in np.linspace(0.6, 0.95, cfg.min_audits - 1):  # one short of a verdict
        ctl.observe(float(s), 0.0)
    assert ctl.threshold() == CLOSED_THRESHOLD
    ctl.observe(0.97, 0.0)
    assert ctl.threshold() == pytest.approx(0.6)


def test_audits_only_above_the_top_cannot_lower_it() -> None:
    ctl = KLBudgetController(KLBudgetConfig())
    for _ in range(100):
        ctl.observe(1.0, 0.001)  # exact-text refreshes: fine, but say nothing about lower δ
    assert ctl.threshold() == 0.99


def test_a_failing_first_verdict_closes_similarity_hits_and_the_floor_holds() -> None:
    ctl = KLBudgetController(KLBudgetConfig(target_kl=0.05))
    for s in np.linspace(0.3, 1.0, 200):
        ctl.observe(float(s), 1.0)  # bad everywhere
    assert ctl.threshold() == CLOSED_THRESHOLD
    good = KLBudgetController(KLBudgetConfig(target_kl=0.05, min_threshold=0.7))
    for s in np.linspace(0.3, 1.0, 200):
        good.observe(float(s), 0.0)  # perfect everywhere, yet never below min_threshold
    assert good.threshold() >= 0.7 and good.threshold() == pytest.approx(0.7, abs=0.01)


@pytest.mark.parametrize("seed", range(10))
def test_chosen_threshold_meets_the_target_on_a_known_stream(seed: int) -> None:
    deltas, ratios = [], []
    for target in (0.01, 0.05, 0.2):
        ctl = KLBudgetController(KLBudgetConfig(target_kl=target, confidence=0.95))
        _linear_stream(ctl, np.random.default_rng(seed), 2000)
        delta = ctl.threshold()
        true_kl = (1.0 - delta) / 2.0
        deltas.append(delta)
        ratios.append(true_kl / target)
    # A 95 % bound may miss in ~5 % of runs, and only at the boundary, so by a hair: the monotone scan
    # fails only if the one test just past the true boundary passes by chance (over 900 runs the worst
    # was 7 % above target).
    assert max(ratios) <= 1.1, ratios
    # And it is not needlessly conservative: within 30 % of the best δ = 1 − 2·target.
    assert min(ratios) >= 0.7, ratios
    assert deltas[0] > deltas[1] > deltas[2]  # a lower target needs a higher threshold


def test_violations_are_rare_across_seeds() -> None:
    """The frequency view of the 95 % confidence: ~5 % of runs land (just) above target; allow 10 %."""
    misses = runs = 0
    for seed in range(40):
        for target in (0.01, 0.05, 0.2):
            ctl = KLBudgetController(KLBudgetConfig(target_kl=target))
            _linear_stream(ctl, np.random.default_rng(100 + seed), 2000)
            misses += (1.0 - ctl.threshold()) / 2.0 > target
            runs += 1
    assert misses <= 0.1 * runs, f"{misses}/{runs} runs above target"


@pytest.mark.parametrize("seed", [0, 1])
def test_closed_loop_with_weighted_refresh_audits(seed: int) -> None:
    """As the cache runs: hits audited with prob r (weight 1/r), misses near δ shadow-audited (weight 1)."""
    rng, r, target = np.random.default_rng(seed), 0.1, 0.05
    ctl = KLBudgetController(KLBudgetConfig(target_kl=target))
    for _ in range(1500):
        s = rng.uniform(0.5, 1.0)
        kl = (1.0 - s) * rng.uniform(0.5, 1.5)
        if s >= ctl.threshold():
            if rng.random() < r:
                ctl.observe(s, kl, weight=1.0 / r)
        else:
            ctl.observe(s, kl)
    delta = ctl.threshold()
    assert delta < 0.95  # the shadow audits let it move down from 0.99 ...
    assert (1.0 - delta) / 2.0 <= 1.1 * target  # ... but not past the budget (see above for the slack)


def test_no_lucky_dip_below_a_bad_band() -> None:
    # KL is tiny except in the band 0.80–0.85 of similarities. Averaged with the many good audits below
    # it, δ = 0.5 would pass; the monotone scan must stop above the band's failing thresholds.
    rng, target = np.random.default_rng(3), 0.1
    ctl = KLBudgetController(KLBudgetConfig(target_kl=target))
    sims, kls = [], []
    for _ in range(3000):
        s = rng.uniform(0.5, 1.0)
        kl = (0.6 if 0.80 <= s < 0.85 else 0.005) * rng.uniform(0.8, 1.2)
        ctl.observe(s, kl)
        sims.append(s)
        kls.append(kl)
    assert kl_ucb(kls) <= target  # the dip exists: "lowest passing δ" would go to ~0.5
    delta = ctl.threshold()
    assert 0.80 < delta <= 0.86
    # Every threshold from δ up (with data) passes: monotone-safe.
    sims_a, kls_a = np.array(sims), np.array(kls)
    for c in sims_a[(sims_a >= delta) & (sims_a <= 0.99)]:
        assert kl_ucb(kls_a[sims_a >= c]) <= target


def _reference_threshold(sims: np.ndarray, kls: np.ndarray, w: np.ndarray, cfg: KLBudgetConfig) -> float:
    """The module docstring's rule, written as plainly as possible."""
    cands = sorted(
        {*sims[(sims >= cfg.min_threshold) & (sims <= cfg.max_threshold)].tolist(), cfg.max_threshold}, reverse=True
    )
    chosen = None
    for c in cands:
        at = sims >= c
        if at.sum() < cfg.min_audits:
            continue
        if kl_ucb(kls[at], w[at], cfg.confidence) > cfg.target_kl:
            break
        chosen = c
    return CLOSED_THRESHOLD if chosen is None else chosen


@pytest.mark.parametrize("seed", range(20))
def test_vectorised_scan_matches_the_plain_rule(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 150))
    cfg = KLBudgetConfig(
        target_kl=float(rng.choice([0.02, 0.1, 0.3])),
        min_audits=int(rng.integers(2, 15)),
        confidence=float(rng.choice([0.8, 0.95])),
    )
    sims = np.round(rng.uniform(0.3, 1.0, n), 2)  # rounding makes ties, which must be handled as ≥
    kls = rng.exponential(0.3 * (1.0 - sims) + 0.001)
    w = rng.choice([1.0, 5.0, 20.0], n)
    ctl = KLBudgetController(cfg)
    for s, k, wt in zip(sims, kls, w):
        ctl.observe(float(s), float(k), weight=float(wt))
    assert ctl.threshold() == _reference_threshold(sims, kls, w, cfg)


# ---------------------------------------------------------------------------------------------
# Per entry
# ---------------------------------------------------------------------------------------------


def _per_entry_controller() -> KLBudgetController:
    # Entries' audits also count globally (they describe KL vs similarity too); the bad entry has few
    # enough that the global threshold stays near the stream's δ ≈ 0.9.
    ctl = KLBudgetController(KLBudgetConfig(target_kl=0.05, per_entry=True))
    _linear_stream(ctl, np.random.default_rng(0), 2000)  # global evidence: δ ≈ 0.9
    rng = np.random.default_rng(1)
    for s in rng.uniform(0.6, 1.0, 30):
        ctl.observe(float(s), 0.001 * rng.uniform(0.5, 1.5), entry_id=1)  # a consistently good entry
    for s in rng.uniform(0.9, 1.0, 8):
        ctl.observe(float(s), 0.3 * rng.uniform(0.5, 1.5), entry_id=2)  # a bad one, even when close
    for _ in range(10):
        ctl.observe(1.0, 0.0, entry_id=3)  # only exact refreshes: no reason to be stricter than global
    for s in (0.7, 0.8):
        ctl.observe(s, 0.0, entry_id=4)  # too few audits of its own
    return ctl


def test_per_entry_thresholds() -> None:
    ctl = _per_entry_controller()
    g = ctl.threshold()
    assert 0.85 < g < 0.95
    assert ctl.threshold(1) < g - 0.1
    assert ctl.threshold(1) >= ctl.config.min_threshold
    assert ctl.threshold(2) == CLOSED_THRESHOLD  # its own audits refute even the top band
    assert ctl.threshold(3) == g
    assert ctl.threshold(4) == g
    assert ctl.threshold(99) == g  # never audited
    summary = ctl.summary()
    assert summary["entries_with_own_threshold"] == 3
    assert summary["min_own_threshold"] == pytest.approx(ctl.threshold(1))
    ctl.forget(1)
    assert ctl.threshold(1) == g
    assert ctl.summary()["entries_with_own_threshold"] == 2
    ctl.forget(12345)  # forgetting an unknown entry is harmless


def test_per_entry_off_uses_the_global_threshold() -> None:
    ctl = KLBudgetController(KLBudgetConfig(per_entry=False))
    for s in np.linspace(0.6, 1.0, 40):
        ctl.observe(float(s), 0.0, entry_id=7)
    assert ctl.threshold(7) == ctl.threshold() == pytest.approx(0.6)
    assert ctl.summary()["entries_with_own_threshold"] == 0


# ---------------------------------------------------------------------------------------------
# observe(), bounds, summary
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        (1.5, 0.1),
        (float("nan"), 0.1),
        (True, 0.1),
        (0.9, -0.1),
        (0.9, float("inf")),
        (0.9, "0.1"),
        (0.9, 0.1, None, 0.0),
        (0.9, 0.1, None, -2.0),
        (0.9, 0.1, None, float("inf")),
        (0.9, 0.1, "a"),
        (0.9, 0.1, True),
        (0.9, 0.1, 1.5),
    ],
)
def test_observe_refuses_bad_audits(args: tuple) -> None:
    with pytest.raises(ConfigError):
        KLBudgetController(KLBudgetConfig(per_entry=True)).observe(*args)


def test_rounding_noise_is_accepted() -> None:
    ctl = KLBudgetController(KLBudgetConfig())
    ctl.observe(1.0000001, -1e-17, entry_id=np.int64(3))  # float32 cosine, log-space KL
    assert ctl.to_dict()["audits"] == {"similarity": [1.0], "kl": [0.0], "weight": [1.0]}


def test_evidence_is_bounded() -> None:
    ctl = KLBudgetController(KLBudgetConfig(per_entry=True))
    for i in range(MAX_AUDITS + 100):
        ctl.observe(0.9, 0.01, entry_id=i % 2)
    state = ctl.to_dict()
    assert len(state["audits"]["kl"]) == MAX_AUDITS
    assert len(state["entries"]["0"]["kl"]) == MAX_ENTRY_AUDITS
    assert ctl.summary()["audits"] == MAX_AUDITS


def test_summary_reports_the_evidence_at_the_threshold() -> None:
    ctl = KLBudgetController(KLBudgetConfig(target_kl=0.05))
    assert ctl.summary()["achieved_kl"] is None and ctl.summary()["achieved_kl_ucb"] is None
    _linear_stream(ctl, np.random.default_rng(4), 1000)
    s = ctl.summary()
    sims = np.array(ctl.to_dict()["audits"]["similarity"])
    kls = np.array(ctl.to_dict()["audits"]["kl"])
    at = sims >= s["threshold"]
    assert s["audits"] == 1000 and s["audits_at_threshold"] == int(at.sum())
    assert s["achieved_kl"] == pytest.approx(kls[at].mean())
    assert s["achieved_kl_ucb"] == pytest.approx(kl_ucb(kls[at]))
    assert s["achieved_kl"] < s["achieved_kl_ucb"] <= s["target_kl"]
    json.dumps(s, allow_nan=False)  # plain JSON


# ---------------------------------------------------------------------------------------------
# Persistence
# ---------------------------------------------------------------------------------------------


def test_state_round_trip() -> None:
    ctl = _per_entry_controller()
    state = json.loads(json.dumps(ctl.to_dict(), allow_nan=False))
    other = KLBudgetController(KLBudgetConfig(target_kl=0.05, per_entry=True))
    other.load_dict(state)
    assert other.summary() == ctl.summary()
    for e in (1, 2, 3, 4, 99):
        assert other.threshold(e) == ctl.threshold(e)
    assert other.to_dict() == ctl.to_dict()
    # The evidence warm-starts another target: a looser budget allows a lower threshold.
    looser = KLBudgetController(KLBudgetConfig(target_kl=0.2))
    looser.load_dict(state)
    assert looser.threshold() < ctl.threshold()


def _damaged_states() -> list:
    ctl = KLBudgetController(KLBudgetConfig(per_entry=True))
    for s in (0.9, 0.95, 0.97):
        ctl.observe(s, 0.01, entry_id=1)
    good = ctl.to_dict()

    def edit(fn):
        state = json.loads(json.dumps(good))
        fn(state)
        return state

    return [
        None,
        [],
        edit(lambda d: d.pop("audits")),
        edit(lambda d: d.update(extra=1)),
        edit(lambda d: d.update(format="kl-budget/0")),
        edit(lambda d: d["config"].update(target_kl=-1)),
        edit(lambda d: d["config"].update(bogus=1)),
        edit(lambda d: d["audits"]["kl"].pop()),
        edit(lambda d: d["audits"].update(kl="0.1")),
        edit(lambda d: d["audits"].pop("weight")),
        edit(lambda d: d["audits"]["kl"].__setitem__(0, float("nan"))),
        edit(lambda d: d["audits"]["kl"].__setitem__(0, None)),
        edit(lambda d: d["audits"]["weight"].__setitem__(0, 0.0)),
        edit(lambda d: d["audits"]["similarity"].__setitem__(0, 3.0)),
        edit(lambda d: d.update(entries=[])),
        edit(lambda d: d["entries"].update(x=d["entries"]["1"])),
        edit(lambda d: d["entries"]["1"]["kl"].__setitem__(1, -5.0)),
    ]


@pytest.mark.parametrize("state", _damaged_states())
def test_damaged_state_is_refused_and_leaves_the_evidence(state) -> None:
    ctl = KLBudgetController(KLBudgetConfig(per_entry=True))
    for s in np.linspace(0.6, 1.0, 30):
        ctl.observe(float(s), 0.0, entry_id=5)
    before = ctl.to_dict()
    with pytest.raises(ConfigError):
        ctl.load_dict(state)
    assert ctl.to_dict() == before
