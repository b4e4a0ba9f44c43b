"""Prompt templates per environment family, split per F9 into an episode-constant prefix and a state part.

Which template a family uses is a fact of the environment registry
(``priorcache.envs.registry.ENVIRONMENTS[...].prompt_template``); the templates themselves live here.

The candidate action is scored as the continuation right after the state part, with a leading
space, so every template's state part ends in a cue (``Command:``) that the action completes.
The state part depends on the state text alone: the prior cache serves a prior by state text,
and a state part that carried anything else (step count, last feedback, the candidate list)
would make one cached prior stand for different prompts.

A prompt marks its state part's label (``Current location:``) and cue (``\nCommand:``), so that a
state too long for the model is cut in the state text only, from its front, with label and cue kept
(:mod:`priorcache.prior.context_limit`); a prompt that fits is unchanged by the marks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from priorcache.envs.registry import environment_info, require_text_env
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

# One template per other environment family, in the style of "plain" (which did best on TextWorld).
_ALFWORLD = TextGameTemplate(
    prefix=(
        "You are a household robot. Type the command that makes progress toward the task.\n{objective}\n\n{examples}"
    ),
    state="Observation: {state}\nCommand:",
    example="Observation: {state}\nCommand: {action}\n\n",
)

_BABYAI = TextGameTemplate(
    prefix=(
        "You control an agent in a grid world. It sees the cells in front of it, counted in steps "
        "forward and to the left or right. Choose the action that makes progress toward the mission.\n"
        "Mission: {objective}\n\n{examples}"
    ),
    state="You see: {state}\nAction:",
    example="You see: {state}\nAction: {action}\n\n",
)

_WEBSHOP = TextGameTemplate(
    prefix=(
        "You are shopping on a website. Choose the action that finds and buys the product that matches "
        "the instruction, with the right options and within the price.\n"
        "Instruction: {objective}\n\n{examples}"
    ),
    state="Page: {state}\nAction:",
    example="Page: {state}\nAction: {action}\n\n",
)

#: The text-game templates by name: "plain" and "chat" for TextWorld, one per other environment family.
TEXT_GAME_TEMPLATES: Mapping[str, TextGameTemplate] = MappingProxyType(
    {"plain": _PLAIN, "chat": _CHAT, "alfworld": _ALFWORLD, "babyai": _BABYAI, "webshop": _WEBSHOP}
)
# Chosen on 103 walkthrough steps of 16 generated TextWorld games (tw-simple, coin_collector,
# treasure_hunter, cooking; 4 seeds each) with the embedded SmolLM2-135M: the walkthrough action
# ranked first among the admissible commands 34 % of the time with "plain" (MRR 0.52) against
# 28 % with "chat" (MRR 0.47); uniform guessing gives 13 %. Three other variants (a game
# transcript with a ">" cue, chat markup without or with SmolLM2's default system turn) did
# no better than "plain". Environments outside the registry get it too.
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
    state text and the action taken there; F8) go into the prefix, ``state_text`` alone into
    the state part, which ends in the cue the scored action completes."""
    try:
        chosen = TEXT_GAME_TEMPLATES[template]
    except KeyError:
        raise ConfigError(
            f"unknown text-game prompt template {template!r}; choose one of {sorted(TEXT_GAME_TEMPLATES)}"
        ) from None
    block = "".join(chosen.example.format(state=_one_line(s), action=_one_line(a)) for s, a in examples)
    prefix = chosen.prefix.format(objective=_one_line(objective), examples=block)
    head, _, cue = chosen.state.partition("{state}")
    # The label without its trailing space: a cut state reads "Current location: ... <its end>".
    label = head.rstrip()
    return Prompt.marked(prefix, label, head[len(label) :] + _one_line(state_text), cue)


def prompt_builder(env: str, examples: Sequence[tuple[str, str]] = ()) -> Callable[[str, str], Prompt]:
    """The ``(objective, state_text) -> Prompt`` function for environment ``env`` (a registry name,
    ``family:variant`` allowed), with optional few-shot ``examples``; the template is the one the
    registry names for the family (the default for a name it does not know)."""
    require_text_env(env, "the text-game prompt templates")
    info = environment_info(env)
    template = info.prompt_template if info is not None else DEFAULT_TEXT_GAME_TEMPLATE
    return functools.partial(_build, template=template, examples=tuple(examples))


def _build(objective: str, state_text: str, template: str, examples: tuple[tuple[str, str], ...]) -> Prompt:
    return text_game_prompt(objective, state_text, template=template, examples=examples)
