"""Agents over text actions behind one interface (:mod:`priorcache.agents.base`), and their registry.

``dqn-prior`` (DQN with the LLM prior and F1), ``dqn`` (prior off), ``direct-llm`` (argmax prior)
and ``react`` (prompting baseline); ``AGENTS`` maps each name to its class and a description.
"""

from priorcache.agents.base import Agent, Decision, EpisodeOutcome, episode_seed
from priorcache.agents.registry import AGENTS, AgentSpec, agent_spec, load_agent, make_agent

__all__ = [
    "AGENTS",
    "Agent",
    "AgentSpec",
    "Decision",
    "EpisodeOutcome",
    "agent_spec",
    "episode_seed",
    "load_agent",
    "make_agent",
]
