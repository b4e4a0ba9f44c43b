"""The two methods a continuous-control run trains, behind one small interface, and the held-out
evaluation both go through (:mod:`priorcache.experiments.control_runner`).

- ``sac``: Stable-Baselines3 SAC (``MlpPolicy``), the plain-RL baseline. A thin subclass times its
  action choices (the ``decision_times_ms`` of its episodes) and its gradient steps; nothing else
  of SB3 changes. ``learn(n)`` calls SB3's ``learn(n, reset_num_timesteps=False)``, so an episode
  runs on across evaluations.
- ``sac-prior``: :class:`~priorcache.agents.sac_prior.SACPrior`, its p_LLM(z|s) served by a
  :class:`~priorcache.cache.prior_cache.PriorCache` of the skill prior kind (mode ``none`` is the
  uncached reference) through a :class:`~priorcache.experiments.control_episodes.RecordingSource`.
  Its ``learn`` too runs the episode in progress on across calls, so both methods play the same
  episodes. Its checkpoint holds the episode in progress (the agent's, actions included, and the
  training record's); a restore replays the actions on the training instance.

Both learn on the same :class:`~priorcache.experiments.control_episodes.TrainingInstances`, with the
same network width, batch size, replay size (the whole budget), warm-up steps, γ, τ, learning rates
(SB3's defaults, which SAC-Prior shares) and one gradient step per environment step, and torch on one
thread (SAC-Prior's default; a second thread made a gradient step much slower on 2 busy cores).

**Evaluation** (:func:`evaluate_control`): one episode on each held-out instance (the registry's
``eval`` split), reset seed 0, by the deterministic policy (SB3's ``predict(deterministic=True)``;
SAC-Prior's ``predict``: skills by the mode of F1, actions by the actor's mean), with no learning:
nothing the learner trains on (weights, optimisers, replay buffer, counters, RNGs of learning) is
touched. SAC-Prior asks a *copy* of its cache, made for this evaluation and dropped after it, as the
text runner's evaluation does: the cache serves the evaluation as it would serve a deployed agent, and
the evaluation's LLM queries are counted apart from training's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from priorcache.errors import ConfigError
from priorcache.experiments.control_episodes import ControlEpisode, RecordingSource, TrainingInstances
from priorcache.io import atomic_write_json

if TYPE_CHECKING:
    from priorcache.experiments.control_runner import ControlRunConfig

#: The ``env.reset`` seed of every evaluation episode: a held-out instance is the same task each time.
EVAL_RESET_SEED = 0
#: Torch threads of both methods (SAC-Prior's default, see the module docstring).
TORCH_THREADS = 1
#: The demonstrations' seed (the SAC demonstrator's training seed): one set of demonstrations, saved
#: once, serves every run seed.
DEMONSTRATION_SEED = 0
#: In a SAC-Prior checkpoint: the training record of the episode in progress.
_EPISODE = "training_episode.json"

Sink = Callable[[], ControlEpisode | None]


def _torch_threads() -> Any:
    """Torch on ``TORCH_THREADS`` threads for a block (imported here: torch loads only when a run does)."""
    from priorcache.torch_threads import torch_threads

    return torch_threads(TORCH_THREADS)


@dataclass
class SkillPriorParts:
    """What every SAC-Prior seed shares: the backend, encoder and skill Gaussians (each seed builds its
    own cache from them), and what the demonstrations were."""

    backend: Any
    encoder: Any
    gaussians: Any
    info: dict[str, Any]

    @classmethod
    def build(cls, config: ControlRunConfig, env: Any, backend: Any, encoder: Any, progress: bool) -> SkillPriorParts:
        from priorcache.prior.skill_prior import SkillGaussians, fit_skill_gaussians

        obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
        start = time.perf_counter()
        if config.shots:
            from priorcache.envs.control_demos import record_control_demos

            # The task's own episode length: a MuJoCo demonstrator is saved per length, and trains for minutes.
            demos = record_control_demos(config.env, config.shots, seed=DEMONSTRATION_SEED, progress=progress)
            gaussians = fit_skill_gaussians(
                demos.observations, demos.actions, demos.skills, env.skills, obs_dim=obs_dim, act_dim=act_dim
            )
            info = {
                "shots": config.shots,
                "demonstrator": demos.demonstrator,
                "game_seeds": list(demos.game_seeds),
                "episode_returns": list(demos.episode_returns),
                "episode_success": list(demos.episode_success),
                "steps": len(demos.skills),
                "skill_steps": dict(zip(gaussians.skills, gaussians.steps)),
                "skills_fitted": dict(zip(gaussians.skills, gaussians.fitted)),
            }
        else:
            gaussians = SkillGaussians.uniform(env.skills, obs_dim, act_dim)
            info = {"shots": 0, "gaussians": "flat (uniform on [-1, 1]^d)"}
        info["wall_time_s"] = time.perf_counter() - start
        if config.adapt == "lora":
            from priorcache.experiments.adapt import adapt_skill_prior

            if backend is not None:
                raise ConfigError("adapt 'lora' fine-tunes a model of its own; it cannot use an already loaded backend")
            adaptation = adapt_skill_prior(
                config.env, env, demos, config.backend, model_path=config.model_path, device=config.device
            )
            backend, info["adaptation"] = adaptation.backend, adaptation.info
        if backend is None:
            from priorcache.prior.registry import make_backend

            load = time.perf_counter()
            backend = make_backend(
                config.backend, config.model_path, config.device, base_url=config.base_url, model=config.model
            )
            info["backend_load_wall_time_s"] = time.perf_counter() - load
        info["backend_name"] = str(getattr(backend, "name", type(backend).__name__))
        if encoder is None:
            from priorcache.cache.encoder import MiniLMEncoder

            encoder = MiniLMEncoder()
        return cls(backend, encoder, gaussians, info)

    def cache(self, config: ControlRunConfig) -> Any:
        """A new cache of ``config``'s settings serving this skill prior."""
        from priorcache.cache.prior_cache import PriorCache
        from priorcache.prior.skill_prior import SkillPrior, SkillPriorConfig

        assert config.cache is not None
        return PriorCache(config.cache, self.encoder, self.backend, SkillPriorConfig(self.gaussians), SkillPrior)


class SB3SAC:
    """Stable-Baselines3 SAC on ``env`` with the run's shared settings."""

    decision_unit = "action"
    uses_llm = False
    #: SB3 saves pickles, which this project never loads: an unfinished seed restarts.
    checkpoints = False

    def __init__(
        self,
        env: TrainingInstances,
        *,
        seed: int,
        hidden_size: int,
        batch_size: int,
        learning_starts: int,
        buffer_size: int,
    ) -> None:
        self.env = env
        with _torch_threads():
            self.model = _timed_sac_class()(
                "MlpPolicy",
                env,
                learning_starts=learning_starts,
                batch_size=batch_size,
                buffer_size=buffer_size,
                policy_kwargs={"net_arch": [hidden_size, hidden_size]},
                seed=seed,
                device="cpu",
                verbose=0,
            )
        # SB3 would otherwise make an empty log folder in the system temp directory on every learn call.
        from stable_baselines3.common.logger import Logger

        self.model.set_logger(Logger(folder=None, output_formats=[]))
        self.model.on_action = self._on_action

    def _on_action(self, elapsed_s: float) -> None:
        if self.env.current is not None:
            self.env.current.decision_times_ms.append(elapsed_s * 1e3)

    def learn(self, steps: int) -> None:
        with _torch_threads():
            self.model.learn(steps, reset_num_timesteps=False)

    def train_time(self) -> float:
        return self.model.train_time_s

    def llm_queries(self) -> int:
        return 0

    @contextmanager
    def evaluating(self, sink: Sink) -> Iterator[None]:
        yield

    def act(self, obs: np.ndarray, state: Any, info: dict[str, Any]) -> tuple[np.ndarray, Any]:
        with _torch_threads():
            action, _ = self.model.predict(obs, deterministic=True)
        return action, None

    def info(self) -> dict[str, Any]:
        return {"gradient_steps": int(self.model._n_updates), "ent_coef": _sb3_ent_coef(self.model)}


def _sb3_ent_coef(model: Any) -> float | None:
    log_coef = getattr(model, "log_ent_coef", None)
    return float(log_coef.detach().exp()) if log_coef is not None else None


def _timed_sac_class() -> type:
    """SB3's SAC with its action choices and gradient steps timed (``on_action(seconds)``, ``train_time_s``)."""
    from stable_baselines3 import SAC

    class TimedSAC(SAC):
        on_action: Callable[[float], None] | None = None
        train_time_s = 0.0

        def _sample_action(self, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = super()._sample_action(*args, **kwargs)
            if self.on_action is not None:
                self.on_action(time.perf_counter() - start)
            return out

        def train(self, *args: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            super().train(*args, **kwargs)
            self.train_time_s += time.perf_counter() - start

    return TimedSAC


class SACPriorLearner:
    """SAC-Prior on ``env`` with ``cache`` serving p_LLM(z|s) (its ``prior_config`` holds the Gaussians)."""

    decision_unit = "skill decision"
    uses_llm = True
    checkpoints = True

    def __init__(
        self,
        env: TrainingInstances,
        cache: Any,
        *,
        seed: int,
        hidden_size: int,
        batch_size: int,
        learning_starts: int,
        buffer_size: int,
        skill_hold: int,
        alpha_0: float,
        alpha_min: float,
        target_kl_per_dim: float | None = None,
        prior_scale_q: bool = False,
        actor_on_prior: bool = False,
        skill_q_warmup: int = 0,
        actor_init_alpha: float | None = None,
    ) -> None:
        from priorcache.agents.sac_prior import SACPriorConfig

        self.env, self.cache = env, cache
        self.source = RecordingSource(cache, lambda: env.current)
        config = SACPriorConfig(
            skill_horizon=skill_hold,
            batch_size=batch_size,
            buffer_size=buffer_size,
            learning_starts=learning_starts,
            hidden_size=hidden_size,
            skill_alpha_0=alpha_0,
            skill_alpha_min=alpha_min,
            prior_scale_q=prior_scale_q,
            actor_on_prior=actor_on_prior,
            skill_q_warmup=skill_q_warmup,
            torch_threads=TORCH_THREADS,
            **({} if target_kl_per_dim is None else {"target_kl_per_dim": target_kl_per_dim}),
            **({} if actor_init_alpha is None else {"init_alpha": actor_init_alpha}),
        )
        self.agent = config.create(env, prior_source=self.source, gaussians=cache.prior_config.gaussians, seed=seed)

    def learn(self, steps: int) -> None:
        self.agent.learn(steps)

    def train_time(self) -> float:
        return float(self.agent.counters.train_time_s)

    def llm_queries(self) -> int:
        return self.source.llm_queries

    @contextmanager
    def evaluating(self, sink: Sink) -> Iterator[None]:
        """The agent asks a copy of the cache, recorded into ``sink()``, for the block."""
        copy = type(self.cache)(
            self.cache.config, self.cache.encoder, self.cache.backend, self.cache.prior_config, self.cache.prior_kind
        )
        copy.load_state_dict(self.cache.state_dict())
        self.agent.prior_source = RecordingSource(copy, sink)
        try:
            yield
        finally:
            self.agent.prior_source = self.source

    def act(self, obs: np.ndarray, state: Any, info: dict[str, Any]) -> tuple[np.ndarray, Any]:
        return self.agent.predict(obs, state, deterministic=True, state_text=info["state_text"])

    def save(self, folder: Path) -> None:
        """Agent (safetensors + JSON, its episode in progress included), replay buffer, cache with its
        run-time state, and the training record of the episode in progress into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        self.agent.save(folder / "agent")
        self.agent.save_replay_buffer(folder / "replay.safetensors")
        self.cache.save(folder / "cache")
        atomic_write_json(folder / "cache_runtime.json", self.cache.runtime_state())
        atomic_write_json(folder / _EPISODE, {"episode": self.env.episode_state()})

    def restore(self, folder: Path, llm_queries: int, episodes_started: int, steps: int) -> None:
        """The state ``save`` wrote into ``folder`` when the source had made ``llm_queries`` and the
        training instances had started ``episodes_started`` episodes and played ``steps`` steps. The
        agent's load replays the episode in progress on the training instance it was on."""
        from priorcache.agents.sac_prior import SACPrior
        from priorcache.experiments.run_folder import restore_cache
        from priorcache.experiments.summaries import read_json_object

        restore_cache(folder, self.cache)
        # a checkpoint written before episodes went on across chunks has none in progress
        has = (folder / _EPISODE).is_file()
        episode = read_json_object(folder / _EPISODE, "a training episode").get("episode") if has else None
        with self.env.replaying(episodes_started, steps, episode):
            self.agent = SACPrior.load(folder / "agent", self.env, prior_source=self.source)
        self.agent.load_replay_buffer(folder / "replay.safetensors")
        self.source.llm_queries = llm_queries

    def info(self) -> dict[str, Any]:
        c = self.agent.counters
        return {
            "gradient_steps": int(c.gradient_steps),
            "alpha": self.agent.alpha,
            "skill_decisions": int(c.skill_decisions),
            # the whole skill decision (Q(s,z) for every skill, the lookup, F1's draw); the decision
            # latencies of the episodes time the lookup alone
            "decision_time_s": float(c.decision_time_s),
            "cache_stats": self.cache.stats(),
        }


def evaluate_control(
    learner: Any,
    eval_envs: Sequence[tuple[int, Any]],
    *,
    seed: int,
    after_episodes: int,
    after_steps: int,
    train_llm_queries: int,
) -> list[dict[str, Any]]:
    """One deterministic episode on each ``(game seed, environment)`` of ``eval_envs`` (held-out
    instances), no learning (module docstring); one evals.jsonl line each."""
    current: list[ControlEpisode | None] = [None]
    lines = []
    with learner.evaluating(lambda: current[0]):
        for game_seed, env in eval_envs:
            record = current[0] = ControlEpisode(seed=seed, episode=-1, game_seed=game_seed)
            start = time.perf_counter()
            obs, info = env.reset(seed=EVAL_RESET_SEED)
            state = None
            while True:
                action, state = learner.act(obs, state, info)
                obs, reward, terminated, truncated, info = env.step(action)
                record.steps += 1
                record.episode_return += float(reward)
                record.success = record.success or bool(info.get("success", False))
                if terminated or truncated:
                    break
            lines.append(
                {
                    "seed": seed,
                    "after_episodes": after_episodes,
                    "after_steps": after_steps,
                    "train_steps": after_steps,
                    "train_llm_queries": train_llm_queries,
                    "game_seed": game_seed,
                    "success": record.success,
                    "episode_return": record.episode_return,
                    "steps": record.steps,
                    "llm_queries": record.llm_queries if learner.uses_llm else None,
                    "skill_decisions": record.lookups if learner.uses_llm else None,
                    "hits": record.hits if learner.uses_llm else None,
                    "wall_time_s": time.perf_counter() - start,
                }
            )
    return lines
