"""Prompts longer than the model's context: cut from the front of the state part, or refused (issue 11).

Why: nothing capped a prompt's length. A state text of 100k characters (~25k tokens) ran a
8192-position model for many minutes at ~5 GB, past its context, where the scores mean nothing.

The limit, in prompt tokens (prefix and state part together): the model's context (the text
config's ``max_position_embeddings``, and the tokenizer's ``model_max_length`` when it sets one),
less the room kept for what follows the prompt; optionally capped lower by ``max_prompt_tokens``
(a prompt of the full 8192 positions still takes a minute or more on a CPU). The room is
:data:`CONTINUATION_ROOM` tokens when scoring, whatever the candidates: a state's prompt must not
depend on its candidate set, since F7 merges a partial call's scores into the entry of the full
call, scored under the same prompt. An action longer than the room is refused only when it would
really run past the context (:meth:`PromptLimiter.check_actions`). When generating, the room is
``max_new_tokens``.

What a cut keeps (policy ``"truncate"``, the default): the F9 prefix whole (instructions,
objective, few-shot block: episode-constant, the cache partitions by it, and its KV cache is
reused), and of the state part its label and cue whole (``Prompt.label_chars`` / ``cue_chars``)
and the *last* tokens of the text between them, since the most recent text of a state is at its
end; :data:`TRUNCATION_MARK` marks the cut: ``"Current location: ... <end of the text>\\nCommand:"``.
A prefix that alone leaves no room is refused under either policy. ``"refuse"`` raises
BackendError for any prompt over the limit.

Every path that sends a prompt to the model (packed and padded scoring, F9 prefix reuse, the naive
reference, generation, LoRA training) takes its state ids from :meth:`PromptLimiter.state_ids`, so
one prompt gives the same token ids in all of them.

Cost: a prompt that fits is tokenised once, as before, and its length compared with the budget.
A state part too long is tokenised once more in pieces (label, text, cue), and a text longer than
the budget times the longest token (in characters) is first cut to that many characters from its
end, so a state of megabytes is never tokenised whole; that cut reaches back far enough to give
every token the budget keeps (each token spans at most that many characters).

Truncations are counted (:meth:`PromptLimiter.stats`) and warned about once, with
:class:`LongPromptWarning`, until the count is reset (a run reads and resets it for its summary).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any

from priorcache.errors import BackendError, ConfigError
from priorcache.prior.base import Prompt

#: What a backend does with a prompt longer than the model takes.
LONG_PROMPT_POLICIES = ("truncate", "refuse")
#: Tokens kept free after the prompt for a scored action (any action up to 65 tokens fits).
CONTINUATION_ROOM = 64
#: Put where the front of a state's text was cut.
TRUNCATION_MARK = " ..."
# transformers stands in ~1e30 for a tokenizer without a length limit; no real model comes near this.
_NO_TOKENIZER_LIMIT = 10**8


class LongPromptWarning(UserWarning):
    """A prompt was too long for the model and its state part was cut (once per count, see the module doc)."""


def model_context_tokens(model: Any, tokenizer: Any) -> int | None:
    """The positions the model takes: the least of its config's ``max_position_embeddings`` and its
    tokenizer's ``model_max_length`` (when set), None when neither says."""
    limits = []
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for value in (getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)):
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < _NO_TOKENIZER_LIMIT:
            limits.append(value)
    return min(limits) if limits else None


def longest_token_chars(tokenizer: Any) -> int:
    """An upper bound on the characters one token spans: the longest string in the vocabulary (a
    byte-level token's string has one character per byte, so never fewer than its text)."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # a tokenizer without a vocabulary listing: no pre-cut is safe to bound
        return 0
    return max((len(token) for token in vocab), default=0)


def check_policy(long_prompts: str, max_prompt_tokens: int | None) -> None:
    """ConfigError unless ``long_prompts`` is a policy and ``max_prompt_tokens`` None or an int ≥ 1."""
    if long_prompts not in LONG_PROMPT_POLICIES:
        raise ConfigError(f"long_prompts must be one of {', '.join(LONG_PROMPT_POLICIES)}, got {long_prompts!r}")
    if max_prompt_tokens is not None and (
        not isinstance(max_prompt_tokens, int) or isinstance(max_prompt_tokens, bool) or max_prompt_tokens < 1
    ):
        raise ConfigError(f"max_prompt_tokens must be None or an integer ≥ 1, got {max_prompt_tokens!r}")


class PromptLimiter:
    """Fits prompts to a model's context for one backend: see the module doc.

    ``encode``: the backend's tokenisation of a prompt part (no special tokens); ``token_chars``: an
    upper bound on the characters a token spans (0: never pre-cut); ``context_tokens``: the model's
    positions (None: unknown, then only ``max_prompt_tokens`` limits); ``source``: the backend, for
    messages."""

    def __init__(
        self,
        encode: Callable[[str], list[int]],
        *,
        token_chars: int,
        context_tokens: int | None,
        policy: str = "truncate",
        max_prompt_tokens: int | None = None,
        source: str = "the LLM backend",
    ) -> None:
        check_policy(policy, max_prompt_tokens)
        self._encode = encode
        self.token_chars = token_chars
        self.context_tokens = context_tokens
        self.policy = policy
        self.max_prompt_tokens = max_prompt_tokens
        self.source = source
        self._mark_ids = encode(TRUNCATION_MARK)
        self._lock = threading.Lock()  # the cache may score from several threads
        self._truncated = 0
        self._warned = False

    def budget(self, room: int = CONTINUATION_ROOM) -> int | None:
        """The most prompt tokens (prefix and state) allowed with ``room`` tokens to follow; None: no limit known."""
        limits = []
        if self.context_tokens is not None:
            limits.append(self.context_tokens - room)
        if self.max_prompt_tokens is not None:
            limits.append(self.max_prompt_tokens)
        return min(limits) if limits else None

    def check_prefix(self, prefix_tokens: int, room: int = CONTINUATION_ROOM) -> None:
        """BackendError when a prefix alone fills the budget: it is never cut, so nothing could follow it.
        Checked before the prefix is run, so an over-long prefix costs no forward."""
        budget = self.budget(room)
        if budget is not None and prefix_tokens >= budget:
            raise BackendError(
                f"{self.source}: the prompt prefix (instructions, objective, few-shot examples) has "
                f"{prefix_tokens} tokens, which leaves no room for the state part under the limit of "
                f"{self._describe(budget, room)}; the prefix is never truncated: shorten the objective "
                "or give fewer or shorter in-context examples"
            )

    def state_ids(self, prompt: Prompt, prefix_tokens: int, room: int = CONTINUATION_ROOM) -> tuple[list[int], bool]:
        """The token ids of ``prompt.state`` after a prefix of ``prefix_tokens`` tokens, and whether
        they were cut to fit; BackendError when the policy refuses or nothing of the state would fit."""
        state = prompt.state
        budget = self.budget(room)
        if budget is None:
            return self._encode(state), False
        left = budget - prefix_tokens
        ids: list[int] | None = None
        # More characters than ``left`` tokens can span cannot fit: no need to tokenise them whole.
        if not self.token_chars or len(state) <= left * self.token_chars:
            ids = self._encode(state)
            if len(ids) <= left:
                return ids, False
        if self.policy == "refuse":
            size = f"{len(ids)} tokens" if ids is not None else f"{len(state)} characters"
            raise BackendError(
                f"{self.source}: a prompt of {prefix_tokens} prefix tokens and a state part of {size} exceeds "
                f"the limit of {self._describe(budget, room)}; long_prompts='refuse' refuses it "
                "(long_prompts='truncate' cuts the front of the state part instead)"
            )
        return self._truncate(prompt, left, budget, room, prefix_tokens), True

    def check_actions(self, context_tokens: int, action_ids: list[list[int]], actions: list[str]) -> None:
        """BackendError when an action would run past the model's positions after a context of
        ``context_tokens`` tokens (only an action longer than the room kept for it can)."""
        if self.context_tokens is None:
            return
        longest = max(range(len(action_ids)), key=lambda j: len(action_ids[j]))
        # The last token of an action is only a target, never an input position.
        if context_tokens + len(action_ids[longest]) - 1 > self.context_tokens:
            raise BackendError(
                f"{self.source}: the action {actions[longest]!r} has {len(action_ids[longest])} tokens; after a "
                f"prompt of {context_tokens} tokens it would run past the model's context of "
                f"{self.context_tokens} positions (prompts keep room for actions of up to {CONTINUATION_ROOM + 1} "
                "tokens)"
            )

    def stats(self, reset: bool = False) -> dict[str, Any]:
        """``policy``, the model's ``context_tokens``, the scoring ``max_prompt_tokens`` and the
        ``truncated_prompts`` since the last reset (each prompt sent cut counts, so a state scored
        twice counts twice). ``reset``: start a new count and warn again at the next truncation."""
        with self._lock:
            out = {
                "policy": self.policy,
                "context_tokens": self.context_tokens,
                "max_prompt_tokens": self.budget(),
                "truncated_prompts": self._truncated,
            }
            if reset:
                self._truncated, self._warned = 0, False
        return out

    # ------------------------------------------------------------------ internals

    def _truncate(self, prompt: Prompt, left: int, budget: int, room: int, prefix_tokens: int) -> list[int]:
        state = prompt.state
        end = len(state) - prompt.cue_chars
        label_ids = self._encode(state[: prompt.label_chars])
        cue_ids = self._encode(state[end:])
        keep = left - len(label_ids) - len(self._mark_ids) - len(cue_ids)
        if keep < 1:
            raise BackendError(
                f"{self.source}: after the prompt prefix of {prefix_tokens} tokens, the state part's label and cue "
                f"({len(label_ids) + len(cue_ids)} tokens) leave nothing of the state under the limit of "
                f"{self._describe(budget, room)}; shorten the objective or give fewer or shorter in-context examples"
            )
        text = state[prompt.label_chars : end]
        if self.token_chars:
            # The last ``keep`` tokens span at most keep·token_chars characters: the rest is never read.
            text = text[-keep * self.token_chars :]
        ids = label_ids + self._mark_ids + self._encode(text)[-keep:] + cue_ids
        with self._lock:
            self._truncated += 1
            first = not self._warned
            self._warned = True
        if first:
            warnings.warn(
                f"{self.source}: a state part of {len(state)} characters does not fit the limit of "
                f"{self._describe(budget, room)} after a {prefix_tokens}-token prefix; it was cut from the front "
                f"to its last {len(ids)} tokens (label and cue kept). Later cuts are counted, not warned about "
                "(long_prompt_stats()['truncated_prompts']); long_prompts='refuse' makes them errors",
                LongPromptWarning,
                stacklevel=4,
            )
        return ids

    def _describe(self, budget: int, room: int) -> str:
        parts = []
        if self.context_tokens is not None:
            parts.append(f"the model's context of {self.context_tokens} less {room} for what follows")
        if self.max_prompt_tokens is not None and (self.context_tokens is None or budget == self.max_prompt_tokens):
            parts.append(f"max_prompt_tokens={self.max_prompt_tokens}")
        return f"{budget} prompt tokens ({'; '.join(parts)})"
