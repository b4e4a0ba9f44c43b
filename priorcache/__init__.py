"""priorcache: reinforcement learning with LLM action priors served through an adaptive semantic cache.

Data flows envs/ (environments, state describers φ(s)) → prior/ (LLM backends, the Prior type)
→ cache/ (encoder, index, prior cache and its controllers) → posterior.py → agents/ → experiments/
→ cli.py. The design, with every formula, is in docs/design.md.

What a library user needs is importable from here (``from priorcache import PriorCache``); names are
resolved on first use, so ``import priorcache`` does not load torch or an LLM.
"""

import importlib
import os
from typing import Any

# Before torch loads: OpenMP's default busy-wait makes small torch ops 10–30× slower whenever
# another process holds one of a few cores (measured here: MiniLM 18 ms → 524 ms a sentence).
# A default only: a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_EXPORTS = {
    # environments
    "make_env": "priorcache.envs.registry",
    "ENVIRONMENTS": "priorcache.envs.registry",
    "ControlEnv": "priorcache.envs.control",
    "record_control_demos": "priorcache.envs.control_demos",
    "StateAbstraction": "priorcache.envs.state_abstraction",
    # LLM backends, prompts and priors
    "make_backend": "priorcache.prior.registry",
    "BACKENDS": "priorcache.prior.registry",
    "Prompt": "priorcache.prior.base",
    "prompt_builder": "priorcache.prior.prompts",
    "Prior": "priorcache.prior.interface",
    "CategoricalPrior": "priorcache.prior.action_prior",
    "PriorConfig": "priorcache.prior.action_prior",
    "Audit": "priorcache.prior.divergence",
    "SkillPrior": "priorcache.prior.skill_prior",
    "SkillGaussians": "priorcache.prior.skill_prior",
    "fit_skill_gaussians": "priorcache.prior.skill_prior",
    # the cache
    "MiniLMEncoder": "priorcache.cache.encoder",
    "PriorCache": "priorcache.cache.prior_cache",
    "PriorLookup": "priorcache.cache.records",
    "CacheConfig": "priorcache.cache.config",
    "MetaConfig": "priorcache.cache.meta",
    "KLBudgetConfig": "priorcache.cache.kl_budget",
    # posterior and agents
    "PosteriorSampler": "priorcache.posterior",
    "TemperatureSchedule": "priorcache.posterior",
    "Agent": "priorcache.agents.base",
    "DQNAgent": "priorcache.agents.dqn",
    "DQNConfig": "priorcache.agents.dqn",
    "DQNPriorAgent": "priorcache.agents.dqn_prior",
    "DirectLLMAgent": "priorcache.agents.dqn_prior",
    "ReActAgent": "priorcache.agents.react",
    "SACPrior": "priorcache.agents.sac_prior",
    "SACPriorConfig": "priorcache.agents.sac_prior",
    "AGENTS": "priorcache.agents.registry",
    "make_agent": "priorcache.agents.registry",
    "load_agent": "priorcache.agents.registry",
    # experiments
    "RunConfig": "priorcache.experiments.runner",
    "run_experiment": "priorcache.experiments.runner",
    "ControlRunConfig": "priorcache.experiments.control_runner",
    "run_control": "priorcache.experiments.control_runner",
    # errors
    "PriorCacheError": "priorcache.errors",
    "ConfigError": "priorcache.errors",
    "BackendError": "priorcache.errors",
    "CacheFormatError": "priorcache.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'priorcache' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
