"""Experiments (docs/design.md §1): any registered agent on an environment, over episodes and seeds,
under the train / evaluate protocol.

Training episode ``e`` of every seed plays training game ``e mod train_games`` (``num_envs`` > 1:
episodes are played that many at a time, in lockstep, with one batched LLM call per step) (game seeds
``game_seeds(env, "train", train_games)``, the same games for every seed and method). Every
``eval_every`` episodes, and after the last, the agent plays each of ``eval_games`` held-out games
once with its greedy policy and no learning (:mod:`priorcache.experiments.evaluation`); the final
held-out success, mean and 95 % CI over seeds, is the run's headline. ``shots``/``adapt`` adapt the
LLM prior to the environment on oracle episodes of training games first (F8,
:mod:`priorcache.experiments.adapt`).

This module builds the environments, encoder, backend and prior cache the agent takes, runs its
episodes (the episode loop itself is the agent's, ``Agent.run_episode``) and records them. A run
writes into its output folder, each file atomically and after every episode, so an interrupted run
leaves the episodes it finished readable:
- ``config.json``   what was run;
- ``metrics.jsonl`` one line per training episode (docs/design.md §1);
- ``evals.jsonl``   one line per evaluation episode (held-out game, after how many training episodes);
- ``summary.json``  the aggregate over seeds, held-out success first (``"partial": true`` until done);
- ``checkpoint/``   agent, replay buffer, prior cache and progress after the last finished episode,
  which ``resume=True`` continues from (:mod:`priorcache.experiments.run_folder`); removed at the end;
- ``cache/seed<N>/`` each seed's prior cache at the end of its episodes (and ``--cache-path`` is
  written back). Every seed starts from the cache the run found (empty, or ``--cache-path``'s): the
  seeds are independent replicas, not warm starts of each other;
- ``tensorboard/``  scalars per seed, with ``tensorboard=True``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from priorcache.agents.base import EPISODES_PER_SEED, Agent, episode_seed
from priorcache.agents.registry import AGENTS, agent_spec, make_agent
from priorcache.agents.vector import run_episodes_batched
from priorcache.cache.encoder import MiniLMEncoder
from priorcache.cache.prior_cache import CacheConfig, PriorCache
from priorcache.cache.store import has_saved_cache
from priorcache.envs.registry import game_seeds, make_split_env, require_text_env
from priorcache.errors import ConfigError
from priorcache.experiments.adapt import Adaptation, adapt_prior, check_adaptation
from priorcache.experiments.evaluation import EVAL_POLICIES, EvalEpisode, evaluate
from priorcache.experiments.metrics import EpisodeRecord, summarise, summarise_held_out
from priorcache.experiments.run_folder import (
    CHECKPOINT,
    Progress,
    plan_run_folder,
    read_lines,
    read_progress,
    remove_checkpoint,
    restore_agent,
    restore_cache,
    write_checkpoint,
)
from priorcache.experiments.summaries import load_summary
from priorcache.experiments.tensorboard_log import ScalarLog, purge_from
from priorcache.experiments.workers import WorkerPool, check_scale_out, start_pool
from priorcache.io import atomic_write_json, atomic_write_text, folder_lock
from priorcache.prior.action_prior import PriorConfig
from priorcache.prior.adaptation import DEFAULT_EPOCHS
from priorcache.prior.base import LLMBackend
from priorcache.prior.prompts import prompt_builder
from priorcache.validation import check_seeds, is_int

#: Agents whose episodes on a fixed game repeat exactly (greedy, no learning, no sampling).
DETERMINISTIC_AGENTS = frozenset(name for name, spec in AGENTS.items() if spec.cls.deterministic)
#: Checkpoints wait until the run has worked this many times as long as the last one took (≤ 2 %).
CHECKPOINT_COST_RATIO = 50


@dataclass
class RunConfig:
    env: str = "textworld"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    agent: str = "dqn-prior"
    cache: CacheConfig = field(default_factory=CacheConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    backend: str = "embedded"
    model_path: str | None = None
    base_url: str | None = None  # --backend openai: the server's URL (the API key comes from $OPENAI_API_KEY)
    model: str | None = None  # --backend openai: the name the server serves the model under
    device: str = "cpu"
    episodes: int = 10  # training episodes per seed
    seeds: list[int] = field(default_factory=lambda: [0])
    max_episode_steps: int | None = None  # None: the environment's own default
    out: Path = Path("runs/latest")
    cache_path: Path | None = None
    # F2 temperature: α_0 when nothing hits, α_min at a 100 % hit rate (α_min = α_0 turns F2 off).
    alpha_0: float = 1.0
    alpha_min: float = 0.25
    train_games: int = 10  # training games, played in turn
    eval_games: int = 10  # held-out games of every evaluation
    eval_every: int = 0  # evaluate every this many training episodes (and after the last); 0: after the last only
    eval_policy: str = "greedy"  # greedy (the policy's mode) or sample (draws from it)
    shots: int = 0  # training games whose oracle episodes adapt the prior (F8)
    adapt: str = "none"  # none | icl | lora | both
    max_examples: int = 10  # in-context pairs at most (icl, both)
    lora_epochs: int = DEFAULT_EPOCHS  # epochs of the LoRA fine-tune (lora, both)
    tensorboard: bool = False
    num_envs: int = 1  # training episodes played in lockstep (one batched LLM call per step)
    # Oracle episodes of the first training games that a learning agent learns from before its own
    # (their transitions in its replay buffer, as DQfD keeps demonstrations): metrics.jsonl lines
    # marked "demonstration", counted in steps and LLM queries but not in training success.
    demo_episodes: int = 0
    label: str | None = None  # the method's name in reports (default: from agent and cache mode)
    # Rollout workers on Ray sharing one prior cache (priorcache.experiments.workers); None: this process only.
    workers: int | None = None
    cache_shards: int = 1  # Ray actors the shared cache is partitioned over (by prompt prefix)
    cache_sharing: str = "shared"  # "isolated": each worker its own cache (the baseline the sharing is measured by)

    def __post_init__(self) -> None:
        agent_spec(self.agent)  # ConfigError naming the choices for an unknown agent
        require_text_env(self.env, "the text runner (priorcache run)")
        for name in ("episodes", "train_games", "eval_games", "num_envs", "lora_epochs"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ConfigError(f"{name} must be an integer ≥ 1, got {value!r}")
        for name in ("eval_every", "max_examples", "demo_episodes"):
            value = getattr(self, name)
            if not is_int(value) or value < 0:
                raise ConfigError(f"{name} must be an integer ≥ 0, got {value!r}")
        self.seeds = check_seeds(self.seeds)
        if self.episodes >= EPISODES_PER_SEED:
            raise ConfigError(
                f"episodes must be below {EPISODES_PER_SEED:,} (distinct reset seeds), got {self.episodes}"
            )
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise ConfigError(f"max_episode_steps must be ≥ 1, got {self.max_episode_steps}")
        check_adaptation(self.shots, self.adapt)
        if self.eval_policy not in EVAL_POLICIES:
            raise ConfigError(f"eval_policy must be one of {', '.join(EVAL_POLICIES)}, not {self.eval_policy!r}")
        if self.adapt != "none" and not agent_spec(self.agent).needs_llm:
            raise ConfigError(f"--adapt {self.adapt} adapts the LLM prior, which the {self.agent} agent does not use")
        if self.demo_episodes and not agent_spec(self.agent).cls.learns:
            raise ConfigError(f"--demo-episodes: the {self.agent} agent does not learn, so it takes no demonstrations")
        if self.demo_episodes > self.train_games:
            raise ConfigError(
                f"demo_episodes ({self.demo_episodes}) are played on training games: at most train_games "
                f"({self.train_games})"
            )
        game_seeds(self.env, "train", max(self.train_games, self.shots))  # refuses more games than the split has
        game_seeds(self.env, "eval", self.eval_games)
        self.agent_config()  # validates the agent's parameters now, not mid-run
        check_scale_out(self)

    def agent_config(self) -> Any:
        """The agent's config, with the run-wide settings it has (α_0, α_min)."""
        return agent_spec(self.agent).cls.make_config(alpha_0=self.alpha_0, alpha_min=self.alpha_min)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["out"] = str(self.out)
        out["cache_path"] = str(self.cache_path) if self.cache_path else None
        out["agent_config"] = agent_spec(self.agent).cls.config_to_json(self.agent_config())
        defaults = {f.name: f.default for f in fields(self)}
        for name in ("demo_episodes", "lora_epochs", "base_url", "model"):
            if out[name] == defaults[name]:  # left out at their defaults: earlier runs' folders still match
                del out[name]
        if self.workers is None:  # one-process runs keep the config.json they always had
            del out["workers"], out["cache_shards"], out["cache_sharing"]
        return out


class _Games:
    """The training and evaluation environments of a run, each made once (on first use) and shared
    by every seed: an episode starts with ``reset``, so nothing carries over between episodes."""

    def __init__(self, config: RunConfig) -> None:
        self.env = config.env
        self.kwargs = dict(config.env_kwargs)
        if config.max_episode_steps is not None:
            self.kwargs["max_episode_steps"] = config.max_episode_steps
        self.train_seeds = game_seeds(config.env, "train", config.train_games)
        self.eval_seeds = game_seeds(config.env, "eval", config.eval_games)
        self._open: dict[tuple[str, int, int], Any] = {}
        #: Where the games came from (e.g. ALFWorld "generated" or "official:valid_unseen").
        self.sources: set[str] = set()

    def get(self, split: str, game_seed: int, copy: int = 0) -> Any:
        """The environment of a game; ``copy`` k > 0: another instance of it (batched rollouts
        playing one game in two slots need two objects)."""
        if (split, game_seed, copy) not in self._open:
            env = make_split_env(self.env, split, game_seed, **self.kwargs)
            self._open[split, game_seed, copy] = env
            if getattr(env, "source", None):
                self.sources.add(str(env.source))
        return self._open[split, game_seed, copy]

    def train_games(self, first_episode: int, n: int) -> list[tuple[int, Any]]:
        """(game seed, environment) of training episodes ``first_episode`` … ``first_episode + n - 1``."""
        out = []
        for episode in range(first_episode, first_episode + n):
            game = self.train_seeds[episode % len(self.train_seeds)]
            out.append((game, self.get("train", game, sum(g == game for g, _ in out))))
        return out

    def eval_games(self) -> list[tuple[int, Any]]:
        return [(game, self.get("eval", game)) for game in self.eval_seeds]

    def close(self) -> None:
        for env in self._open.values():
            env.close()
        self._open.clear()


def run_experiment(
    config: RunConfig,
    backend: LLMBackend | None = None,
    encoder: MiniLMEncoder | None = None,
    progress: bool = True,
    adaptation: Adaptation | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Run ``config`` and return its summary.

    ``backend``/``encoder`` may be passed to share loaded models; ``adaptation`` (from
    :func:`priorcache.experiments.adapt.adapt_prior`) to share an adapted backend and its examples.
    A plain ``backend`` cannot stand for a fine-tuned one: with ``adapt`` lora/both, pass ``adaptation``.
    ``config.out`` must be new, empty or hold a run of this configuration, which is replaced, or
    continued from its checkpoint with ``resume``; ``overwrite`` replaces a run of another one
    (:mod:`priorcache.experiments.run_folder`). With ``config.workers``, episodes are played by Ray
    rollout workers against one shared cache (:mod:`priorcache.experiments.workers`) on the cluster at
    ``ray_address`` (None: a local one)."""
    # Everything that can refuse bad input (output folder, env name and settings, backend, saved
    # cache) is checked before the output folder is touched, so a bad invocation writes nothing.
    folder = plan_run_folder(Path(config.out), config.to_json(), config.cache_path, resume=resume, overwrite=overwrite)
    if folder.state == "finished":
        return load_summary(folder.out)
    spec = agent_spec(config.agent)
    agent_config = config.agent_config()
    # The run holds its folder's lock from its first write to its summary: a second process on
    # this --out is refused rather than interleaving its files with ours.
    with ExitStack() as lock:
        games = _Games(config)
        try:
            games.train_games(0, 1)  # refuses bad environment settings now
            needs_llm = spec.needs_llm
            examples: list[tuple[str, str]] = []
            adaptation_info: dict[str, Any] | None = None
            pool: WorkerPool | None = None
            if config.workers is not None:  # the backend lives in the shared cache's actors
                pool = lock.enter_context(start_pool(config, encoder, ray_address, progress))
                encoder, examples, adaptation_info = pool.encoder, pool.examples, pool.adaptation_info
            elif needs_llm:
                if adaptation is None:
                    if backend is not None and config.adapt in ("lora", "both"):
                        raise ConfigError(
                            f"adapt {config.adapt!r} fine-tunes the backend: pass adaptation=, not backend="
                        )
                    adaptation = adapt_for(config, backend, progress)
                backend, examples, adaptation_info = adaptation.backend, adaptation.examples, adaptation.info
            encoder = encoder or MiniLMEncoder()
            cache = _make_cache(config, encoder, backend, pool) if spec.uses_cache else None
            components = {
                "encoder": encoder,
                "prior_cache": cache,
                "backend": backend,
                "prompt_builder": prompt_builder(config.env, examples),
            }
            # One agent per seed, the first built now: it refuses unusable components (e.g. a backend
            # ReAct cannot generate with) before anything is written.
            agents = [make_agent(config.agent, agent_config, seed=config.seeds[0], **components)]
            out = folder.out
            if not lock.enter_context(folder_lock(out / CHECKPOINT, blocking=False)):
                raise ConfigError(
                    f"another priorcache process is running in --out {out}; wait for it or give another --out"
                )
            folder.prepare()
            atomic_write_json(out / "config.json", config.to_json())
            resume_from = read_progress(out) if folder.state == "resume" else None
            started = time.perf_counter()
            records, evals, checkpoint_s = _train_and_evaluate(
                config, games, agents, components, cache, out, progress, resume_from, pool
            )
            elapsed = time.perf_counter() - started
        finally:
            games.close()
        summary = summarise(records)
        summary = {"held_out": summarise_held_out(evals), **summary}
        summary.update(
            {
                "env": config.env,
                "env_kwargs": config.env_kwargs,
                "agent": config.agent,
                "cache_mode": config.cache.mode if spec.uses_cache else "n/a",
                "backend": config.backend if needs_llm else None,
                # where the games came from, e.g. ALFWorld "generated" vs "official:valid_seen"
                "env_source": ",".join(sorted(games.sources)) or None,
                # the last seed's cache (every seed starts afresh; per-episode counts are in metrics.jsonl)
                "cache_stats": cache.stats() if cache is not None else None,
                "adaptation": adaptation_info,
                # prompts cut to fit the model (priorcache.prior.context_limit); resets the shared count
                "long_prompts": backend.long_prompt_stats(reset=True)
                if hasattr(backend, "long_prompt_stats")
                else None,
                # checkpoints of this process (a resumed run: since the resume) against its elapsed time
                "checkpoint_time_s": checkpoint_s,
                "checkpoint_share": checkpoint_s / elapsed if elapsed > 0 else None,
            }
        )
        if pool is not None:
            summary["workers"] = {**pool.summary(), "elapsed_s": elapsed}
        if cache is not None:
            # The adaptation overhead is measured (docs/design.md §3): the adaptive modes' own work
            # against the run's wall time.
            summary["adaptation_share"] = (
                summary["adaptation_time_s"] / summary["wall_time_s"] if summary["wall_time_s"] > 0 else None
            )
        atomic_write_json(out / "summary.json", summary)
        remove_checkpoint(out)  # after the summary: a kill in between leaves a finished run
    return summary


def adapt_for(config: RunConfig, base: LLMBackend | None = None, progress: bool = False) -> Adaptation:
    """The F8 adaptation ``config`` asks for; ``base``: an already loaded backend to use (not with a
    fine-tune, which loads a model of its own)."""
    return adapt_prior(
        config.env,
        config.backend,
        config.shots,
        config.adapt,
        model_path=config.model_path,
        base_url=config.base_url,
        model=config.model,
        device=config.device,
        max_examples=config.max_examples,
        lora_epochs=config.lora_epochs,
        max_steps=config.max_episode_steps,
        base=base,
        progress=progress,
    )


def _make_cache(
    config: RunConfig, encoder: MiniLMEncoder, backend: LLMBackend | None, pool: WorkerPool | None = None
) -> PriorCache:
    cache = pool.cache if pool is not None else PriorCache(config.cache, encoder, backend, prior_config=config.prior)
    if config.cache_path is not None:
        cache_path = Path(config.cache_path)
        if has_saved_cache(cache_path):
            cache.load(cache_path)
        elif cache_path.exists() and (not cache_path.is_dir() or any(cache_path.iterdir())):
            raise ConfigError(
                f"--cache-path {cache_path} exists but holds no saved prior cache; "
                "give an empty or new folder, or a folder a previous run saved a cache into"
            )
    return cache


def _train_and_evaluate(
    config: RunConfig,
    games: _Games,
    agents: list[Agent],
    components: dict[str, Any],
    cache: PriorCache | None,
    out: Path,
    progress: bool,
    resume_from: tuple[Progress, Path] | None = None,
    pool: WorkerPool | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float]:
    """Every seed's training episodes with its evaluations, from the checkpoint ``resume_from`` when
    given; returns (metrics lines, evals lines, seconds spent checkpointing)."""
    at, folder = resume_from if resume_from is not None else (Progress(), None)
    records = read_lines(out / "metrics.jsonl", at.metrics_lines) if folder else []
    evals = read_lines(out / "evals.jsonl", at.eval_lines) if folder else []
    # What each seed starts from: the cache(s) as the run found them, before any checkpoint is restored.
    seed_caches = pool.seed_caches() if pool is not None else [cache] if cache is not None else []
    fresh = [(c, c.state_dict(), c.runtime_state()) for c in seed_caches]
    log = ScalarLog(
        out / "tensorboard" if config.tensorboard else None,
        resumed=(config.seeds[at.seed_index], purge_from(at.steps, at.episodes_done > 0))
        if folder is not None and at.seed_index < len(config.seeds)
        else None,
    )
    every = config.eval_every
    bar = tqdm(
        total=config.episodes * len(config.seeds),
        initial=config.episodes * at.seed_index + at.episodes_done,
        desc=f"{config.env} {config.agent}/{config.cache.mode}",
        unit="ep",
        disable=not progress,
    )
    checkpoints = _CheckpointClock()

    def run_eval(seed: int, agent: Agent, done: int, steps: int, queries: int) -> None:
        found: list[EvalEpisode] = evaluate(
            agent,
            games.eval_games(),
            seed=seed,
            after_episodes=done,
            train_steps=steps,
            train_llm_queries=queries,
            policy=config.eval_policy,
            num_envs=config.num_envs,
        )
        evals.extend(e.to_json() for e in found)
        log.evaluation(seed, found)
        _write_progress(out, records, evals)
        bar.set_postfix(held_out=f"{sum(e.success for e in found) / len(found):.2f}", llm=queries)

    def checkpoint(state: Progress, agent: Agent | None, force: bool = False) -> None:
        state.metrics_lines, state.eval_lines = len(records), len(evals)
        if force or checkpoints.due():
            with checkpoints.timed():  # between seeds (no agent) the next seed starts afresh: no cache to keep
                write_checkpoint(out, state, agent, cache if agent is not None else None)

    def save_cache(seed: int) -> None:
        cache.save(out / "cache" / f"seed{seed}")
        if config.cache_path is not None:
            cache.save(config.cache_path, merge=True)  # other seeds and runs share it: keep their entries

    unsaved: int | None = None  # the seed whose cache is not saved yet
    try:
        for i in range(at.seed_index, len(config.seeds)):
            seed = config.seeds[i]
            here = at if i == at.seed_index else Progress(seed_index=i)
            mid_seed = folder is not None and i == at.seed_index and at.episodes_done > 0
            if mid_seed and cache is not None:
                restore_cache(folder, cache)
            else:
                for c, state, runtime in fresh:
                    c.load_runtime_state(runtime)  # first: the entries are rebased onto its clock
                    c.load_state_dict(state)
            unsaved = seed if cache is not None else None
            agent = agents[0] if i == 0 else make_agent(config.agent, config.agent_config(), seed=seed, **components)
            if mid_seed and (folder / "agent").is_dir():
                agent = restore_agent(folder, agent, components)
            if config.demo_episodes and here.episodes_done == 0:  # (a checkpoint comes only after episodes)
                for record in _demonstrate(games, agent, seed, config.demo_episodes):
                    here.steps += record.steps
                    here.queries += record.llm_calls + record.partial_calls
                    records.append(record.to_json())
                _write_progress(out, records, evals)
            if every and here.last_eval < 0:
                run_eval(seed, agent, 0, here.steps, here.queries)
                here.last_eval = 0
            per_round = config.workers or config.num_envs
            for first in range(here.episodes_done, config.episodes, per_round):
                n = min(per_round, config.episodes - first)
                adapted_before = cache.stats()["adaptation_time_s"] if cache is not None else 0.0
                if pool is not None:  # Ray rollout workers, one episode each
                    played = pool.run_episodes(agent, seed, first, n)
                else:
                    played = _run_episodes(games.train_games(first, n), agent, seed, first)
                for record in played:
                    if cache is not None:
                        record.cache_params = cache.params()
                        # the cache's own work during the batch, shared evenly by its episodes
                        record.adaptation_time_s = (cache.stats()["adaptation_time_s"] - adapted_before) / len(played)
                    here.steps += record.steps
                    here.queries += record.llm_calls + record.partial_calls
                    records.append(record.to_json())
                    log.episode(seed, record, here.steps, here.queries)
                    bar.update(1)
                _write_progress(out, records, evals)
                here.episodes_done = done = first + len(played)
                if (every and done // every > first // every) or done == config.episodes:
                    run_eval(seed, agent, done, here.steps, here.queries)
                    here.last_eval = done
                if done < config.episodes:
                    checkpoint(here, agent)
            if unsaved is not None:
                save_cache(seed)
                unsaved = None
            checkpoint(Progress(seed_index=i + 1), None, force=True)  # the seed is done: no agent to keep
    finally:
        bar.close()
        log.close()
        if unsaved is not None:  # stopped mid-seed: keep what it learnt
            save_cache(unsaved)
    return records, evals, checkpoints.total


class _CheckpointClock:
    """When to checkpoint: after an episode once the time since the last checkpoint is at least
    ``CHECKPOINT_COST_RATIO`` times what that checkpoint took, so checkpoints cost at most about
    1/ratio of the run's time (every episode when episodes are long, every few when they are short)."""

    def __init__(self) -> None:
        self.last_end = time.perf_counter()
        self.last_cost = 0.0
        self.total = 0.0

    def due(self) -> bool:
        return time.perf_counter() - self.last_end >= CHECKPOINT_COST_RATIO * self.last_cost

    @contextmanager
    def timed(self) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.last_end = time.perf_counter()
        self.last_cost = self.last_end - start
        self.total += self.last_cost


def _run_episodes(batch: list[tuple[int, Any]], agent: Agent, seed: int, first: int) -> list[EpisodeRecord]:
    """Episodes ``first``, ``first + 1``, … on the (game seed, environment) pairs of ``batch``, each
    recorded step by step into a metrics.jsonl line: by the agent's own loop for one environment,
    in lockstep (:func:`priorcache.agents.vector.run_episodes_batched`) for several."""
    records = [EpisodeRecord(seed=seed, episode=first + i, game_seed=game) for i, (game, _) in enumerate(batch)]
    reset_seeds = [episode_seed(seed, r.episode) for r in records]
    start = time.perf_counter()
    if len(batch) == 1:
        outcomes = [agent.run_episode(batch[0][1], reset_seeds[0], on_step=records[0].add)]
    else:
        outcomes = run_episodes_batched(
            agent, [env for _, env in batch], reset_seeds, on_step=lambda i, d, r: records[i].add(d, r)
        )
    wall = time.perf_counter() - start
    for record, outcome in zip(records, outcomes):
        record.success = outcome.success
        record.train_time_s = outcome.train_time_s
        # Lockstep episodes overlap in time: each gets an even share of the batch's wall time, so
        # that the run's wall time is their sum, as for episodes played one after another.
        record.wall_time_s = outcome.wall_time_s if len(batch) == 1 else wall / len(batch)
    return records


def _demonstrate(games: _Games, agent: Agent, seed: int, n: int) -> list[EpisodeRecord]:
    """The oracle's episodes on the first ``n`` training games, which ``agent`` learns from as from its
    own; recorded as metrics lines with negative episode numbers (-n … -1) marked ``demonstration``."""
    records = []
    for k, game in enumerate(games.train_seeds[:n]):
        env = games.get("train", game)
        oracle = getattr(env, "oracle_action", None)
        if not callable(oracle):
            raise ConfigError(f"--demo-episodes: {games.env} has no oracle to demonstrate with")
        record = EpisodeRecord(seed=seed, episode=k - n, game_seed=game, demonstration=True)
        # reset seed 0, as the F8 demonstrations (oracle_steps): the same episodes on the same games
        outcome = agent.run_episode(env, 0, on_step=record.add, demonstrator=oracle)
        if not outcome.success:
            raise ConfigError(f"the {games.env} oracle did not win training game {game}: nothing to learn from")
        record.success, record.train_time_s, record.wall_time_s = True, outcome.train_time_s, outcome.wall_time_s
        records.append(record)
    return records


def _write_progress(out: Path, records: list[dict[str, Any]], evals: list[dict[str, Any]]) -> None:
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    atomic_write_text(out / "evals.jsonl", "".join(json.dumps(e) + "\n" for e in evals))
    partial: dict[str, Any] = {"partial": True}
    if evals:
        partial["held_out"] = summarise_held_out(evals)
    if any(not r.get("demonstration") for r in records):
        partial.update(summarise(records))
    atomic_write_json(out / "summary.json", partial)
