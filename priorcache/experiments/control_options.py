"""``priorcache run`` on a continuous-control environment: which of its options apply, the
:class:`~priorcache.experiments.control_runner.ControlRunConfig` they make, and the table printed at the end.

``priorcache run`` serves both kinds of environment. Its options are of three sorts: shared ones
(``--seeds``, ``--max-steps``, ``--train-games`` for the training instances, ``--eval-every``,
``--shots``, ``--adapt`` (control: none or lora), ``--out`` …), text-only ones (``TEXT_ONLY``: the
text agents, episodes, held-out games, LoRA epochs, workers …) and control-only ones
(``CONTROL_ONLY``: ``--method``, ``--steps``, ``--eval-episodes``, ``--skill-hold``,
``--residual-actor``, ``--prior-scale-q``, ``--actor-target-kl``, ``--skill-q-warmup``, ``--actor-init-alpha``,
``--prior-led``).
``--prior-led`` stands for the prior-led settings (``PRIOR_LED``); an option given beside it wins. An
option *given* on the command line for the other kind is refused with a one-line error naming it, as
are SAC-Prior's options (``SAC_PRIOR_ONLY``: the cache, the backend, shots, adaptation, H, the
prior-led options, F2's temperatures) with ``--method sac``, which has no prior.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from priorcache.cache.config import CacheConfig
from priorcache.errors import ConfigError
from priorcache.experiments.control_runner import (
    DEFAULT_EVAL_EVERY,
    DEFAULT_STEPS,
    PRIOR_LED_SKILL_ALPHA,
    PRIOR_LED_SKILL_Q_WARMUP,
    PRIOR_LED_TARGET_KL,
    ControlRunConfig,
)
from priorcache.summary_table import fmt_ci

#: ``priorcache run`` options (parameter names) that only text environments take.
TEXT_ONLY = (
    "agent",
    "episodes",
    "eval_games",
    "eval_policy",
    "max_examples",
    "num_envs",
    "demo_episodes",
    "lora_epochs",
    "workers",
    "ray_address",
    "cache_shards",
    "cache_sharing",
    "cache_path",
    "unknown_candidates",  # F7: a skill vocabulary is fixed, so there are never unknown candidates
)
#: … that only control environments take.
CONTROL_ONLY = (
    "method",
    "steps",
    "eval_episodes",
    "skill_hold",
    "residual_actor",
    "prior_scale_q",
    "actor_target_kl",
    "skill_q_warmup",
    "actor_init_alpha",
    "prior_led",
)
#: … that only the LLM-prior method of control (sac-prior) takes.
SAC_PRIOR_ONLY = (
    "cache",
    "similarity_threshold",
    "capacity",
    "refresh_rate",
    "kl_target",
    "kl_confidence",
    "per_entry_thresholds",
    "meta_update_every",
    "meta_kl_weight",
    "backend",
    "model_path",
    "base_url",
    "model",
    "device",
    "alpha",
    "alpha_min",
    "shots",
    "skill_hold",
    "residual_actor",
    "prior_scale_q",
    "actor_target_kl",
    "adapt",
    "skill_q_warmup",
    "actor_init_alpha",
    "prior_led",
)
#: What ``--prior-led`` sets (parameter → value) unless that option is given too: the 5-shot LoRA skill prior
#: (MetaWorld; see ``PRIOR_LED_ADAPT``), the residual actor, Q on the prior's scale, a tight δ_KL, a fixed skill
#: temperature (a given ``--alpha`` alone fixes it there) and the skill-level warm-up (docs/design.md §4).
PRIOR_LED = {
    "adapt": "lora",
    "residual_actor": True,
    "prior_scale_q": True,
    "actor_target_kl": PRIOR_LED_TARGET_KL,
    "alpha": PRIOR_LED_SKILL_ALPHA,
    "alpha_min": PRIOR_LED_SKILL_ALPHA,
    "skill_q_warmup": PRIOR_LED_SKILL_Q_WARMUP,
}
#: ``--prior-led``'s skill prior per family. MuJoCo's demonstrations are segmented by a rule that reads the
#: action as well as the state, which an LLM cannot learn from φ(s): on Walker2d the LoRA prior led to 288,
#: the 0-shot one to 555 (SB3 SAC 457; docs/design.md §4, "Locomotion and the 0-shot prior").
PRIOR_LED_ADAPT = {"metaworld": "lora", "mujoco": "none"}


def _named(names: Collection[str], flags: Mapping[str, str]) -> str:
    """ "--a, --b: options" / "--a: an option": the flags of ``names`` and the noun that follows them."""
    shown = ", ".join(flags.get(n, "--" + n.replace("_", "-")) for n in names)
    return f"{shown}: {'options' if len(names) > 1 else 'an option'}"


def refuse_control_options(env: str, given: Collection[str], flags: Mapping[str, str]) -> None:
    """ConfigError when options of control environments were given for text environment ``env``."""
    wrong = [n for n in CONTROL_ONLY if n in given]
    if wrong:
        raise ConfigError(
            f"{_named(wrong, flags)} of continuous-control environments (mujoco, metaworld); "
            f"{env!r} is a text environment (its agents: --agent, its budget: --episodes)"
        )


def control_config(
    env: str, params: Mapping[str, Any], given: Collection[str], flags: Mapping[str, str], cache: CacheConfig
) -> ControlRunConfig:
    """The control run ``priorcache run ENV`` asks for: ``params`` the command's parameter values,
    ``given`` the names given on the command line, ``flags`` name → option flag (for messages),
    ``cache`` the cache configuration the cache options make."""
    wrong = [n for n in TEXT_ONLY if n in given]
    if wrong:
        raise ConfigError(
            f"{_named(wrong, flags)} of text environments; {env!r} is a continuous-control environment "
            "(its options: --method sac|sac-prior, --steps, --eval-every (steps), --eval-episodes, --shots, "
            "--skill-hold, --residual-actor, --prior-scale-q, --actor-target-kl, --skill-q-warmup, --actor-init-alpha, "
            "--prior-led)"
        )
    method = params.get("method") or "sac-prior"
    if method == "sac":
        wrong = [n for n in SAC_PRIOR_ONLY if n in given]
        if wrong:
            raise ConfigError(
                f"{_named(wrong, flags)} of --method sac-prior; --method sac is Stable-Baselines3 SAC, "
                "without an LLM prior or a cache"
            )
    if params.get("prior_led"):
        family = env.partition(":")[0].strip()
        led = {**PRIOR_LED, "adapt": PRIOR_LED_ADAPT.get(family, PRIOR_LED["adapt"])}
        params = {**params, **{name: value for name, value in led.items() if name not in given}}
        if "alpha_min" not in given:  # the skill temperature stays fixed at a given --alpha
            params["alpha_min"] = params["alpha"]
    prior: dict[str, Any] = {}
    if method != "sac":
        prior = {
            "cache": cache,
            "backend": params["backend"],
            "model_path": params.get("model_path"),
            "base_url": params.get("base_url"),
            "model": params.get("model"),
            "device": params["device"],
            "shots": params.get("shots"),
            "skill_hold": params.get("skill_hold"),
            "actor_on_prior": bool(params.get("residual_actor")),
            "prior_scale_q": bool(params.get("prior_scale_q")),
            "target_kl_per_dim": params.get("actor_target_kl"),
            "skill_q_warmup": params.get("skill_q_warmup") or 0,
            "actor_init_alpha": params.get("actor_init_alpha"),
            "adapt": params.get("adapt") or "none",
            "alpha_0": params.get("alpha"),
            "alpha_min": params.get("alpha_min"),
        }
    config = ControlRunConfig(
        env=env,
        method=method,
        seeds=params["seeds"],
        steps=params.get("steps") or DEFAULT_STEPS,
        eval_every=DEFAULT_EVAL_EVERY if params.get("eval_every") is None else params["eval_every"],
        eval_episodes=params.get("eval_episodes") or 5,
        train_games=params["train_games"],
        max_episode_steps=params.get("max_steps"),
        tensorboard=bool(params.get("tensorboard")),
        out=Path("runs"),  # replaced below when not given: the default name holds the label
        **prior,
    )
    out = params.get("out")
    config.out = (
        Path(out)
        if out is not None
        else Path("runs") / f"{config.env.replace(':', '-')}-{config.default_label()}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    return config


def control_summary_table(summary: dict[str, Any], title: str) -> Table:
    """A control run's summary as a two-column table: held-out first, then training, LLM and cache, speed."""
    table = Table(title=Text(title), show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    held = summary.get("held_out")
    metaworld = summary.get("env", "").startswith("metaworld")
    rows: list[tuple[str, str]] = []
    if held:
        rows.append((f"held-out return, {held['games']} instances (mean ± 95% CI over seeds)", fmt_ci(held["return"])))
        if metaworld:
            rows.append(("held-out success", fmt_ci(held["success"])))
        curve = " → ".join(f"{p['return']['mean']:.1f}" for p in held["curve"])
        rows.append(("held-out return at each evaluation", curve))
        queries = held["llm_queries"]
        rows.append(("LLM queries of the evaluations", "n/a" if queries is None else str(queries)))
    rows += [
        ("training mean return (exploring)", fmt_ci(summary["mean_return"])),
        (
            "episodes (cut by the budget or an evaluation) / steps",
            f"{summary['episodes']} ({summary['cut_episodes']}) / {summary['steps']}",
        ),
    ]
    if metaworld:
        rows.append(("training success rate (exploring)", fmt_ci(summary["success_rate"])))
    if summary.get("method") == "sac-prior":
        lat = summary["decision_latency_ms"]
        rows += [
            (
                "LLM queries (full + partial)",
                f"{summary['llm_queries']} ({summary['llm_full_calls']} + {summary['llm_partial_calls']})",
            ),
            ("skill decisions / cache hit rate", f"{summary['lookups']} / {summary['hit_rate']:.3f}"),
            ("skill-decision latency p50 / p95 (ms)", f"{lat['p50']:.1f} / {lat['p95']:.1f}"),
            ("LLM wall time (s)", f"{summary['llm_wall_time_s']:.1f}"),
            (
                "audits: mean ε / mean KL (nats)",
                f"{summary['audit_epsilon']['mean']:.4f} / {summary['audit_kl']['mean']:.4f}"
                if summary["audits"]
                else "none",
            ),
            ("F5 violations (KL > 2ε)", str(summary["audit_f5_violations"])),
        ]
    speed = summary.get("env_steps_per_s")
    rows += [
        ("training env steps/s", "n/a" if speed is None else f"{speed:.1f}"),
        (
            "gradient time / training / wall time (s)",
            f"{summary['train_time_s']:.1f} / {summary['train_wall_time_s']:.1f} / {summary['wall_time_s']:.1f}",
        ),
    ]
    for name, value in rows:
        table.add_row(Text(name), Text(value))
    return table
