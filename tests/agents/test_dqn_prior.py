"""DQN-Prior and its two baselines on a small corridor, with fake encoder and LLM (fast unit tests).

The real LLM, encoder and TextWorld run the same agent in tests/experiments/test_run_textworld.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from priorcache.agents.dqn_prior import DQNPriorAgent, DQNPriorConfig
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
        self.pos = min(self.length, self.pos + 1) if action == "go forward" else max(0, self.pos - (action == "go back"))
        won = self.pos == self.length
        return self._text(), list(ACTIONS), float(won), won, (not won and self.t >= self.max_steps)


def prompt_builder(objective: str, state: str) -> Prompt:
    return Prompt(prefix=f"Goal: {objective}\n", state=f"{state}\nAction:")


def forward_loving_llm(prompt: Prompt, action: str) -> float:
    return {"go forward": -0.5, "go back": -3.0, "wait here": -2.5}[action]


def run_episodes(agent: DQNPriorAgent, env: Corridor, episodes: int) -> list[tuple[bool, int]]:
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


def make_agent(use_prior=True, learn=True, mode="static", seed=0, backend=None):
    encoder = HashEncoder(dim=32)
    backend = backend or FakeBackend(forward_loving_llm)
    cache = PriorCache(CacheConfig(mode=mode, refresh_rate=0.0), encoder, backend) if use_prior else None
    config = DQNPriorConfig(use_prior=use_prior, learn=learn, learning_starts=8, batch_size=16)
    return DQNPriorAgent(config, encoder, cache, prompt_builder, seed=seed), backend


def test_direct_llm_follows_the_prior_argmax_and_never_learns():
    agent, backend = make_agent(learn=False)
    results = run_episodes(agent, Corridor(), 3)
    assert results == [(True, 4)] * 3
    assert len(agent.buffer) == 0


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
    agent, backend = make_agent(use_prior=False, seed=3)
    results = run_episodes(agent, Corridor(length=3, max_steps=15), 60)
    assert backend.n_calls == 0
    early = np.mean([t for _, t in results[:10]])
    late = np.mean([t for _, t in results[-10:]])
    assert late < early
    env = Corridor(length=3)
    text, cands = env.reset()
    enc = agent.encoder
    for _ in range(2):
        q = agent._q_values(enc.encode([text])[0], enc.encode(cands))
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
    with pytest.raises(ConfigError, match="nothing to act on"):
        DQNPriorConfig(use_prior=False, learn=False)
    with pytest.raises(ConfigError, match="gamma"):
        DQNPriorConfig(gamma=1.5)
    agent, _ = make_agent()
    agent.begin_episode("goal")
    with pytest.raises(ConfigError, match="empty"):
        agent.act("a state", [])
    with pytest.raises(ConfigError, match="needs a prior cache"):
        DQNPriorAgent(DQNPriorConfig(), HashEncoder(), None, prompt_builder)
