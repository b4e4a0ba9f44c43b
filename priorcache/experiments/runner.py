"""Experiments (docs/design.md §1): any registered agent on an environment, over episodes and seeds.

The episode loop itself is the agent's (``Agent.run_episode``); this module builds the environment,
encoder, backend and prior cache the agent takes, runs its episodes and records them.

A run writes into its output folder, each file atomically and after every episode, so an
interrupted run leaves the episodes it finished readable:
- ``config.json``   what was run;
- ``metrics.jsonl`` one line per episode (docs/design.md §1);
- ``summary.json``  the aggregate over seeds;
- ``cache/``        the prior cache at the end of the run (and ``--cache-path`` is written back).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from priorcache.agents.base import Agent, episode_seed
from priorcache.agents.registry import AGENTS, agent_spec, make_agent
from priorcache.cache.encoder import MiniLMEncoder
from priorcache.cache.prior_cache import CacheConfig, PriorCache
from priorcache.cache.store import has_saved_cache
from priorcache.envs.registry import make_env
from priorcache.errors import ConfigError
from priorcache.experiments.metrics import EpisodeRecord, summarise
from priorcache.io import atomic_write_json, atomic_write_text
from priorcache.prior.action_prior import PriorConfig
from priorcache.prior.base import LLMBackend
from priorcache.prior.prompts import prompt_builder
from priorcache.prior.registry import make_backend

#: Agents whose episodes on a fixed game repeat exactly (greedy, no learning, no sampling).
DETERMINISTIC_AGENTS = frozenset(name for name, spec in AGENTS.items() if spec.cls.deterministic)


@dataclass
class RunConfig:
    env: str = "textworld"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    agent: str = "dqn-prior"
    cache: CacheConfig = field(default_factory=CacheConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    backend: str = "embedded"
    model_path: str | None = None
    device: str = "cpu"
    episodes: int = 10
    seeds: list[int] = field(default_factory=lambda: [0])
    max_episode_steps: int | None = None  # None: the environment's own default
    out: Path = Path("runs/latest")
    cache_path: Path | None = None
    # F2 temperature: α_0 when nothing hits, α_min at a 100 % hit rate (α_min = α_0 turns F2 off).
    alpha_0: float = 1.0
    alpha_min: float = 0.25

    def __post_init__(self) -> None:
        agent_spec(self.agent)  # ConfigError naming the choices for an unknown agent
        if self.episodes < 1:
            raise ConfigError(f"episodes must be ≥ 1, got {self.episodes}")
        if not self.seeds:
            raise ConfigError("at least one seed is needed")
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise ConfigError(f"max_episode_steps must be ≥ 1, got {self.max_episode_steps}")
        self.agent_config()  # validates the agent's parameters now, not mid-run

    def agent_config(self) -> Any:
        """The agent's config, with the run-wide settings it has (α_0, α_min)."""
        return agent_spec(self.agent).cls.make_config(alpha_0=self.alpha_0, alpha_min=self.alpha_min)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["out"] = str(self.out)
        out["cache_path"] = str(self.cache_path) if self.cache_path else None
        out["agent_config"] = agent_spec(self.agent).cls.config_to_json(self.agent_config())
        return out


def run_experiment(
    config: RunConfig,
    backend: LLMBackend | None = None,
    encoder: MiniLMEncoder | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``config`` and return its summary. ``backend``/``encoder`` may be passed to share loaded models."""
    # Everything that can refuse bad input (env name and settings, backend, saved cache) is built
    # before the output folder is touched, so a bad invocation writes nothing.
    spec = agent_spec(config.agent)
    agent_config = config.agent_config()
    uses_cache = spec.uses_cache
    envs = _lazy_envs(config)
    first_env = next(envs)
    cache: PriorCache | None = None
    needs_llm = spec.needs_llm
    if needs_llm:
        backend = backend or make_backend(config.backend, model_path=config.model_path, device=config.device)
    encoder = encoder or MiniLMEncoder()
    if uses_cache:
        cache = PriorCache(config.cache, encoder, backend, prior_config=config.prior)
        if config.cache_path is not None:
            cache_path = Path(config.cache_path)
            if has_saved_cache(cache_path):
                cache.load(cache_path)
            elif cache_path.exists() and (not cache_path.is_dir() or any(cache_path.iterdir())):
                raise ConfigError(
                    f"--cache-path {cache_path} exists but holds no saved prior cache; "
                    "give an empty or new folder, or a folder a previous run saved a cache into"
                )
    components = {
        "encoder": encoder,
        "prior_cache": cache,
        "backend": backend,
        "prompt_builder": prompt_builder(config.env),
    }
    # One agent per seed, the first built now: it refuses unusable components (e.g. a backend
    # ReAct cannot generate with) before anything is written.
    agents = (make_agent(config.agent, agent_config, seed=seed, **components) for seed in config.seeds)
    first_agent = next(agents)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", config.to_json())

    records: list[dict[str, Any]] = []
    sources: set[str | None] = set()
    bar = tqdm(
        total=config.episodes * len(config.seeds),
        desc=f"{config.env} {config.agent}/{config.cache.mode}",
        unit="ep",
        disable=not progress,
    )
    try:
        for seed, env, agent in zip(
            config.seeds, itertools.chain([first_env], envs), itertools.chain([first_agent], agents)
        ):
            sources.add(getattr(env, "source", None))
            try:
                for episode in range(config.episodes):
                    adapted_before = cache.stats()["adaptation_time_s"] if cache is not None else 0.0
                    record = _run_episode(env, agent, seed, episode)
                    if cache is not None:
                        record.cache_params = cache.params()
                        record.adaptation_time_s = cache.stats()["adaptation_time_s"] - adapted_before
                    records.append(record.to_json())
                    _write_progress(out, records)
                    bar.update(1)
                    bar.set_postfix(
                        success=f"{sum(r['success'] for r in records) / len(records):.2f}",
                        llm=sum(r["llm_calls"] + r["partial_calls"] for r in records),
                    )
            finally:
                env.close()
    finally:
        bar.close()
        if cache is not None:
            cache.save(out / "cache")
            if config.cache_path is not None:
                cache.save(config.cache_path)

    summary = summarise(records)
    summary.update(
        {
            "env": config.env,
            "env_kwargs": config.env_kwargs,
            "agent": config.agent,
            "cache_mode": config.cache.mode if uses_cache else "n/a",
            "backend": config.backend if needs_llm else None,
            # where the games came from, e.g. ALFWorld "generated" vs "official:valid_seen"
            "env_source": ",".join(sorted(s for s in sources if s)) or None,
            "cache_stats": cache.stats() if cache is not None else None,
        }
    )
    if cache is not None:
        # The adaptation overhead is measured (docs/design.md §3): the adaptive modes' own work
        # against the run's wall time.
        summary["adaptation_share"] = (
            summary["adaptation_time_s"] / summary["wall_time_s"] if summary["wall_time_s"] > 0 else None
        )
    atomic_write_json(out / "summary.json", summary)
    return summary


def _lazy_envs(config: RunConfig) -> Iterator[Any]:
    """One environment per seed (a seed is its own generated game), made when its turn comes."""
    for seed in config.seeds:
        kwargs = dict(config.env_kwargs)
        if config.max_episode_steps is not None:
            kwargs["max_episode_steps"] = config.max_episode_steps
        yield make_env(config.env, game_seed=seed, **kwargs)


def _run_episode(env: Any, agent: Agent, seed: int, episode: int) -> EpisodeRecord:
    """One episode by the agent's own loop, recorded step by step into a metrics.jsonl line."""
    record = EpisodeRecord(seed=seed, episode=episode)
    outcome = agent.run_episode(env, episode_seed(seed, episode), on_step=record.add)
    record.success = outcome.success
    record.train_time_s = outcome.train_time_s
    record.wall_time_s = outcome.wall_time_s
    return record


def _write_progress(out: Path, records: list[dict[str, Any]]) -> None:
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    atomic_write_json(out / "summary.json", {"partial": True, **summarise(records)})


def load_summary(run_dir: Path) -> dict[str, Any]:
    """Read a run's summary.json, with a clear error when the folder is not a finished run."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run folder: {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from e
