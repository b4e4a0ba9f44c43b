"""ReAct-style baseline (docs/design.md §4): the LLM writes a short thought, then an action.

Each step the prompt holds the objective, the admissible actions, the episode's last few actions
and the current state, and ends in ``Thought:``. The backend continues it greedily; a one-shot
example shows the ``Thought: … / Action: …`` format. When the model writes no ``Action:`` line, a
second generation continues the thought with the ``Action:`` cue forced, so every step parses. The
written action is mapped to the admissible action with the highest cosine similarity under the
text encoder (an exact match, ignoring case and spacing, wins outright).

A decision's generations are counted as one LLM call; their wall time and tokens are summed.
Earlier states are not repeated in the prompt (only the actions are): with TextWorld's long room
descriptions three earlier states made the prompt ~870 tokens and a step ~12 s here. No learning, no
prior cache: ReAct is the prompting baseline the paper compares against. Needs a backend with
``generate`` (the embedded and transformers backends have it). It implements the
:class:`~priorcache.agents.base.Agent` interface like every other agent.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from priorcache.agents.base import Agent, Decision
from priorcache.errors import ConfigError
from priorcache.prior.action_prior import check_candidates
from priorcache.prior.base import Prompt

if TYPE_CHECKING:
    from priorcache.cache.encoder import Encoder


@dataclass
class ReActConfig:
    history_steps: int = 5  # earlier actions shown in the prompt
    thought_tokens: int = 40  # thought and action line together
    action_tokens: int = 16  # the forced action line, when the model wrote none
    max_listed_actions: int = 40  # the admissible list in the prompt is cut here (long ALFWorld lists)

    def __post_init__(self) -> None:
        for name in ("thought_tokens", "action_tokens", "max_listed_actions"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ReAct {name} must be ≥ 1, got {getattr(self, name)}")
        if self.history_steps < 0:
            raise ConfigError(f"ReAct history_steps must be ≥ 0, got {self.history_steps}")


_HEADER = (
    "Solve the task by thinking step by step, then answering with exactly one of the admissible actions.\n"
    "Task: {objective}\n\n"
    "Example:\nState: You are in a hallway. A door leads north.\n"
    "Thought: The kitchen is probably north, so I should go there first.\nAction: go north\n\n"
)


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


class ReActAgent(Agent):
    """The ReAct baseline; ``seed`` is taken for a uniform constructor (greedy generation draws nothing)."""

    name = "react"
    config_class = ReActConfig
    components = ("backend", "encoder")
    deterministic = True
    episode_fields = ("_objective", "_history")  # per environment slot in batched rollouts

    def __init__(self, backend: Any, encoder: Encoder, config: ReActConfig | None = None, seed: int = 0) -> None:
        if not callable(getattr(backend, "generate", None)):
            raise ConfigError(
                "the ReAct baseline needs a backend that can generate text; "
                f"{getattr(backend, 'name', backend)!r} cannot"
            )
        self.backend = backend
        self.encoder = encoder
        self.config = config or ReActConfig()
        self.seed = seed
        self.train_time_s = 0.0  # ReAct does not learn
        self._objective = ""
        self._history: deque[str] = deque(maxlen=self.config.history_steps)
        self.last_thought = ""
        self.last_written_action = ""

    def begin_episode(self, objective: str) -> None:
        self._objective = objective
        self._history.clear()

    def prompt_parts(self, state_text: str, candidates: list[str]) -> Prompt:
        """The prompt with its state part marked, so that a state too long for the model is cut
        there (priorcache.prior.context_limit), never the instructions or the actions."""
        listed = candidates[: self.config.max_listed_actions]
        lines = [_HEADER.format(objective=" ".join(self._objective.split()))]
        lines.append("Admissible actions: " + "; ".join(listed) + "\n\n")
        if self._history:
            lines.append("Your previous actions: " + "; ".join(self._history) + "\n\n")
        # Split before the blank line: tokenised apart, the two parts give the whole text's token ids.
        return Prompt.marked("".join(lines)[:-2], "\n\nState:", " " + " ".join(state_text.split()), "\nThought:")

    def prompt(self, state_text: str, candidates: list[str]) -> str:
        return self.prompt_parts(state_text, candidates).text

    def _think(self, state_text: str, candidates: list[str]) -> tuple[str, str, str, dict[str, float]]:
        """(action, thought, written action, LLM cost) for the state, changing nothing."""
        prompt = self.prompt_parts(state_text, candidates)
        calls = [
            self.backend.generate(
                prompt, max_new_tokens=self.config.thought_tokens, stop=("\n\n", "\nState:", "\nThought:")
            )
        ]
        thought, marker, written = calls[0].text.partition("\nAction:")
        if not marker:
            thought = thought.split("\n", 1)[0]
            calls.append(
                self.backend.generate(
                    Prompt(
                        prompt.prefix,
                        prompt.state + thought + "\nAction:",
                        label_chars=prompt.label_chars,
                        cue_chars=prompt.cue_chars + len(thought + "\nAction:"),
                    ),
                    max_new_tokens=self.config.action_tokens,
                    stop=("\n",),
                )
            )
            written = calls[1].text
        written = written.split("\n", 1)[0].strip()
        cost = {
            "llm_calls": 1,
            "llm_time_s": sum(c.wall_time_s for c in calls),
            "prompt_tokens": sum(c.prompt_tokens for c in calls),
            "continuation_tokens": sum(c.new_tokens for c in calls),
        }
        return self.nearest_action(written, candidates), thought.strip(), written, cost

    def act(self, state_text: str, candidates: list[str]) -> Decision:
        start = time.perf_counter()
        candidates = check_candidates(candidates)
        action, self.last_thought, self.last_written_action, cost = self._think(state_text, candidates)
        self._history.append(action)
        return Decision(action, time.perf_counter() - start, alpha=0.0, llm_cost=cost)

    def predict(self, state_text: str, candidates: list[str], deterministic: bool = True) -> str:
        """The action ReAct would take now, without adding it to the episode's history (generation is
        greedy, so ``deterministic`` changes nothing)."""
        return self._think(state_text, check_candidates(candidates))[0]

    def nearest_action(self, written: str, candidates: list[str]) -> str:
        """The admissible action the written text means: exact match first, else nearest by cosine."""
        wanted = _normalise(written)
        for candidate in candidates:
            if _normalise(candidate) == wanted:
                return candidate
        if not wanted:
            return candidates[0]
        vectors = self.encoder.encode([written, *candidates])
        return candidates[int(np.argmax(vectors[1:] @ vectors[0]))]

    def observe(
        self, reward: float, terminated: bool, truncated: bool, next_state_text: str, next_candidates: list[str]
    ) -> None:
        """Nothing to learn; the history is kept by :meth:`act`."""
