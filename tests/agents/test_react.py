"""ReAct baseline: prompt shape, action mapping, cost accounting (scripted backend); real generation is
exercised in tests/prior/test_transformers_backend.py and by the bench end-to-end test."""

from __future__ import annotations

import pytest

from priorcache.agents.react import ReActAgent, ReActConfig
from priorcache.errors import ConfigError
from priorcache.prior.base import GenerationResult
from tests.cache._fakes import FakeBackend, HashEncoder


class ScriptedWriter:
    """Answers generate() calls from a list, recording the prompts."""

    name = "scripted"

    def __init__(self, outputs: list[str]) -> None:
        self.outputs = list(outputs)
        self.prompts: list[str] = []

    def generate(self, prompt, max_new_tokens: int = 48, stop=("\n\n",)) -> GenerationResult:
        self.prompts.append(getattr(prompt, "text", prompt))
        return GenerationResult(self.outputs.pop(0), wall_time_s=0.25, prompt_tokens=100, new_tokens=7)


CANDIDATES = ["go north", "open fridge", "take apple from fridge"]


def test_exact_action_is_taken_and_costs_are_one_call():
    writer = ScriptedWriter([" The apple is cold, in the fridge.", " Open Fridge "])
    agent = ReActAgent(writer, HashEncoder())
    agent.begin_episode("eat the apple")
    decision = agent.act("You are in the kitchen. There is a closed fridge.", CANDIDATES)
    assert decision.action == "open fridge"
    assert decision.cost("llm_calls") == 1
    assert decision.cost("llm_time_s") == pytest.approx(0.5)
    assert decision.cost("continuation_tokens") == 14 and decision.cost("partial_calls") == 0
    assert decision.kind == "no-prior" and not decision.hit
    # The thought prompt lists the admissible actions and ends in the cue; the action prompt extends it.
    thought_prompt, action_prompt = writer.prompts
    assert "Task: eat the apple" in thought_prompt and "go north; open fridge" in thought_prompt
    assert thought_prompt.endswith("Thought:")
    assert action_prompt == thought_prompt + " The apple is cold, in the fridge.\nAction:"


def test_free_text_is_mapped_to_the_nearest_admissible_action_and_history_is_kept():
    writer = ScriptedWriter(["", "take the apple out of the fridge", " I need the door.\nAction: walk north please"])
    agent = ReActAgent(writer, HashEncoder(dim=256))
    agent.begin_episode("eat the apple")
    first = agent.act("kitchen", CANDIDATES)  # no action line written: a second, forced-cue call
    assert first.action == "take apple from fridge" and len(writer.prompts) == 2
    second = agent.act("hallway", CANDIDATES)  # thought and action in one generation
    assert second.action == "go north" and len(writer.prompts) == 3
    assert agent.last_thought == "I need the door." and agent.last_written_action == "walk north please"
    assert "Your previous actions: take apple from fridge" in writer.prompts[2]
    agent.begin_episode("again")
    assert "previous actions" not in agent.prompt("hallway", CANDIDATES)


def test_history_is_bounded():
    outputs = [f"\nAction: {a}" for a in ("go north", "open fridge", "take apple from fridge", "go north")]
    agent = ReActAgent(ScriptedWriter(outputs), HashEncoder(), ReActConfig(history_steps=2))
    agent.begin_episode("goal")
    for i in range(4):
        agent.act(f"room {i}", CANDIDATES)
    prompt = agent.prompt("room 5", CANDIDATES)
    assert "Your previous actions: take apple from fridge; go north\n" in prompt


def test_backend_without_generation_is_refused():
    with pytest.raises(ConfigError, match="generate"):
        ReActAgent(FakeBackend(), HashEncoder())


def test_empty_candidates_and_bad_config_are_refused():
    agent = ReActAgent(ScriptedWriter(["", "x"]), HashEncoder())
    with pytest.raises(ConfigError, match="empty"):
        agent.act("state", [])
    with pytest.raises(ConfigError, match="thought_tokens"):
        ReActConfig(thought_tokens=0)
