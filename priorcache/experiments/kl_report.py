"""The KL report of one run: does F5 hold on every audit, how ε grows with distance (F6), and what
KL the cache costs per decision under the run's own state visitation (F5/F6, docs/design.md §2).

Input: a run folder (``config.json`` + ``metrics.jsonl``). Every episode line lists its audits in
``audit_records``: refresh audits of hits the cache would have served (kind ``exact``/``similar``,
``served`` true, drawn with probability r, so ``weight`` = 1/r) and shadow audits of near-misses
(kind ``shadow``, what the nearest entry would have served; ``weight`` 1). Runs written before
``audit_records`` existed only have the served audits' ``audit_epsilons``/``audit_kls``: the F5 check
and the visitation numbers still work on them, the ε-vs-similarity fit does not (no similarities).

What is computed:
- **F5 per audit**: ``KL(π̃‖π) ≤ 2ε``. A violation is ``kl > kl_bound + 1e-9``; there must be none.
- **F6 fit**: with ``d = √(2(1−sim))`` (the embedding distance of unit vectors at cosine ``sim``),
  ``ε ≤ L·d + ε_stale``. ``ε_stale`` is the largest ε at d = 0 (audits of exact hits: F6 at d = 0
  reads ε ≤ ε_stale), or the least-squares intercept when no audit lies at d = 0. Then L two ways:
  the least-squares slope of ``ε − ε_stale`` on d (a typical trend, not a bound) and the envelope
  ``L_env = max_{d>0} (ε − ε_stale)/d`` (the smallest L under which every audit obeys F6).
- **Visitation (F5, E_μ[KL] ≤ 2·E_μ[ε])**: a decision (cache lookup) serves a cached prior with
  probability ``hit_share = Σ hits / Σ lookups``; the served audits are a sample of those hits drawn
  with probability r, so ``E[KL | hit]`` is their 1/r-weighted mean and
  ``E_μ[KL] ≈ hit_share · E[KL | hit] ≤ 2 · hit_share · E[ε | hit]``. Shadow audits are left out:
  their priors were never served.

Outputs, written atomically into the output folder (default: the run folder): ``kl_report.md``,
``kl_report.json`` and ``kl_report.png`` (KL vs 2ε, ε vs similarity with the F6 curves, KL/2ε histogram).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from priorcache.errors import ConfigError
from priorcache.prior.divergence import f6_distance
from priorcache.experiments.report import RunFolder, _save_figure, read_run
from priorcache.io import atomic_write_json, atomic_write_text

#: Slack of the F5 check: KL and ε are float64 computations of the same log-probabilities.
F5_TOLERANCE = 1e-9
# Audits closer than this (in d = √(2(1−sim))) count as "at d = 0": exact hits and identical embeddings.
_D_ZERO = 1e-6
# At most this many violating audits are listed by name.
_MAX_LISTED = 20


# ------------------------------------------------------------------ reading the audits

def collect_audits(run: RunFolder) -> tuple[list[dict[str, Any]], str]:
    """Every audit of the run as a flat dict (the contract's fields plus seed and episode), and the
    format: ``"audit_records"`` (this version), ``"legacy"`` (ε/KL lists only) or ``"mixed"``."""
    audits: list[dict[str, Any]] = []
    new = old = 0
    for record in run.records:
        where = {"seed": record.get("seed"), "episode": record.get("episode")}
        if "audit_records" in record:
            new += 1
            for a in record["audit_records"] or []:
                eps = float(a["epsilon"])
                r = a.get("refresh_rate")
                weight = a.get("weight")
                if weight is None:  # weight 1/r is the contract; recompute it if a writer left it out
                    weight = 1.0 / r if a.get("served", True) and r else 1.0
                sim = a.get("similarity")
                audits.append({
                    **where, "step": a.get("step"), "kind": a.get("kind", "unrecorded"),
                    "served": bool(a.get("served", a.get("kind") != "shadow")),
                    "similarity": None if sim is None else float(sim),
                    "epsilon": eps, "kl": float(a["kl"]),
                    "kl_bound": float(a.get("kl_bound", 2.0 * eps)), "weight": float(weight),
                })
        else:
            # Before audit_records: the lists hold the served (refresh) audits only, with no similarity;
            # r was fixed for the whole run, so every audit weighs the same.
            old += 1
            for eps, kl in zip(record.get("audit_epsilons") or [], record.get("audit_kls") or []):
                audits.append({**where, "step": None, "kind": "unrecorded", "served": True, "similarity": None,
                               "epsilon": float(eps), "kl": float(kl), "kl_bound": 2.0 * float(eps),
                               "weight": 1.0})
    fmt = "legacy" if new == 0 else ("audit_records" if old == 0 else "mixed")
    return audits, fmt


def _no_audit_reason(run: RunFolder) -> str:
    cache = run.config.get("cache") or {}
    mode, agent = cache.get("mode"), run.config.get("agent")
    if mode == "none" or agent != "dqn-prior":
        why = f"it has no cache (agent {agent}, cache mode {mode}), so no prior is ever served or audited"
    elif cache.get("refresh_rate") == 0:
        why = "its refresh rate r is 0, so no hit is ever re-queried and audited"
    else:
        why = "no hit was refreshed and no near-miss shadow-audited in its episodes (too few hits, or r too small)"
    return (f"{run.path} has no F5 audits: {why}. Audits come from refresh draws on cache hits; run with a "
            "cache (e.g. `--cache static`) and `--refresh-rate` > 0 (and enough episodes to get hits)")


# ------------------------------------------------------------------ statistics

def _ref(a: dict[str, Any]) -> dict[str, Any]:
    """How an audit is named in the report."""
    return {k: a[k] for k in ("seed", "episode", "step", "kind", "similarity", "epsilon", "kl", "kl_bound")}


def _f5_stats(audits: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
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
        "kl_mean": float(kl.mean()), "kl_max": float(kl.max()),
        "epsilon_mean": float(eps.mean()), "epsilon_max": float(eps.max()),
        "max_ratio": float(ratio.max()) if ratio.size else None,
        "mean_ratio": float(ratio.mean()) if ratio.size else None,
    }


def fit_f6(audits: list[dict[str, Any]], delta: Optional[float]) -> dict[str, Any]:
    """F6 ``ε ≤ L·d + ε_stale`` on the audits that carry a similarity (served and shadow alike)."""
    with_sim = [a for a in audits if a["similarity"] is not None]
    if not with_sim:
        return {"available": False,
                "reason": "no audit carries a similarity: the ε-vs-similarity fit needs audit_records, "
                          "written by runs of this version (rerun to get it)"}
    sim = np.array([a["similarity"] for a in with_sim])
    eps = np.array([a["epsilon"] for a in with_sim])
    d = f6_distance(sim)
    at_zero, positive = d < _D_ZERO, d >= _D_ZERO

    if at_zero.any():
        # F6 at d = 0 says ε ≤ ε_stale: the smallest ε_stale consistent with those audits is their max.
        i_stale = int(np.flatnonzero(at_zero)[np.argmax(eps[at_zero])])
        eps_stale = float(eps[i_stale])
        stale_source = f"largest ε of the {int(at_zero.sum())} audits at similarity 1 (d = 0)"
        stale_by: Optional[dict[str, Any]] = _ref(with_sim[i_stale])
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

    def at_delta(lipschitz: float) -> Optional[float]:
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
        "envelope": {"L": l_env, "share_under": share_under(l_env), "epsilon_bound_at_delta": at_delta(l_env),
                     "defined_by": env_by},
    }


def visitation(run: RunFolder, served: list[dict[str, Any]]) -> dict[str, Any]:
    """F5 under state visitation: E_μ[KL] ≈ hit_share · E[KL | hit] ≤ 2 · hit_share · E[ε | hit]."""
    lookups = int(sum(r.get("lookups", 0) for r in run.records))
    hits = int(sum(r.get("hits", 0) for r in run.records))
    hit_share = hits / lookups if lookups else None
    out: dict[str, Any] = {"lookups": lookups, "hits": hits, "hit_share": hit_share, "served_audits": len(served),
                           "weight_sum": None, "per_hit": None, "per_decision": None, "holds": None}
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
        out["per_decision"] = {"kl": hit_share * out["per_hit"]["kl"],
                               "kl_bound": hit_share * out["per_hit"]["kl_bound"]}
    if out["per_decision"] is not None:
        out["holds"] = bool(out["per_decision"]["kl"] <= out["per_decision"]["kl_bound"] + F5_TOLERANCE)
    return out


def _delta(run: RunFolder) -> tuple[Optional[float], str]:
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
        notes.append("Some or all episodes predate audit_records: their audits are the served refresh audits only "
                     "(audit_epsilons/audit_kls), without similarity, kind or weight; the ε-vs-similarity (F6) fit "
                     "uses only audits from runs of this version.")
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
            "all": _f5_stats(audits), "served": _f5_stats(served), "shadow": _f5_stats(shadow),
        },
        "f6": {**fit_f6(audits, delta), "delta_source": delta_source},
        "visitation": visitation(run, served),
        "notes": notes,
    }


# ------------------------------------------------------------------ rendering

def _num(value: Optional[float], digits: int = 4) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"


def render_markdown(s: dict[str, Any]) -> str:
    f5, f6, vis, counts = s["f5"], s["f6"], s["visitation"], s["audits"]
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(counts["by_kind"].items()))
    verdict = "holds on every audit" if f5["violations"] == 0 else "**VIOLATED**"
    rows: list[tuple[str, str]] = [
        ("audits (served + shadow)", f"{counts['total']} ({counts['served']} + {counts['shadow']}; {kinds})"),
        (f"**F5 violations** (KL > 2ε + {F5_TOLERANCE:g})", f"**{f5['violations']}** ({verdict})"),
        ("max KL / 2ε", _num(f5["all"]["max_ratio"])),
    ]
    for group in ("served", "shadow"):
        st = f5[group]
        if st is not None:
            rows.append((f"{group}: KL mean / max (nats)", f"{_num(st['kl_mean'])} / {_num(st['kl_max'])}"))
            rows.append((f"{group}: ε mean / max", f"{_num(st['epsilon_mean'])} / {_num(st['epsilon_max'])}"))
    if f6["available"]:
        rows += [
            ("F6 audits with a similarity (at d = 0)", f"{f6['n']} ({f6['n_at_d0']})"),
            ("F6 ε_stale", f"{_num(f6['epsilon_stale'])} ({f6['epsilon_stale_source']})"),
            ("F6 L, least squares (share of audits under)",
             f"{_num(f6['least_squares']['L'])} ({100 * f6['least_squares']['share_under']:.1f} %)"),
            ("F6 L, envelope (share of audits under)",
             f"{_num(f6['envelope']['L'])} ({100 * f6['envelope']['share_under']:.1f} %)"),
        ]
        if f6["delta"] is not None:
            rows.append((f"F6 ε bound at δ = {f6['delta']:.4f} (least squares / envelope)",
                         f"{_num(f6['least_squares']['epsilon_bound_at_delta'])} / "
                         f"{_num(f6['envelope']['epsilon_bound_at_delta'])}"))
    else:
        rows.append(("F6 fit", "n/a: " + f6["reason"]))
    rows.append(("hit share (Σ hits / Σ lookups)",
                 f"{_num(vis['hit_share'])} ({vis['hits']} / {vis['lookups']})"))
    if vis["per_hit"] is not None:
        # "\|": a bare pipe would end the markdown table cell.
        rows.append(("E[KL \\| hit] vs 2·E[ε \\| hit] (1/r-weighted)",
                     f"{_num(vis['per_hit']['kl'])} ≤ {_num(vis['per_hit']['kl_bound'])}"))
    if vis["per_decision"] is not None:
        rows.append(("**E_μ[KL] per decision** vs 2·hit share·E[ε \\| hit]",
                     f"{_num(vis['per_decision']['kl'])} ≤ {_num(vis['per_decision']['kl_bound'])}"))

    lines = [f"# KL report: {s['env']} · {s['method']} (seeds {s['seeds']}, {s['episodes']} episodes)", "",
             "| quantity | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines += [
        "",
        "F5 (docs/design.md §2): for the cached prior p̃ and the fresh one p, ε = max_a |log p̃ − log p| and "
        "KL(π̃‖π) ≤ 2ε; every audit is checked. Served audits are refresh draws on hits (probability r, "
        "weight 1/r); shadow audits measure what the nearest entry would have served on a near-miss and "
        "were never served.",
        "F6: with d = √(2(1−sim)), ε ≤ L·d + ε_stale. The least-squares L is a trend through ε_stale; the "
        "envelope L is the smallest one under which every audit obeys F6"
        + (f" (set by the audit of seed {f6['envelope']['defined_by']['seed']}, episode "
           f"{f6['envelope']['defined_by']['episode']}, step {f6['envelope']['defined_by']['step']}, "
           f"similarity {f6['envelope']['defined_by']['similarity']:.4f})"
           if f6.get("available") and f6["envelope"]["defined_by"] else "")
        + ". The bound at δ is what F6 then promises for any served hit.",
        "Visitation: a decision is a cache lookup; E_μ[KL] ≈ hit share × E[KL | hit], which F5 bounds by "
        "2 × hit share × E[ε | hit] (refreshes serve the fresh prior, KL 0).",
    ]
    if f5["violating"]:
        lines += ["", "Violating audits:", ""]
        lines += [f"- seed {a['seed']}, episode {a['episode']}, step {a['step']}, {a['kind']}: "
                  f"KL {a['kl']:.6g} > 2ε {a['kl_bound']:.6g}" for a in f5["violating"]]
    lines += ["", *[f"Note: {n}" for n in s["notes"]]] if s["notes"] else []
    return "\n".join(lines) + "\n"


def plot(s: dict[str, Any], audits: list[dict[str, Any]], path: Path) -> Path:
    """kl_report.png: KL vs 2ε, ε vs similarity with the F6 curves, histogram of KL/2ε."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    groups = {"served": [a for a in audits if a["served"]], "shadow": [a for a in audits if not a["served"]]}
    colours = {"served": "tab:blue", "shadow": "tab:orange"}
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.0))

    ax = axes[0]
    # Log-log: KL spans orders of magnitude below 2ε. KL = 0 (identical priors) has no place on it.
    shown = [a for a in audits if a["kl"] > 0 and a["kl_bound"] > 0]
    for name, group in groups.items():
        pts = [a for a in group if a["kl"] > 0 and a["kl_bound"] > 0]
        if pts:
            ax.scatter([a["kl_bound"] for a in pts], [a["kl"] for a in pts], s=10, alpha=0.6,
                       color=colours[name], label=f"{name} ({len(pts)})")
    bad = [a for a in shown if a["kl"] > a["kl_bound"] + F5_TOLERANCE]
    if bad:
        ax.scatter([a["kl_bound"] for a in bad], [a["kl"] for a in bad], s=40, facecolors="none",
                   edgecolors="red", label=f"F5 violated ({len(bad)})")
    if shown:
        values = [v for a in shown for v in (a["kl"], a["kl_bound"])]
        lo, hi = min(values) / 2, max(values) * 2
        ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="KL = 2ε (F5)")
        ax.set_xscale("log")
        ax.set_yscale("log")
    if len(shown) < len(audits):
        ax.plot([], [], " ", label=f"{len(audits) - len(shown)} with KL = 0 not shown")
    ax.set_xlabel("2ε (F5 bound, nats)")
    ax.set_ylabel("KL(π̃‖π) (nats)")
    ax.set_title(f"F5: {s['f5']['violations']} violations of {len(audits)}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)

    ax = axes[1]
    f6 = s["f6"]
    if f6["available"]:
        for name, group in groups.items():
            pts = [a for a in group if a["similarity"] is not None]
            if pts:
                ax.scatter([a["similarity"] for a in pts], [a["epsilon"] for a in pts], s=10, alpha=0.6,
                           color=colours[name], label=name)
        sims = [a["similarity"] for a in audits if a["similarity"] is not None]
        grid = np.linspace(min(min(sims), f6["delta"] if f6["delta"] is not None else 1.0), 1.0, 200)
        for key, style in (("least_squares", "--"), ("envelope", "-")):
            lip = f6[key]["L"]
            ax.plot(grid, lip * f6_distance(grid) + f6["epsilon_stale"], "k" + style, lw=1,
                    label=f"{key.replace('_', ' ')}: L = {lip:.3g}")
        if f6["delta"] is not None:
            ax.axvline(f6["delta"], color="grey", ls=":", label=f"δ = {f6['delta']:.3f}")
        ax.set_title(f"F6: ε ≤ L·√(2(1−sim)) + ε_stale (ε_stale = {f6['epsilon_stale']:.3g})")
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no similarities recorded:\nthe F6 fit needs a run of this version",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_title("F6: ε vs similarity")
    ax.set_xlabel("cosine similarity of the matched entry")
    ax.set_ylabel("ε = max_a |log p̃ − log p|")
    ax.grid(alpha=0.3)

    ax = axes[2]
    ratios = {name: [a["kl"] / a["kl_bound"] for a in group if a["kl_bound"] > 0] for name, group in groups.items()}
    ratios = {k: v for k, v in ratios.items() if v}
    if ratios:
        hi = max(1.0, max(max(v) for v in ratios.values()))
        ax.hist(list(ratios.values()), bins=np.linspace(0.0, hi, 31), stacked=True,
                color=[colours[k] for k in ratios], label=list(ratios))
        ax.legend(fontsize=7)
    ax.axvline(1.0, color="red", lw=1)
    ax.set_xlabel("KL / 2ε (F5 holds left of 1)")
    ax.set_ylabel("audits")
    vis = s["visitation"]["per_decision"]
    ax.set_title("E_μ[KL] per decision " + (f"{vis['kl']:.3g} ≤ {vis['kl_bound']:.3g}" if vis else "n/a"))
    ax.grid(alpha=0.3)

    fig.suptitle(f"{s['env']} · {s['method']} · seeds {s['seeds']}", fontsize=10)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return path


def write_kl_report(run_dir: Path, out: Optional[Path] = None) -> dict[str, Any]:
    """Read the run in ``run_dir``, write kl_report.md/.json/.png into ``out`` (default: ``run_dir``).
    Returns the summary (the JSON's content) plus ``files``, the written paths."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a folder")
    if not (run_dir / "config.json").exists():
        inner = sorted({p.parent for p in run_dir.rglob("config.json") if (p.parent / "metrics.jsonl").exists()})
        if inner:
            raise ConfigError(f"{run_dir} is not a run folder but holds {len(inner)} of them (e.g. {inner[0]}); "
                              "give one run folder")
    run = read_run(run_dir)
    summary = kl_summary(run)
    audits, _ = collect_audits(run)
    out = Path(out or run_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "kl_report.md", render_markdown(summary))
    atomic_write_json(out / "kl_report.json", summary)
    png = plot(summary, audits, out / "kl_report.png")
    return {**summary, "files": [out / "kl_report.md", out / "kl_report.json", png]}
