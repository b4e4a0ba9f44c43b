"""DQN-Prior, plain DQN and direct LLM on a small corridor, with fake encoder and LLM (fast unit tests).

The real LLM, encoder and TextWorld run the same agent in tests/experiments/test_run_textworld.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from priorcache.agents.dqn import DQNAgent, DQNConfig
from priorcache.agents.dqn_prior import DirectLLMAgent, DQNPriorAgent
from priorcache.cache.prior_cache import CacheConfig, PriorCache
from priorcache.errors import ConfigError
from priorcache.prior.base import Prompt
from tests.cache._fakes import FakeBackend, HashEncoder

ACTIONS = ["go forward", "go back", "wait here"]


class Corridor:
    """Cells 0..length; reaching the last cell pays 1 and ends the episode."""

    def __init__(self, length: int = 4, max_steps: int = 20) -> None:
        self.length, self.max_steps = length, max_steps

    def _text(self) -> str:
        return f"corridor cell number {self.pos} " + " ".join(["stone"] * self.pos)

    def reset(self) -> tuple[str, list[str]]:
        self.pos, self.t = 0, 0
        return self._text(), list(ACTIONS)

    def step(self, action: str) -> tuple[str, list[str], float, bool, bool]:
        self.t += 1
        forward, back = action == "go forward", action == "go back"
        self.pos = min(self.length, self.pos + 1) if forward else max(0, self.pos - back)
        won = self.pos == self.length
        return self._text(), list(ACTIONS), float(won), won, (not won and self.t >= self.max_steps)


def prompt_builder(objective: str, state: str) -> Prompt:
    return Prompt(prefix=f"Goal: {objective}\n", state=f"{state}\nAction:")


def forward_loving_llm(prompt: Prompt, action: str) -> float:
    return {"go forward": -0.5, "go back": -3.0, "wait here": -2.5}[action]


def run_episodes(agent, env: Corridor, episodes: int) -> list[tuple[bool, int]]:
    results = []
    for _ in range(episodes):
        text, cands = env.reset()
        agent.begin_episode("reach the end of the corridor")
        while True:
            decision = agent.act(text, cands)
            text, cands, reward, term, trunc = env.step(decision.action)
            agent.observe(reward, term, trunc, text, cands)
            if term or trunc:
                results.append((term, env.t))
                break
    return results


def make_agent(kind="dqn-prior", mode="static", seed=0, backend=None):
    encoder = HashEncoder(dim=32)
    backend = backend or FakeBackend(forward_loving_llm)
    config = DQNConfig(learning_starts=8, batch_size=16)
    if kind == "dqn":
        return DQNAgent(config, encoder, seed=seed), backend
    cache = PriorCache(CacheConfig(mode=mode, refresh_rate=0.0), encoder, backend)
    cls = DQNPriorAgent if kind == "dqn-prior" else DirectLLMAgent
    return cls(config, encoder, cache, prompt_builder, seed=seed), backend


def test_direct_llm_follows_the_prior_argmax_and_never_learns():
    agent, backend = make_agent("direct-llm")
    results = run_episodes(agent, Corridor(), 3)
    assert results == [(True, 4)] * 3
    assert agent.train_time_s == 0.0 and not agent.learns and not hasattr(agent, "q")
    assert backend.n_calls == 4  # one per state it decided in (cells 0-3), then cache hits


def test_cache_serves_revisited_states_without_the_llm():
    cached, cached_backend = make_agent(mode="static")
    uncached, uncached_backend = make_agent(mode="none")
    run_episodes(cached, Corridor(), 5)
    run_episodes(uncached, Corridor(), 5)
    # Same seed, same deterministic prior: both agents saw the same states, but the cached one
    # asked the LLM once per distinct state.
    distinct_states = {p.state for p, _ in cached_backend.calls}
    assert cached_backend.n_calls == len(distinct_states)
    assert uncached_backend.n_calls > 2 * cached_backend.n_calls


def test_plain_dqn_never_calls_the_llm_and_learns_to_go_forward():
    agent, backend = make_agent("dqn", seed=3)
    results = run_episodes(agent, Corridor(length=3, max_steps=15), 60)
    assert backend.n_calls == 0
    early = np.mean([t for _, t in results[:10]])
    late = np.mean([t for _, t in results[-10:]])
    assert late < early
    env = Corridor(length=3)
    text, cands = env.reset()
    for _ in range(2):
        q = agent.q_values(text, cands)
        assert cands[int(np.argmax(q))] == "go forward"
        text, cands, *_ = env.step("go forward")


def test_decision_records_cost_and_source():
    agent, _ = make_agent(mode="static")
    text, cands = Corridor().reset()
    agent.begin_episode("goal")
    first = agent.act(text, cands)
    agent.observe(0.0, False, False, text, cands)
    second = agent.act(text, cands)
    assert (first.kind, first.cost("llm_calls"), first.hit) == ("miss", 1, False)
    assert (second.kind, second.cost("llm_calls"), second.hit) == ("exact", 0, True)
    assert second.decision_time_s > 0 and first.action in ACTIONS


def test_bad_configs_and_inputs():
    with pytest.raises(ConfigError, match="gamma"):
        DQNConfig(gamma=1.5)
    with pytest.raises(ConfigError, match="alpha_min"):
        DQNConfig(alpha_min=2.0)
    agent, _ = make_agent()
    agent.begin_episode("goal")
    with pytest.raises(ConfigError, match="empty"):
        agent.act("a state", [])
    with pytest.raises(ConfigError, match="needs a prior cache"):
        DQNPriorAgent(DQNConfig(), HashEncoder(), None, prompt_builder)
    with pytest.raises(ConfigError, match="needs a prior cache"):
        DirectLLMAgent(DQNConfig(), HashEncoder(), None, prompt_builder)
    with pytest.raises(RuntimeError, match="before act"):
        make_agent("direct-llm")[0].observe(0.0, False, False, "s", ["a"])
