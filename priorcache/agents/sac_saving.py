"""Saving and loading a SAC-Prior agent (:mod:`priorcache.agents.sac_prior`): safetensors + JSON, no pickle.

The folder is the one every agent uses (:mod:`priorcache.agents.saving`): ``weights.safetensors`` holds
the actor, both critics and their targets, Adam's moments for actor, critics and α, log α and the
torch generator's state; ``agent.json`` the config, the seed, the environment's identity
(observation and action dimensions, skills, objective), the skill Gaussians (exactly, as JSON
floats), the counters, F2's hit rate, the NumPy generators' states, the episode log and, for a residual
actor, what its MLP is a residual on (a save under another residual is refused). A load onto
an environment with another identity is refused: the networks would read other inputs.

The training episode in progress (``SACPrior.episode_in_progress``) is saved too: its reset seed,
skill, steps left, return, length and success in ``agent.json``, its observation and actions as the
tensors ``episode.obs`` and ``episode.actions``. The env's own state is not (MuJoCo's and
MetaWorld's cannot be saved simply): a load rebuilds it by resetting the env with the episode's seed
and stepping its actions again, and checks that the env reaches the saved observation exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from priorcache.agents.sac_networks import RESIDUAL_KIND
from priorcache.agents.sac_state import EpisodeInProgress, SACPriorCounters, SkillDecision
from priorcache.agents.saving import read_agent, write_agent
from priorcache.agents.torch_state import load_state_tensors, state_tensors
from priorcache.errors import ConfigError
from priorcache.prior.base import Prompt
from priorcache.prior.skill_prior import SkillGaussians

if TYPE_CHECKING:
    from priorcache.agents.sac_prior import SACPrior, SkillPriorSource


#: The episode in progress's tensors (beside the networks').
_OBS, _ACTIONS = "episode.obs", "episode.actions"


def _parts(agent: SACPrior) -> dict[str, Any]:
    return {
        "actor": agent.actor,
        "critic": agent.critic,
        "critic_target": agent.critic_target,
        "actor_opt": agent.actor_opt,
        "critic_opt": agent.critic_opt,
        "alpha_opt": agent.alpha_opt,
        "torch_rng": agent.torch_rng,
    }


def env_identity(agent: SACPrior) -> dict[str, Any]:
    """What a saved agent must find again in the environment it is loaded onto."""
    return {
        "obs_dim": agent.obs_dim,
        "act_dim": agent.act_dim,
        "skills": list(agent.skills),
        "objective": agent.objective,
    }


def save_agent(agent: SACPrior, path: Path) -> None:
    from priorcache.agents.sac_prior import NAME

    tensors = {**state_tensors(_parts(agent)), "log_alpha": agent.log_alpha.detach().clone()}
    ep, episode = agent.episode_in_progress, None
    if ep is not None:
        episode = {
            "reset_seed": ep.reset_seed,
            "skill": ep.decision.skill,
            "hit": ep.decision.hit,
            "steps_left": ep.steps_left,
            "return": ep.episode_return,
            "length": ep.length,
            "success": ep.success,
        }
        tensors[_OBS] = torch.as_tensor(ep.obs, dtype=torch.float32)
        tensors[_ACTIONS] = torch.as_tensor(np.stack(ep.actions), dtype=torch.float32)
    state = {
        "env": env_identity(agent),
        "gaussians": agent.gaussians.to_dict(),
        "counters": asdict(agent.counters),
        "hit_rate": agent.sampler.schedule.hit_rate,
        "q_spread": {"mean_square": agent.q_spread.mean_square, "count": agent.q_spread.count},
        "rng": agent.rng.bit_generator.state,
        "predict_rng": agent._predict_rng.bit_generator.state,
        "episode_log": agent.episode_log,
        "episode": episode,
        "actor_residual": RESIDUAL_KIND if agent.config.actor_on_prior else None,
    }
    write_agent(path, {"agent": NAME, "config": asdict(agent.config), "seed": agent.seed, "state": state}, tensors)


def load_agent(
    cls: type[SACPrior],
    path: Path,
    env: Any,
    prior_source: SkillPriorSource | None,
    prompt_builder: Callable[[str, str], Prompt] | None,
    embedder: Callable[[np.ndarray, str], np.ndarray] | None,
    replay_episode: bool = True,
) -> SACPrior:
    from priorcache.agents.sac_prior import NAME, SACPriorConfig

    doc, tensors = read_agent(path)
    if doc["agent"] != NAME:
        raise ConfigError(f"{path} holds a saved {doc['agent']!r} agent, not {NAME!r}")
    saved = doc["state"]
    try:
        unknown = set(doc["config"]) - {f.name for f in fields(SACPriorConfig)}
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}")
        config = SACPriorConfig(**doc["config"])
        gaussians = SkillGaussians.from_dict(saved.get("gaussians"))
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"{path}: damaged SAC-Prior config or skill Gaussians: {e}") from None
    residual = saved.get("actor_residual")  # absent in folders saved before the residual on σ_z
    if config.actor_on_prior and residual != RESIDUAL_KIND:
        saved_as = f"as {residual!r}" if residual else "before its std joined the residual"
        raise ConfigError(
            f"{path} holds a residual actor saved {saved_as}, not a {RESIDUAL_KIND!r} residual: its weights "
            "would load into another function; train it again"
        )
    agent = cls(config, env, prior_source, gaussians, prompt_builder, embedder, doc["seed"])
    if saved.get("env") != env_identity(agent):
        raise ConfigError(f"{path} was saved for the env {saved.get('env')}, not this one {env_identity(agent)}")
    try:
        own = {k: v for k, v in tensors.items() if k not in ("log_alpha", _OBS, _ACTIONS)}
        load_state_tensors(own, _parts(agent))
        with torch.no_grad():
            agent.log_alpha.copy_(tensors["log_alpha"])
        agent.rng.bit_generator.state = saved["rng"]  # in place: the skill sampler shares this generator
        agent._predict_rng.bit_generator.state = saved["predict_rng"]
        agent.counters = SACPriorCounters(**saved["counters"])
        hit_rate = float(saved["hit_rate"])
        if not 0.0 <= hit_rate <= 1.0:
            raise ValueError(f"hit_rate {hit_rate}")
        agent.sampler.schedule.hit_rate = hit_rate
        spread = saved.get("q_spread", {"mean_square": 0.0, "count": 0})  # absent before prior_scale_q
        mean_square, count = float(spread["mean_square"]), int(spread["count"])
        if not (math.isfinite(mean_square) and mean_square >= 0.0 and count >= 0):
            raise ValueError(f"q_spread {spread}")
        agent.q_spread.mean_square, agent.q_spread.count = mean_square, count
        agent.episode_log = list(saved["episode_log"])
        episode = saved.get("episode")  # absent in folders saved before episodes went on across calls
        if episode is not None:
            episode = _episode_in_progress(agent, episode, tensors[_OBS], tensors[_ACTIONS])
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise ConfigError(f"{path}: the saved networks or state do not fit: {e}") from None
    if episode is not None and replay_episode:
        _replay(agent, episode, path)
        agent.episode_in_progress = episode
    return agent


def _episode_in_progress(agent: SACPrior, saved: dict[str, Any], obs: torch.Tensor, actions: torch.Tensor) -> Any:
    """The saved episode in progress, checked (ValueError naming what does not fit)."""
    length, skill, left = saved["length"], saved["skill"], saved["steps_left"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (length, skill, left, saved["reset_seed"])):
        raise ValueError("the episode in progress has a non-integer length, skill, steps left or seed")
    if not (0 <= skill < len(agent.skills) and 1 <= left <= agent.config.skill_horizon and length >= 1):
        raise ValueError(f"the episode in progress has skill {skill}, steps left {left}, length {length}")
    if tuple(obs.shape) != (agent.obs_dim,) or tuple(actions.shape) != (length, agent.act_dim):
        raise ValueError(f"the episode in progress has obs {tuple(obs.shape)} and actions {tuple(actions.shape)}")
    return EpisodeInProgress(
        reset_seed=saved["reset_seed"],
        obs=obs.numpy().astype(np.float32),
        decision=SkillDecision(skill, bool(saved["hit"])),
        steps_left=left,
        episode_return=float(saved["return"]),
        length=length,
        success=bool(saved["success"]),
        actions=list(actions.numpy().astype(np.float32)),
    )


def _replay(agent: SACPrior, episode: Any, path: Path) -> None:
    """Bring ``agent.env`` to the episode's state: reset with its seed, step its actions again."""
    hint = "load with replay_episode=False to start a new episode instead"
    obs, _ = agent.env.reset(seed=episode.reset_seed)
    for i, action in enumerate(episode.actions):
        obs, _, terminated, truncated, _ = agent.env.step(action)
        if terminated or truncated:
            raise ConfigError(
                f"{path}: replaying the episode in progress, the env ended it at step {i + 1} of "
                f"{episode.length}: it does not replay as it played; {hint}"
            )
    if not np.array_equal(np.asarray(obs, np.float32), episode.obs):
        raise ConfigError(
            f"{path}: replaying the episode in progress ({episode.length} steps) did not reach its saved "
            f"observation: the env does not replay as it played (not this task, or not deterministic); {hint}"
        )
