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

The numbers are computed by :mod:`priorcache.experiments.kl_report_stats`; this module renders them
(markdown and figure) and writes the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from priorcache.errors import ConfigError
from priorcache.experiments.kl_report_stats import F5_TOLERANCE, collect_audits, kl_summary
from priorcache.experiments.report import read_run, save_figure
from priorcache.io import atomic_write_json, atomic_write_text
from priorcache.prior.divergence import f6_distance

# ------------------------------------------------------------------ rendering


def _num(value: float | None, digits: int = 4) -> str:
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
            (
                "F6 L, least squares (share of audits under)",
                f"{_num(f6['least_squares']['L'])} ({100 * f6['least_squares']['share_under']:.1f} %)",
            ),
            (
                "F6 L, envelope (share of audits under)",
                f"{_num(f6['envelope']['L'])} ({100 * f6['envelope']['share_under']:.1f} %)",
            ),
        ]
        if f6["delta"] is not None:
            rows.append(
                (
                    f"F6 ε bound at δ = {f6['delta']:.4f} (least squares / envelope)",
                    f"{_num(f6['least_squares']['epsilon_bound_at_delta'])} / "
                    f"{_num(f6['envelope']['epsilon_bound_at_delta'])}",
                )
            )
    else:
        rows.append(("F6 fit", "n/a: " + f6["reason"]))
    rows.append(("hit share (Σ hits / Σ lookups)", f"{_num(vis['hit_share'])} ({vis['hits']} / {vis['lookups']})"))
    if vis["per_hit"] is not None:
        # "\|": a bare pipe would end the markdown table cell.
        rows.append(
            (
                "E[KL \\| hit] vs 2·E[ε \\| hit] (1/r-weighted)",
                f"{_num(vis['per_hit']['kl'])} ≤ {_num(vis['per_hit']['kl_bound'])}",
            )
        )
    if vis["per_decision"] is not None:
        rows.append(
            (
                "**E_μ[KL] per decision** vs 2·hit share·E[ε \\| hit]",
                f"{_num(vis['per_decision']['kl'])} ≤ {_num(vis['per_decision']['kl_bound'])}",
            )
        )

    lines = [
        f"# KL report: {s['env']} · {s['method']} (seeds {s['seeds']}, {s['episodes']} episodes)",
        "",
        "| quantity | value |",
        "|---|---|",
    ]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines += [
        "",
        "F5 (docs/design.md §2): for the cached prior p̃ and the fresh one p, ε = max_a |log p̃ − log p| and "
        "KL(π̃‖π) ≤ 2ε; every audit is checked. Served audits are refresh draws on hits (probability r, "
        "weight 1/r); shadow audits measure what the nearest entry would have served on a near-miss and "
        "were never served.",
        "F6: with d = √(2(1−sim)), ε ≤ L·d + ε_stale. The least-squares L is a trend through ε_stale; the "
        "envelope L is the smallest one under which every audit obeys F6"
        + (
            f" (set by the audit of seed {f6['envelope']['defined_by']['seed']}, episode "
            f"{f6['envelope']['defined_by']['episode']}, step {f6['envelope']['defined_by']['step']}, "
            f"similarity {f6['envelope']['defined_by']['similarity']:.4f})"
            if f6.get("available") and f6["envelope"]["defined_by"]
            else ""
        )
        + ". The bound at δ is what F6 then promises for any served hit.",
        "Visitation: a decision is a cache lookup; E_μ[KL] ≈ hit share × E[KL | hit], which F5 bounds by "
        "2 × hit share × E[ε | hit] (refreshes serve the fresh prior, KL 0).",
    ]
    if f5["violating"]:
        lines += ["", "Violating audits:", ""]
        lines += [
            f"- seed {a['seed']}, episode {a['episode']}, step {a['step']}, {a['kind']}: "
            f"KL {a['kl']:.6g} > 2ε {a['kl_bound']:.6g}"
            for a in f5["violating"]
        ]
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
            ax.scatter(
                [a["kl_bound"] for a in pts],
                [a["kl"] for a in pts],
                s=10,
                alpha=0.6,
                color=colours[name],
                label=f"{name} ({len(pts)})",
            )
    bad = [a for a in shown if a["kl"] > a["kl_bound"] + F5_TOLERANCE]
    if bad:
        ax.scatter(
            [a["kl_bound"] for a in bad],
            [a["kl"] for a in bad],
            s=40,
            facecolors="none",
            edgecolors="red",
            label=f"F5 violated ({len(bad)})",
        )
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
                ax.scatter(
                    [a["similarity"] for a in pts],
                    [a["epsilon"] for a in pts],
                    s=10,
                    alpha=0.6,
                    color=colours[name],
                    label=name,
                )
        sims = [a["similarity"] for a in audits if a["similarity"] is not None]
        grid = np.linspace(min(min(sims), f6["delta"] if f6["delta"] is not None else 1.0), 1.0, 200)
        for key, style in (("least_squares", "--"), ("envelope", "-")):
            lip = f6[key]["L"]
            ax.plot(
                grid,
                lip * f6_distance(grid) + f6["epsilon_stale"],
                "k" + style,
                lw=1,
                label=f"{key.replace('_', ' ')}: L = {lip:.3g}",
            )
        if f6["delta"] is not None:
            ax.axvline(f6["delta"], color="grey", ls=":", label=f"δ = {f6['delta']:.3f}")
        ax.set_title(f"F6: ε ≤ L·√(2(1−sim)) + ε_stale (ε_stale = {f6['epsilon_stale']:.3g})")
        ax.legend(fontsize=7)
    else:
        ax.text(
            0.5,
            0.5,
            "no similarities recorded:\nthe F6 fit needs a run of this version",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_title("F6: ε vs similarity")
    ax.set_xlabel("cosine similarity of the matched entry")
    ax.set_ylabel("ε = max_a |log p̃ − log p|")
    ax.grid(alpha=0.3)

    ax = axes[2]
    ratios = {name: [a["kl"] / a["kl_bound"] for a in group if a["kl_bound"] > 0] for name, group in groups.items()}
    ratios = {k: v for k, v in ratios.items() if v}
    if ratios:
        hi = max(1.0, max(max(v) for v in ratios.values()))
        ax.hist(
            list(ratios.values()),
            bins=np.linspace(0.0, hi, 31),
            stacked=True,
            color=[colours[k] for k in ratios],
            label=list(ratios),
        )
        ax.legend(fontsize=7)
    ax.axvline(1.0, color="red", lw=1)
    ax.set_xlabel("KL / 2ε (F5 holds left of 1)")
    ax.set_ylabel("audits")
    vis = s["visitation"]["per_decision"]
    ax.set_title("E_μ[KL] per decision " + (f"{vis['kl']:.3g} ≤ {vis['kl_bound']:.3g}" if vis else "n/a"))
    ax.grid(alpha=0.3)

    fig.suptitle(f"{s['env']} · {s['method']} · seeds {s['seeds']}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def write_kl_report(run_dir: Path, out: Path | None = None) -> dict[str, Any]:
    """Read the run in ``run_dir``, write kl_report.md/.json/.png into ``out`` (default: ``run_dir``).
    Returns the summary (the JSON's content) plus ``files``, the written paths."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a folder")
    if not (run_dir / "config.json").exists():
        inner = sorted({p.parent for p in run_dir.rglob("config.json") if (p.parent / "metrics.jsonl").exists()})
        if inner:
            raise ConfigError(
                f"{run_dir} is not a run folder but holds {len(inner)} of them (e.g. {inner[0]}); give one run folder"
            )
    run = read_run(run_dir)
    summary = kl_summary(run)
    audits, _ = collect_audits(run)
    out = Path(out or run_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "kl_report.md", render_markdown(summary))
    atomic_write_json(out / "kl_report.json", summary)
    png = plot(summary, audits, out / "kl_report.png")
    return {**summary, "files": [out / "kl_report.md", out / "kl_report.json", png]}
