"""Command-line interface: ``priorcache run``, ``compare``, ``envs``, ``bench text``, ``report`` and ``kl-report``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from priorcache.agents.registry import AGENTS
from priorcache.cache.prior_cache import CacheConfig
from priorcache.envs.registry import ENVIRONMENTS, default_episodes
from priorcache.errors import ConfigError, PriorCacheError
from priorcache.experiments.bench import METHODS, QUICK, TEXT_ENVS, BenchConfig, run_bench
from priorcache.experiments.control_bench import (
    CONTROL_METHODS,
    DEFAULT_CONTROL_METHODS,
    ControlBenchConfig,
    run_control_bench,
)
from priorcache.experiments.control_options import control_config, control_summary_table, refuse_control_options
from priorcache.experiments.control_runner import (
    DEFAULT_EVAL_EVERY,
    DEFAULT_SHOTS,
    DEFAULT_SKILL_HOLD,
    DEFAULT_STEPS,
    ControlRunConfig,
    control_envs,
    is_control_env,
    run_control,
)
from priorcache.experiments.metrics import compare as compare_summaries
from priorcache.experiments.report import write_report
from priorcache.experiments.run_folder import plan_run_folder
from priorcache.experiments.runner import RunConfig, run_experiment
from priorcache.experiments.summaries import CONFIG_FILE, comparison_problems, load_config, load_summary
from priorcache.prior.adaptation import DEFAULT_EPOCHS
from priorcache.summary_table import fmt_ci, summary_table
from priorcache.validation import MAX_SEEDS, check_seeds

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="RL with LLM action priors served through an adaptive semantic cache.",
)
console = Console()
BASE_URL_HELP = "--backend openai: the server's URL, e.g. http://127.0.0.1:8000/v1 (API key: $OPENAI_API_KEY)"


def _parse_seeds(text: str) -> list[int]:
    """'0,1,2' or '0-4' → list of distinct ints, checked by ``validation.check_seeds``."""
    is_range = "-" in text.strip("-")
    try:
        if is_range:
            numbers = [int(part) for part in text.split("-", 1)]
        else:
            numbers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must look like '0,1,2' or '0-4', got {text!r}") from None
    if is_range:
        lo, hi = numbers
        # The size first: '0-10000000000' must not build a list of ten billion ints.
        if hi < lo:
            raise ConfigError(f"--seeds {text!r} is an empty range (it ends before it starts)")
        if hi - lo + 1 > MAX_SEEDS:
            raise ConfigError(f"--seeds {text!r} names {hi - lo + 1} seeds; at most {MAX_SEEDS} per run")
        numbers = list(range(lo, hi + 1))
    return check_seeds(numbers)


def _error(e: Exception | str) -> None:
    """The one-line error report. The message is printed as plain text: it quotes user input and
    data (agent names, actions, paths) whose square brackets rich would read as markup."""
    console.print(Text.assemble(("error: ", "bold red"), str(e)))


def _warning(message: str) -> None:
    """A one-line warning, printed as plain text like ``_error``."""
    console.print(Text.assemble(("warning: ", "yellow"), message))


@app.command()
def run(
    ctx: typer.Context,
    env: str = typer.Argument(
        ..., help="environment name, e.g. textworld (or textworld:tw-cooking), or a control task: metaworld:reach-v3"
    ),
    agent: str = typer.Option("dqn-prior", help=f"one of {', '.join(AGENTS)}"),
    method: str | None = typer.Option(
        None, help="control environments: sac (Stable-Baselines3 SAC) or sac-prior (default)"
    ),
    cache: str | None = typer.Option(
        None,
        "--cache",
        "--cache-mode",
        help="cache mode (default static): none (uncached reference), static, adaptive "
        "(meta-optimised K, δ, r) or kl-budget (δ from a target KL)",
    ),
    variant: str | None = typer.Option(
        None,
        help="environment variant (see `priorcache envs`), e.g. "
        "tw-cooking, GoToLocal, pick_heat_then_place; same as ENV:VARIANT",
    ),
    episodes: int | None = typer.Option(
        None, min=1, help="training episodes per seed (default: the environment's budget, see `priorcache envs`)"
    ),
    steps: int | None = typer.Option(
        None, min=1, help=f"control environments: training environment steps per seed (default {DEFAULT_STEPS})"
    ),
    seeds: str = typer.Option("0", help="seeds, '0,1,2' or '0-2'; each seed trains its own agent on the same games"),
    train_games: int = typer.Option(
        10, min=1, help="training games or control task instances (game seeds 0..N-1 of the train split), in turn"
    ),
    eval_games: int = typer.Option(10, min=1, help="held-out evaluation games (from the eval split)"),
    eval_every: int | None = typer.Option(
        None,
        min=0,
        help="evaluate on the held-out games every N training episodes (0, the default: after the last only); "
        f"control environments: every N environment steps (default {DEFAULT_EVAL_EVERY})",
    ),
    eval_episodes: int = typer.Option(
        5, min=1, help="control environments: held-out task instances, one deterministic episode each per evaluation"
    ),
    eval_policy: str = typer.Option(
        "greedy", help="held-out episodes by the policy's mode (greedy) or by draws from it (sample)"
    ),
    shots: int | None = typer.Option(
        None,
        min=0,
        help="training games whose oracle episodes adapt the LLM prior (F8; default 0); control environments: "
        f"demonstrations the skill Gaussians are fitted on (default {DEFAULT_SHOTS}; 0: flat Gaussians)",
    ),
    skill_hold: int | None = typer.Option(
        None, min=1, help=f"control environments, sac-prior: H, steps a skill is held (default {DEFAULT_SKILL_HOLD})"
    ),
    residual_actor: bool = typer.Option(
        False, help="control environments, sac-prior: the actor a residual on the skill prior's mean and std"
    ),
    prior_scale_q: bool = typer.Option(
        False,
        help="control environments, sac-prior: Q on the prior's scale (F1 over skills: Q shrunk to unit spread; "
        "actor loss: Q over its mean |Q|)",
    ),
    actor_target_kl: float | None = typer.Option(
        None,
        help="control environments, sac-prior: δ_KL per action dimension that α is tuned to (default 1 + log 2; "
        "smaller keeps the actor nearer the skill prior)",
    ),
    skill_q_warmup: int | None = typer.Option(
        None,
        min=0,
        help="control environments, sac-prior: gradient steps over which Q's say in the skill choice (F1) grows "
        "from 0 to full (default 0: full at once)",
    ),
    actor_init_alpha: float | None = typer.Option(
        None,
        help="control environments, sac-prior: the actor's α (its KL weight) at the start, tuned from there towards "
        "--actor-target-kl (default 1.0; slowly: at 3e-4 a step it barely moves in 5,000 steps)",
    ),
    prior_led: bool = typer.Option(
        False,
        help="control environments, sac-prior: the prior-led settings, --adapt lora (MetaWorld; MuJoCo: none) "
        "--residual-actor --prior-scale-q --actor-target-kl 0.25 --alpha 16 --alpha-min 16 --skill-q-warmup 20000 "
        "(an option given beside it wins)",
    ),
    adapt: str = typer.Option(
        "none",
        help="F8 adaptation on the --shots games: none, icl (in-context pairs), lora (LoRA fine-tune) or both; "
        "control environments: none or lora (the skill prior fine-tuned on the demonstrations)",
    ),
    max_examples: int = typer.Option(10, min=0, help="at most this many in-context pairs (icl, both)"),
    tensorboard: bool = typer.Option(False, help="also write TensorBoard scalars under OUT/tensorboard/"),
    num_envs: int = typer.Option(1, min=1, help="training episodes played in lockstep, one batched LLM call per step"),
    demo_episodes: int = typer.Option(
        0, min=0, help="oracle episodes of the first training games a learning agent learns from first (DQfD-style)"
    ),
    lora_epochs: int = typer.Option(DEFAULT_EPOCHS, min=1, help="epochs of the LoRA fine-tune (--adapt lora or both)"),
    max_steps: int | None = typer.Option(None, min=1, help="episode step limit (default: the environment's)"),
    backend: str = typer.Option("embedded", help="LLM backend: embedded, transformers or openai"),
    model_path: str | None = typer.Option(None, help="local model folder for --backend transformers"),
    base_url: str | None = typer.Option(None, help=BASE_URL_HELP),
    model: str | None = typer.Option(None, help="--backend openai: the model name the server serves"),
    device: str = typer.Option("cpu", help="torch device for the LLM backend"),
    similarity_threshold: float | None = typer.Option(None, help="cache similarity threshold δ in [-1, 1]"),
    capacity: int | None = typer.Option(None, help="cache capacity K"),
    refresh_rate: float | None = typer.Option(None, help="cache refresh rate r in [0, 1]"),
    unknown_candidates: str | None = typer.Option(None, help="F7 fill for unknown actions: partial or floor"),
    kl_target: float | None = typer.Option(None, help="kl-budget: target expected KL of served priors (nats)"),
    kl_confidence: float | None = typer.Option(None, help="kl-budget: confidence of the KL upper bound"),
    per_entry_thresholds: bool = typer.Option(False, help="kl-budget: each entry earns its own δ from its audits"),
    meta_update_every: int | None = typer.Option(None, help="adaptive: lookups per meta-optimiser window"),
    meta_kl_weight: float | None = typer.Option(
        None,
        help="adaptive: λ_κ, the price of 1 nat of expected KL per decision in LLM queries per decision (default 20)",
    ),
    alpha: float = typer.Option(1.0, help="posterior temperature α_0 (F1) when the cache never hits"),
    alpha_min: float = typer.Option(0.25, help="temperature at a 100% hit rate (F2); = --alpha turns F2 off"),
    cache_path: Path | None = typer.Option(None, help="warm-start from this saved cache; saved back at the end"),
    out: Path | None = typer.Option(None, help="output folder (default runs/ENV-AGENT-CACHE-TIME)"),
    resume: bool = typer.Option(False, help="continue the killed run in --out from its last checkpoint"),
    overwrite: bool = typer.Option(False, help="replace a run of another configuration in --out"),
    quiet: bool = typer.Option(False, help="no progress bar"),
    workers: int | None = typer.Option(
        None, help="rollout workers on Ray sharing one prior cache (one learner here); default: this process only"
    ),
    ray_address: str | None = typer.Option(None, help="Ray cluster for --workers (HOST:PORT, ray://…); default: local"),
    cache_shards: int = typer.Option(1, help="--workers: Ray actors the shared cache is split over (by prompt prefix)"),
    cache_sharing: str = typer.Option("shared", help="--workers: shared (one cache) or isolated (one per worker)"),
) -> None:
    """Run an agent on an environment and write metrics.jsonl, summary.json and the cache.

    Control environments (mujoco:TASK, metaworld:TASK) run SAC or SAC-Prior (--method) for --steps
    environment steps, evaluated every --eval-every steps on --eval-episodes held-out instances."""
    try:
        given = {name for name in ctx.params if _given(ctx, name)}
        flags = {p.name: p.opts[0] for p in ctx.command.params if p.name and p.opts}
        cache = cache or "static"
        overrides = {
            k: v
            for k, v in {
                "mode": cache,
                "similarity_threshold": similarity_threshold,
                "capacity": capacity,
                "refresh_rate": refresh_rate,
                "unknown_candidates": unknown_candidates,
            }.items()
            if v is not None
        }
        kl_budget = {
            k: v
            for k, v in {
                "target_kl": kl_target,
                "confidence": kl_confidence,
                "per_entry": per_entry_thresholds or None,
            }.items()
            if v is not None
        }
        if kl_budget:
            if cache != "kl-budget":
                raise ConfigError(
                    f"--kl-target, --kl-confidence and --per-entry-thresholds need --cache kl-budget, not {cache!r}"
                )
            overrides["kl_budget"] = kl_budget
        meta = {
            k: v for k, v in {"update_every": meta_update_every, "kl_weight": meta_kl_weight}.items() if v is not None
        }
        if meta:
            if cache != "adaptive":
                raise ConfigError(f"--meta-update-every and --meta-kl-weight need --cache adaptive, not {cache!r}")
            overrides["meta"] = meta
        if variant:
            if ":" in env:
                raise ConfigError(f"give the variant once: {env!r} already names one, and --variant {variant!r}")
            env = f"{env}:{variant}"
        if is_control_env(env):
            params = {**ctx.params, "seeds": _parse_seeds(seeds)}
            config = control_config(env, params, given, flags, CacheConfig.from_dict(overrides))
            _run_control(config, quiet, resume, overwrite)
            return
        refuse_control_options(env, given, flags)
        shots = shots or 0
        eval_every = eval_every or 0
        out = out or Path("runs") / f"{env.replace(':', '-')}-{agent}-{cache}-{time.strftime('%Y%m%d-%H%M%S')}"
        config = RunConfig(
            env=env,
            agent=agent,
            cache=CacheConfig.from_dict(overrides),
            backend=backend,
            model_path=model_path,
            base_url=base_url,
            model=model,
            device=device,
            episodes=episodes if episodes is not None else default_episodes(env),
            seeds=_parse_seeds(seeds),
            max_episode_steps=max_steps,
            out=out,
            cache_path=cache_path,
            alpha_0=alpha,
            alpha_min=alpha_min,
            train_games=train_games,
            eval_games=eval_games,
            eval_every=eval_every,
            eval_policy=eval_policy,
            shots=shots,
            adapt=adapt,
            max_examples=max_examples,
            tensorboard=tensorboard,
            num_envs=num_envs,
            demo_episodes=demo_episodes,
            lora_epochs=lora_epochs,
            workers=workers,
            cache_shards=cache_shards,
            cache_sharing=cache_sharing,
        )
        if ray_address is not None and workers is None:
            raise ConfigError("--ray-address is where --workers run: give --workers too")
        # Our own progress bar says what is happening; transformers' per-model "Loading weights" bars
        # would interleave with it.
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        folder = plan_run_folder(out, config.to_json(), cache_path, resume=resume, overwrite=overwrite)
        if folder.note:
            console.print(escape(folder.note))
        summary = run_experiment(
            config, progress=not quiet, resume=resume, overwrite=overwrite, ray_address=ray_address
        )
    except PriorCacheError as e:
        _error(e)
        raise typer.Exit(2) from None
    if summary.get("adaptation"):
        _print_adaptation(summary["adaptation"])
    console.print(summary_table(summary, f"{env} · {agent} · cache {summary['cache_mode']}"))
    console.print(f"results in {out}/ (metrics.jsonl, evals.jsonl, summary.json, cache/)", markup=False)


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was given (command line or environment), not left at its default.
    By the source's name: typer's context may use its own copy of click's ParameterSource."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _run_control(config: ControlRunConfig, quiet: bool, resume: bool, overwrite: bool) -> None:
    """``priorcache run`` on a control environment: the run, then its table."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = plan_run_folder(config.out, config.to_json(), None, resume=resume, overwrite=overwrite)
    if folder.note:
        console.print(escape(folder.note))
    summary = run_control(config, progress=not quiet, resume=resume, overwrite=overwrite)
    console.print(control_summary_table(summary, f"{config.env} · {summary['label']}"))
    console.print(f"results in {config.out}/ (metrics.jsonl, evals.jsonl, summary.json)", markup=False)


@app.command()
def compare(
    run_a: Path = typer.Argument(..., help="the run to judge (e.g. cached)"),
    run_b: Path = typer.Argument(..., help="the reference run (e.g. uncached, same seeds)"),
    force: bool = typer.Option(
        False, help="compare runs that are not like for like (another environment, agent or protocol, or unfinished)"
    ),
) -> None:
    """Query reduction ×, decision-latency ratio and performance retention of RUN_A against RUN_B.

    The runs must be like for like: one environment, one agent, the same protocol (episodes, seeds,
    training and held-out games) and both finished; --force turns each refusal into a warning."""
    try:
        runs = []
        for run_dir in (run_a, run_b):
            summary = load_summary(run_dir)
            config = load_config(run_dir) if (run_dir / CONFIG_FILE).is_file() else None
            if config is None:
                _warning(f"{run_dir} has no {CONFIG_FILE}: only its seeds, episodes and held-out games are checked")
            runs.append((run_dir, summary, config))
        found, others = comparison_problems(runs[0], runs[1])
        if found and not force:
            raise ConfigError(
                f"{run_a} and {run_b} are not like for like: " + "; ".join(found) + " (--force compares them anyway)"
            )
        for run_dir, summary, _ in runs:
            if "episodes" not in summary:  # a partial run that has not finished an episode yet
                raise ConfigError(f"{run_dir} has no finished episode yet: there is nothing to compare")
    except PriorCacheError as e:
        _error(e)
        raise typer.Exit(2) from None
    for problem in found:
        _warning(problem)
    if others:
        console.print(Text("the runs also differ in: " + ", ".join(others), style="dim"))
    a, b = runs[0][1], runs[1][1]
    result = compare_summaries(a, b)
    # Text, not markup: the folder names are the user's.
    table = Table(title=Text(f"{run_a} vs {run_b}"))
    table.add_column("metric")
    table.add_column(Text(str(run_a)), justify="right")
    table.add_column(Text(str(run_b)), justify="right")
    table.add_column("ratio", justify="right")
    table.add_row(
        "LLM queries", str(a["llm_queries"]), str(b["llm_queries"]), f"{result['query_reduction_x']:.2f}× fewer"
    )
    table.add_row(
        "decision latency p50 (ms)",
        f"{a['decision_latency_ms']['p50']:.1f}",
        f"{b['decision_latency_ms']['p50']:.1f}",
        f"{result['latency_p50_ratio_x']:.2f}× lower",
    )
    if a.get("held_out") and b.get("held_out"):
        table.add_row(
            "held-out success",
            fmt_ci(a["held_out"]["success"]),
            fmt_ci(b["held_out"]["success"]),
            f"{100 * result['held_out_retention']:.1f}% retained",
        )
        retained = result["held_out_return_retention"]
        table.add_row(
            "held-out return",
            fmt_ci(a["held_out"]["return"]),
            fmt_ci(b["held_out"]["return"]),
            "n/a: reference ≤ 0" if math.isnan(retained) else f"{100 * retained:.1f}% retained",
        )
    elif a.get("held_out") or b.get("held_out"):
        # The headline is missing on one side: say so rather than leave the row out silently.
        only = run_a if a.get("held_out") else run_b
        table.add_row("held-out success", "", "", Text(f"n/a: only {only} has held-out evaluations"))
    table.add_row(
        "training success rate",
        fmt_ci(a["success_rate"]),
        fmt_ci(b["success_rate"]),
        f"{100 * result['success_retention']:.1f}% retained",
    )
    table.add_row(
        "training mean return",
        fmt_ci(a["mean_return"]),
        fmt_ci(b["mean_return"]),
        f"{100 * result['return_retention']:.1f}% retained",
    )
    console.print(table)


@app.command()
def envs() -> None:
    """List every environment with its variants and what it needs."""
    table = Table(title="environments (`priorcache run ENV` or ENV:VARIANT)")
    table.add_column("name")
    table.add_column("variants")
    table.add_column("description")
    table.add_column("needs")
    table.add_column("kind")
    table.add_column("episodes", justify="right")
    for name, info in sorted(ENVIRONMENTS.items()):
        # Control tasks are budgeted in environment steps (`run --steps`), not episodes.
        episodes = str(info.default_episodes) if info.kind == "text" else "-"
        cells = (name, "\n".join(info.variants) or "-", info.description, info.requires, info.kind, episodes)
        table.add_row(*(Text(cell) for cell in cells))
    console.print(table)


METHOD_HELP = f"method (repeatable): {', '.join(METHODS)}"
bench_app = typer.Typer(no_args_is_help=True, help="Benchmark suites that write a paper-style table and plots.")
app.add_typer(bench_app, name="bench")


@bench_app.command("text")
def bench_text(
    env: list[str] = typer.Option(list(TEXT_ENVS), "--env", help="environment (repeat the option for several)"),
    method: list[str] = typer.Option(list(METHODS), "--method", help=METHOD_HELP),
    seeds: str = typer.Option("0-2", help="seeds, '0,1,2' or '0-2'"),
    episodes: int | None = typer.Option(
        None, min=1, help="training episodes per seed for learning agents (default: each environment's budget)"
    ),
    max_steps: int | None = typer.Option(None, min=1, help="episode step limit (default: each environment's)"),
    train_games: int = typer.Option(10, min=1, help="training games, played in turn"),
    eval_games: int = typer.Option(10, min=1, help="held-out evaluation games"),
    eval_every: int = typer.Option(0, min=0, help="evaluate every N training episodes (0: after the last only)"),
    eval_policy: str = typer.Option("greedy", help="held-out episodes by the policy's mode (greedy) or draws (sample)"),
    shots: int = typer.Option(0, min=0, help="training games whose oracle episodes adapt the prior (F8)"),
    adapt: str = typer.Option("none", help="F8 adaptation of every LLM method but the 0-shot reference"),
    num_envs: int = typer.Option(1, min=1, help="training episodes played in lockstep, one batched LLM call per step"),
    demo_episodes: int = typer.Option(
        0, min=0, help="oracle episodes of the first training games a learning agent learns from first (DQfD-style)"
    ),
    lora_epochs: int = typer.Option(DEFAULT_EPOCHS, min=1, help="epochs of the LoRA fine-tune (--adapt lora or both)"),
    quick: bool = typer.Option(
        False,
        help=f"smoke run: seed 0, {QUICK['episodes']} episodes of at most {QUICK['max_episode_steps']} steps, "
        f"{QUICK['eval_games']} held-out games (overrides --seeds/--episodes/--max-steps/--train-games/--eval-games)",
    ),
    backend: str = typer.Option("embedded", help="LLM backend: embedded, transformers or openai"),
    model_path: str | None = typer.Option(None, help="local model folder for --backend transformers"),
    base_url: str | None = typer.Option(None, help=BASE_URL_HELP),
    model: str | None = typer.Option(None, help="--backend openai: the model name the server serves"),
    device: str = typer.Option("cpu", help="torch device for the LLM backend"),
    out: Path = typer.Option(Path("runs/bench-text"), help="benchmark folder; rerunning it resumes"),
) -> None:
    """Every method on every text environment on the same seeds; resumable; writes results.md/.csv and plots."""
    try:
        settings = {
            "seeds": _parse_seeds(seeds),
            "episodes": episodes,
            "max_episode_steps": max_steps,
            "train_games": train_games,
            "eval_games": eval_games,
        }
        if quick:
            settings.update(QUICK)
        config = BenchConfig(
            out=out,
            envs=env,
            methods=method,
            backend=backend,
            model_path=model_path,
            base_url=base_url,
            model=model,
            device=device,
            eval_every=eval_every,
            eval_policy=eval_policy,
            shots=shots,
            adapt=adapt,
            num_envs=num_envs,
            demo_episodes=demo_episodes,
            lora_epochs=lora_epochs,
            **settings,
        )
    except PriorCacheError as e:
        _error(e)
        raise typer.Exit(2) from None
    _run_bench(lambda: run_bench(config), out)
    # markup=False: the table quotes environment names, method labels and sources as the runs recorded them.
    console.print((out / "results.md").read_text(), markup=False)
    console.print(
        f"table and plots in {out}/ (results.md, results.csv, success_vs_queries.png, learning_curves.png)",
        markup=False,
    )


def _run_bench(run: Callable[[], dict[str, Any]], out: Path) -> dict[str, Any]:
    """``run()`` a benchmark: a PriorCacheError is a one-line error (exit 2), Ctrl-C says how to resume (130)."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        return run()
    except PriorCacheError as e:
        _error(e)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        console.print(
            Text.assemble(
                ("interrupted: ", "yellow"), f"finished runs are kept in {out}/runs; run the same command to resume"
            )
        )
        raise typer.Exit(130) from None


CONTROL_TASKS = control_envs()
CONTROL_METHOD_HELP = f"method (repeatable): {', '.join(CONTROL_METHODS)}"


@bench_app.command("control")
def bench_control(
    env: list[str] = typer.Option(CONTROL_TASKS, "--env", help="control task (repeat the option for several)"),
    method: list[str] = typer.Option(list(DEFAULT_CONTROL_METHODS), "--method", help=CONTROL_METHOD_HELP),
    seeds: str = typer.Option("0-2", help="seeds, '0,1,2' or '0-2'"),
    steps: int = typer.Option(DEFAULT_STEPS, min=1, help="training environment steps per seed, every method"),
    eval_every: int = typer.Option(
        DEFAULT_EVAL_EVERY, min=0, help="evaluate every N environment steps (0: after the last only)"
    ),
    eval_episodes: int = typer.Option(5, min=1, help="held-out task instances, one deterministic episode each"),
    train_games: int = typer.Option(10, min=1, help="training task instances, played in turn"),
    max_steps: int | None = typer.Option(None, min=1, help="episode step limit (default: the task's own)"),
    shots: int = typer.Option(DEFAULT_SHOTS, min=0, help="demonstrations the skill Gaussians are fitted on"),
    skill_hold: int = typer.Option(DEFAULT_SKILL_HOLD, min=1, help="H, environment steps a skill is held"),
    backend: str = typer.Option("embedded", help="LLM backend: embedded, transformers or openai"),
    model_path: str | None = typer.Option(None, help="local model folder for --backend transformers"),
    base_url: str | None = typer.Option(None, help=BASE_URL_HELP),
    model: str | None = typer.Option(None, help="--backend openai: the model name the server serves"),
    device: str = typer.Option("cpu", help="torch device for the LLM backend"),
    out: Path = typer.Option(Path("runs/bench-control"), help="benchmark folder; rerunning it resumes"),
) -> None:
    """SB3 SAC and SAC-Prior on the control tasks, same seeds and steps; resumable; writes a table and plots."""
    try:
        config = ControlBenchConfig(
            out=out,
            envs=env,
            methods=method,
            seeds=_parse_seeds(seeds),
            steps=steps,
            eval_every=eval_every,
            eval_episodes=eval_episodes,
            train_games=train_games,
            max_episode_steps=max_steps,
            shots=shots,
            skill_hold=skill_hold,
            backend=backend,
            model_path=model_path,
            base_url=base_url,
            model=model,
            device=device,
        )
    except PriorCacheError as e:
        _error(e)
        raise typer.Exit(2) from None
    result = _run_bench(lambda: run_control_bench(config), out)
    console.print(result["files"][0].read_text(), markup=False)
    console.print("written: " + ", ".join(str(p) for p in result["files"]), markup=False)


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="a benchmark folder or any folder holding run folders"),
    out: Path | None = typer.Option(None, help="where to write the report (default: RUN_DIR)"),
) -> None:
    """Re-render the results table (markdown, CSV) and plots from the runs saved under RUN_DIR."""
    try:
        result = write_report(run_dir, out)
    except PriorCacheError as e:
        _error(e)
        raise typer.Exit(2) from None
    # markup=False: the table quotes environment names, method labels and sources as the runs recorded them.
    for table in (p for p in result["files"] if p.suffix == ".md"):
        console.print(table.read_text(), markup=False)
    console.print("written: " + ", ".join(str(p) for p in result["files"]), markup=False)


def _print_adaptation(info: dict) -> None:
    """One line on what the F8 adaptation cost (LoRA trained now or reused, backend load)."""
    if "lora_folder" in info:
        how = "trained now" if info["lora_trained_now"] else "saved adapter reused"
        console.print(
            f"LoRA on {info['lora_pairs']} pairs ({how}): training took {info['lora_train_wall_time_s']:.1f} s, "
            f"this call {info['lora_wall_time_s']:.1f} s, loading the adapted backend "
            f"{info['backend_load_wall_time_s']:.1f} s · {escape(info['lora_folder'])}"
        )


@app.command("prior-quality")
def prior_quality(
    env: str = typer.Argument(..., help="environment name, e.g. babyai or textworld:tw-cooking"),
    games: int = typer.Option(10, min=1, help="held-out evaluation games the oracle plays"),
    train_games: int = typer.Option(10, min=1, help="training games whose oracle steps give the guesses"),
    shots: int = typer.Option(0, min=0, help="training games whose (state, action) pairs go into the prompt"),
    max_examples: int = typer.Option(10, min=0, help="at most this many in-context pairs, thinned evenly"),
    max_steps: int | None = typer.Option(None, min=1, help="episode step limit (default: the environment's)"),
    backend: str = typer.Option("embedded", help="LLM backend: embedded or transformers"),
    model_path: str | None = typer.Option(None, help="local model folder for --backend transformers"),
    out: Path | None = typer.Option(None, help="write the result as JSON here"),
    adapt: str = typer.Option(
        "icl",
        help="F8 adaptation on the --shots training games: none, icl (in-context pairs), "
        "lora (LoRA fine-tune, 0 in-context pairs) or both",
    ),
    lora_epochs: int = typer.Option(DEFAULT_EPOCHS, min=1, help="epochs of the LoRA fine-tune (--adapt lora or both)"),
) -> None:
    """Top-1 accuracy and mean rank of the oracle action under the LLM prior on held-out games."""
    from transformers.utils import logging as hf_logging

    from priorcache.experiments.adapt import adapt_prior, check_adaptation
    from priorcache.experiments.prior_quality import measure_prior_quality, oracle_steps
    from priorcache.io import atomic_write_json

    hf_logging.disable_progress_bar()
    try:
        check_adaptation(shots, adapt)
        train = oracle_steps(env, "train", max(train_games, shots), max_steps, progress=True)
        held_out = oracle_steps(env, "eval", games, max_steps, progress=True)
        adapted = adapt_prior(
            env,
            backend,
            shots,
            adapt,
            model_path=model_path,
            max_examples=max_examples,
            lora_epochs=lora_epochs,
            demos=train,
        )
        examples = adapted.examples
        result = measure_prior_quality(env, adapted.backend, train, held_out, examples, progress=True)
        result["adapt"] = adapt
        result["adaptation"] = adapted.info
    except PriorCacheError as e:
        _error(e)
        raise typer.Exit(2) from None
    _print_adaptation(adapted.info)
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    table = Table(title=Text(f"prior quality · {env} · {shots}-shot, adapt {adapt} ({len(examples)} in-context pairs)"))
    table.add_column("quantity")
    table.add_column("value", justify="right")
    prior, unseen = result["prior"], result["prior_on_unseen_actions"]
    table.add_row("held-out oracle steps (games)", f"{prior['steps']} ({result['held_out_games']})")
    table.add_row(
        "prior top-1 / mean rank / MRR", f"{fmt(prior['top1'])} / {fmt(prior['mean_rank'])} / {fmt(prior['mrr'])}"
    )
    table.add_row("guess: most frequent training action, top-1", fmt(result["guess_most_frequent_action_top1"]))
    table.add_row("guess: most frequent training verb, top-1", fmt(result["guess_most_frequent_verb_top1"]))
    table.add_row("uniform, top-1", fmt(result["uniform_top1"]))
    table.add_row("oracle actions never seen in training", f"{100 * result['unseen_action_share']:.1f} %")
    table.add_row("prior top-1 on those", fmt(unseen["top1"]))
    console.print(table)
    if out is not None:
        atomic_write_json(out, result)
        console.print(f"written: {out}", markup=False)


@app.command()
def demos(
    env: str = typer.Argument(..., help="environment name, e.g. babyai (or babyai:GoToLocal)"),
    shots: int = typer.Option(..., help="episodes to record: one per training game, game seeds 0..N-1 of the split"),
    out: Path | None = typer.Option(None, help="dataset folder (default runs/demos/ENV-shotsN)"),
    max_steps: int | None = typer.Option(None, min=1, help="episode step limit (default: the environment's)"),
    quiet: bool = typer.Option(False, help="no progress bar"),
) -> None:
    """Record oracle demonstrations on training games: demos.jsonl, meta.json and (with minari) a Minari dataset."""
    from priorcache.envs.demos import read_demos_meta, record_demos

    try:
        folder = record_demos(env, shots, out, max_steps=max_steps, progress=not quiet)
        meta = read_demos_meta(folder)
    except PriorCacheError as e:
        _error(e)
        raise typer.Exit(2) from None
    steps = sum(e["steps"] for e in meta["episodes"])
    console.print(
        f"{len(meta['episodes'])} oracle episodes ({steps} steps, all won) on game seeds {meta['game_seeds']}",
        markup=False,
    )
    minari_info = meta["minari"]
    extra = f", {minari_info['path']}" if minari_info["written"] else f" (no Minari dataset: {minari_info['reason']})"
    console.print(f"written: {folder}/ (demos.jsonl, meta.json{extra})", markup=False)


@app.command("kl-report")
def kl_report(
    run_dir: Path = typer.Argument(..., help="one run folder (config.json + metrics.jsonl) of a cached run"),
    out: Path | None = typer.Option(None, help="where to write kl_report.md/.json/.png (default: RUN_DIR)"),
) -> None:
    """F5 on every audit, the F6 Lipschitz fit of ε vs similarity, and E_μ[KL] per decision of one run."""
    from priorcache.experiments.kl_report import write_kl_report

    try:
        result = write_kl_report(run_dir, out)
    except PriorCacheError as e:
        _error(e)
        raise typer.Exit(2) from None
    f5, f6, vis, counts = result["f5"], result["f6"], result["visitation"], result["audits"]
    fmt = lambda v: "n/a" if v is None else f"{v:.4g}"  # noqa: E731
    table = Table(title=Text(f"KL report · {result['env']} · {result['method']}"))
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("audits (served + shadow)", f"{counts['total']} ({counts['served']} + {counts['shadow']})")
    colour = "green" if f5["violations"] == 0 else "bold red"
    table.add_row("F5 violations (KL > 2ε)", Text(str(f5["violations"]), style=colour))
    table.add_row("max KL / 2ε", fmt(f5["all"]["max_ratio"]))
    if f6["available"]:
        table.add_row("F6 ε_stale", fmt(f6["epsilon_stale"]))
        for key in ("least_squares", "envelope"):
            fit = f6[key]
            table.add_row(
                f"F6 L, {key.replace('_', ' ')} (share under)", f"{fmt(fit['L'])} ({100 * fit['share_under']:.1f} %)"
            )
    else:
        table.add_row("F6 fit", "n/a (run predates audit_records)")
    table.add_row("hit share", fmt(vis["hit_share"]))
    if vis["per_decision"] is not None:
        table.add_row(
            "E_μ[KL] per decision ≤ bound", f"{fmt(vis['per_decision']['kl'])} ≤ {fmt(vis['per_decision']['kl_bound'])}"
        )
    console.print(table)
    console.print("written: " + ", ".join(str(p) for p in result["files"]), markup=False)


if __name__ == "__main__":
    app()
