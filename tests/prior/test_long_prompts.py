"""Prompts longer than the model's context (issue 11, priorcache.prior.context_limit): the front of the
state part is cut in every path that sends a prompt to the model, prefix, label and cue kept whole,
counted and warned about once; or refused. Most tests use the tiny random model (1024 positions)."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

from priorcache.errors import BackendError, ConfigError
from priorcache.prior.base import Prompt
from priorcache.prior.context_limit import (
    CONTINUATION_ROOM,
    TRUNCATION_MARK,
    LongPromptWarning,
    model_context_tokens,
)
from priorcache.prior.prompts import TEXT_GAME_TEMPLATES, text_game_prompt
from priorcache.prior.transformers_backend import TransformersBackend

ACTIONS = ["take key", "go north", "examine the wooden table", "look"]
ROOM = "You are in a kitchen. There is a table with a red apple and a rusty key. A door leads north. "
LATEST = "Now a brass key lies at your feet."


def long_prompt(objective: str = "Take the key.", repeats: int = 200) -> Prompt:
    """A text-game prompt whose state (~4,000 tokens) is four times the tiny model's context."""
    return text_game_prompt(objective, ROOM * repeats + LATEST)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir) -> TransformersBackend:
    return TransformersBackend(tiny_model_dir)


def _quiet_stats_reset(backend: TransformersBackend) -> None:
    backend.long_prompt_stats(reset=True)


def test_the_limit_is_the_model_context_less_the_room_for_the_action(tiny, embedded):
    assert tiny.context_tokens == 1024
    assert tiny.max_prompt_tokens == 1024 - CONTINUATION_ROOM
    assert tiny.long_prompts == "truncate"
    assert embedded.context_tokens == 8192  # SmolLM2's max_position_embeddings; its tokenizer sets no limit


def test_context_takes_the_lower_of_config_and_tokenizer_limits():
    class Config:
        max_position_embeddings = 4096

        def get_text_config(self):
            return self

    class Model:
        config = Config()

    class Tokenizer:
        model_max_length = 2048

    assert model_context_tokens(Model(), Tokenizer()) == 2048
    Tokenizer.model_max_length = int(1e30)  # transformers' "no limit"
    assert model_context_tokens(Model(), Tokenizer()) == 4096
    Config.max_position_embeddings = None
    assert model_context_tokens(Model(), Tokenizer()) is None


def test_a_prompt_that_fits_is_untouched_and_not_counted(tiny):
    _quiet_stats_reset(tiny)
    prompt = text_game_prompt("Take the key.", ROOM + LATEST)
    ids, cut = tiny._context_ids(prompt)
    assert not cut
    assert ids == tiny._prefix_ids(prompt.prefix) + tiny._encode(prompt.state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = tiny.score([prompt], [ACTIONS])
    assert result.truncated_prompts == 0 and tiny.long_prompt_stats()["truncated_prompts"] == 0


def test_marks_change_nothing_in_the_prompt_text():
    for name, template in TEXT_GAME_TEMPLATES.items():
        prompt = text_game_prompt("Take the key.", "A  kitchen.\n Key here.", template=name)
        assert prompt.state == template.state.format(state="A kitchen. Key here."), name
        label, cue = prompt.state[: prompt.label_chars], prompt.state[len(prompt.state) - prompt.cue_chars :]
        assert template.state.startswith(label) and label and not label.endswith(" ")
        assert template.state.endswith(cue) and "{state}" not in cue


def test_a_long_state_is_cut_from_its_front_keeping_prefix_label_and_cue(tiny):
    _quiet_stats_reset(tiny)
    prompt = long_prompt()
    with pytest.warns(LongPromptWarning, match="18661 characters does not fit the limit of 960 prompt tokens"):
        ids, cut = tiny._context_ids(prompt)
    assert cut and len(ids) <= tiny.max_prompt_tokens
    assert len(ids) >= tiny.max_prompt_tokens - 3  # the budget is used, up to a token boundary or two
    prefix_ids = tiny._prefix_ids(prompt.prefix)
    assert ids[: len(prefix_ids)] == prefix_ids  # the episode-constant prefix whole (F9 reuses its KV cache)
    state = tiny._tokenizer.decode(ids[len(prefix_ids) :])
    assert state.startswith("Current location:" + TRUNCATION_MARK)
    assert state.endswith(LATEST + "\nCommand:")  # the most recent text and the cue asking for the action


def test_every_scoring_path_gives_the_same_scores_for_a_cut_prompt(tiny_model_dir):
    prompts = [long_prompt(), text_game_prompt("Take the key.", ROOM)]
    cands = [ACTIONS, ACTIONS[:2]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LongPromptWarning)
        packed = TransformersBackend(tiny_model_dir)
        padded = TransformersBackend(tiny_model_dir, pack_candidates=False)
        naive = packed.score_naive(prompts, cands)
        results = {
            "packed": packed.score(prompts, cands),
            "packed, prefix reused (F9)": packed.score(prompts, cands),
            "packed, prefix run again": packed.score(prompts, cands, reuse_prefix=False),
            "padded": padded.score(prompts, cands),
            "one prompt per call": packed.score(prompts[:1], cands[:1]),
        }
    for name, result in results.items():
        for got, want in zip(result.scores, naive.scores):
            np.testing.assert_allclose(got, want, atol=1e-4, err_msg=name)
        assert result.truncated_prompts == 1, name
    assert naive.truncated_prompts == 1
    assert results["packed"].prompt_tokens <= packed.max_prompt_tokens + packed.count_tokens(prompts[1].state)


def test_cuts_are_counted_and_warned_about_once_per_count(tiny):
    _quiet_stats_reset(tiny)
    with pytest.warns(LongPromptWarning, match="cut from the front") as caught:
        for _ in range(3):
            tiny.score([long_prompt(), long_prompt("Open the door.")], [ACTIONS, ACTIONS])
    assert len([w for w in caught if w.category is LongPromptWarning]) == 1
    stats = tiny.long_prompt_stats(reset=True)
    assert stats == {
        "policy": "truncate",
        "context_tokens": 1024,
        "max_prompt_tokens": 1024 - CONTINUATION_ROOM,
        "truncated_prompts": 6,
    }
    assert tiny.long_prompt_stats()["truncated_prompts"] == 0
    with pytest.warns(LongPromptWarning):  # a new count (the next run) warns again
        tiny.score([long_prompt()], [ACTIONS])


def test_refuse_raises_before_running_the_model(tiny_model_dir):
    strict = TransformersBackend(tiny_model_dir, long_prompts="refuse")
    strict.score([text_game_prompt("Take the key.", ROOM)], [ACTIONS])  # a prompt that fits is scored
    with pytest.raises(BackendError, match=r"exceeds the limit of 960 prompt tokens.*long_prompts='refuse'"):
        strict.score([long_prompt()], [ACTIONS])
    with pytest.raises(BackendError, match="refuse"):
        strict.generate(long_prompt(), max_new_tokens=4)
    assert strict.long_prompt_stats()["truncated_prompts"] == 0


def test_a_prefix_too_long_is_refused_under_either_policy(tiny):
    examples = [(ROOM * 3, "take key")] * 12  # in-context examples make a prefix of ~1,100 tokens
    prompt = text_game_prompt("Take the key.", ROOM, examples=examples)
    with pytest.raises(BackendError, match="prompt prefix .* has \\d+ tokens.*never truncated"):
        tiny.score([prompt], [ACTIONS])
    assert prompt.prefix not in tiny.cached_prefixes


def test_max_prompt_tokens_caps_below_the_context(tiny_model_dir):
    capped = TransformersBackend(tiny_model_dir, max_prompt_tokens=200)
    assert capped.max_prompt_tokens == 200
    with pytest.warns(LongPromptWarning):
        result = capped.score([long_prompt()], [ACTIONS])
    assert result.truncated_prompts == 1 and result.prompt_tokens <= 200


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"long_prompts": "drop"}, "long_prompts must be one of truncate, refuse"),
        ({"max_prompt_tokens": 0}, "max_prompt_tokens must be None or an integer ≥ 1"),
        ({"max_prompt_tokens": 1.5}, "max_prompt_tokens"),
    ],
)
def test_bad_settings_are_config_errors(tiny_model_dir, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TransformersBackend(tiny_model_dir, **kwargs)


def test_an_action_past_the_context_is_refused_naming_it(tiny):
    _quiet_stats_reset(tiny)
    huge = "put " + " ".join(f"item{i}" for i in range(60))  # well over the 64 tokens kept for an action
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LongPromptWarning)
        with pytest.raises(BackendError, match="action 'put item0 .* run past the model's context of 1024"):
            tiny.score([long_prompt()], [["look", huge]])
        tiny.score([text_game_prompt("Take the key.", ROOM)], [["look", huge]])  # room enough after a short prompt


def test_generation_keeps_room_for_the_new_tokens(tiny):
    _quiet_stats_reset(tiny)
    with pytest.warns(LongPromptWarning):
        result = tiny.generate(long_prompt(), max_new_tokens=100, stop=())
    assert result.truncated and result.prompt_tokens <= 1024 - 100
    assert result.prompt_tokens + result.new_tokens <= 1024
    plain = tiny.generate("Take the key.", max_new_tokens=2)  # a plain string still works, and fits
    assert not plain.truncated


def test_the_front_of_a_huge_state_is_never_read(tiny):
    """A state of megabytes is cut in characters before it is tokenised: two states that differ only
    far from their end give the same ids, and quickly."""
    _quiet_stats_reset(tiny)
    tail = ROOM * 50 + LATEST
    a = text_game_prompt("Take the key.", "x" * 2_000_000 + tail)
    b = text_game_prompt("Take the key.", "y z " * 500_000 + tail)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LongPromptWarning)
        start = time.perf_counter()
        ids_a, _ = tiny._context_ids(a)
        elapsed = time.perf_counter() - start
        ids_b, _ = tiny._context_ids(b)
    assert ids_a == ids_b
    assert elapsed < 1.0  # tokenising the 2 MB whole takes about as long again, unbounded in the state's size


def test_prompt_marks_are_checked():
    assert Prompt.marked("P", "L:", " text", "\nC:") == Prompt("P", "L: text\nC:", 2, 3)
    with pytest.raises(ConfigError, match="exceed"):
        Prompt("P", "short", label_chars=4, cue_chars=4)
    with pytest.raises(ConfigError, match="cue_chars"):
        Prompt("P", "short", cue_chars=-1)


@pytest.mark.slow
def test_embedded_model_scores_a_100k_character_state_in_seconds(embedded):
    """The real model (8192 positions) on a 100k-character state, capped at 1024 prompt tokens to keep
    the test short: cut, counted, the action the state's most recent text calls for ranked first,
    and the packed scores equal to the naive reference on the same cut prompt."""
    from priorcache.prior.embedded import EmbeddedBackend

    backend = EmbeddedBackend(max_prompt_tokens=1024)
    state = "You are in a long hallway. The walls are bare. " * 2200 + "You are in a kitchen. On the table is a key."
    assert len(state) > 100_000
    prompt = text_game_prompt("Take the key.", state)
    candidates = ["take key", "go north", "look", "inventory"]
    start = time.perf_counter()
    with pytest.warns(LongPromptWarning):
        result = backend.score([prompt], [candidates])
    assert time.perf_counter() - start < 60
    assert result.truncated_prompts == 1 and result.prompt_tokens <= 1024
    assert candidates[int(np.argmax(result.scores[0]))] == "take key"
    naive = backend.score_naive([prompt], [candidates])
    np.testing.assert_allclose(result.scores[0], naive.scores[0], atol=1e-3)
    assert backend.long_prompt_stats()["truncated_prompts"] == 2
