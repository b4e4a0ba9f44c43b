"""The paper-style results table (markdown + CSV) and plots (PNG) from saved runs (docs/design.md §1).

A run folder is any folder holding ``config.json`` and ``metrics.jsonl`` (what ``priorcache run``
and ``priorcache bench text`` write), and ``evals.jsonl`` with its held-out evaluations; the files are
read through :mod:`priorcache.experiments.summaries`, so a damaged one is a ConfigError naming it. The
headline is held-out success: the greedy policy after training on held-out games, mean and 95 % CI
over seeds; training success (with exploration, on training games) is reported beside it.

Runs are grouped by environment and method (agent and cache mode); the episodes and evaluations
of a group's runs (one run per seed, or one run over several seeds) are pooled and summarised
together. Query reduction and retention compare each method with the uncached DQN-Prior of the
same environment, queries per training episode, so a deterministic baseline that ran one episode
per seed compares fairly with a learner that ran ten.

Outputs, written atomically into the report folder: ``results.md``, ``results.csv``,
``results.json``, ``success_vs_queries.png``, ``learning_curves.png`` (training return by
episode), ``held_out_curves.png`` (held-out success against training environment steps and
against LLM queries, when runs evaluated more than once) and ``cache_params.png`` (the cache's K,
δ and r against the cumulative step, one line per run and seed: the meta-optimiser's updates where
it ran, the episode-end values otherwise) when some run recorded cache parameters.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from priorcache.errors import ConfigError
from priorcache.experiments.metrics import summarise, summarise_held_out
from priorcache.experiments.summaries import (
    EVAL_FIELDS,
    RECORD_KEYS,
    SUMMARY_FILE,
    check_records,
    env_label,
    load_config,
    load_summary,
    read_jsonl,
)
from priorcache.io import atomic_path, atomic_write_json, atomic_write_text

#: Method label of (agent, cache mode); the uncached DQN-Prior is the 100 % reference.
REFERENCE_METHOD = "dqn-prior-uncached"
_METHOD_ORDER = [
    "direct-llm",
    "react",
    "dqn",
    "dqn-prior-uncached-0shot",
    REFERENCE_METHOD,
    "dqn-prior-static",
    "dqn-prior-adaptive",
    "dqn-prior-kl-budget-0.01",
    "dqn-prior-kl-budget-0.05",
    "dqn-prior-kl-budget-0.2",
]


def method_label(agent: str, cache_mode: str, kl_target: float | None = None) -> str:
    """ "dqn-prior-static", "dqn-prior-kl-budget-0.05" (its target is part of the method), "react", …"""
    if agent != "dqn-prior":
        return agent
    if cache_mode == "kl-budget" and kl_target is not None:
        return f"dqn-prior-kl-budget-{kl_target:g}"
    return f"dqn-prior-{'uncached' if cache_mode == 'none' else cache_mode}"


@dataclass
class RunFolder:
    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    finished: bool
    env_source: str | None

    @property
    def env_label(self) -> str:
        """The environment with its variant, "textworld:tw-simple" (see ``summaries.env_label``)."""
        return env_label(self.config["env"], self.config.get("env_kwargs"))

    @property
    def method(self) -> str:
        if self.config.get("label"):
            return str(self.config["label"])
        cache = self.config["cache"]
        return method_label(self.config["agent"], cache["mode"], (cache.get("kl_budget") or {}).get("target_kl"))


def read_run(path: Path) -> RunFolder:
    """One run folder; a clear error when a file is missing or damaged (``summaries`` checks the shapes)."""
    path = Path(path)
    config = load_config(path)
    metrics_path, evals_path = path / "metrics.jsonl", path / "evals.jsonl"
    if not metrics_path.is_file():
        raise ConfigError(f"{path} is not a run folder: {metrics_path} is missing")
    records = read_jsonl(metrics_path, RECORD_KEYS)
    evals = read_jsonl(evals_path, EVAL_FIELDS) if evals_path.is_file() else []
    # No summary.json: the run never finished an episode (or predates it); it is shown as unfinished.
    summary = load_summary(path) if (path / SUMMARY_FILE).is_file() else {}
    finished = bool(summary) and summary.get("partial") is not True
    return RunFolder(path, config, records, evals, finished, summary.get("env_source"))


def find_runs(root: Path) -> list[RunFolder]:
    """Every run folder at or below ``root``, in path order."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder")
    folders = sorted({p.parent for p in root.rglob("config.json") if (p.parent / "metrics.jsonl").exists()})
    return [read_run(folder) for folder in folders]


def group_runs(
    runs: list[RunFolder], key: Callable[[RunFolder], tuple[str, str]]
) -> dict[tuple[str, str], list[RunFolder]]:
    """The finished runs with episodes, grouped by ``key`` (environment, method); a ConfigError when two
    runs of one group cover the same seed."""
    groups: dict[tuple[str, str], list[RunFolder]] = {}
    for run in runs:
        if run.finished and run.records:
            groups.setdefault(key(run), []).append(run)
    for (env, method), members in groups.items():
        seen: dict[int, Path] = {}
        for run in members:
            for seed in {r["seed"] for r in run.records}:
                if seed in seen:
                    raise ConfigError(
                        f"two runs of {env} / {method} cover seed {seed}: {seen[seed]} and {run.path}; "
                        "report them from separate folders"
                    )
                seen[seed] = run.path
    return groups


def rows_csv(rows: list[dict[str, Any]], keys: list[str]) -> str:
    """The ``keys`` columns of ``rows`` as CSV text (a list, such as the seeds or an interval's two
    ends, space-separated in one cell)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (" ".join(map(str, row[k])) if isinstance(row[k], list | tuple) else row[k]) for k in keys})
    return buffer.getvalue()


def aggregate(runs: list[RunFolder]) -> list[dict[str, Any]]:
    """One row per (environment, method) over the finished runs, with the comparison columns."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for (env, method), members in group_runs(runs, lambda run: (run.env_label, run.method)).items():
        for run in members:
            check_records(run.records, run.path / "metrics.jsonl")
        records = [r for run in members for r in run.records]
        summary = summarise(records)
        held = summarise_held_out([e for run in members for e in run.evals])
        sources = sorted({run.env_source for run in members if run.env_source})
        rows[(env, method)] = {
            "env": env,
            "env_source": ",".join(sources) or None,
            "method": method,
            "seeds": summary["seeds"],
            "episodes": summary["episodes"],
            "held_out_success": held["success"]["mean"] if held else None,
            "held_out_success_ci95": held["success"]["ci95"] if held else None,
            "held_out_games": held["games"] if held else None,
            "held_out_curve": held["curve"] if held else [],
            "eval_policy": members[0].config.get("eval_policy", "greedy") if held else None,
            "success": summary["success_rate"]["mean"],
            "success_ci95": summary["success_rate"]["ci95"],
            "return": summary["mean_return"]["mean"],
            "return_ci95": summary["mean_return"]["ci95"],
            "llm_queries": summary["llm_queries"],
            "llm_queries_per_episode": summary["llm_queries"] / summary["episodes"],
            "decision_p50_ms": summary["decision_latency_ms"]["p50"],
            "decision_p95_ms": summary["decision_latency_ms"]["p95"],
            "hit_rate": summary["hit_rate"]
            if members[0].config["cache"]["mode"] != "none" and summary["lookups"]
            else None,
            "audits": summary["audits"],
            "f5_violations": summary["audit_f5_violations"],
            "shadow_audits": summary["shadow_audits"],
            "shadow_f5_violations": summary["shadow_f5_violations"],
            # mean KL(π̃‖π) of the refresh audits of served hits (F5)
            "audit_kl_mean": summary["audit_kl"]["mean"] if summary["audit_kl"] else None,
            "audit_kl_max": summary["audit_kl"]["max"] if summary["audit_kl"] else None,
            "final_threshold": _mean_final(members, "similarity_threshold"),
            "final_refresh_rate": _mean_final(members, "refresh_rate"),
            # docs/design.md §3: the adaptive modes' own work (meta-optimiser, KL budget, shadow audits)
            "adaptation_share": (
                summary["adaptation_time_s"] / summary["wall_time_s"]
                if members[0].config["cache"]["mode"] in ("adaptive", "kl-budget") and summary["wall_time_s"] > 0
                else None
            ),
            "train_time_s": summary["train_time_s"],
            "wall_time_s": summary["wall_time_s"],
            "runs": [str(run.path) for run in members],
            "learning_curve": _learning_curve(records),
        }
    for (env, _method), row in rows.items():
        ref = rows.get((env, REFERENCE_METHOD))
        row["query_reduction_x"] = (
            _ratio(ref["llm_queries_per_episode"], row["llm_queries_per_episode"]) if ref else None
        )
        row["latency_p50_ratio_x"] = _ratio(ref["decision_p50_ms"], row["decision_p50_ms"]) if ref else None
        row["success_retention"] = _ratio(row["success"], ref["success"]) if ref else None
        row["held_out_retention"] = (
            _ratio(row["held_out_success"], ref["held_out_success"])
            if ref and row["held_out_success"] is not None and ref["held_out_success"] is not None
            else None
        )
        row["return_retention"] = _ratio(row["return"], ref["return"]) if ref else None
    order = {m: i for i, m in enumerate(_METHOD_ORDER)}
    return sorted(rows.values(), key=lambda r: (r["env"], order.get(r["method"], len(order)), r["method"]))


def _mean_final(runs: list[RunFolder], key: str) -> float | None:
    """Mean over runs of a cache parameter at the end of each seed's last episode (None without a cache)."""
    values = []
    for run in runs:
        last: dict[int, dict[str, Any]] = {}
        for r in run.records:
            if r.get("cache_params"):
                last[r["seed"]] = r["cache_params"]
        values += [p[key] for p in last.values()]
    return float(np.mean(values)) if values else None


def _ratio(num: float, den: float) -> float | None:
    if den == 0:
        return None if num == 0 else math.inf
    return num / den


def _learning_curve(records: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Mean return and success by episode index, over seeds (the agent's own episodes, not demonstrations)."""
    records = [r for r in records if not r.get("demonstration")]
    episodes = sorted({r["episode"] for r in records})
    by_episode = {e: [r for r in records if r["episode"] == e] for e in episodes}
    return {
        "episode": [float(e) for e in episodes],
        "return": [float(np.mean([r["episode_return"] for r in by_episode[e]])) for e in episodes],
        "success": [float(np.mean([r["success"] for r in by_episode[e]])) for e in episodes],
    }


# ------------------------------------------------------------------ rendering

_COLUMNS = [
    ("env", "environment"),
    ("method", "method"),
    ("held_out_success", "held-out success"),
    ("success", "training success"),
    ("return", "training return"),
    ("llm_queries_per_episode", "LLM queries / episode"),
    ("query_reduction_x", "query reduction ×"),
    ("decision_p50_ms", "decision p50 (ms)"),
    ("hit_rate", "hit rate"),
    ("held_out_retention", "retention (held-out success)"),
    ("return_retention", "retention (training return)"),
    ("audit_kl_mean", "audited KL (nats)"),
    ("final_threshold", "δ at end"),
    ("adaptation_share", "adaptation overhead"),
    ("episodes", "episodes"),
]


def _fmt(key: str, row: dict[str, Any]) -> str:
    value = row[key]
    if value is None:
        return "n/a"
    if key in ("success", "return", "held_out_success"):
        ci = row[f"{key}_ci95"]
        return f"{value:.3f} ± {ci:.3f}" if len(row["seeds"]) > 1 else f"{value:.3f}"
    if key in ("success_retention", "return_retention", "held_out_retention"):
        return "∞" if math.isinf(value) else f"{100 * value:.0f} %"
    if key == "adaptation_share":
        return f"{100 * value:.2f} %"
    if key == "audit_kl_mean":
        return f"{value:.4f}"
    if key == "final_threshold":
        return f"{value:.3f}"
    if key == "query_reduction_x":
        return "∞" if math.isinf(value) else f"{value:.2f}×"
    if key == "env" and row["env_source"]:
        return f"{value} ({row['env_source']})"
    if isinstance(value, float):
        return f"{value:.3f}" if key == "hit_rate" else f"{value:.1f}"
    return str(value)


def render_markdown(rows: list[dict[str, Any]], incomplete: list[str]) -> str:
    lines = ["# Text environments: results", ""]
    lines.append("| " + " | ".join(title for _, title in _COLUMNS) + " |")
    lines.append("|" + "---|" * len(_COLUMNS))
    for row in rows:
        lines.append("| " + " | ".join(_fmt(key, row) for key, _ in _COLUMNS) + " |")
    seeds = sorted({tuple(r["seeds"]) for r in rows})
    lines += [
        "",
        "Held-out success: the policy after training (evaluation policy: "
        f"{', '.join(sorted({r['eval_policy'] for r in rows if r['eval_policy']})) or 'none recorded'}; greedy "
        "is its mode, sample draws from it), one episode on each held-out game (games "
        "disjoint from training), mean over seeds ± 95 % CI (Student's t). Training success and return: the "
        "exploring agent on training games, the same way. Query reduction, latency and retention "
        f"are against `{REFERENCE_METHOD}` on the same environment; queries count full and partial LLM calls "
        "per training episode. Baselines that do not learn (direct-llm, react) play one training episode per "
        "seed before their held-out evaluation. Environments marked (generated) use problems generated offline, "
        "not an official split.",
        f"Seeds: {', '.join(str(list(s)) for s in seeds) or 'none'}.",
    ]
    if incomplete:
        lines += ["", "Not in the table (unfinished): " + ", ".join(incomplete) + "."]
    return "\n".join(lines) + "\n"


def render_csv(rows: list[dict[str, Any]]) -> str:
    keys = [
        "env",
        "env_source",
        "method",
        "seeds",
        "episodes",
        "held_out_success",
        "held_out_success_ci95",
        "held_out_games",
        "held_out_retention",
        "success",
        "success_ci95",
        "return",
        "return_ci95",
        "llm_queries",
        "llm_queries_per_episode",
        "query_reduction_x",
        "decision_p50_ms",
        "decision_p95_ms",
        "latency_p50_ratio_x",
        "hit_rate",
        "success_retention",
        "return_retention",
        "audits",
        "f5_violations",
        "shadow_audits",
        "shadow_f5_violations",
        "audit_kl_mean",
        "audit_kl_max",
        "final_threshold",
        "final_refresh_rate",
        "adaptation_share",
        "train_time_s",
        "wall_time_s",
    ]
    return rows_csv(rows, keys)


def save_figure(fig: Any, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")


def method_colours(rows: list[dict[str, Any]], order: list[str]) -> dict[str, Any]:
    """One tab10 colour per method of ``rows``: the methods of ``order`` first, in that order, then the rest."""
    import matplotlib.pyplot as plt

    methods = [m for m in order if any(r["method"] == m for r in rows)]
    methods += sorted({r["method"] for r in rows} - set(methods))
    return {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}


def plot(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """success_vs_queries.png and learning_curves.png, one panel per environment."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    envs = sorted({r["env"] for r in rows})
    if not envs:
        return []
    colours = method_colours(rows, _METHOD_ORDER)
    written = []

    fig, axes = plt.subplots(1, len(envs), figsize=(4.2 * len(envs), 3.6), squeeze=False)
    for ax, env in zip(axes[0], envs):
        for row in (r for r in rows if r["env"] == env):
            held = row["held_out_success"] is not None
            ax.errorbar(
                row["llm_queries_per_episode"],
                row["held_out_success"] if held else row["success"],
                yerr=row["held_out_success_ci95"] if held else row["success_ci95"],
                fmt="o",
                color=colours[row["method"]],
                label=row["method"],
                capsize=3,
            )
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("LLM queries per training episode")
        ax.set_ylabel("held-out success rate")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(env)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    path = out / "success_vs_queries.png"
    save_figure(fig, path)
    plt.close(fig)
    written.append(path)

    fig, axes = plt.subplots(1, len(envs), figsize=(4.2 * len(envs), 3.6), squeeze=False)
    for ax, env in zip(axes[0], envs):
        env_rows = [r for r in rows if r["env"] == env]
        last = max(max(r["learning_curve"]["episode"]) for r in env_rows)
        for row in env_rows:
            curve = row["learning_curve"]
            if len(curve["episode"]) == 1:  # a deterministic baseline: the same episode every time
                ax.hlines(
                    curve["return"][0], 0, last, colors=[colours[row["method"]]], linestyles="--", label=row["method"]
                )
            else:
                ax.plot(curve["episode"], curve["return"], color=colours[row["method"]], label=row["method"])
        ax.set_xlabel("episode")
        ax.set_ylabel("return (mean over seeds)")
        ax.set_title(env)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    path = out / "learning_curves.png"
    save_figure(fig, path)
    plt.close(fig)
    written.append(path)

    curved = [r for r in rows if len(r["held_out_curve"]) > 1]
    if curved:
        fig, axes = plt.subplots(2, len(envs), figsize=(4.2 * len(envs), 6.6), squeeze=False)
        for col, env in enumerate(envs):
            for row in (r for r in curved if r["env"] == env):
                mean = np.array([p["success"]["mean"] for p in row["held_out_curve"]])
                ci = np.array([p["success"]["ci95"] for p in row["held_out_curve"]])
                for ax, key in zip((axes[0][col], axes[1][col]), ("train_steps", "train_llm_queries")):
                    x = np.array([p[key] for p in row["held_out_curve"]])
                    ax.plot(x, mean, color=colours[row["method"]], label=row["method"], marker=".")
                    ax.fill_between(x, mean - ci, mean + ci, color=colours[row["method"]], alpha=0.15)
            axes[0][col].set_title(env)
            axes[0][col].set_xlabel("training environment steps")
            axes[1][col].set_xlabel("training LLM queries")
            for ax in (axes[0][col], axes[1][col]):
                ax.set_ylabel("held-out success")
                ax.set_ylim(-0.05, 1.05)
                ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        path = out / "held_out_curves.png"
        save_figure(fig, path)
        plt.close(fig)
        written.append(path)
    return written


#: The cache parameters of docs/design.md §3 as (key in cache_params / meta_updates, axis label).
_CACHE_PARAMS = [
    ("capacity", "capacity K"),
    ("similarity_threshold", "similarity threshold δ"),
    ("refresh_rate", "refresh rate r"),
]


def cache_param_trajectories(run: RunFolder) -> dict[int, dict[str, list[float]]]:
    """Per seed of the run: the cumulative step and K, δ, r, from the config's starting values (step 0),
    every meta update (at its ``step``, the agent's step count) and every episode end (``cache_params``).
    Empty when the run has neither (no cache, or written before these fields existed)."""
    start = {k: (run.config.get("cache") or {}).get(k) for k, _ in _CACHE_PARAMS}
    out: dict[int, dict[str, list[float]]] = {}
    for seed in sorted({r["seed"] for r in run.records}):
        records = sorted((r for r in run.records if r["seed"] == seed), key=lambda r: r["episode"])
        if not any(r.get("cache_params") or r.get("meta_updates") for r in records):
            continue
        points: list[tuple[float, dict[str, Any]]] = []
        # kl-budget starts closed (δ = 1, no similarity hits) whatever δ the config names
        if all(v is not None for v in start.values()) and run.config["cache"].get("mode") != "kl-budget":
            points.append((0.0, start))
        step = 0
        for r in records:
            points += [(float(u["step"]), u) for u in r.get("meta_updates") or []]
            step += r.get("steps", 0)
            if r.get("cache_params"):
                points.append((float(step), r["cache_params"]))
        points.sort(key=lambda p: p[0])  # stable: an episode end after the updates it contains
        out[seed] = {"step": [p[0] for p in points], **{k: [float(p[1][k]) for p in points] for k, _ in _CACHE_PARAMS}}
    return out


def plot_cache_params(runs: list[RunFolder], out: Path) -> Path | None:
    """cache_params.png: K, δ and r (rows) against the cumulative step, one column per environment and one
    line per (method, seed); None (nothing written) when no run recorded cache parameters."""
    by_env: dict[str, list[tuple[str, dict[str, list[float]]]]] = {}
    for run in runs:
        for seed, curve in cache_param_trajectories(run).items():
            by_env.setdefault(run.env_label, []).append((f"{run.method} · seed {seed}", curve))
    if not by_env:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    envs = sorted(by_env)
    methods = sorted({label.split(" · ")[0] for lines in by_env.values() for label, _ in lines})
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(
        len(_CACHE_PARAMS), len(envs), figsize=(4.2 * len(envs) + 1.5, 7.5), sharex="col", squeeze=False
    )
    for col, env in enumerate(envs):
        for label, curve in by_env[env]:
            method = label.split(" · ")[0]
            for row, (key, _) in enumerate(_CACHE_PARAMS):
                # A step plot: a parameter holds its value until the next update. Seeds share their
                # method's colour; the legend names methods.
                axes[row][col].step(curve["step"], curve[key], where="post", color=colours[method], lw=1.0, alpha=0.8)
        axes[0][col].set_title(env, fontsize=9)
        axes[-1][col].set_xlabel("step (per seed)")
        axes[0][col].set_yscale("log")  # K moves multiplicatively (the meta-optimiser steps log K)
    for row, (_, title) in enumerate(_CACHE_PARAMS):
        axes[row][0].set_ylabel(title)
        for ax in axes[row]:
            ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=colours[m], label=m) for m in methods]
    fig.legend(handles=handles, fontsize=7, loc="center right")
    fig.suptitle("cache parameters over training (one line per seed)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 1.5 / (4.2 * len(envs) + 1.5), 0.96))
    path = out / "cache_params.png"
    save_figure(fig, path)
    plt.close(fig)
    return path


def write_report(runs_root: Path, out: Path | None = None) -> dict[str, Any]:
    """Find the runs under ``runs_root``, write the table and plots into ``out`` (default: ``runs_root``):
    the text report of the text runs and the control report (:mod:`priorcache.experiments.control_report`)
    of the control runs, whichever there are. ``files`` lists the markdown tables first."""
    from priorcache.experiments.control_report import is_control_run, write_control_report

    runs = find_runs(runs_root)
    if not runs:
        raise ConfigError(f"no run folders (config.json + metrics.jsonl) under {runs_root}")
    out = Path(out or runs_root)
    out.mkdir(parents=True, exist_ok=True)
    text_runs = [run for run in runs if not is_control_run(run)]
    control_runs = [run for run in runs if is_control_run(run)]
    result: dict[str, Any] = {"rows": [], "incomplete": [], "files": []}
    if control_runs:
        result["control"] = write_control_report(control_runs, out)
    if text_runs:
        result.update(_write_text_report(text_runs, out))
    result["files"] = sorted(
        result["files"] + result.get("control", {}).get("files", []), key=lambda p: p.suffix != ".md"
    )
    return result


def _write_text_report(runs: list[RunFolder], out: Path) -> dict[str, Any]:
    rows = aggregate(runs)
    incomplete = [str(run.path) for run in runs if not run.finished]
    atomic_write_text(out / "results.md", render_markdown(rows, incomplete))
    atomic_write_text(out / "results.csv", render_csv(rows))
    # JSON has no infinity: a reduction over zero queries is written as the string "inf".
    safe = [{k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in row.items()} for row in rows]
    atomic_write_json(out / "results.json", {"rows": safe, "incomplete": incomplete})
    figures = plot(rows, out)
    params_figure = plot_cache_params(runs, out)
    if params_figure is not None:
        figures.append(params_figure)
    return {
        "rows": rows,
        "incomplete": incomplete,
        "files": [out / "results.md", out / "results.csv", out / "results.json", *figures],
    }
