"""The agent registry: name → class and a one-line description (the names ``--agent`` takes).

``make_agent`` builds any of them from the components a run has; ``load_agent`` loads a saved agent
of whichever kind the folder holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from priorcache.agents.base import Agent
from priorcache.agents.dqn import DQNAgent
from priorcache.agents.dqn_prior import DirectLLMAgent, DQNPriorAgent
from priorcache.agents.react import ReActAgent
from priorcache.agents.saving import read_agent
from priorcache.errors import ConfigError


@dataclass(frozen=True)
class AgentSpec:
    cls: type[Agent]
    description: str

    @property
    def uses_cache(self) -> bool:
        """Whether the agent takes its prior from a prior cache (which the run then builds)."""
        return "prior_cache" in self.cls.components

    @property
    def needs_llm(self) -> bool:
        """Whether the agent asks an LLM backend (directly or through the prior cache)."""
        return self.uses_cache or "backend" in self.cls.components


AGENTS: Mapping[str, AgentSpec] = MappingProxyType(
    {
        DQNPriorAgent.name: AgentSpec(DQNPriorAgent, "DQN with the LLM prior and the F1 posterior"),
        DQNAgent.name: AgentSpec(DQNAgent, "plain DQN over the admissible actions, prior off (never calls the LLM)"),
        DirectLLMAgent.name: AgentSpec(DirectLLMAgent, "argmax of the LLM prior, no learning"),
        ReActAgent.name: AgentSpec(
            ReActAgent, "ReAct-style prompting: the LLM writes a thought, then an action (needs a generating backend)"
        ),
    }
)


def agent_spec(name: str) -> AgentSpec:
    """The registry entry of ``name``; ConfigError naming the choices for an unknown one."""
    try:
        return AGENTS[name]
    except KeyError:
        raise ConfigError(f"unknown agent {name!r}; choose one of {sorted(AGENTS)}") from None


def make_agent(name: str, config: Any, seed: int = 0, **available: Any) -> Agent:
    """Agent ``name`` built with ``config`` and, of the ``available`` components, those it takes."""
    cls = agent_spec(name).cls
    return cls(config=config, seed=seed, **{k: available.get(k) for k in cls.components})


def load_agent(path: str | Path, **available: Any) -> Agent:
    """The agent saved in ``path``, of whichever registered kind it is, with the components it takes."""
    doc, _ = read_agent(Path(path))
    cls = agent_spec(doc["agent"]).cls
    return cls.load(path, **{k: v for k, v in available.items() if k in cls.components})
