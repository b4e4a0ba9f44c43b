"""The run loop (SPEC §2): env → φ(s) → cache/LLM prior → posterior → env, over episodes and seeds.

A run writes into its output folder, each file atomically and after every episode, so an
interrupted run leaves the episodes it finished readable:
- ``config.json``   what was run;
- ``metrics.jsonl`` one line per episode (SPEC §8);
- ``summary.json``  the aggregate over seeds;
- ``cache/``        the prior cache at the end of the run (and ``--cache-path`` is written back).
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from tqdm.auto import tqdm

from priorcache.agents.dqn_prior import DQNPriorAgent, DQNPriorConfig
from priorcache.agents.react import ReActAgent, ReActConfig
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

AGENTS = {
    "dqn-prior": "DQN with the LLM prior and the F1 posterior (SPEC §6)",
    "dqn": "plain DQN over the admissible actions, prior off (never calls the LLM)",
    "direct-llm": "argmax of the LLM prior, no learning",
    "react": "ReAct-style prompting: the LLM writes a thought, then an action (needs a generating backend)",
}

#: Agents whose episodes on a fixed game repeat exactly (greedy, no learning, no sampling).
DETERMINISTIC_AGENTS = frozenset({"direct-llm", "react"})


@dataclass
class RunConfig:
    env: str = "textworld"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    agent: str = "dqn-prior"
    cache: CacheConfig = field(default_factory=CacheConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    backend: str = "embedded"
    model_path: Optional[str] = None
    device: str = "cpu"
    episodes: int = 10
    seeds: list[int] = field(default_factory=lambda: [0])
    max_episode_steps: Optional[int] = None  # None: the environment's own default
    out: Path = Path("runs/latest")
    cache_path: Optional[Path] = None
    # F2 temperature: α_0 when nothing hits, α_min at a 100 % hit rate (α_min = α_0 turns F2 off).
    alpha_0: float = 1.0
    alpha_min: float = 0.25

    def __post_init__(self) -> None:
        if self.agent not in AGENTS:
            raise ConfigError(f"unknown agent {self.agent!r}; choose one of {sorted(AGENTS)}")
        if self.episodes < 1:
            raise ConfigError(f"episodes must be ≥ 1, got {self.episodes}")
        if not self.seeds:
            raise ConfigError("at least one seed is needed")
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise ConfigError(f"max_episode_steps must be ≥ 1, got {self.max_episode_steps}")
        self.agent_config()  # validates the agent's parameters now, not mid-run

    def agent_config(self) -> DQNPriorConfig | ReActConfig:
        if self.agent == "react":
            return ReActConfig()
        return DQNPriorConfig(use_prior=self.agent != "dqn", learn=self.agent != "direct-llm",
                              alpha_0=self.alpha_0, alpha_min=self.alpha_min)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["out"] = str(self.out)
        out["cache_path"] = str(self.cache_path) if self.cache_path else None
        out["agent_config"] = asdict(self.agent_config())
        return out


def run_experiment(
    config: RunConfig,
    backend: Optional[LLMBackend] = None,
    encoder: Optional[MiniLMEncoder] = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``config`` and return its summary. ``backend``/``encoder`` may be passed to share loaded models."""
    # Everything that can refuse bad input (env name and settings, backend, saved cache) is built
    # before the output folder is touched, so a bad invocation writes nothing.
    agent_config = config.agent_config()
    uses_cache = isinstance(agent_config, DQNPriorConfig) and agent_config.use_prior
    envs = _lazy_envs(config)
    first_env = next(envs)
    cache: Optional[PriorCache] = None
    needs_llm = uses_cache or config.agent == "react"
    if needs_llm:
        backend = backend or make_backend(config.backend, model_path=config.model_path, device=config.device)
    encoder = encoder or MiniLMEncoder()
    if config.agent == "react":
        ReActAgent(backend, encoder, agent_config)  # refuses a backend that cannot generate, before anything is written
    if uses_cache:
        cache = PriorCache(config.cache, encoder, backend, prior_config=config.prior)
        if config.cache_path is not None:
            cache_path = Path(config.cache_path)
            if has_saved_cache(cache_path):
                cache.load(cache_path)
            elif cache_path.exists() and (not cache_path.is_dir() or any(cache_path.iterdir())):
                raise ConfigError(f"--cache-path {cache_path} exists but holds no saved prior cache; "
                                  "give an empty or new folder, or a folder a previous run saved a cache into")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", config.to_json())

    records: list[dict[str, Any]] = []
    sources: set[Optional[str]] = set()
    bar = tqdm(total=config.episodes * len(config.seeds), desc=f"{config.env} {config.agent}/{config.cache.mode}",
               unit="ep", disable=not progress)
    try:
        for seed, env in zip(config.seeds, itertools.chain([first_env], envs)):
            if config.agent == "react":
                agent: Any = ReActAgent(backend, encoder, agent_config)
            else:
                agent = DQNPriorAgent(agent_config, encoder, cache, prompt_builder(config.env), seed=seed)
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
                    bar.set_postfix(success=f"{sum(r['success'] for r in records) / len(records):.2f}",
                                    llm=sum(r["llm_calls"] + r["partial_calls"] for r in records))
            finally:
                env.close()
    finally:
        bar.close()
        if cache is not None:
            cache.save(out / "cache")
            if config.cache_path is not None:
                cache.save(config.cache_path)

    summary = summarise(records)
    summary.update({"env": config.env, "env_kwargs": config.env_kwargs, "agent": config.agent,
                    "cache_mode": config.cache.mode if uses_cache else "n/a",
                    "backend": config.backend if needs_llm else None,
                    # where the games came from, e.g. ALFWorld "generated" vs "official:valid_seen"
                    "env_source": ",".join(sorted(s for s in sources if s)) or None,
                    "cache_stats": cache.stats() if cache is not None else None})
    if cache is not None:
        # SPEC §4 "overhead is measured": the adaptive modes' own work against the run's wall time.
        summary["adaptation_share"] = (summary["adaptation_time_s"] / summary["wall_time_s"]
                                       if summary["wall_time_s"] > 0 else None)
    atomic_write_json(out / "summary.json", summary)
    return summary


def _lazy_envs(config: RunConfig) -> Iterator[Any]:
    """One environment per seed (a seed is its own generated game), made when its turn comes."""
    for seed in config.seeds:
        kwargs = dict(config.env_kwargs)
        if config.max_episode_steps is not None:
            kwargs["max_episode_steps"] = config.max_episode_steps
        yield make_env(config.env, game_seed=seed, **kwargs)


def _run_episode(env: Any, agent: Any, seed: int, episode: int) -> EpisodeRecord:
    start = time.perf_counter()
    train_before = agent.train_time_s
    record = EpisodeRecord(seed=seed, episode=episode)
    _, info = env.reset(seed=seed * 100_003 + episode)
    agent.begin_episode(info["objective"])
    while True:
        decision = agent.act(info["state_text"], info["admissible_actions"])
        _, reward, terminated, truncated, info = env.step(decision.action)
        agent.observe(reward, terminated, truncated, info["state_text"], info["admissible_actions"])
        record.add(decision, float(reward))
        if terminated or truncated:
            record.success = bool(info.get("won", False))
            break
    record.train_time_s = agent.train_time_s - train_before
    record.wall_time_s = time.perf_counter() - start
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
