"""Per-episode records and the run summary of docs/design.md §1 (mean and 95 % CI over seeds, latency percentiles)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from priorcache.agents.base import Decision


@dataclass
class EpisodeRecord:
    """One line of metrics.jsonl."""

    seed: int
    episode: int
    game_seed: int | None = None  # the training game played
    episode_return: float = 0.0
    success: bool = False
    steps: int = 0
    llm_calls: int = 0
    partial_calls: int = 0
    lookups: int = 0
    hits: int = 0
    exact_hits: int = 0
    similar_hits: int = 0
    refreshes: int = 0
    llm_time_s: float = 0.0
    prompt_tokens: int = 0
    continuation_tokens: int = 0
    decision_time_s: float = 0.0
    alpha: float | None = None  # F2's α at the episode's last decision
    train_time_s: float = 0.0
    wall_time_s: float = 0.0
    adaptation_time_s: float = 0.0  # the cache's meta-optimiser / KL-budget work during the episode
    demonstration: bool = False  # an oracle episode the agent learnt from (RunConfig.demo_episodes)
    actions: list[str] = field(default_factory=list, repr=False)
    decision_times_ms: list[float] = field(default_factory=list, repr=False)
    audit_epsilons: list[float] = field(default_factory=list, repr=False)
    audit_kls: list[float] = field(default_factory=list, repr=False)
    # Every audit (refreshes of hits and shadow audits of near-misses) with its similarity and weight.
    audit_records: list[dict[str, Any]] = field(default_factory=list, repr=False)
    # The cache's K, δ, r at the end of the episode (None without a cache) and its meta updates.
    cache_params: dict[str, Any] | None = None
    meta_updates: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def add(self, d: Decision, reward: float) -> None:
        self.steps += 1
        self.episode_return += reward
        self.actions.append(d.action)
        for name in ("llm_calls", "partial_calls", "llm_time_s", "prompt_tokens", "continuation_tokens"):
            setattr(self, name, getattr(self, name) + d.cost(name))
        self.lookups += d.lookup is not None
        self.hits += d.hit
        self.exact_hits += d.kind == "exact"
        self.similar_hits += d.kind == "similar"
        self.refreshes += d.kind == "refresh"
        self.decision_time_s += d.decision_time_s
        self.alpha = d.alpha
        self.decision_times_ms.append(d.decision_time_s * 1e3)
        if d.lookup is not None and d.lookup.audit is not None:
            self.audit_epsilons.append(d.lookup.audit.epsilon)
            self.audit_kls.append(d.lookup.audit.kl)
        if d.lookup is not None and d.lookup.audit_record is not None:
            self.audit_records.append(d.lookup.audit_record)
        if d.lookup is not None and d.lookup.meta_update is not None:
            self.meta_updates.append(d.lookup.meta_update)

    def to_json(self) -> dict[str, Any]:
        """The record plus its per-episode aggregates (median decision time, audit means)."""

        def mean_or_none(values: list[float]) -> float | None:
            return float(np.mean(values)) if values else None

        return {
            **asdict(self),
            "decision_p50_ms": float(np.median(self.decision_times_ms)) if self.decision_times_ms else 0.0,
            "audits": len(self.audit_epsilons),
            "audit_epsilon_mean": mean_or_none(self.audit_epsilons),
            "audit_kl_mean": mean_or_none(self.audit_kls),
        }


def mean_ci95(values: list[float]) -> dict[str, float]:
    """Mean and the half-width of Student's t 95 % interval (0 for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean()) if arr.size else float("nan")
    half = 0.0
    if arr.size > 1:
        half = float(stats.t.ppf(0.975, arr.size - 1) * arr.std(ddof=1) / np.sqrt(arr.size))
    return {"mean": mean, "ci95": half, "n": int(arr.size), "values": [float(v) for v in arr]}


def ratio_ci95(numerator: list[float], denominator: list[float]) -> tuple[float, float] | None:
    """Fieller's 95 % interval for the ratio of two independent means (docs/design.md §1, "Retention
    and its interval"): every R with (ā − R·b̄)² ≤ t²·(s²_ā + R²·s²_b̄), s²_x̄ the squared standard error
    of a mean and t Student's quantile at min(n_a, n_b) − 1 degrees of freedom. ``(lo, hi)``; None
    when no bounded interval exists (fewer than two values on a side, or a denominator mean whose own
    interval reaches 0: then the set is unbounded)."""
    a, b = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    if a.size < 2 or b.size < 2:
        return None
    t = float(stats.t.ppf(0.975, min(a.size, b.size) - 1))
    ma, mb = float(a.mean()), float(b.mean())
    va, vb = float(a.var(ddof=1)) / a.size, float(b.var(ddof=1)) / b.size
    # (ā − R·b̄)² − t²(s²_ā + R²·s²_b̄) ≤ 0 is the quadratic q2·R² − 2·ā·b̄·R + q0 ≤ 0.
    q2, q0 = mb * mb - t * t * vb, ma * ma - t * t * va
    if q2 <= 0:  # the denominator is not told apart from 0: no bounded interval exists
        return None
    root = math.sqrt(max(ma * ma * mb * mb - q2 * q0, 0.0))  # = t²(s²_ā·q2 + s²_b̄·ā²) ≥ 0
    return (ma * mb - root) / q2, (ma * mb + root) / q2


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The run summary from metrics.jsonl lines (docs/design.md §1). Success and return are the
    agent's own training episodes'; steps, LLM queries and the other costs include the
    demonstrations it learnt from."""
    own = [r for r in records if not r.get("demonstration")]
    if not own:
        raise ValueError("no training episodes to summarise")
    seeds = sorted({r["seed"] for r in own})
    per_seed_success = [float(np.mean([r["success"] for r in own if r["seed"] == s])) for s in seeds]
    per_seed_return = [float(np.mean([r["episode_return"] for r in own if r["seed"] == s])) for s in seeds]
    decision_ms = np.concatenate([np.asarray(r["decision_times_ms"], dtype=np.float64) for r in records])
    total = lambda key: sum(r[key] for r in records)  # noqa: E731
    steps, lookups = total("steps"), total("lookups")
    eps = [e for r in records for e in r["audit_epsilons"]]
    kls = [k for r in records for k in r["audit_kls"]]
    llm_queries = total("llm_calls") + total("partial_calls")
    shadow = [a for r in records for a in r.get("audit_records", []) if not a["served"]]
    return {
        "episodes": len(own),
        "demonstration_episodes": len(records) - len(own),
        "seeds": seeds,
        "success_rate": mean_ci95(per_seed_success),
        "mean_return": mean_ci95(per_seed_return),
        "steps": steps,
        "llm_queries": llm_queries,
        "llm_full_calls": total("llm_calls"),
        "llm_partial_calls": total("partial_calls"),
        "llm_queries_per_step": llm_queries / steps if steps else 0.0,
        "prompt_tokens": total("prompt_tokens"),
        "continuation_tokens": total("continuation_tokens"),
        "lookups": lookups,
        "hit_rate": total("hits") / lookups if lookups else 0.0,
        "exact_hits": total("exact_hits"),
        "similar_hits": total("similar_hits"),
        "refreshes": total("refreshes"),
        "decision_latency_ms": {
            "p50": float(np.percentile(decision_ms, 50)),
            "p95": float(np.percentile(decision_ms, 95)),
            "mean": float(decision_ms.mean()),
        },
        "llm_wall_time_s": total("llm_time_s"),
        "audits": len(eps),
        "audit_epsilon": {"mean": float(np.mean(eps)), "max": float(np.max(eps))} if eps else None,
        "audit_kl": {"mean": float(np.mean(kls)), "max": float(np.max(kls))} if kls else None,
        "audit_f5_violations": int(sum(k > 2 * e + 1e-9 for e, k in zip(eps, kls))),
        # Shadow audits (adaptive modes): near-misses measured against the fresh prior, never served.
        "shadow_audits": len(shadow),
        "shadow_f5_violations": int(sum(a["kl"] > a["kl_bound"] + 1e-9 for a in shadow)),
        "cache_params": records[-1].get("cache_params"),
        "meta_updates": sum(len(r.get("meta_updates", [])) for r in records),
        "train_time_s": total("train_time_s"),
        "adaptation_time_s": sum(r.get("adaptation_time_s", 0.0) for r in records),
        "wall_time_s": total("wall_time_s"),
    }


def summarise_held_out(evals: list[dict[str, Any]], point: str = "after_episodes") -> dict[str, Any] | None:
    """Held-out success and return (mean and 95 % CI over seeds) of the last evaluation of every seed,
    and the learning curve: the same at every evaluation point (``point``: training episodes, or
    ``"after_steps"`` for control runs), with the training environment steps and LLM queries spent
    by then (means over seeds). None without evaluations."""
    if not evals:
        return None
    groups: dict[tuple[int, int], list[dict[str, Any]]] = {}  # (seed, evaluation point) -> its episodes
    for e in evals:
        groups.setdefault((e["seed"], e[point]), []).append(e)
    seeds = sorted({seed for seed, _ in groups})

    def mean(key: str, group: list[dict[str, Any]]) -> float:
        return float(np.mean([e[key] for e in group]))

    curve = []
    for at in sorted({at for _, at in groups}):
        per_seed = [groups[s, at] for s in seeds if (s, at) in groups]
        curve.append(
            {
                point: at,
                "seeds": len(per_seed),
                "train_steps": float(np.mean([p[0]["train_steps"] for p in per_seed])),
                "train_llm_queries": float(np.mean([p[0]["train_llm_queries"] for p in per_seed])),
                "success": mean_ci95([mean("success", p) for p in per_seed]),
                "return": mean_ci95([mean("episode_return", p) for p in per_seed]),
            }
        )
    final = [groups[s, max(at for seed, at in groups if seed == s)] for s in seeds]
    queries = [e["llm_queries"] for e in evals if e["llm_queries"] is not None]
    return {
        "success": mean_ci95([mean("success", f) for f in final]),
        "return": mean_ci95([mean("episode_return", f) for f in final]),
        "games": len({e["game_seed"] for e in evals}),
        point: [f[0][point] for f in final],
        "steps": sum(e["steps"] for e in evals),
        "llm_queries": sum(queries) if queries else None,
        "curve": curve,
    }


def _held_out(summary: dict[str, Any], key: str = "success") -> float:
    held = summary.get("held_out")
    return held[key]["mean"] if held else float("nan")


def compare(candidate: dict[str, Any], reference: dict[str, Any]) -> dict[str, float]:
    """Query reduction ×, latency ratio and performance retention of ``candidate`` vs ``reference``."""

    def ratio(num: float, den: float) -> float:
        return float("inf") if den == 0 and num > 0 else (float("nan") if den == 0 else num / den)

    return {
        "query_reduction_x": ratio(reference["llm_queries"], candidate["llm_queries"]),
        "latency_p50_ratio_x": ratio(reference["decision_latency_ms"]["p50"], candidate["decision_latency_ms"]["p50"]),
        "latency_p95_ratio_x": ratio(reference["decision_latency_ms"]["p95"], candidate["decision_latency_ms"]["p95"]),
        "success_retention": ratio(candidate["success_rate"]["mean"], reference["success_rate"]["mean"]),
        "held_out_retention": ratio(_held_out(candidate), _held_out(reference)),
        # a ratio of returns means something only over a positive reference (locomotion returns can be < 0)
        "held_out_return_retention": (
            ratio(_held_out(candidate, "return"), _held_out(reference, "return"))
            if _held_out(reference, "return") > 0
            else float("nan")
        ),
        "return_retention": ratio(candidate["mean_return"]["mean"], reference["mean_return"]["mean"]),
    }
