"""Saving and loading a SAC-Prior agent (:mod:`priorcache.agents.sac_prior`): safetensors + JSON, no pickle.

The folder is the one every agent uses (:mod:`priorcache.agents.saving`): ``weights.safetensors`` holds
the actor, both critics and their targets, Adam's moments for actor, critics and α, log α and the
torch generator's state; ``agent.json`` the config, the seed, the environment's identity
(observation and action dimensions, skills, objective), the skill Gaussians (exactly, as JSON
floats), the counters, F2's hit rate, the NumPy generators' states and the episode log. A load onto
an environment with another identity is refused: the networks would read other inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from priorcache.agents.saving import read_agent, write_agent
from priorcache.agents.torch_state import load_state_tensors, state_tensors
from priorcache.errors import ConfigError
from priorcache.prior.base import Prompt
from priorcache.prior.skill_prior import SkillGaussians

if TYPE_CHECKING:
    from priorcache.agents.sac_prior import SACPrior, SkillPriorSource


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
    state = {
        "env": env_identity(agent),
        "gaussians": agent.gaussians.to_dict(),
        "counters": asdict(agent.counters),
        "hit_rate": agent.sampler.schedule.hit_rate,
        "rng": agent.rng.bit_generator.state,
        "predict_rng": agent._predict_rng.bit_generator.state,
        "episode_log": agent.episode_log,
    }
    write_agent(path, {"agent": NAME, "config": asdict(agent.config), "seed": agent.seed, "state": state}, tensors)


def load_agent(
    cls: type[SACPrior],
    path: Path,
    env: Any,
    prior_source: SkillPriorSource | None,
    prompt_builder: Callable[[str, str], Prompt] | None,
    embedder: Callable[[np.ndarray, str], np.ndarray] | None,
) -> SACPrior:
    from priorcache.agents.sac_prior import NAME, SACPriorConfig, SACPriorCounters

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
    agent = cls(config, env, prior_source, gaussians, prompt_builder, embedder, doc["seed"])
    if saved.get("env") != env_identity(agent):
        raise ConfigError(f"{path} was saved for the env {saved.get('env')}, not this one {env_identity(agent)}")
    try:
        load_state_tensors({k: v for k, v in tensors.items() if k != "log_alpha"}, _parts(agent))
        with torch.no_grad():
            agent.log_alpha.copy_(tensors["log_alpha"])
        agent.rng.bit_generator.state = saved["rng"]  # in place: the skill sampler shares this generator
        agent._predict_rng.bit_generator.state = saved["predict_rng"]
        agent.counters = SACPriorCounters(**saved["counters"])
        hit_rate = float(saved["hit_rate"])
        if not 0.0 <= hit_rate <= 1.0:
            raise ValueError(f"hit_rate {hit_rate}")
        agent.sampler.schedule.hit_rate = hit_rate
        agent.episode_log = list(saved["episode_log"])
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise ConfigError(f"{path}: the saved networks or state do not fit: {e}") from None
    return agent
