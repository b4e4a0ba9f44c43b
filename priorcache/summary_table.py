"""The table ``priorcache run`` prints from a run's summary: held-out success first, then training,
LLM queries and what the cache saved, latency, audits, and the cache mode's own figures."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text


def fmt_ci(stat: dict) -> str:
    """mean ± 95 % CI half-width (the mean alone for one seed)."""
    return f"{stat['mean']:.3f} ± {stat['ci95']:.3f}" if stat["n"] > 1 else f"{stat['mean']:.3f}"


def summary_table(summary: dict, title: str) -> Table:
    """The summary of a run as a two-column table (metric, value) titled ``title``."""
    # Text, not markup: the title holds the environment and agent names as given.
    table = Table(title=Text(title), show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    lat = summary["decision_latency_ms"]
    held = summary.get("held_out")
    rows = []
    if held:
        curve = " → ".join(f"{p['success']['mean']:.2f}" for p in held["curve"])
        rows += [
            (f"held-out success, {held['games']} games (mean ± 95% CI over seeds)", fmt_ci(held["success"])),
            ("held-out return", fmt_ci(held["return"])),
            ("held-out success at each evaluation", curve),
            ("LLM queries of the evaluations", "n/a" if held["llm_queries"] is None else str(held["llm_queries"])),
        ]
    rows += [
        ("training success rate (exploring)", fmt_ci(summary["success_rate"])),
        ("training mean return", fmt_ci(summary["mean_return"])),
        ("episodes / steps", f"{summary['episodes']} / {summary['steps']}"),
        (
            "LLM queries (full + partial)",
            f"{summary['llm_queries']} ({summary['llm_full_calls']} + {summary['llm_partial_calls']})",
        ),
        ("LLM queries per step", f"{summary['llm_queries_per_step']:.3f}"),
        ("cache hit rate", f"{summary['hit_rate']:.3f}"),
        *_savings_rows(summary),
        ("decision latency p50 / p95 (ms)", f"{lat['p50']:.1f} / {lat['p95']:.1f}"),
        ("LLM wall time (s)", f"{summary['llm_wall_time_s']:.1f}"),
        (
            "audits: mean ε / mean KL (nats)",
            f"{summary['audit_epsilon']['mean']:.4f} / {summary['audit_kl']['mean']:.4f}"
            if summary["audits"]
            else "none",
        ),
        ("F5 violations (KL > 2ε)", str(summary["audit_f5_violations"])),
        ("training time / wall time (s)", f"{summary['train_time_s']:.1f} / {summary['wall_time_s']:.1f}"),
    ]
    adaptive = summary.get("cache_mode") in ("adaptive", "kl-budget")
    if adaptive:
        rows.append(
            (
                "shadow audits of near-misses (F5 violations)",
                f"{summary['shadow_audits']} ({summary['shadow_f5_violations']})",
            )
        )
    params = summary.get("cache_params")
    if params:
        rows.append(
            (
                "cache K / δ / r at the end",
                f"{params['capacity']} / {params['similarity_threshold']:.3f} / {params['refresh_rate']:.3f}",
            )
        )
    if adaptive and summary.get("adaptation_share") is not None:
        rows.append(
            (
                "adaptation overhead (share of wall time)",
                f"{summary['adaptation_time_s']:.2f} s ({100 * summary['adaptation_share']:.2f} %)",
            )
        )
    budget = (summary.get("cache_stats") or {}).get("kl_budget")
    if budget:
        achieved = budget.get("achieved_kl")
        rows.append(
            (
                "KL budget: target / achieved (UCB)",
                f"{budget['target_kl']:.3f} / "
                + ("n/a" if achieved is None else f"{achieved:.4f} ({budget['achieved_kl_ucb']:.4f})"),
            )
        )
    for name, value in rows:
        table.add_row(Text(name), Text(value))
    return table


def _savings_rows(summary: dict) -> list[tuple[str, str]]:
    """What the cache saved in training: queries against one per decision (what the uncached agent
    pays), and LLM time against that many calls at this run's own mean time per call (an estimate)."""
    if summary.get("cache_mode") in (None, "none", "n/a") or not summary["lookups"]:
        return []
    lookups, queries, calls = summary["lookups"], summary["llm_queries"], summary["llm_full_calls"]
    rows = [
        (
            "LLM queries saved by the cache",
            f"{lookups - queries} of {lookups} decisions ({lookups / queries:.1f}× fewer)"
            if queries
            else f"all {lookups} decisions",
        )
    ]
    if calls:
        per_call = summary["llm_wall_time_s"] / calls
        rows.append(
            (
                "LLM time: spent / uncached estimate (s)",
                f"{summary['llm_wall_time_s']:.1f} / {per_call * lookups:.1f} ({1e3 * per_call:.0f} ms per call)",
            )
        )
    return rows
