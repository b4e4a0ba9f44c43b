"""The one interface every LLM backend implements: score candidate actions for prompts (F3, docs/design.md §2).

Backends that can also write text (for the ReAct baseline) add ``generate``; see
:class:`GenerationResult`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from priorcache.errors import ConfigError
from priorcache.prior.action_prior import check_candidates


@dataclass(frozen=True)
class Prompt:
    """A prompt split per F9: an episode-constant ``prefix`` (instructions, goal, few-shot block)
    whose KV cache a backend may keep across calls, and the ``state`` part that changes each step.
    The candidate action is appended right after ``prefix + state``.

    ``label_chars`` / ``cue_chars``: how many leading / trailing characters of ``state`` are the
    template's label (``"Current location:"``) and the cue that asks for the action
    (``"\nCommand:"``). They change nothing in a prompt that fits the model; a state part too long
    for the model's context is cut from the front of the text between them, and they are kept
    whole (:mod:`priorcache.prior.context_limit`). 0 and 0: all of ``state`` may be cut from the front."""

    prefix: str
    state: str
    label_chars: int = 0
    cue_chars: int = 0

    def __post_init__(self) -> None:
        for name in ("label_chars", "cue_chars"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"Prompt.{name} must be an integer ≥ 0, got {value!r}")
        if self.label_chars + self.cue_chars > len(self.state):
            raise ConfigError(
                f"Prompt label_chars ({self.label_chars}) + cue_chars ({self.cue_chars}) exceed the "
                f"{len(self.state)} characters of the state part {self.state[:60]!r}"
            )

    @classmethod
    def marked(cls, prefix: str, label: str, text: str, cue: str) -> Prompt:
        """The prompt whose state part is ``label + text + cue``, with ``label`` and ``cue`` marked
        as what a truncation must keep."""
        return cls(prefix, label + text + cue, label_chars=len(label), cue_chars=len(cue))

    @property
    def text(self) -> str:
        return self.prefix + self.state


def check_batch(prompts: Sequence[Prompt], candidates: Sequence[Sequence[str]]) -> list[tuple[Prompt, list[str]]]:
    """(prompt, candidate list) pairs of a ``score`` call, checked: one candidate list per prompt, each
    a valid one (``check_candidates``), and every prompt a :class:`Prompt`."""
    prompts, candidates = list(prompts), list(candidates)
    if len(prompts) != len(candidates):
        raise ConfigError(f"{len(prompts)} prompts but {len(candidates)} candidate lists")
    for prompt in prompts:
        if not isinstance(prompt, Prompt):
            raise ConfigError(f"expected a Prompt(prefix, state), got {type(prompt).__name__}")
    return [(p, check_candidates(c)) for p, c in zip(prompts, candidates)]


@dataclass
class ScoreResult:
    """Raw per-candidate scores ℓ (F3) for each prompt of a batch, plus the cost of the call.

    ``scores[i][j]`` is the (length-normalised unless asked otherwise) log-probability of
    candidate ``j`` of prompt ``i``. ``prompt_tokens`` counts the prompt tokens actually run
    through the model (a reused prefix KV cache is not counted), ``continuation_tokens`` the
    candidate tokens scored. ``truncated_prompts``: how many of the call's prompts were too long for
    the model and had their state part cut (:mod:`priorcache.prior.context_limit`)."""

    scores: list[np.ndarray]
    wall_time_s: float
    prompt_tokens: int
    continuation_tokens: int
    truncated_prompts: int = 0


@dataclass
class GenerationResult:
    """Greedy text generated after a prompt (used by the ReAct baseline), plus the cost of the call;
    ``truncated``: the prompt was too long for the model and its state part was cut."""

    text: str
    wall_time_s: float
    prompt_tokens: int
    new_tokens: int
    truncated: bool = False


class LLMBackend(Protocol):
    """Scores candidate continuations; see :class:`ScoreResult`."""

    name: str

    def score(
        self,
        prompts: Sequence[Prompt],
        candidates: Sequence[Sequence[str]],
        length_normalise: bool = True,
    ) -> ScoreResult: ...
