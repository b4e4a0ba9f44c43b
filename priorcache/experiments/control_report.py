"""The continuous-control results table (markdown + CSV + JSON) and plots from saved control runs
(docs/design.md §1), written beside the text report by ``priorcache report`` and ``bench control``.

A control run folder is one whose ``config.json`` says ``"kind": "control"`` (what
:mod:`priorcache.experiments.control_runner` writes). Runs are grouped by task and method label
("sac", "sac-prior-uncached", "sac-prior-static", "sac-prior-uncached-0shot", …); a group's seeds are
pooled. The headline is the held-out return of the deterministic policy after training (and MetaWorld's
held-out success), mean and 95 % CI over seeds. Query reduction and retention compare each method
with ``sac-prior-uncached`` of the same task (training LLM queries per environment step, held-out
return); "vs SAC" is the held-out return against Stable-Baselines3 SAC's. A ratio of returns is
only shown when the denominator is positive: locomotion returns can be negative, and a ratio of
two negative numbers reads backwards.

Outputs, atomically: ``control_results.md``, ``control_results.csv``, ``control_results.json``,
``control_curves.png`` (held-out return against training steps, one panel per task) and
``control_return_vs_queries.png`` (held-out return against training LLM queries).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from priorcache.experiments.control_episodes import summarise_control, summarise_control_held_out
from priorcache.experiments.metrics import ratio_ci95
from priorcache.experiments.report import RunFolder, group_runs, method_colours, rows_csv, save_figure
from priorcache.experiments.summaries import load_summary
from priorcache.io import atomic_write_json, atomic_write_text

#: The 100 % reference of query reduction and retention, and the plain-RL baseline.
CONTROL_REFERENCE = "sac-prior-uncached"
SAC_BASELINE = "sac"
_ORDER = ["sac", CONTROL_REFERENCE, "sac-prior-static-0shot", "sac-prior-static", "sac-prior-static-10shot"]


#: A SAC-Prior label: the cache mode, then the settings it shares with its uncached reference ("-lora-…",
#: "-10shot", …) and any cache setting ("-delta<δ>", which the reference has no use for).
_LABEL = re.compile(r"^sac-prior-(uncached|static|adaptive|kl-budget-[0-9.e-]+?)((?:-.*)?)$")
_CACHE_SETTING = re.compile(r"-delta[0-9.]+")


def reference_of(method: str, methods: set[str]) -> str:
    """The uncached run a method is compared with: ``sac-prior-uncached`` plus the method's own settings
    when such runs exist ("sac-prior-static-lora-…" against "sac-prior-uncached-lora-…"), else
    ``sac-prior-uncached``."""
    match = _LABEL.match(method)
    if match is None:
        return CONTROL_REFERENCE
    own = f"{CONTROL_REFERENCE}{_CACHE_SETTING.sub('', match.group(2))}"
    return own if own in methods else CONTROL_REFERENCE


def is_control_run(run: RunFolder) -> bool:
    return run.config.get("kind") == "control"


def control_method(run: RunFolder) -> str:
    """The run's method label (the control runner records one, ``ControlRunConfig.default_label``)."""
    return str(run.config.get("label") or run.config["agent"])


def aggregate_control(runs: list[RunFolder]) -> list[dict[str, Any]]:
    """One row per (task, method) over the finished control runs, with the comparison columns."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for (env, method), members in group_runs(runs, lambda run: (run.config["env"], control_method(run))).items():
        records = [r for run in members for r in run.records]
        summaries = [load_summary(run.path) for run in members]
        train = summarise_control(records, summaries[0].get("decision_unit", "skill decision"))
        held = summarise_control_held_out([e for run in members for e in run.evals])
        rates = [s["env_steps_per_s"] for s in summaries if s.get("env_steps_per_s")]
        cached = members[0].config["cache"]["mode"] != "none"
        rows[(env, method)] = {
            "env": env,
            "method": method,
            "seeds": train["seeds"],
            "steps_per_seed": train["steps"] / len(train["seeds"]),
            "held_out_return": held["return"]["mean"] if held else None,
            "held_out_return_ci95": held["return"]["ci95"] if held else None,
            "held_out_return_values": held["return"]["values"] if held else [],
            # MetaWorld's success; MuJoCo locomotion has none
            "held_out_success": held["success"]["mean"] if held and env.startswith("metaworld") else None,
            "held_out_success_ci95": held["success"]["ci95"] if held and env.startswith("metaworld") else None,
            "held_out_episodes": held["games"] if held else None,
            "held_out_curve": held["curve"] if held else [],
            "train_return": train["mean_return"]["mean"],
            "llm_queries_per_seed": train["llm_queries"] / len(train["seeds"]),
            "llm_queries_per_step": train["llm_queries_per_step"],
            "decision_p50_ms": train["decision_latency_ms"]["p50"] if train["decisions"] else None,
            "hit_rate": train["hit_rate"] if train["lookups"] and cached else None,
            "audits": train["audits"],
            "f5_violations": train["audit_f5_violations"],
            "audit_kl_mean": train["audit_kl"]["mean"] if train["audit_kl"] else None,
            "env_steps_per_s": float(np.mean(rates)) if rates else None,
            "runs": [str(run.path) for run in members],
        }
    for (env, method), row in rows.items():
        row["reference"] = reference_of(method, {m for e, m in rows if e == env})
        ref, sac = rows.get((env, row["reference"])), rows.get((env, SAC_BASELINE))
        uses_llm = row["method"] != SAC_BASELINE
        row["query_reduction_x"] = (
            _ratio(ref["llm_queries_per_step"], row["llm_queries_per_step"]) if ref and uses_llm else None
        )
        for key, other in (("return_retention", ref), ("return_vs_sac", sac)):
            row[key] = _positive_ratio(row, other) if uses_llm else None
            row[f"{key}_ci95"] = (
                ratio_ci95(row["held_out_return_values"], other["held_out_return_values"])
                if row[key] is not None and other is not None and other is not row
                else None
            )
        row["speed_vs_sac"] = (
            row["env_steps_per_s"] / sac["env_steps_per_s"]
            if sac and row["env_steps_per_s"] and sac["env_steps_per_s"]
            else None
        )
    order = {m: i for i, m in enumerate(_ORDER)}
    return sorted(rows.values(), key=lambda r: (r["env"], order.get(r["method"], len(order)), r["method"]))


def _ratio(num: float, den: float) -> float | None:
    if den == 0:
        return None if num == 0 else math.inf
    return num / den


def _positive_ratio(row: dict[str, Any], ref: dict[str, Any] | None) -> float | None:
    if ref is None or row["held_out_return"] is None or not ref["held_out_return"] or ref["held_out_return"] <= 0:
        return None
    return row["held_out_return"] / ref["held_out_return"]


_COLUMNS = [
    ("env", "task"),
    ("method", "method"),
    ("held_out_return", "held-out return"),
    ("held_out_success", "held-out success"),
    ("return_vs_sac", "return vs SAC"),
    ("llm_queries_per_seed", "training LLM queries / seed"),
    ("query_reduction_x", "query reduction ×"),
    ("return_retention", "retention (held-out return)"),
    ("hit_rate", "hit rate"),
    ("decision_p50_ms", "decision p50 (ms)"),
    ("audit_kl_mean", "audited KL (nats)"),
    ("f5_violations", "F5 violations"),
    ("env_steps_per_s", "env steps/s"),
    ("steps_per_seed", "steps / seed"),
]


def _fmt(key: str, row: dict[str, Any]) -> str:
    value = row[key]
    if value is None:
        return "n/a"
    if key in ("held_out_return", "held_out_success"):
        ci, digits = row[f"{key}_ci95"], 1 if key == "held_out_return" else 2
        return f"{value:.{digits}f} ± {ci:.{digits}f}" if len(row["seeds"]) > 1 else f"{value:.{digits}f}"
    if key in ("return_vs_sac", "return_retention"):
        ci = row[f"{key}_ci95"]
        if len(row["seeds"]) < 2 or (key == "return_retention" and row["method"] == row["reference"]):
            return f"{100 * value:.0f} %"  # no spread, or the reference against itself (100 % by definition)
        shown = "unbounded" if ci is None else f"{100 * ci[0]:.0f}–{100 * ci[1]:.0f} %"
        return f"{100 * value:.0f} % [{shown}]"
    if key == "query_reduction_x":
        return "∞" if math.isinf(value) else f"{value:.2f}×"
    if key == "audit_kl_mean":
        return f"{value:.2g}"
    if key == "hit_rate":
        return f"{value:.3f}"
    if key == "f5_violations":
        return f"{value} of {row['audits']}" if row["audits"] else "n/a"
    if isinstance(value, float):
        return f"{value:.0f}" if key in ("llm_queries_per_seed", "steps_per_seed") else f"{value:.1f}"
    return str(value)


def render_control_markdown(rows: list[dict[str, Any]], incomplete: list[str]) -> str:
    lines = ["# Continuous control: results", ""]
    lines.append("| " + " | ".join(title for _, title in _COLUMNS) + " |")
    lines.append("|" + "---|" * len(_COLUMNS))
    lines += ["| " + " | ".join(_fmt(key, row) for key, _ in _COLUMNS) + " |" for row in rows]
    seeds = sorted({tuple(r["seeds"]) for r in rows})
    lines += [
        "",
        "Held-out return (and MetaWorld success): the deterministic policy after training, one episode on "
        "each held-out instance (other object and goal positions on MetaWorld, other start states on MuJoCo), "
        "mean over seeds ± 95 % CI (Student's t). Query reduction (training LLM queries per environment "
        f"step) and retention are against `{CONTROL_REFERENCE}` of the same task (with the method's own "
        "settings when such runs exist: `…-static-lora-…` against `…-uncached-lora-…`); return vs SAC against "
        "Stable-Baselines3 SAC at the same environment steps. Ratios of returns are shown only over a "
        "positive denominator, with their 95 % interval in brackets (Fieller's, over the seeds' held-out "
        "returns; unbounded when the denominator's own interval reaches 0). env steps/s: each seed's "
        "training environment steps over its training wall "
        "time (environment, decisions, LLM and gradient steps; evaluations excluded), measured in one "
        "benchmark on one machine.",
        f"Seeds: {', '.join(str(list(s)) for s in seeds) or 'none'}.",
    ]
    if incomplete:
        lines += ["", "Not in the table (unfinished): " + ", ".join(incomplete) + "."]
    return "\n".join(lines) + "\n"


def render_control_csv(rows: list[dict[str, Any]]) -> str:
    keys = ["env", "method", "seeds", "held_out_return", "held_out_return_ci95", "held_out_success"]
    keys += ["held_out_success_ci95", "return_vs_sac", "return_vs_sac_ci95", "train_return", "llm_queries_per_seed"]
    keys += ["llm_queries_per_step", "query_reduction_x", "return_retention", "return_retention_ci95", "hit_rate"]
    keys += ["decision_p50_ms", "audits", "f5_violations", "audit_kl_mean", "env_steps_per_s", "speed_vs_sac"]
    keys += ["steps_per_seed"]
    return rows_csv(rows, keys)


def plot_control(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """control_curves.png and control_return_vs_queries.png, one panel per task."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    envs = sorted({r["env"] for r in rows})
    if not envs:
        return []
    colours = method_colours(rows, _ORDER)
    written = []
    for name, key, xlabel in (
        ("control_curves.png", "train_steps", "training environment steps"),
        ("control_return_vs_queries.png", "train_llm_queries", "training LLM queries"),
    ):
        fig, axes = plt.subplots(1, len(envs), figsize=(4.2 * len(envs), 3.6), squeeze=False)
        for ax, env in zip(axes[0], envs):
            for row in (r for r in rows if r["env"] == env and r["held_out_curve"]):
                curve = row["held_out_curve"]
                x = np.array([p[key] for p in curve])
                mean = np.array([p["return"]["mean"] for p in curve])
                ci = np.array([p["return"]["ci95"] for p in curve])
                ax.plot(x, mean, color=colours[row["method"]], label=row["method"], marker=".")
                ax.fill_between(x, mean - ci, mean + ci, color=colours[row["method"]], alpha=0.15)
            if key == "train_llm_queries":
                ax.set_xscale("symlog", linthresh=1.0)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("held-out return")
            ax.set_title(env)
            ax.grid(alpha=0.3)
        # one legend for the figure: a task's panel may lack some methods
        handles = [plt.Line2D([], [], color=c, marker=".", label=m) for m, c in colours.items()]
        fig.legend(handles=handles, fontsize=7, loc="upper center", ncol=min(len(handles), 6))
        fig.tight_layout(rect=(0, 0, 1, 0.9))
        path = out / name
        save_figure(fig, path)
        plt.close(fig)
        written.append(path)
    return written


def write_control_report(runs: list[RunFolder], out: Path) -> dict[str, Any]:
    """The control table and plots of ``runs`` (control run folders) into ``out``."""
    rows = aggregate_control(runs)
    incomplete = [str(run.path) for run in runs if not run.finished]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "control_results.md", render_control_markdown(rows, incomplete))
    atomic_write_text(out / "control_results.csv", render_control_csv(rows))
    safe = [{k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in row.items()} for row in rows]
    atomic_write_json(out / "control_results.json", {"rows": safe, "incomplete": incomplete})
    figures = plot_control(rows, out)
    return {
        "rows": rows,
        "incomplete": incomplete,
        "files": [out / "control_results.md", out / "control_results.csv", out / "control_results.json", *figures],
    }
