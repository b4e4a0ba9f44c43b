"""Scoring several prompts in one backend call (one packed forward) gives the scores of one call per
prompt: whichever way the prompts are dealt into rows (one row each, all in one row, or between), with
prefixes shared, distinct, empty or cached, and with empty state parts."""

from __future__ import annotations

import numpy as np
import pytest

from priorcache.prior.base import Prompt
from priorcache.prior.packed_scoring import PackedPrompt, plan_rows
from priorcache.prior.transformers_backend import TransformersBackend

PREFIXES = [
    "You control an agent in a grid world.\nMission: go to the red ball\n\n",
    "You control an agent in a grid world.\nMission: pick up the green key and put it next to the box\n\n",
]
STATES = [
    "You see: a wall 2 steps forward\nAction:",
    "You see: a red ball 3 steps forward and 1 step left, a grey key 1 step right, a wall 4 steps forward, "
    "a green box 2 steps forward and 2 steps left, a door 5 steps forward\nAction:",
    "You see: nothing\nAction:",
    "",
]
ACTIONS = ["go forward", "turn left", "turn right", "pick up", "drop", "toggle", "go to the red ball"]


def _prompts() -> tuple[list[Prompt], list[list[str]]]:
    prompts = [Prompt(prefix, state) for prefix in PREFIXES for state in STATES]
    prompts.append(Prompt("", STATES[1]))  # no prefix at all (SmolLM2's tokenizer adds no BOS)
    candidates = [ACTIONS[: 2 + i % 6] for i in range(len(prompts))]
    return prompts, candidates


def _one_by_one(backend: TransformersBackend, prompts: list[Prompt], candidates: list[list[str]]) -> list[np.ndarray]:
    return [backend.score([p], [c]).scores[0] for p, c in zip(prompts, candidates)]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("key_cost", [None, 0.0, 1e9])  # the planner's choice, one row for all, a row each
def test_tiny_model_batch_equals_one_call_per_prompt(tiny_model_dir, attn, key_cost):
    backend = TransformersBackend(tiny_model_dir, attn_implementation=attn)
    if key_cost is not None:
        backend._key_cost = key_cost
    prompts, candidates = _prompts()
    single = _one_by_one(backend, prompts, candidates)
    backend.clear_prefix_cache()
    for _ in range(2):  # cold, then warm prefix cache
        batched = backend.score(prompts, candidates)
        for a, b in zip(batched.scores, single):
            np.testing.assert_allclose(a, b, atol=1e-5)
    naive = backend.score_naive(prompts, candidates).scores
    for a, b in zip(batched.scores, naive):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_tiny_model_rows_are_planned_by_estimated_work(tiny_model_dir):
    backend = TransformersBackend(tiny_model_dir)
    prompts, candidates = _prompts()
    packed = [
        PackedPrompt(
            backend._prefix_state(p.prefix, True)[0], backend._encode(p.state), [backend._action_ids(a) for a in c]
        )
        for p, c in zip(prompts, candidates)
    ]
    assert len(plan_rows(packed, 0.0)) == 1  # attention free: no padding at all
    rows = plan_rows(packed, 1e9)  # attention dear: rows no wider than the longest prompt, so as few keys as can be
    assert len(rows) > 1
    assert max(sum(packed[i].length for i in row) for row in rows) == max(item.length for item in packed)
    for cost in (0.0, 1e-3, 1e9):
        rows = plan_rows(packed, cost)
        assert sorted(i for row in rows for i in row) == list(range(len(packed)))


def test_batch_token_accounting_equals_the_sum_of_single_calls(tiny_model_dir):
    backend = TransformersBackend(tiny_model_dir)
    prompts, candidates = _prompts()
    single = [backend.score([p], [c], reuse_prefix=False) for p, c in zip(prompts, candidates)]
    batched = backend.score(prompts, candidates, reuse_prefix=False)
    assert batched.prompt_tokens == sum(r.prompt_tokens for r in single)
    assert batched.continuation_tokens == sum(r.continuation_tokens for r in single)


@pytest.mark.slow
def test_embedded_batch_equals_one_call_per_prompt(embedded):
    prompts, candidates = _prompts()
    single = _one_by_one(embedded, prompts, candidates)
    batched = embedded.score(prompts, candidates).scores
    assert max(float(np.abs(a - b).max()) for a, b in zip(batched, single)) < 1e-4
    naive = embedded.score_naive(prompts, candidates).scores
    for a, b in zip(batched, naive):
        np.testing.assert_allclose(a, b, atol=1e-3)
