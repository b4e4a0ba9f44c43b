"""PriorCache.lookup_batch: the semantics of N lookups in order, with one backend call and one
encoder call for the whole batch; the one difference (no hit on an entry the same batch inserts)."""

from __future__ import annotations

import numpy as np
import pytest

from priorcache.cache.batch import LookupRequest, even_shares
from priorcache.cache.prior_cache import CacheConfig, PriorCache
from priorcache.errors import ConfigError
from priorcache.prior.base import Prompt
from tests.cache._fakes import FakeBackend, HashEncoder

A = ["go north", "go south", "take key", "open door"]


class CountingBackend(FakeBackend):
    def __init__(self) -> None:
        super().__init__()
        self.score_calls = 0

    def score(self, prompts, candidates, length_normalise=True):
        self.score_calls += 1
        return super().score(prompts, candidates, length_normalise)


class CountingEncoder(HashEncoder):
    def __init__(self) -> None:
        super().__init__(dim=64)
        self.texts: list[list[str]] = []

    def encode(self, texts):
        self.texts.append(list(texts))
        return super().encode(texts)


def prompt(state: str, goal: str = "find the key") -> Prompt:
    return Prompt(prefix=f"Goal: {goal}\n", state=f"{state}\nCommand:")


def make(mode: str = "static", **config) -> tuple[PriorCache, CountingBackend, CountingEncoder]:
    encoder, backend = CountingEncoder(), CountingBackend()
    return PriorCache(CacheConfig(mode=mode, **config), encoder, backend), backend, encoder


def request(state: str, cands=A, goal: str = "find the key", **kw) -> LookupRequest:
    return LookupRequest(state, prompt(state, goal), cands, **kw)


WARM = ["a dark hall with a locked door", "a bright kitchen with a table and a key", "a cellar full of barrels"]
BATCH = [
    request(WARM[0]),  # exact hit
    request("a bright kitchen with a table and a key here", cands=A + ["eat apple"]),  # similar, partial call
    request("a windy roof under the stars"),  # miss
    request(WARM[2], cands=["go north", "look"]),  # exact hit, partial call for "look"
    request("a windy roof under the stars", goal="open the door"),  # miss: another goal's partition
]


def comparable(stats: dict) -> dict:
    """Everything but times, and tokens as totals: a batch shares its one call's tokens evenly among its
    lookups, so their split between full and partial calls is an estimate; the totals are exact."""
    out = {k: v for k, v in stats.items() if not k.endswith("time_s") and not k.endswith("_tokens")}
    for kind in ("prompt_tokens", "continuation_tokens"):
        out[kind] = stats[kind] + stats[f"partial_{kind}"]
    return out


@pytest.mark.parametrize("mode", ["none", "static", "adaptive", "kl-budget"])
def test_a_batch_equals_lookups_in_order_with_one_backend_call(mode):
    extra = {"refresh_rate": 0.25, "seed": 7} if mode != "none" else {}
    batch_cache, batch_backend, _ = make(mode, **extra)
    seq_cache, seq_backend, _ = make(mode, **extra)
    for state in WARM:
        for cache in (batch_cache, seq_cache):
            cache.lookup(state, prompt(state), A[:3])
    calls_before = batch_backend.score_calls
    for _ in range(3):  # later rounds hit, refresh and complete what the first inserted
        got = batch_cache.lookup_batch(BATCH)
        want = [seq_cache.lookup(r.state_text, r.prompt, r.candidates) for r in BATCH]
        assert [g.kind for g in got] == [w.kind for w in want]
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g.log_prior, w.log_prior)
            assert (g.llm_calls, g.partial_calls, g.entry_id) == (w.llm_calls, w.partial_calls, w.entry_id)
        assert batch_backend.score_calls - calls_before <= 1
        calls_before = batch_backend.score_calls
    assert comparable(batch_cache.stats()) == comparable(seq_cache.stats())
    assert batch_backend.n_calls == seq_backend.n_calls  # the same prompts scored, in fewer backend calls
    assert batch_cache.audit_log() == seq_cache.audit_log()
    batch_cache._assert_consistent()


def test_states_are_encoded_in_one_encoder_call_unless_the_caller_has_their_vectors():
    cache, _, encoder = make()
    cache.lookup_batch(BATCH)
    assert encoder.texts == [[r.state_text for r in BATCH]]
    vector = encoder.encode(["given"])[0]
    encoder.texts.clear()
    cache.lookup_batch([request("with a vector", embedding=vector), request("without one")])
    assert encoder.texts == [["without one"]]


def test_equal_states_in_one_batch_both_miss_and_share_one_entry():
    cache, backend, _ = make()
    got = cache.lookup_batch([request("a quiet garden"), request("a quiet garden", cands=A[:2] + ["smell rose"])])
    assert [g.kind for g in got] == ["miss", "miss"]  # the second cannot hit what the first inserts
    assert got[0].entry_id == got[1].entry_id and len(cache) == 1  # its insert extends the first entry
    assert set(cache.entries()[0].prior.actions) == set(A) | {"smell rose"}
    assert backend.score_calls == 1
    seq = make()[0]
    assert [seq.lookup(r.state_text, r.prompt, r.candidates).kind for r in [request("a quiet garden")] * 2] == [
        "miss",
        "exact",
    ]


def test_costs_are_shared_out_and_add_up():
    cache, _, _ = make("none")
    got = cache.lookup_batch([request(f"room {i}") for i in range(3)])
    stats = cache.stats()
    assert stats["uncached"] == stats["lookups"] == stats["llm_calls"] == 3
    assert sum(g.prompt_tokens for g in got) == stats["prompt_tokens"] > 0
    assert sum(g.cost.llm_time_s for g in got) == pytest.approx(stats["llm_time_s"])
    assert even_shares(10, 3) == [4, 3, 3] and even_shares(2, 4) == [1, 1, 0, 0]
    assert cache.lookup_batch([]) == []


def test_a_bad_request_changes_nothing():
    cache, backend, _ = make()
    with pytest.raises(ConfigError, match="q_values"):
        cache.lookup_batch([request("fine"), request("bad", q_values=np.zeros(2))])
    assert backend.score_calls == 0 and len(cache) == 0 and cache.stats()["lookups"] == 0
