"""The one interface every LLM backend implements: score candidate actions for prompts (F3, docs/design.md §2).

Backends that can also write text (for the ReAct baseline) add ``generate``; see
:class:`GenerationResult`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Prompt:
    """A prompt split per F9: an episode-constant ``prefix`` (instructions, goal, few-shot block)
    whose KV cache a backend may keep across calls, and the ``state`` part that changes each step.
    The candidate action is appended right after ``prefix + state``."""

    prefix: str
    state: str

    @property
    def text(self) -> str:
        return self.prefix + self.state


@dataclass
class ScoreResult:
    """Raw per-candidate scores ℓ (F3) for each prompt of a batch, plus the cost of the call.

    ``scores[i][j]`` is the (length-normalised unless asked otherwise) log-probability of
    candidate ``j`` of prompt ``i``. ``prompt_tokens`` counts the prompt tokens actually run
    through the model (a reused prefix KV cache is not counted), ``continuation_tokens`` the
    candidate tokens scored."""

    scores: list[np.ndarray]
    wall_time_s: float
    prompt_tokens: int
    continuation_tokens: int


@dataclass
class GenerationResult:
    """Greedy text generated after a prompt (used by the ReAct baseline), plus the cost of the call."""

    text: str
    wall_time_s: float
    prompt_tokens: int
    new_tokens: int


class LLMBackend(Protocol):
    """Scores candidate continuations; see :class:`ScoreResult`."""

    name: str

    def score(
        self,
        prompts: Sequence[Prompt],
        candidates: Sequence[Sequence[str]],
        length_normalise: bool = True,
    ) -> ScoreResult: ...
