"""A local causal LM that scores candidate actions (F3, docs/design.md §2) and keeps prompt-prefix KV caches (F9).

For each prompt the context is run once and its KV cache is reused by all candidates, which are
scored together. Two layouts give the same scores:
- packed (default where the model allows it): the state tokens and a trie of the candidates'
  token prefixes go in ONE row over the prefix's cache; a custom attention mask lets each trie
  node see the context and its own ancestors only, so shared prefixes ("examine …") run once, no
  padding is run and the weights are streamed once per call (on CPU a forward has a large fixed
  cost: packing made a 10-action call ~1.8× faster than the padded layout, 274 vs 499 ms, see
  benchmarks/bench_scoring.py);
- padded: the state part is run, then the candidates as one batch over its KV cache repeated
  along the batch dimension, right-padded under an attention mask (used for sliding-window or
  recurrent models and for attention kernels that take no arbitrary mask).
ℓ_i is the mean (or, on request, the sum) of the log-probabilities of candidate i's tokens, each
action tokenised with a leading space.

F9: the KV cache of ``Prompt.prefix`` (the episode-constant part) is kept in a small LRU keyed by
the prefix string, so a call runs only the state part and the candidates. The prefix and the state
are tokenised separately and their ids concatenated, so every path (cached prefix, fresh prefix,
naive full rows) sees exactly the same token ids and gives the same scores up to float rounding.

:meth:`TransformersBackend.score_naive` runs every full prompt+action row with no KV reuse at all;
it is the reference the fast path is tested and benchmarked against.
"""

from __future__ import annotations

import copy
import inspect
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from priorcache.errors import BackendError, ConfigError
from priorcache.prior.action_prior import check_candidates, check_scores
from priorcache.prior.base import GenerationResult, Prompt, ScoreResult


@dataclass
class _PrefixState:
    """The model state after a prefix: its KV cache (never mutated once stored) and the
    log-probabilities of the next token, needed when the state part is empty."""

    cache: Any
    next_logprobs: torch.Tensor
    length: int


class _PackedPrompt:
    """One prompt's share of a packed forward: its prefix state, state tokens, actions' token ids
    and the trie of the actions' proper token prefixes (node input token, parent node or -1, depth,
    and the node of each token prefix)."""

    def __init__(self, prefix: _PrefixState | None, state_ids: list[int], action_ids: list[list[int]]) -> None:
        self.prefix = prefix
        self.state_ids = state_ids
        self.action_ids = action_ids
        self.node_of: dict[tuple[int, ...], int] = {}
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.depths: list[int] = []
        for ids in action_ids:
            for k in range(1, len(ids)):
                key = tuple(ids[:k])
                if key not in self.node_of:
                    self.node_of[key] = len(self.tokens)
                    self.tokens.append(ids[k - 1])
                    self.parents.append(self.node_of.get(key[:-1], -1))
                    self.depths.append(k - 1)

    @property
    def prefix_len(self) -> int:
        return self.prefix.length if self.prefix is not None else 0

    @property
    def length(self) -> int:
        """Positions in a packed row: state tokens and trie nodes."""
        return len(self.state_ids) + len(self.tokens)

    @property
    def tail(self) -> int:
        """Positions whose logits are scored: the last state token (if any) and the trie nodes."""
        return len(self.tokens) + (1 if self.state_ids else 0)

    def tree(self) -> torch.Tensor:
        """Which of its own positions each position sees: state causally, a node the state and its ancestors."""
        s = len(self.state_ids)
        sees = torch.zeros(self.length, self.length, dtype=torch.bool)
        sees[:s, :s] = torch.ones(s, s, dtype=torch.bool).tril()
        sees[s:, :s] = True
        for i in range(len(self.tokens)):
            node = i
            while node >= 0:
                sees[s + i, s + node] = True
                node = self.parents[node]
        return sees

    def positions(self) -> list[int]:
        """Position ids, after the prefix: the state's in order, a node's by its depth in the trie."""
        start, s = self.prefix_len, len(self.state_ids)
        return list(range(start, start + s)) + [start + s + d for d in self.depths]


def _resolve_dtype(dtype: Any, device: str) -> Any:
    if dtype is None:
        # float32 is the fast path on CPU and exact; accelerators take the checkpoint's own dtype.
        return torch.float32 if torch.device(device).type == "cpu" else "auto"
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)
    raise ConfigError(f"unknown dtype {dtype!r}; use a torch dtype, its name (e.g. 'bfloat16') or 'auto'")


def _check_device(device: str) -> str:
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"invalid device {device!r}: {exc}") from exc
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but CUDA is not available here")
    return device


def _load_model(path: Path, device: str, dtype: Any, attn_implementation: str | None) -> tuple[Any, Any]:
    """Load tokenizer and causal LM from a local folder, refusing anything else with a clear error."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not path.exists():
        raise BackendError(f"model folder {path} does not exist")
    if not path.is_dir():
        raise BackendError(f"model path {path} is not a folder (expected a transformers model folder)")
    if not (path / "config.json").is_file():
        raise BackendError(f"model folder {path} has no config.json: it is not a transformers model folder")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # transformers raises ValueError/OSError/KeyError for foreign configs
        raise BackendError(f"cannot read the model config in {path}: {exc}") from exc

    causal_names = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        causal_names.update([value] if isinstance(value, str) else value)
    architectures = list(getattr(config, "architectures", None) or [])
    # A BERT-like folder (e.g. a sentence encoder) has a config type that AutoModelForCausalLM would
    # accept, silently adding an untrained LM head; its declared architectures tell the truth.
    if architectures and not any(a in causal_names for a in architectures):
        raise BackendError(
            f"{path} holds a {'/'.join(architectures)} model, not a causal language model "
            "(expected an architecture such as LlamaForCausalLM)"
        )
    if getattr(config, "is_encoder_decoder", False) or config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise BackendError(f"{path} holds a {config.model_type!r} model, not a causal language model")

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model, info = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, local_files_only=True, output_loading_info=True, **extra
        )
    except Exception as exc:
        raise BackendError(f"cannot load the causal LM in {path}: {type(exc).__name__}: {exc}") from exc
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise BackendError(
            f"the model in {path} lacks weights {missing[:5]}{' …' if len(missing) > 5 else ''}: "
            "not a complete causal language model"
        )
    model.to(device)
    model.eval()
    return tokenizer, model


def _cache_argument(model: Any) -> str:
    """The name of the forward's KV-cache argument.

    transformers 5.24 renamed ``past_key_values`` to ``cache``, in model forwards and in their
    outputs (the old names still work there but warn; the argument's FutureWarning names 5.40 as
    the release that drops it); earlier 5.x releases know only ``past_key_values``. The forward's
    own signature tells which one this model takes, so no release in the supported range warns.
    """
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # a forward without an introspectable signature: the old name
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


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
    base model's.
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
    ) -> None:
        if not isinstance(prefix_cache_size, int) or prefix_cache_size < 0:
            raise ConfigError(f"prefix_cache_size must be an integer ≥ 0, got {prefix_cache_size!r}")
        self.model_path = Path(model_path).expanduser()
        self.device = _check_device(device)
        self.prefix_cache_size = prefix_cache_size
        self.pack_candidates = bool(pack_candidates)
        self._tokenizer, self._model = _load_model(
            self.model_path, self.device, _resolve_dtype(dtype, device), attn_implementation
        )
        self.adapter_key: str | None = None
        if adapter is not None:
            from priorcache.prior.adaptation import apply_adapter

            self._model, self.adapter_key = apply_adapter(self._model, self.model_path, adapter)
            self.name = f"{type(self).name}+lora:{self.adapter_key}"
        self._cache_arg = _cache_argument(self._model)
        self._lead_ids = self._leading_special_ids()
        self._pad_id = self._pick_pad_id()
        self._plain_attention_layers = self.pack_candidates and self._has_plain_attention_layers()
        self._key_cost = self._attention_cost_per_key()
        self._prefixes: OrderedDict[str, _PrefixState] = OrderedDict()

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
        all prompts of the call (one left-padded row per prompt over their prefixes' caches, see
        :meth:`_run_packed`), or, in the padded layout, per prompt one forward for the state and one
        for the candidates. ``reuse_prefix=False`` neither reads nor fills the F9 prefix cache (the
        prefix is run again), for measuring what F9 saves."""
        pairs = self._check_batch(prompts, candidates)
        start = time.perf_counter()
        with torch.inference_mode():
            if self._can_pack():
                scores, prompt_tokens, continuation_tokens = self._score_packed(pairs, length_normalise, reuse_prefix)
            else:
                scores, prompt_tokens, continuation_tokens = [], 0, 0
                for prompt, cands in pairs:
                    row, ran, cont = self._score_padded(prompt, cands, length_normalise, reuse_prefix)
                    scores.append(row)
                    prompt_tokens += ran
                    continuation_tokens += cont
        return ScoreResult(scores, time.perf_counter() - start, prompt_tokens, continuation_tokens)

    def score_naive(
        self,
        prompts: Sequence[Prompt],
        candidates: Sequence[Sequence[str]],
        length_normalise: bool = True,
    ) -> ScoreResult:
        """Reference path without any KV reuse: each full prompt+action row is run from scratch
        (the rows of a prompt share one padded forward). ``prompt_tokens`` counts the prompt once
        per row, since that is what is run."""
        pairs = self._check_batch(prompts, candidates)
        start = time.perf_counter()
        scores: list[np.ndarray] = []
        prompt_tokens = continuation_tokens = 0
        with torch.inference_mode():
            for prompt, cands in pairs:
                context = self._prefix_ids(prompt.prefix) + self._encode(prompt.state)
                if not context:
                    raise BackendError(self._empty_context_message())
                action_ids = [self._action_ids(a) for a in cands]
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
        return ScoreResult(scores, time.perf_counter() - start, prompt_tokens, continuation_tokens)

    def generate(self, prompt: str, max_new_tokens: int = 48, stop: Sequence[str] = ("\n\n",)) -> GenerationResult:
        """Greedy continuation of ``prompt``, at most ``max_new_tokens`` tokens, cut before the first
        ``stop`` string. For the ReAct baseline; action priors use :meth:`score`."""
        if not isinstance(prompt, str) or not prompt:
            raise BackendError(f"generate() needs a non-empty prompt string, got {prompt!r}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        start = time.perf_counter()
        ids = self._prefix_ids(prompt)
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
        return GenerationResult(text, time.perf_counter() - start, len(ids), len(new_ids))

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

    # ------------------------------------------------------------------ scoring internals

    def _score_packed(
        self, pairs: list[tuple[Prompt, list[str]]], length_normalise: bool, reuse_prefix: bool
    ) -> tuple[list[np.ndarray], int, int]:
        """Scores of every prompt's candidates from ONE packed forward (prefixes first, when not cached)."""
        items: list[_PackedPrompt] = []
        prompt_tokens = 0
        for prompt, cands in pairs:
            prefix_state, ran = self._prefix_state(prompt.prefix, reuse_prefix)
            state_ids = self._encode(prompt.state)
            if prefix_state is None and not state_ids:
                raise BackendError(self._empty_context_message())
            items.append(_PackedPrompt(prefix_state, state_ids, [self._action_ids(a) for a in cands]))
            prompt_tokens += ran + len(state_ids)
        scores = []
        for item, (_, cands), (first, later) in zip(items, pairs, self._run_packed(items)):
            if first is None:
                first = item.prefix.next_logprobs  # empty state part: the prefix's own next-token log-probs
            scores.append(self._row(first, later, item.action_ids, cands, length_normalise))
        return scores, prompt_tokens, sum(len(ids) for item in items for ids in item.action_ids)

    def _score_padded(
        self, prompt: Prompt, cands: list[str], length_normalise: bool, reuse_prefix: bool
    ) -> tuple[np.ndarray, int, int]:
        prefix_state, ran = self._prefix_state(prompt.prefix, reuse_prefix)
        state_ids = self._encode(prompt.state)
        if prefix_state is None and not state_ids:
            raise BackendError(self._empty_context_message())
        action_ids = [self._action_ids(a) for a in cands]
        # A fresh copy: the forward passes below grow the cache, and the stored one must stay
        # exactly the prefix for the next call.
        cache = copy.deepcopy(prefix_state.cache) if prefix_state is not None else None
        prefix_len = prefix_state.length if prefix_state is not None else 0
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

    def _run_packed(self, items: list[_PackedPrompt]) -> list[tuple[torch.Tensor | None, list[torch.Tensor]]]:
        """The state parts and every action of several prompts in ONE forward.

        A prompt's sequence is its state tokens followed by a trie of its actions' proper token
        prefixes ("examine chest", "examine key" share "examine"). Each position carries the position
        id it has in its own sequence and, through a custom attention mask, sees its prompt's prefix,
        the state tokens up to itself (state) or all of them plus its own ancestors (trie node). The
        logits at the node for a[:k] are then those a separate row prefix+state+a would give for
        token k of a, with shared prefixes run once and one pass over the weights for all prompts.

        Several prompts may share a row (:meth:`_plan_rows`): rows are left-padded to the widest, and
        a row holds first the "bodies" of its prompts (state tokens but the last), then their
        "tails" (last state token and trie nodes: the positions that predict scored tokens), so every
        row ends in its scored positions and ``logits_to_keep`` covers them all. The cache holds per
        row the KV caches of its prompts' prefixes side by side (each distinct one once), right-padded
        to the longest. Pad keys are masked out, and a pad query sees only itself (a query that sees
        nothing would make softmax NaN). With one prompt this is exactly the single-row layout.
        Returns per prompt the next-token log-probs after the state (None without a state part) and,
        per action, the log-probs of its tokens 1...
        """
        rows = self._plan_rows(items)
        width = max(sum(items[i].length for i in row) for row in rows)
        if width == 0:
            return [(None, [torch.zeros(0) for _ in item.action_ids]) for item in items]
        # Per row, where each distinct prefix state (by identity) sits in the cache.
        slots: list[dict[int, int]] = []
        cached = 0
        for row in rows:
            offsets: dict[int, int] = {}
            used = 0
            for i in row:
                prefix = items[i].prefix
                if prefix is not None and id(prefix) not in offsets:
                    offsets[id(prefix)] = used
                    used += prefix.length
            slots.append(offsets)
            cached = max(cached, used)
        keep = max(sum(items[i].tail for i in row) for row in rows)
        allowed = torch.zeros(len(rows), width, cached + width, dtype=torch.bool)
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        positions = torch.zeros(len(rows), width, dtype=torch.long)
        where: dict[int, tuple[int, torch.Tensor]] = {}  # prompt -> (row, its tail's places in the kept logits)
        for r, (row, offsets) in enumerate(zip(rows, slots)):
            pad = width - sum(items[i].length for i in row)
            allowed[r, torch.arange(pad), cached + torch.arange(pad)] = True
            body_at, tail_at = pad, width - sum(items[i].tail for i in row)
            for i in row:
                item = items[i]
                body = item.length - item.tail
                cols = torch.cat([torch.arange(body_at, body_at + body), torch.arange(tail_at, tail_at + item.tail)])
                body_at, tail_at = body_at + body, tail_at + item.tail
                allowed[r, cols[:, None], cached + cols[None, :]] = item.tree()
                if item.prefix is not None:
                    at = offsets[id(item.prefix)]
                    allowed[r, cols, at : at + item.prefix_len] = True
                input_ids[r, cols] = torch.tensor(item.state_ids + item.tokens, dtype=torch.long)
                positions[r, cols] = torch.tensor(item.positions(), dtype=torch.long)
                where[i] = (r, cols[body:] - (width - keep))
        out = self._model(
            input_ids=input_ids.to(self.device),
            attention_mask=self._custom_mask(allowed),
            position_ids=positions.to(self.device),
            use_cache=True,
            **self._cache_kwargs(self._stacked_prefix_cache(items, rows, slots, cached)),
            logits_to_keep=keep,  # only the tails predict a scored token
        )
        logprobs = torch.log_softmax(out.logits.float(), dim=-1)
        results = []
        for i, item in enumerate(items):
            r, kept = where[i]
            mine = logprobs[r, kept.to(logprobs.device)]
            first, nodes = (mine[0], mine[1:]) if item.state_ids else (None, mine)
            later = []
            for ids in item.action_ids:
                at = torch.tensor([item.node_of[tuple(ids[:k])] for k in range(1, len(ids))], dtype=torch.long)
                targets = torch.tensor(ids[1:], dtype=torch.long)
                later.append(nodes[at.to(nodes.device), targets.to(nodes.device)])
            results.append((first, later))
        return results

    def _plan_rows(self, items: list[_PackedPrompt]) -> list[list[int]]:
        """Which prompts share a row. One row per prompt pads every row to the longest (on BabyAI the
        state parts of eight environments ran 30-111 tokens: 57 % of such a batch would be pads); one
        row for all makes every query meet every other prompt's keys, masked but computed. For each
        row count, prompts are dealt longest first to the shortest row; the count with the least
        estimated work (positions through the dense layers, padding included, plus query-key pairs
        through attention at ``_key_cost`` each) wins."""
        order = sorted(range(len(items)), key=lambda i: -items[i].length)
        best: tuple[float, list[list[int]]] | None = None
        for count in range(1, len(items) + 1):
            rows: list[list[int]] = [[] for _ in range(count)]
            widths, keys = [0] * count, [0] * count
            for i in order:
                r = widths.index(min(widths))
                rows[r].append(i)
                widths[r] += items[i].length
                keys[r] += items[i].prefix_len
            width = max(widths)
            work = count * width + self._key_cost * sum(width * (k + width) for k in keys)
            if best is None or work < best[0]:
                best = (work, [sorted(row) for row in rows])
        assert best is not None
        return best[1]

    def _stacked_prefix_cache(
        self, items: list[_PackedPrompt], rows: list[list[int]], slots: list[dict[int, int]], cached: int
    ) -> Any:
        """A new KV cache holding, per row, its prompts' prefix caches at their offsets, right-padded
        to ``cached`` positions (None when no prompt has a prefix). The stored caches are only read."""
        if cached == 0:
            return None
        from transformers.cache_utils import DynamicCache

        template = next(item.prefix.cache for item in items if item.prefix is not None)
        layers = []
        for index, layer in enumerate(template.layers):
            keys = layer.keys.new_zeros((len(rows), layer.keys.shape[1], cached, layer.keys.shape[3]))
            values = layer.values.new_zeros((len(rows), layer.values.shape[1], cached, layer.values.shape[3]))
            for r, (row, offsets) in enumerate(zip(rows, slots)):
                for i in row:
                    prefix = items[i].prefix
                    if prefix is not None:
                        at, own = offsets[id(prefix)], prefix.cache.layers[index]
                        keys[r, :, at : at + prefix.length] = own.keys[0]
                        values[r, :, at : at + prefix.length] = own.values[0]
            layers.append((keys, values))
        return DynamicCache(ddp_cache_data=layers, config=self._model.config)

    def _custom_mask(self, allowed: torch.Tensor) -> torch.Tensor:
        """A (rows, 1, query, key) mask from a (rows, query, key) "may attend" matrix, as the kernel wants it."""
        if self._model.config._attn_implementation == "sdpa":
            return allowed[:, None].to(self.device)
        dtype = self._model.dtype  # eager attention adds the mask to the scores
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
        return mask[:, None].to(self.device)

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
            cache = self._returned_cache(out)
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

    def _prefix_state(self, prefix: str, reuse: bool) -> tuple[_PrefixState | None, int]:
        """The KV cache after ``prefix`` (with leading special tokens) and the tokens run to get it."""
        if reuse and prefix in self._prefixes:
            self._prefixes.move_to_end(prefix)
            return self._prefixes[prefix], 0
        ids = self._prefix_ids(prefix)
        if not ids:
            return None, 0
        out = self._model(input_ids=self._tensor([ids]), use_cache=True, logits_to_keep=1)
        state = _PrefixState(self._returned_cache(out), torch.log_softmax(out.logits[0, -1].float(), dim=-1), len(ids))
        if reuse and self.prefix_cache_size > 0:
            self._prefixes[prefix] = state
            while len(self._prefixes) > self.prefix_cache_size:
                self._prefixes.popitem(last=False)
        return state, len(ids)

    def _cache_kwargs(self, cache: Any) -> dict[str, Any]:
        """The forward's keyword argument that passes ``cache`` (None: start a new one)."""
        return {self._cache_arg: cache}

    @staticmethod
    def _returned_cache(out: Any) -> Any:
        """The KV cache a forward with ``use_cache=True`` returned: ``out["cache"]`` from transformers 5.24 on
        (reading ``past_key_values`` there warns), ``out["past_key_values"]`` before."""
        return out["cache"] if "cache" in out else out["past_key_values"]

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

    def _action_ids(self, action: str) -> list[int]:
        ids = self._encode(" " + action)
        if not ids:
            raise BackendError(f"the tokenizer of {self.model_path} gives no tokens for action {action!r}")
        return ids

    def _attention_cost_per_key(self) -> float:
        """Attention work of one query-key pair relative to one position through a layer's dense
        weights: about 4·hidden FLOPs (scores and values) against 2·(weights per layer). Used only to
        choose packed rows (:meth:`_plan_rows`); 0 when the config does not say."""
        config = self._model.config.get_text_config()
        hidden, layers = getattr(config, "hidden_size", None), getattr(config, "num_hidden_layers", None)
        if not hidden or not layers:
            return 0.0
        embeddings = {id(m.weight) for m in (self._model.get_input_embeddings(), self._model.get_output_embeddings())}
        dense = sum(p.numel() for p in self._model.parameters() if id(p) not in embeddings) / layers
        return 2.0 * hidden / dense if dense > 0 else 0.0

    def _has_plain_attention_layers(self) -> bool:
        from transformers.cache_utils import DynamicCache, DynamicLayer

        try:
            layers = DynamicCache(config=self._model.config).layers
        except Exception:  # an exotic config: the padded layout needs no such knowledge
            return False
        return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)

    def _leading_special_ids(self) -> list[int]:
        """The special tokens the tokenizer puts before a text (a BOS for most models, none for SmolLM2)."""
        with_special = list(self._tokenizer("a", add_special_tokens=True)["input_ids"])
        plain = list(self._tokenizer("a", add_special_tokens=False)["input_ids"])
        for start in range(len(with_special) - len(plain) + 1):
            if with_special[start : start + len(plain)] == plain:
                return with_special[:start]
        return []

    def _pick_pad_id(self) -> int:
        for candidate in (self._tokenizer.pad_token_id, self._tokenizer.eos_token_id):
            if candidate is not None:
                return int(candidate)
        return 0  # any valid id does: padded positions are masked and never scored

    def _tensor(self, rows: list[list[int]]) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def _source(self) -> str:
        return f"{self.name} backend ({self.model_path})"

    def _empty_context_message(self) -> str:
        return (
            f"empty prompt: {self.model_path}'s tokenizer adds no BOS token, so an empty prefix and state "
            "leave nothing to condition the first action token on"
        )

    def _check_batch(
        self, prompts: Sequence[Prompt], candidates: Sequence[Sequence[str]]
    ) -> list[tuple[Prompt, list[str]]]:
        prompts, candidates = list(prompts), list(candidates)
        if len(prompts) != len(candidates):
            raise ConfigError(f"{len(prompts)} prompts but {len(candidates)} candidate lists")
        for prompt in prompts:
            if not isinstance(prompt, Prompt):
                raise ConfigError(f"expected a Prompt(prefix, state), got {type(prompt).__name__}")
        return [(p, check_candidates(c)) for p, c in zip(prompts, candidates)]
