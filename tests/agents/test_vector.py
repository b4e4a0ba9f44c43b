"""Batched rollouts (priorcache.agents.vector) against single environments.

What is equal, and why:
- a deterministic agent that does not learn (direct LLM) on an uncached prior: N environments in
  lockstep give, per environment, exactly the transitions (actions, rewards, length, success) of N
  single-environment episodes with the same reset seeds, since nothing the agent does depends on
  the other environments;
- a learning agent (DQN, DQN-Prior) shares its networks, replay buffer and RNG between the
  environments, so its batched run cannot equal N separate runs; it equals, draw for draw, the same
  agent acting and observing slot by slot in order (the base class's loop over ``act`` /
  ``observe``), with one LLM call per step instead of N. With one environment it equals
  ``run_episode``.
The fake encoder and LLM are exact, so all of these are compared for equality.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import pytest

from priorcache.agents.base import Agent
from priorcache.agents.dqn import DQNAgent, DQNConfig
from priorcache.agents.dqn_prior import DirectLLMAgent, DQNPriorAgent
from priorcache.agents.react import ReActAgent
from priorcache.agents.vector import run_episodes_batched
from priorcache.cache.prior_cache import CacheConfig, PriorCache
from priorcache.errors import ConfigError
from priorcache.prior.base import GenerationResult, Prompt
from tests.cache._fakes import FakeBackend, HashEncoder, hashed_score

ACTIONS = ["go forward", "go back", "wait here", "look around"]


class SeededCorridor(gymnasium.Env):
    """A corridor whose length, start and objective come from the reset seed, so episodes differ in
    length and environments drop out of the batch at different steps."""

    def _info(self) -> dict[str, Any]:
        return {
            "state_text": f"corridor cell number {self.pos} of {self.length} " + " ".join(["stone"] * self.pos),
            "admissible_actions": ACTIONS[: 3 + self.pos % 2],
            "objective": f"reach cell {self.length}",
            "won": self.pos == self.length,
        }

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        self.length = int(self.np_random.integers(2, 6))
        self.pos, self.t = int(self.np_random.integers(0, 2)), 0
        return None, self._info()

    def step(self, action: str) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        self.t += 1
        self.pos = (
            min(self.length, self.pos + 1) if action == "go forward" else max(0, self.pos - (action == "go back"))
        )
        won = self.pos == self.length
        return None, float(won), won, not won and self.t >= 10, self._info()


class CountingBackend(FakeBackend):
    """The fake LLM, counting backend calls (one per ``score``, whatever the number of prompts)."""

    def __init__(self) -> None:
        super().__init__(lambda prompt, action: hashed_score(prompt, action) + 5.0 * (action == "go forward"))
        self.score_calls = 0

    def score(self, prompts, candidates, length_normalise=True):
        self.score_calls += 1
        return super().score(prompts, candidates, length_normalise)

    def generate(self, prompt, max_new_tokens: int = 48, stop=("\n\n",)) -> GenerationResult:
        return GenerationResult(" Move.\nAction: go forward", wall_time_s=0.001, prompt_tokens=10, new_tokens=5)


def prompt_builder(objective: str, state: str) -> Prompt:
    return Prompt(prefix=f"Goal: {objective}\n", state=f"{state}\nAction:")


def build(kind: str, mode: str = "none", seed: int = 0) -> tuple[Agent, CountingBackend]:
    encoder, backend = HashEncoder(dim=32), CountingBackend()
    config = DQNConfig(learning_starts=8, batch_size=8)
    if kind == "dqn":
        return DQNAgent(config, encoder, seed=seed), backend
    if kind == "react":
        return ReActAgent(backend, encoder, seed=seed), backend
    cache = PriorCache(CacheConfig(mode=mode, refresh_rate=0.1), encoder, backend)
    cls = DQNPriorAgent if kind == "dqn-prior" else DirectLLMAgent
    return cls(config, encoder, cache, prompt_builder, seed=seed), backend


def batched(agent: Agent, seeds: list[int]) -> tuple[list, dict[int, list[tuple[str, float]]]]:
    steps: dict[int, list[tuple[str, float]]] = {i: [] for i in range(len(seeds))}
    outcomes = run_episodes_batched(
        agent, [SeededCorridor() for _ in seeds], seeds, on_step=lambda i, d, r: steps[i].append((d.action, r))
    )
    return outcomes, steps


def single_episode(agent: Agent, seed: int) -> tuple[Any, list[tuple[str, float]]]:
    steps: list[tuple[str, float]] = []
    outcome = agent.run_episode(SeededCorridor(), seed, on_step=lambda d, r: steps.append((d.action, r)))
    return outcome, steps


def summary(outcome) -> tuple:
    return outcome.steps, outcome.episode_return, outcome.success


SEEDS = [3, 11, 5, 8, 0]


@pytest.mark.parametrize("kind", ["direct-llm", "react"])
def test_deterministic_agents_batched_equal_single_environments(kind):
    agent, backend = build(kind)
    outcomes, steps = batched(agent, SEEDS)
    lengths = {o.steps for o in outcomes}
    assert len(lengths) > 1  # environments did drop out at different steps
    for i, seed in enumerate(SEEDS):
        single, _ = build(kind)
        outcome, mine = single_episode(single, seed)
        assert steps[i] == mine
        assert summary(outcomes[i]) == summary(outcome)
    if kind == "direct-llm":  # one LLM call per lockstep step, not one per environment step
        assert backend.score_calls == max(lengths) < sum(o.steps for o in outcomes)


class LoopingDQNPrior(DQNPriorAgent):
    """DQN-Prior acting slot by slot (the base class's act_batch): the unbatched reference."""

    act_batch = Agent.act_batch


class LoopingDQN(DQNAgent):
    act_batch = Agent.act_batch


@pytest.mark.parametrize("kind, looping", [("dqn", LoopingDQN), ("dqn-prior", LoopingDQNPrior)])
def test_learning_agents_batched_equal_acting_slot_by_slot(kind, looping):
    agent, backend = build(kind, seed=4)
    reference, ref_backend = build(kind, seed=4)
    reference.__class__ = looping
    for round_ in range(3):  # the buffer fills and training starts in the second round
        seeds = [s + 100 * round_ for s in SEEDS]
        outcomes, steps = batched(agent, seeds)
        ref_outcomes, ref_steps = batched(reference, seeds)
        assert steps == ref_steps
        assert [summary(o) for o in outcomes] == [summary(o) for o in ref_outcomes]
    assert agent.step_count == reference.step_count and len(agent.buffer) == len(reference.buffer) > 8
    for p, q in zip(agent.q.parameters(), reference.q.parameters()):
        assert torch_equal(p, q)
    assert agent.rng.bit_generator.state == reference.rng.bit_generator.state
    if kind == "dqn-prior":
        assert backend.n_calls == ref_backend.n_calls  # the same prompts were scored…
        assert backend.score_calls < ref_backend.score_calls  # …in fewer backend calls


def torch_equal(a, b) -> bool:
    return bool((a.detach() == b.detach()).all())


@pytest.mark.parametrize("kind", ["dqn", "dqn-prior", "direct-llm"])
def test_one_environment_batched_equals_run_episode(kind):
    agent, _ = build(kind, mode="static", seed=2)
    single, _ = build(kind, mode="static", seed=2)
    for seed in (1, 2, 3, 4):
        outcomes, steps = batched(agent, [seed])
        outcome, mine = single_episode(single, seed)
        assert steps[0] == mine and summary(outcomes[0]) == summary(outcome)
    if kind != "direct-llm":
        for p, q in zip(agent.q.parameters(), single.q.parameters()):
            assert torch_equal(p, q)


def test_each_slot_keeps_its_own_episode():
    agent, _ = build("dqn-prior", mode="static")
    agent.begin_episodes(["reach cell 2", "reach cell 5"])
    decisions = agent.act_batch(["corridor cell number 0", "corridor cell number 0"], [ACTIONS, ACTIONS])
    prefixes = {lookup.entry_id for lookup in (d.lookup for d in decisions)}
    assert len(prefixes) == 2  # the same state under two objectives: two entries, no hit across goals
    agent.observe_batch([0.0, 1.0], [False, True], [False, False], ["s1", "s2"], [ACTIONS, ACTIONS])
    assert agent._episode_slots[0]["_pending"] is not None  # slot 0 waits for its next state
    assert agent._episode_slots[1]["_pending"] is None  # slot 1's episode ended: stored
    assert len(agent.buffer) == 1
    with pytest.raises(RuntimeError, match="begin_episodes"):
        agent.act_batch(["a", "b", "c"], [ACTIONS] * 3, slots=[0, 1, 2])


def test_bad_arguments():
    agent, _ = build("direct-llm")
    env = SeededCorridor()
    with pytest.raises(ConfigError, match="one reset seed per environment"):
        run_episodes_batched(agent, [env], [1, 2])
    with pytest.raises(ConfigError, match="distinct"):
        run_episodes_batched(agent, [env, env], [1, 2])
    agent.begin_episodes(["a", "b"])
    with pytest.raises(ConfigError, match="distinct slots"):
        agent.act_batch(["x", "y"], [ACTIONS, ACTIONS], slots=[0, 0])
    assert np.isfinite(agent.schedule.alpha)
