"""A local causal LM that scores candidate actions (F3, docs/design.md §2) and keeps prompt-prefix KV caches (F9).

For each prompt the context is run once and its KV cache is reused by all candidates, which are
scored together. Two layouts give the same scores:
- packed (default where the model allows it, :mod:`priorcache.prior.packed_scoring`): the state
  tokens and a trie of the candidates' token prefixes go in one row over the prefix's cache under
  a tree attention mask, the prompts of a call in ONE forward;
- padded (here): the state part is run, then the candidates as one batch over its KV cache repeated
  along the batch dimension, right-padded under an attention mask (used for sliding-window or
  recurrent models and for attention kernels that take no arbitrary mask).
ℓ_i is the mean (or, on request, the sum) of the log-probabilities of candidate i's tokens, each
action tokenised with a leading space.

F9: the KV cache of ``Prompt.prefix`` (the episode-constant part) is kept in a small LRU keyed by
the prefix string, so a call runs only the state part and the candidates. The prefix and the state
are tokenised separately and their ids concatenated, so every path (cached prefix, fresh prefix,
naive full rows) sees exactly the same token ids and gives the same scores up to float rounding.

A prompt longer than the model's context has the front of its state part cut (or is refused, with
``long_prompts="refuse"``) in every path, scoring and generation alike; the backend counts the cuts
(:meth:`TransformersBackend.long_prompt_stats`). See :mod:`priorcache.prior.context_limit`.

:meth:`TransformersBackend.score_naive` runs every full prompt+action row with no KV reuse at all;
it is the reference the fast path is tested and benchmarked against. Loading the model folder and
what differs between transformers releases live in :mod:`priorcache.prior.causal_lm`.
"""

from __future__ import annotations

import copy
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from priorcache.errors import BackendError, ConfigError
from priorcache.prior.action_prior import check_scores
from priorcache.prior.base import GenerationResult, Prompt, ScoreResult, check_batch
from priorcache.prior.causal_lm import (
    PrefixState,
    cache_argument,
    check_device,
    leading_special_ids,
    load_model,
    pick_pad_id,
    resolve_dtype,
    returned_cache,
)
from priorcache.prior.context_limit import (
    CONTINUATION_ROOM,
    PromptLimiter,
    check_policy,
    longest_token_chars,
    model_context_tokens,
)
from priorcache.prior.packed_scoring import PackedPrompt, attention_cost_per_key, has_plain_attention_layers, run_packed


class TransformersBackend:
    """Any causal LM in a local folder, scoring candidate actions per F3 with F9 prefix reuse.

    ``dtype``: None picks float32 on CPU and the checkpoint's dtype elsewhere; a torch dtype, its
    name or ``"auto"`` is passed to transformers. ``prefix_cache_size``: how many prompt prefixes'
    KV caches to keep (least recently used dropped first); 0 disables F9. ``pack_candidates``:
    run the candidates as one packed row with a tree attention mask (shared token prefixes run
    once, no padding; used where the model's attention allows it) rather than as a right-padded
    batch over the repeated KV cache; both give the same scores. ``attn_implementation`` is passed
    to transformers (e.g. ``"eager"``, ``"sdpa"``, ``"flash_attention_2"``; None: its default).
    ``adapter``: a LoRA adapter folder made by :func:`priorcache.prior.adaptation.lora_finetune` for
    this model; it is merged into the weights (same scoring speed, same F9 reuse) and its key is
    appended to ``name`` (``"<name>+lora:<key>"``), so scores of the adapted model never pass for the
    base model's. ``long_prompts``: ``"truncate"`` (default) cuts the front of the state part of a
    prompt too long for the model's context, ``"refuse"`` raises BackendError;
    ``max_prompt_tokens`` caps prompts lower than the context (None: the context less the room kept
    for the action); see :mod:`priorcache.prior.context_limit`.
    """

    name: str = "transformers"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        device: str = "cpu",
        dtype: Any = None,
        prefix_cache_size: int = 8,
        pack_candidates: bool = True,
        attn_implementation: str | None = None,
        adapter: str | os.PathLike[str] | None = None,
        long_prompts: str = "truncate",
        max_prompt_tokens: int | None = None,
    ) -> None:
        if not isinstance(prefix_cache_size, int) or prefix_cache_size < 0:
            raise ConfigError(f"prefix_cache_size must be an integer ≥ 0, got {prefix_cache_size!r}")
        check_policy(long_prompts, max_prompt_tokens)  # before the model is loaded: a bad setting costs nothing
        self.model_path = Path(model_path).expanduser()
        self.device = check_device(device)
        self.prefix_cache_size = prefix_cache_size
        self.pack_candidates = bool(pack_candidates)
        self._tokenizer, self._model = load_model(
            self.model_path, self.device, resolve_dtype(dtype, device), attn_implementation
        )
        self.adapter_key: str | None = None
        if adapter is not None:
            from priorcache.prior.adaptation import apply_adapter

            self._model, self.adapter_key = apply_adapter(self._model, self.model_path, adapter)
            self.name = f"{type(self).name}+lora:{self.adapter_key}"
        self._cache_arg = cache_argument(self._model)
        self._lead_ids = leading_special_ids(self._tokenizer)
        self._pad_id = pick_pad_id(self._tokenizer)
        self._plain_attention_layers = self.pack_candidates and has_plain_attention_layers(self._model)
        self._key_cost = attention_cost_per_key(self._model)  # the row planner's price of attention
        self._prefixes: OrderedDict[str, PrefixState] = OrderedDict()
        self._limiter = PromptLimiter(
            self._encode,
            token_chars=longest_token_chars(self._tokenizer),
            context_tokens=model_context_tokens(self._model, self._tokenizer),
            policy=long_prompts,
            max_prompt_tokens=max_prompt_tokens,
            source=self._source(),
        )

    # ------------------------------------------------------------------ public API

    def score(
        self,
        prompts: Sequence[Prompt],
        candidates: Sequence[Sequence[str]],
        length_normalise: bool = True,
        *,
        reuse_prefix: bool = True,
    ) -> ScoreResult:
        """F3 scores of ``candidates[i]`` after ``prompts[i]``. Per prompt, the prefix only when it
        is not cached; then, in the packed layout, ONE forward for the state parts and candidates of
        all prompts of the call (left-padded rows over their prefixes' caches, see
        :func:`~priorcache.prior.packed_scoring.run_packed`), or, in the padded layout, per prompt one
        forward for the state and one for the candidates. ``reuse_prefix=False`` neither reads nor
        fills the F9 prefix cache (the prefix is run again), for measuring what F9 saves."""
        pairs = check_batch(prompts, candidates)
        start = time.perf_counter()
        truncated = [0]  # how many of this call's prompts were cut to fit the model
        with torch.inference_mode():
            if self._can_pack():
                scores, prompt_tokens, continuation_tokens = self._score_packed(
                    pairs, length_normalise, reuse_prefix, truncated
                )
            else:
                scores, prompt_tokens, continuation_tokens = [], 0, 0
                for prompt, cands in pairs:
                    row, ran, cont = self._score_padded(prompt, cands, length_normalise, reuse_prefix, truncated)
                    scores.append(row)
                    prompt_tokens += ran
                    continuation_tokens += cont
        return ScoreResult(scores, time.perf_counter() - start, prompt_tokens, continuation_tokens, truncated[0])

    def score_naive(
        self,
        prompts: Sequence[Prompt],
        candidates: Sequence[Sequence[str]],
        length_normalise: bool = True,
    ) -> ScoreResult:
        """Reference path without any KV reuse: each full prompt+action row is run from scratch
        (the rows of a prompt share one padded forward). ``prompt_tokens`` counts the prompt once
        per row, since that is what is run."""
        pairs = check_batch(prompts, candidates)
        start = time.perf_counter()
        scores: list[np.ndarray] = []
        prompt_tokens = continuation_tokens = truncated = 0
        with torch.inference_mode():
            for prompt, cands in pairs:
                context, cut = self._context_ids(prompt)
                truncated += cut
                if not context:
                    raise BackendError(self._empty_context_message())
                action_ids = [self._action_ids(a) for a in cands]
                self._limiter.check_actions(len(context), action_ids, cands)
                longest = max(len(ids) for ids in action_ids)
                # The last token of each action is only a target, never an input.
                rows = [context + ids[:-1] + [self._pad_id] * (longest - len(ids)) for ids in action_ids]
                mask = [[1] * (len(context) + len(ids) - 1) + [0] * (longest - len(ids)) for ids in action_ids]
                out = self._model(
                    input_ids=self._tensor(rows),
                    attention_mask=self._tensor(mask),
                    use_cache=False,
                    logits_to_keep=longest,
                )
                logprobs = torch.log_softmax(out.logits.float(), dim=-1)
                row = self._reduce(logprobs, action_ids, length_normalise)
                scores.append(check_scores(row, cands, self._source()))
                prompt_tokens += len(context) * len(cands)
                continuation_tokens += sum(len(ids) for ids in action_ids)
        return ScoreResult(scores, time.perf_counter() - start, prompt_tokens, continuation_tokens, truncated)

    def generate(
        self, prompt: str | Prompt, max_new_tokens: int = 48, stop: Sequence[str] = ("\n\n",)
    ) -> GenerationResult:
        """Greedy continuation of ``prompt``, at most ``max_new_tokens`` tokens, cut before the first
        ``stop`` string. For the ReAct baseline; action priors use :meth:`score`.

        A prompt too long for the model's context (less ``max_new_tokens``) is cut from the front of
        its state part: pass a :class:`Prompt` so that the instructions (its prefix), the state's label
        and the cue are kept; a plain string is all state part, cut from its front."""
        if isinstance(prompt, str):
            prompt = Prompt("", prompt)
        if not isinstance(prompt, Prompt) or not prompt.text:
            raise BackendError(f"generate() needs a non-empty prompt string or Prompt, got {prompt!r}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        start = time.perf_counter()
        ids, cut = self._context_ids(prompt, room=max_new_tokens)
        with torch.inference_mode():
            out = self._model.generate(
                input_ids=self._tensor([ids]),
                attention_mask=self._tensor([[1] * len(ids)]),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                stop_strings=list(stop) or None,
                tokenizer=self._tokenizer,
                pad_token_id=self._pad_id,
            )
        new_ids = out[0, len(ids) :].tolist()
        text = self._tokenizer.decode(new_ids, skip_special_tokens=True)
        for marker in stop:
            text = text.split(marker, 1)[0]
        return GenerationResult(text, time.perf_counter() - start, len(ids), len(new_ids), cut)

    def clear_prefix_cache(self) -> None:
        """Forget every kept prefix KV cache."""
        self._prefixes.clear()

    @property
    def cached_prefixes(self) -> list[str]:
        """The prefixes whose KV cache is kept, least recently used first."""
        return list(self._prefixes)

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` as this backend tokenises prompt parts."""
        return len(self._encode(text))

    @property
    def long_prompts(self) -> str:
        """What a prompt too long for the model meets: ``"truncate"`` or ``"refuse"``."""
        return self._limiter.policy

    @property
    def context_tokens(self) -> int | None:
        """The positions the model takes (config and tokenizer limits; None when neither says)."""
        return self._limiter.context_tokens

    @property
    def max_prompt_tokens(self) -> int | None:
        """The most prompt tokens (prefix and state part) a scored prompt may have before it is cut."""
        return self._limiter.budget()

    def long_prompt_stats(self, reset: bool = False) -> dict[str, Any]:
        """The policy, the limits and the prompts cut since the last reset (``truncated_prompts``);
        ``reset=True`` starts a new count and re-arms the once-per-count warning. A run reads it
        with ``reset=True`` for its summary, so a backend shared by several runs counts each run
        apart. See :meth:`priorcache.prior.context_limit.PromptLimiter.stats`."""
        return self._limiter.stats(reset)

    # ------------------------------------------------------------------ scoring internals

    def _score_packed(
        self, pairs: list[tuple[Prompt, list[str]]], length_normalise: bool, reuse_prefix: bool, truncated: list[int]
    ) -> tuple[list[np.ndarray], int, int]:
        """Scores of every prompt's candidates from ONE packed forward (prefixes first, when not cached)."""
        items: list[PackedPrompt] = []
        prompt_tokens = 0
        for prompt, cands in pairs:
            prefix_state, ran = self._prefix_state(prompt.prefix, reuse_prefix)
            prefix_len = prefix_state.length if prefix_state is not None else 0
            state_ids, cut = self._limiter.state_ids(prompt, prefix_len)
            truncated[0] += cut
            if prefix_state is None and not state_ids:
                raise BackendError(self._empty_context_message())
            action_ids = [self._action_ids(a) for a in cands]
            self._limiter.check_actions(prefix_len + len(state_ids), action_ids, cands)
            items.append(PackedPrompt(prefix_state, state_ids, action_ids))
            prompt_tokens += ran + len(state_ids)
        logprobs = run_packed(
            self._model,
            items,
            pad_id=self._pad_id,
            key_cost=self._key_cost,
            cache_arg=self._cache_arg,
            device=self.device,
        )
        scores = []
        for item, (_, cands), (first, later) in zip(items, pairs, logprobs):
            if first is None:
                first = item.prefix.next_logprobs  # empty state part: the prefix's own next-token log-probs
            scores.append(self._row(first, later, item.action_ids, cands, length_normalise))
        return scores, prompt_tokens, sum(len(ids) for item in items for ids in item.action_ids)

    def _score_padded(
        self, prompt: Prompt, cands: list[str], length_normalise: bool, reuse_prefix: bool, truncated: list[int]
    ) -> tuple[np.ndarray, int, int]:
        prefix_state, ran = self._prefix_state(prompt.prefix, reuse_prefix)
        prefix_len = prefix_state.length if prefix_state is not None else 0
        state_ids, cut = self._limiter.state_ids(prompt, prefix_len)
        truncated[0] += cut
        if prefix_state is None and not state_ids:
            raise BackendError(self._empty_context_message())
        action_ids = [self._action_ids(a) for a in cands]
        self._limiter.check_actions(prefix_len + len(state_ids), action_ids, cands)
        # A fresh copy: the forward passes below grow the cache, and the stored one must stay
        # exactly the prefix for the next call.
        cache = copy.deepcopy(prefix_state.cache) if prefix_state is not None else None
        first, later = self._run_padded(cache, prefix_len, state_ids, action_ids)
        if first is None:
            first = prefix_state.next_logprobs
        row = self._row(first, later, action_ids, cands, length_normalise)
        return row, ran + len(state_ids), sum(len(ids) for ids in action_ids)

    def _row(
        self,
        first: torch.Tensor,
        later: list[torch.Tensor],
        action_ids: list[list[int]],
        cands: list[str],
        length_normalise: bool,
    ) -> np.ndarray:
        """ℓ of each action from the log-probs of its first token (``first``) and of the others."""
        row = np.empty(len(action_ids), dtype=np.float64)
        for j, ids in enumerate(action_ids):
            total = float(first[ids[0]].double()) + float(later[j].double().sum())
            row[j] = total / len(ids) if length_normalise else total
        return check_scores(row, cands, self._source())

    def _can_pack(self) -> bool:
        """Whether state and candidates may share one row under a custom attention mask: only with
        plain (full, non-sliding, non-recurrent) attention layers and an attention kernel that
        honours an arbitrary mask."""
        return self._plain_attention_layers and getattr(self._model.config, "_attn_implementation", None) in (
            "sdpa",
            "eager",
        )

    def _run_padded(
        self, cache: Any, prefix_len: int, state_ids: list[int], action_ids: list[list[int]]
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """Two forwards: the state part over the prefix's cache, then the actions as one batch
        over that cache repeated along the batch dimension, right-padded under an attention mask."""
        first = None
        if state_ids:
            out = self._model(
                input_ids=self._tensor([state_ids]), use_cache=True, logits_to_keep=1, **self._cache_kwargs(cache)
            )
            cache = returned_cache(out)
            first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        if max(len(ids) for ids in action_ids) == 1:
            return first, [torch.zeros(0) for _ in action_ids]
        return first, self._later_logprobs_padded(cache, prefix_len + len(state_ids), action_ids)

    def _later_logprobs_padded(self, cache: Any, context_len: int, action_ids: list[list[int]]) -> list[torch.Tensor]:
        """Log-probs of tokens 1.. of every action from one batched forward: the context's cache
        repeated along the batch, each action (minus its last token, which is only a target)
        right-padded, the pads masked out."""
        longest = max(len(ids) for ids in action_ids)
        cache.batch_repeat_interleave(len(action_ids))
        inputs = [ids[:-1] + [self._pad_id] * (longest - len(ids)) for ids in action_ids]
        mask = [[1] * (context_len + len(ids) - 1) + [0] * (longest - len(ids)) for ids in action_ids]
        out = self._model(
            input_ids=self._tensor(inputs),
            attention_mask=self._tensor(mask),
            use_cache=True,
            **self._cache_kwargs(cache),
        )
        logprobs = torch.log_softmax(out.logits.float(), dim=-1)
        result = []
        for j, ids in enumerate(action_ids):
            steps = torch.arange(len(ids) - 1, device=logprobs.device)
            tgt = torch.tensor(ids[1:], dtype=torch.long, device=logprobs.device)
            result.append(logprobs[j, steps, tgt])
        return result

    def _prefix_state(self, prefix: str, reuse: bool) -> tuple[PrefixState | None, int]:
        """The KV cache after ``prefix`` (with leading special tokens) and the tokens run to get it."""
        if reuse and prefix in self._prefixes:
            self._prefixes.move_to_end(prefix)
            return self._prefixes[prefix], 0
        ids = self._prefix_ids(prefix)
        if not ids:
            return None, 0
        self._limiter.check_prefix(len(ids))  # before the forward: an over-long prefix costs nothing
        out = self._model(input_ids=self._tensor([ids]), use_cache=True, logits_to_keep=1)
        state = PrefixState(returned_cache(out), torch.log_softmax(out.logits[0, -1].float(), dim=-1), len(ids))
        if reuse and self.prefix_cache_size > 0:
            self._prefixes[prefix] = state
            while len(self._prefixes) > self.prefix_cache_size:
                self._prefixes.popitem(last=False)
        return state, len(ids)

    def _cache_kwargs(self, cache: Any) -> dict[str, Any]:
        """The forward's keyword argument that passes ``cache`` (None: start a new one)."""
        return {self._cache_arg: cache}

    @staticmethod
    def _reduce(logprobs: torch.Tensor, action_ids: list[list[int]], length_normalise: bool) -> np.ndarray:
        """Sum (or mean) of each action's token log-probs; ``logprobs[j, t]`` predicts token t of action j."""
        out = np.empty(len(action_ids), dtype=np.float64)
        for j, ids in enumerate(action_ids):
            target = torch.tensor(ids, device=logprobs.device)
            picked = logprobs[j, torch.arange(len(ids), device=logprobs.device), target]
            total = float(picked.double().sum())
            out[j] = total / len(ids) if length_normalise else total
        return out

    # ------------------------------------------------------------------ tokenisation helpers

    def _encode(self, text: str) -> list[int]:
        if not text:
            return []
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prefix_ids(self, prefix: str) -> list[int]:
        return self._lead_ids + self._encode(prefix)

    def _context_ids(self, prompt: Prompt, room: int = CONTINUATION_ROOM) -> tuple[list[int], bool]:
        """The ids of the whole prompt (leading special tokens, prefix, state part fitted to the model
        with ``room`` tokens to follow, as every scoring path has them) and whether the state was cut."""
        prefix_ids = self._prefix_ids(prompt.prefix)
        self._limiter.check_prefix(len(prefix_ids), room)
        state_ids, cut = self._limiter.state_ids(prompt, len(prefix_ids), room)
        return prefix_ids + state_ids, cut

    def _action_ids(self, action: str) -> list[int]:
        ids = self._encode(" " + action)
        if not ids:
            raise BackendError(f"the tokenizer of {self.model_path} gives no tokens for action {action!r}")
        return ids

    def _tensor(self, rows: list[list[int]]) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def _source(self) -> str:
        return f"{self.name} backend ({self.model_path})"

    def _empty_context_message(self) -> str:
        return (
            f"empty prompt: {self.model_path}'s tokenizer adds no BOS token, so an empty prefix and state "
            "leave nothing to condition the first action token on"
        )
