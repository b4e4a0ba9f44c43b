"""Prompt templates per environment family, split per F9 into an episode-constant prefix and a state part.

The candidate action is scored as the continuation right after the state part, with a leading
space, so every template's state part ends in a cue (``Command:``) that the action completes.
The state part depends on the state text alone: the prior cache serves a prior by state text,
and a state part that carried anything else (step count, last feedback, the candidate list)
would make one cached prior stand for different prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Sequence

from priorcache.errors import ConfigError
from priorcache.prior.base import Prompt


@dataclass(frozen=True)
class TextGameTemplate:
    """``prefix`` is formatted with ``{objective}`` and ``{examples}`` once per episode,
    ``state`` with ``{state}`` every step; ``example`` renders one few-shot (state, action) pair."""

    prefix: str
    state: str
    example: str


_PLAIN = TextGameTemplate(
    prefix=(
        "You are playing a text adventure game. Type the command that makes progress toward the goal.\n"
        "Goal: {objective}\n\n{examples}"
    ),
    state="Current location: {state}\nCommand:",
    example="Current location: {state}\nCommand: {action}\n\n",
)

# SmolLM2-Instruct's own chat markup; the assistant turn opens with the cue the action completes.
_CHAT = TextGameTemplate(
    prefix=(
        "<|im_start|>system\nYou are an expert player of text adventure games. You answer with the single "
        "command that makes progress toward the goal.<|im_end|>\n"
        "<|im_start|>user\nGoal: {objective}\n\n{examples}"
    ),
    state="Current location: {state}\nWhat is the best next command?<|im_end|>\n<|im_start|>assistant\nCommand:",
    example="Current location: {state}\nCommand: {action}\n\n",
)

#: The text-game templates by name.
TEXT_GAME_TEMPLATES: Mapping[str, TextGameTemplate] = MappingProxyType({"plain": _PLAIN, "chat": _CHAT})
# Chosen on 103 walkthrough steps of 16 generated TextWorld games (tw-simple, coin_collector,
# treasure_hunter, cooking; 4 seeds each) with the embedded SmolLM2-135M: the walkthrough action
# ranked first among the admissible commands 34 % of the time with "plain" (MRR 0.52) against
# 28 % with "chat" (MRR 0.47); uniform guessing gives 13 %. Three other variants (a game
# transcript with a ">" cue, chat markup without or with SmolLM2's default system turn) did
# no better than "plain".
DEFAULT_TEXT_GAME_TEMPLATE = "plain"


def _one_line(text: str) -> str:
    # Game text arrives with banners, blank lines and runs of spaces; one line keeps prompts short
    # and makes equal states give equal token ids.
    return " ".join(str(text).split())


def text_game_prompt(
    objective: str,
    state_text: str,
    template: str = DEFAULT_TEXT_GAME_TEMPLATE,
    examples: Sequence[tuple[str, str]] = (),
) -> Prompt:
    """The F3/F9 prompt for a text game: ``objective`` (and optional few-shot ``examples``, pairs of
    state text and the action taken there; SPEC F8) go into the prefix, ``state_text`` alone into
    the state part, which ends in the cue the scored action completes."""
    try:
        chosen = TEXT_GAME_TEMPLATES[template]
    except KeyError:
        raise ConfigError(f"unknown text-game prompt template {template!r}; choose one of {sorted(TEXT_GAME_TEMPLATES)}") from None
    block = "".join(chosen.example.format(state=_one_line(s), action=_one_line(a)) for s, a in examples)
    prefix = chosen.prefix.format(objective=_one_line(objective), examples=block)
    return Prompt(prefix=prefix, state=chosen.state.format(state=_one_line(state_text)))
