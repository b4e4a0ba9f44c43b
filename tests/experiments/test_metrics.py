"""Run summaries (docs/design.md §1) and the cached-vs-reference comparison."""

import math

import numpy as np
import pytest
from scipy import stats

from priorcache.experiments.metrics import compare, mean_ci95, ratio_ci95, summarise, summarise_held_out


def record(seed, episode, success, ret, llm_calls, partial, hits, times, audits=()):
    return {
        "seed": seed,
        "episode": episode,
        "success": success,
        "episode_return": ret,
        "steps": len(times),
        "llm_calls": llm_calls,
        "partial_calls": partial,
        "lookups": len(times),
        "hits": hits,
        "exact_hits": hits,
        "similar_hits": 0,
        "refreshes": 0,
        "llm_time_s": 0.5 * llm_calls,
        "prompt_tokens": 10,
        "continuation_tokens": 5,
        "decision_times_ms": list(times),
        "audit_epsilons": [a[0] for a in audits],
        "audit_kls": [a[1] for a in audits],
        "train_time_s": 0.1,
        "wall_time_s": 1.0,
    }


def test_mean_ci95_uses_student_t_over_seeds():
    stat = mean_ci95([0.0, 1.0])
    assert stat["mean"] == 0.5 and stat["n"] == 2
    assert stat["ci95"] == pytest.approx(12.7062 * 0.70711 / math.sqrt(2), rel=1e-3)
    assert mean_ci95([0.3])["ci95"] == 0.0


def test_summary_aggregates_per_seed_then_across_seeds():
    records = [
        record(0, 0, True, 1.0, 2, 1, 3, [10, 20, 30, 40, 50]),
        record(0, 1, False, 0.0, 1, 0, 4, [1, 1, 1, 1, 1], audits=[(0.1, 0.05), (0.2, 0.5)]),
        record(1, 0, True, 1.0, 0, 0, 5, [2, 2, 2, 2, 2]),
    ]
    s = summarise(records)
    assert s["success_rate"]["values"] == [0.5, 1.0]
    assert s["llm_queries"] == 4 and s["llm_partial_calls"] == 1
    assert s["hit_rate"] == pytest.approx(12 / 15)
    assert s["decision_latency_ms"]["p50"] == 2.0
    assert s["audits"] == 2 and s["audit_kl"]["max"] == 0.5
    assert s["audit_f5_violations"] == 1  # 0.5 > 2 · 0.2
    with pytest.raises(ValueError):
        summarise([])


def test_compare_reports_reduction_latency_ratio_and_retention():
    cached = summarise([record(0, 0, True, 2.0, 1, 1, 8, [1.0] * 10)])
    uncached = summarise([record(0, 0, True, 2.5, 10, 0, 0, [400.0] * 10)])
    c = compare(cached, uncached)
    assert c["query_reduction_x"] == 5.0
    assert c["latency_p50_ratio_x"] == 400.0
    assert c["success_retention"] == 1.0
    assert c["return_retention"] == pytest.approx(0.8)
    free = summarise([record(0, 0, False, 0.0, 0, 0, 10, [1.0] * 10)])
    assert compare(free, uncached)["query_reduction_x"] == math.inf
    assert math.isnan(compare(free, free)["success_retention"])


def test_compare_held_out_return_retention_needs_a_positive_reference():
    def with_held_out(returns: list[float]) -> dict:
        summary = summarise([record(0, 0, True, 2.0, 1, 1, 8, [1.0] * 10)])
        summary["held_out"] = summarise_held_out(
            [
                {
                    "seed": s,
                    "after_episodes": 1,
                    "game_seed": 9,
                    "train_steps": 5,
                    "train_llm_queries": 1,
                    "success": False,
                    "episode_return": r,
                    "steps": 5,
                    "llm_queries": None,
                }
                for s, r in enumerate(returns)
            ]
        )
        return summary

    assert compare(with_held_out([3.0, 5.0]), with_held_out([8.0, 8.0]))["held_out_return_retention"] == 0.5
    # −10 against −20 is not "50 % retained": no ratio over a reference ≤ 0
    assert math.isnan(compare(with_held_out([-10.0]), with_held_out([-20.0]))["held_out_return_retention"])


def test_ratio_ci95_over_a_constant_denominator_is_the_numerators_t_interval_scaled():
    numerator = [0.8, 1.0, 1.3]
    lo, hi = ratio_ci95(numerator, [2.0, 2.0, 2.0])
    m = mean_ci95(numerator)
    assert (lo, hi) == pytest.approx(((m["mean"] - m["ci95"]) / 2.0, (m["mean"] + m["ci95"]) / 2.0))


def test_ratio_ci95_solves_fiellers_inequality_at_its_ends():
    a, b = np.array([90.0, 120.0, 100.0, 95.0]), np.array([100.0, 110.0, 130.0])
    lo, hi = ratio_ci95(list(a), list(b))
    t = stats.t.ppf(0.975, 2)
    gap = lambda r: (a.mean() - r * b.mean()) ** 2 - t**2 * (a.var(ddof=1) / 4 + r**2 * b.var(ddof=1) / 3)  # noqa: E731
    assert lo < a.mean() / b.mean() < hi
    assert gap(lo) == pytest.approx(0.0, abs=1e-6) and gap(hi) == pytest.approx(0.0, abs=1e-6)
    assert gap(lo - 0.01) > 0 and gap(hi + 0.01) > 0 and gap(a.mean() / b.mean()) < 0


def test_ratio_ci95_covers_the_true_ratio_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    trials, covered = 2000, 0
    for _ in range(trials):
        ci = ratio_ci95(list(rng.normal(90.0, 15.0, 3)), list(rng.normal(100.0, 15.0, 3)))
        covered += ci is not None and ci[0] <= 0.9 <= ci[1]
    assert 0.93 <= covered / trials <= 0.99


def test_ratio_ci95_is_none_when_it_cannot_be_bounded():
    assert ratio_ci95([1.0], [2.0, 3.0]) is None  # one value: no spread to estimate
    assert ratio_ci95([1.0, 2.0], [-5.0, 6.0]) is None  # the reference's mean is not told apart from 0
