"""The packed scoring layout of :class:`~priorcache.prior.transformers_backend.TransformersBackend`:
the state parts and every candidate of several prompts in ONE forward over their prefixes' KV caches.

A prompt's state tokens and a trie of its candidates' token prefixes go in a row over its prefix's
cache; a custom attention mask lets each trie node see the context and its own ancestors only, so
shared prefixes ("examine …") run once, no padding is run and the weights are streamed once per call
(on CPU a forward has a large fixed cost: packing made a 10-action call ~1.8× faster than the padded
layout, 274 vs 499 ms, see benchmarks/bench_scoring.py). Several prompts may share a row; how they
are dealt into rows is planned by estimated work (:func:`plan_rows`). It gives the scores of the
padded layout, and needs plain attention layers (:func:`has_plain_attention_layers`) and an
attention kernel that takes an arbitrary mask.
"""

from __future__ import annotations

from typing import Any

import torch

from priorcache.prior.causal_lm import PrefixState


class PackedPrompt:
    """One prompt's share of a packed forward: its prefix state, state tokens, actions' token ids
    and the trie of the actions' proper token prefixes (node input token, parent node or -1, depth,
    and the node of each token prefix)."""

    def __init__(self, prefix: PrefixState | None, state_ids: list[int], action_ids: list[list[int]]) -> None:
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


def attention_cost_per_key(model: Any) -> float:
    """Attention work of one query-key pair relative to one position through a layer's dense
    weights: about 4·hidden FLOPs (scores and values) against 2·(weights per layer). Used only to
    choose packed rows (:func:`plan_rows`); 0 when the config does not say."""
    config = model.config.get_text_config()
    hidden, layers = getattr(config, "hidden_size", None), getattr(config, "num_hidden_layers", None)
    if not hidden or not layers:
        return 0.0
    embeddings = {id(m.weight) for m in (model.get_input_embeddings(), model.get_output_embeddings())}
    dense = sum(p.numel() for p in model.parameters() if id(p) not in embeddings) / layers
    return 2.0 * hidden / dense if dense > 0 else 0.0


def has_plain_attention_layers(model: Any) -> bool:
    """Whether every layer of the model's KV cache is a plain (full, non-sliding, non-recurrent) one,
    as the packed layout needs."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:  # an exotic config: the padded layout needs no such knowledge
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def run_packed(
    model: Any, items: list[PackedPrompt], *, pad_id: int, key_cost: float, cache_arg: str, device: str
) -> list[tuple[torch.Tensor | None, list[torch.Tensor]]]:
    """The state parts and every action of several prompts in ONE forward.

    A prompt's sequence is its state tokens followed by a trie of its actions' proper token
    prefixes ("examine chest", "examine key" share "examine"). Each position carries the position
    id it has in its own sequence and, through a custom attention mask, sees its prompt's prefix,
    the state tokens up to itself (state) or all of them plus its own ancestors (trie node). The
    logits at the node for a[:k] are then those a separate row prefix+state+a would give for
    token k of a, with shared prefixes run once and one pass over the weights for all prompts.

    Several prompts may share a row (:func:`plan_rows`): rows are left-padded to the widest, and
    a row holds first the "bodies" of its prompts (state tokens but the last), then their
    "tails" (last state token and trie nodes: the positions that predict scored tokens), so every
    row ends in its scored positions and ``logits_to_keep`` covers them all. The cache holds per
    row the KV caches of its prompts' prefixes side by side (each distinct one once), right-padded
    to the longest. Pad keys are masked out, and a pad query sees only itself (a query that sees
    nothing would make softmax NaN). With one prompt this is exactly the single-row layout.
    Returns per prompt the next-token log-probs after the state (None without a state part) and,
    per action, the log-probs of its tokens 1...
    """
    rows = plan_rows(items, key_cost)
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
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
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
    out = model(
        input_ids=input_ids.to(device),
        attention_mask=_custom_mask(model, allowed, device),
        position_ids=positions.to(device),
        use_cache=True,
        **{cache_arg: _stacked_prefix_cache(model, items, rows, slots, cached)},
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


def plan_rows(items: list[PackedPrompt], key_cost: float) -> list[list[int]]:
    """Which prompts share a row. One row per prompt pads every row to the longest (on BabyAI the
    state parts of eight environments ran 30-111 tokens: 57 % of such a batch would be pads); one
    row for all makes every query meet every other prompt's keys, masked but computed. For each
    row count, prompts are dealt longest first to the shortest row; the count with the least
    estimated work (positions through the dense layers, padding included, plus query-key pairs
    through attention at ``key_cost`` each) wins."""
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
        work = count * width + key_cost * sum(width * (k + width) for k in keys)
        if best is None or work < best[0]:
            best = (work, [sorted(row) for row in rows])
    assert best is not None
    return best[1]


def _stacked_prefix_cache(
    model: Any, items: list[PackedPrompt], rows: list[list[int]], slots: list[dict[int, int]], cached: int
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
    return DynamicCache(ddp_cache_data=layers, config=model.config)


def _custom_mask(model: Any, allowed: torch.Tensor, device: str) -> torch.Tensor:
    """A (rows, 1, query, key) mask from a (rows, query, key) "may attend" matrix, as the kernel wants it."""
    if model.config._attn_implementation == "sdpa":
        return allowed[:, None].to(device)
    dtype = model.dtype  # eager attention adds the mask to the scores
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[:, None].to(device)
