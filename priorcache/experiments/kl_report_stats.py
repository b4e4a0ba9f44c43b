"""The numbers of the KL report: a run's F5 audits collected, checked, fitted and weighted by visitation.

:func:`collect_audits` flattens the audits of a run folder (``audit_records``, or the older
``audit_epsilons``/``audit_kls`` lists) into one dict per audit; :func:`fit_f6` fits F6
``ε ≤ L·d + ε_stale`` (ε_stale, and L by least squares and as the envelope); :func:`visitation`
turns the 1/r-weighted served audits into E_μ[KL] per decision; and :func:`kl_summary` gathers the
F5 check (violations beyond ``F5_TOLERANCE``), these and the run's facts into what
``kl_report.json`` holds. The definitions are in :mod:`priorcache.experiments.kl_report`, which
renders the summary as markdown and a figure and writes the files. A metrics line or audit that is
not what the report reads (an audit without numbers ε and KL, say) is a ConfigError naming the
episode, not a traceback.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from priorcache.errors import ConfigError
from priorcache.experiments.report import RunFolder
from priorcache.experiments.summaries import describe, problems
from priorcache.prior.divergence import f6_distance

#: Slack of the F5 check: KL and ε are float64 computations of the same log-probabilities.
F5_TOLERANCE = 1e-9
# Audits closer than this (in d = √(2(1−sim))) count as "at d = 0": exact hits and identical embeddings.
_D_ZERO = 1e-6
# At most this many violating audits are listed by name.
_MAX_LISTED = 20


# ------------------------------------------------------------------ reading the audits


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


_LIST_OR_NULL = (lambda x: x is None or isinstance(x, list), "a list or null")
#: The fields of a metrics.jsonl line the KL report reads, checked where present (older runs lack some).
_RECORD_FIELDS = {
    "lookups": (_is_number, "a number"),
    "hits": (_is_number, "a number"),
    "audit_records": _LIST_OR_NULL,
    "audit_epsilons": _LIST_OR_NULL,
    "audit_kls": _LIST_OR_NULL,
    "cache_params": (lambda x: x is None or isinstance(x, dict), "an object or null"),
}


def collect_audits(run: RunFolder) -> tuple[list[dict[str, Any]], str]:
    """Every audit of the run as a flat dict (the contract's fields plus seed and episode), and the
    format: ``"audit_records"`` (this version), ``"legacy"`` (ε/KL lists only) or ``"mixed"``."""
    audits: list[dict[str, Any]] = []
    new = old = 0
    for record in run.records:
        found = problems(record, _RECORD_FIELDS, optional=True)
        if found:
            raise ConfigError(
                f"damaged {run.path / 'metrics.jsonl'}: the line of seed {record.get('seed')}, episode "
                f"{record.get('episode')}: {describe(found)}"
            )
        where = {"seed": record.get("seed"), "episode": record.get("episode")}
        if "audit_records" in record:
            new += 1
            for a in record["audit_records"] or []:
                _check_audit(run, record, a)
                eps = float(a["epsilon"])
                r = a.get("refresh_rate")
                weight = a.get("weight")
                if weight is None:  # weight 1/r is the contract; recompute it if a writer left it out
                    weight = 1.0 / r if a.get("served", True) and r else 1.0
                sim = a.get("similarity")
                audits.append(
                    {
                        **where,
                        "step": a.get("step"),
                        "kind": a.get("kind", "unrecorded"),
                        "served": bool(a.get("served", a.get("kind") != "shadow")),
                        "similarity": None if sim is None else float(sim),
                        "epsilon": eps,
                        "kl": float(a["kl"]),
                        "kl_bound": float(a.get("kl_bound", 2.0 * eps)),
                        "weight": float(weight),
                    }
                )
        else:
            # Before audit_records: the lists hold the served (refresh) audits only, with no similarity;
            # r was fixed for the whole run, so every audit weighs the same.
            old += 1
            pairs = list(zip(record.get("audit_epsilons") or [], record.get("audit_kls") or []))
            for eps, kl in pairs:
                _check_audit(run, record, {"epsilon": eps, "kl": kl})
                audits.append(
                    {
                        **where,
                        "step": None,
                        "kind": "unrecorded",
                        "served": True,
                        "similarity": None,
                        "epsilon": float(eps),
                        "kl": float(kl),
                        "kl_bound": 2.0 * float(eps),
                        "weight": 1.0,
                    }
                )
    fmt = "legacy" if new == 0 else ("audit_records" if old == 0 else "mixed")
    return audits, fmt


def _check_audit(run: RunFolder, record: dict[str, Any], audit: Any) -> None:
    """A ConfigError naming the episode unless ``audit`` is an object with numbers ε, KL (and, if
    given, kl_bound, similarity, weight and refresh_rate): a damaged line must not pass as an audit."""
    ok = isinstance(audit, dict) and all(_is_number(audit.get(k)) for k in ("epsilon", "kl"))
    ok = ok and all(
        audit.get(k) is None or _is_number(audit[k]) for k in ("kl_bound", "similarity", "weight", "refresh_rate")
    )
    if not ok:
        raise ConfigError(
            f"damaged {run.path / 'metrics.jsonl'}: an audit of seed {record.get('seed')}, episode "
            f"{record.get('episode')} is not an object with numbers epsilon and kl: {str(audit)[:120]}"
        )


def _no_audit_reason(run: RunFolder) -> str:
    cache = run.config.get("cache") or {}
    mode, agent = cache.get("mode"), run.config.get("agent")
    if mode == "none" or agent != "dqn-prior":
        why = f"it has no cache (agent {agent}, cache mode {mode}), so no prior is ever served or audited"
    elif cache.get("refresh_rate") == 0:
        why = "its refresh rate r is 0, so no hit is ever re-queried and audited"
    else:
        why = "no hit was refreshed and no near-miss shadow-audited in its episodes (too few hits, or r too small)"
    return (
        f"{run.path} has no F5 audits: {why}. Audits come from refresh draws on cache hits; run with a "
        "cache (e.g. `--cache static`) and `--refresh-rate` > 0 (and enough episodes to get hits)"
    )


# ------------------------------------------------------------------ statistics


def _ref(a: dict[str, Any]) -> dict[str, Any]:
    """How an audit is named in the report."""
    return {k: a[k] for k in ("seed", "episode", "step", "kind", "similarity", "epsilon", "kl", "kl_bound")}


def _f5_stats(audits: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not audits:
        return None
    eps = np.array([a["epsilon"] for a in audits])
    kl = np.array([a["kl"] for a in audits])
    bound = np.array([a["kl_bound"] for a in audits])
    # KL/2ε is defined where the bound is positive; ε = 0 means identical priors, KL 0.
    ratio = kl[bound > 0] / bound[bound > 0]
    return {
        "n": len(audits),
        "violations": int(np.sum(kl > bound + F5_TOLERANCE)),
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "epsilon_mean": float(eps.mean()),
        "epsilon_max": float(eps.max()),
        "max_ratio": float(ratio.max()) if ratio.size else None,
        "mean_ratio": float(ratio.mean()) if ratio.size else None,
    }


def fit_f6(audits: list[dict[str, Any]], delta: float | None) -> dict[str, Any]:
    """F6 ``ε ≤ L·d + ε_stale`` on the audits that carry a similarity (served and shadow alike)."""
    with_sim = [a for a in audits if a["similarity"] is not None]
    if not with_sim:
        return {
            "available": False,
            "reason": "no audit carries a similarity: the ε-vs-similarity fit needs audit_records, "
            "written by runs of this version (rerun to get it)",
        }
    sim = np.array([a["similarity"] for a in with_sim])
    eps = np.array([a["epsilon"] for a in with_sim])
    d = f6_distance(sim)
    at_zero, positive = d < _D_ZERO, d >= _D_ZERO

    if at_zero.any():
        # F6 at d = 0 says ε ≤ ε_stale: the smallest ε_stale consistent with those audits is their max.
        i_stale = int(np.flatnonzero(at_zero)[np.argmax(eps[at_zero])])
        eps_stale = float(eps[i_stale])
        stale_source = f"largest ε of the {int(at_zero.sum())} audits at similarity 1 (d = 0)"
        stale_by: dict[str, Any] | None = _ref(with_sim[i_stale])
    else:
        # No audit at d = 0: the intercept of the ordinary least-squares line, clipped at 0.
        slope, intercept = np.polyfit(d, eps, 1) if np.ptp(d) > 0 else (0.0, float(eps.mean()))
        eps_stale = max(0.0, float(intercept))
        stale_source = "least-squares intercept of ε on d (no audit at similarity 1), clipped at 0"
        stale_by = None

    excess, dp = eps[positive] - eps_stale, d[positive]
    # Least squares through (0, ε_stale): L minimises Σ (ε − ε_stale − L·d)², clipped at 0.
    l_ls = max(0.0, float(np.dot(dp, excess) / np.dot(dp, dp))) if dp.size else 0.0
    # Envelope: the smallest L with ε ≤ L·d + ε_stale for every audit at d > 0.
    l_env, env_by = 0.0, None
    if dp.size:
        slopes = excess / dp
        j = int(np.argmax(slopes))
        if slopes[j] > 0:
            l_env = float(slopes[j])
            env_by = _ref([a for a, p in zip(with_sim, positive) if p][j])

    def share_under(lipschitz: float) -> float:
        return float(np.mean(eps <= lipschitz * d + eps_stale + F5_TOLERANCE))

    d_delta = float(f6_distance(delta)) if delta is not None else None

    def at_delta(lipschitz: float) -> float | None:
        return lipschitz * d_delta + eps_stale if d_delta is not None else None

    return {
        "available": True,
        "n": len(with_sim),
        "n_at_d0": int(at_zero.sum()),
        "delta": delta,
        "d_at_delta": d_delta,
        "epsilon_stale": eps_stale,
        "epsilon_stale_source": stale_source,
        "epsilon_stale_defined_by": stale_by,
        # How strongly ε grows with distance at all (Pearson's r of ε and d); None without spread.
        "correlation": float(np.corrcoef(d, eps)[0, 1]) if np.ptp(d) > 0 and np.ptp(eps) > 0 else None,
        "least_squares": {"L": l_ls, "share_under": share_under(l_ls), "epsilon_bound_at_delta": at_delta(l_ls)},
        "envelope": {
            "L": l_env,
            "share_under": share_under(l_env),
            "epsilon_bound_at_delta": at_delta(l_env),
            "defined_by": env_by,
        },
    }


def visitation(run: RunFolder, served: list[dict[str, Any]]) -> dict[str, Any]:
    """F5 under state visitation: E_μ[KL] ≈ hit_share · E[KL | hit] ≤ 2 · hit_share · E[ε | hit]."""
    lookups = int(sum(r.get("lookups", 0) for r in run.records))
    hits = int(sum(r.get("hits", 0) for r in run.records))
    hit_share = hits / lookups if lookups else None
    out: dict[str, Any] = {
        "lookups": lookups,
        "hits": hits,
        "hit_share": hit_share,
        "served_audits": len(served),
        "weight_sum": None,
        "per_hit": None,
        "per_decision": None,
        "holds": None,
    }
    if served:
        w = np.array([a["weight"] for a in served])
        # Self-normalised 1/r weights: an audit drawn at a small r stands for more hits (adaptive r varies).
        kl_hit = float(np.dot(w, [a["kl"] for a in served]) / w.sum())
        eps_hit = float(np.dot(w, [a["epsilon"] for a in served]) / w.sum())
        out["weight_sum"] = float(w.sum())
        out["per_hit"] = {"kl": kl_hit, "epsilon": eps_hit, "kl_bound": 2.0 * eps_hit}
    if hit_share == 0:
        # No cached prior was ever served: the expected KL per decision is exactly 0.
        out["per_decision"] = {"kl": 0.0, "kl_bound": 0.0}
    elif out["per_hit"] is not None and hit_share is not None:
        out["per_decision"] = {
            "kl": hit_share * out["per_hit"]["kl"],
            "kl_bound": hit_share * out["per_hit"]["kl_bound"],
        }
    if out["per_decision"] is not None:
        out["holds"] = bool(out["per_decision"]["kl"] <= out["per_decision"]["kl_bound"] + F5_TOLERANCE)
    return out


def _delta(run: RunFolder) -> tuple[float | None, str]:
    """The threshold δ the hits had to meet: the last episode's (adaptive runs move it), else the config's."""
    for record in reversed(run.records):
        params = record.get("cache_params")
        if params and params.get("similarity_threshold") is not None:
            return float(params["similarity_threshold"]), "cache_params of the last episode"
    value = (run.config.get("cache") or {}).get("similarity_threshold")
    return (float(value), "config") if value is not None else (None, "unknown")


def kl_summary(run: RunFolder) -> dict[str, Any]:
    """Everything kl_report.json holds, from one run read by ``read_run``."""
    if not run.records:
        raise ConfigError(f"{run.path} has no episodes yet (metrics.jsonl is empty)")
    audits, fmt = collect_audits(run)
    if not audits:
        raise ConfigError(_no_audit_reason(run))
    served = [a for a in audits if a["served"]]
    shadow = [a for a in audits if not a["served"]]
    by_kind: dict[str, int] = {}
    for a in audits:
        by_kind[a["kind"]] = by_kind.get(a["kind"], 0) + 1
    violating = [a for a in audits if a["kl"] > a["kl_bound"] + F5_TOLERANCE]
    delta, delta_source = _delta(run)
    notes = []
    if fmt != "audit_records":
        notes.append(
            "Some or all episodes predate audit_records: their audits are the served refresh audits only "
            "(audit_epsilons/audit_kls), without similarity, kind or weight; the ε-vs-similarity (F6) fit "
            "uses only audits from runs of this version."
        )
    return {
        "run": str(run.path),
        "env": run.env_label,
        "method": run.method,
        "cache_mode": (run.config.get("cache") or {}).get("mode"),
        "seeds": sorted({r.get("seed") for r in run.records if r.get("seed") is not None}),
        "episodes": len(run.records),
        "format": fmt,
        "audits": {"total": len(audits), "served": len(served), "shadow": len(shadow), "by_kind": by_kind},
        "f5": {
            "tolerance": F5_TOLERANCE,
            "violations": len(violating),
            "violating": [_ref(a) for a in violating[:_MAX_LISTED]],
            "all": _f5_stats(audits),
            "served": _f5_stats(served),
            "shadow": _f5_stats(shadow),
        },
        "f6": {**fit_f6(audits, delta), "delta_source": delta_source},
        "visitation": visitation(run, served),
        "notes": notes,
    }
