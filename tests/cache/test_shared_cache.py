"""The shared prior cache's partition and client (priorcache.cache.shared_cache), without Ray: the
shards run in this process behind LocalHandle, with the fake encoder and LLM."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from priorcache.cache.batch import LookupRequest
from priorcache.cache.prior_cache import CacheConfig, PriorCache
from priorcache.cache.shared_cache import (
    CacheShard,
    CacheSpec,
    KeyOnlyEncoder,
    LocalHandle,
    SharedCacheClient,
    join_states,
    shard_of,
    split_state,
)
from priorcache.errors import CacheFormatError, ConfigError
from priorcache.prior.base import Prompt
from tests.cache._fakes import FakeBackend, HashEncoder

ENCODER = HashEncoder(dim=32)
ACTIONS = ["go north", "go south", "take coin", "open door"]


class CountingHandle(LocalHandle):
    """A local shard that counts the lookup calls it gets (one per batch it serves)."""

    def __init__(self, target: CacheShard) -> None:
        super().__init__(target)
        self.batches = 0
        self.requests = 0

    def __getattr__(self, name: str):
        if name == "lookup_batch":
            self.batches += 1
        return super().__getattr__(name)


def make_client(shards: int, config: CacheConfig | None = None) -> tuple[SharedCacheClient, list[CountingHandle]]:
    config = config or CacheConfig(mode="static", refresh_rate=0.0)
    spec = CacheSpec(config, ENCODER.name, ENCODER.dim, lambda: (FakeBackend(), {}))
    handles = [CountingHandle(CacheShard(spec)) for _ in range(shards)]
    return SharedCacheClient(handles, ENCODER, config, get=lambda x: x), handles


def lookups(n: int = 60, goals: int = 7, seed: int = 0) -> list[LookupRequest]:
    """States of a few goals (prompt prefixes), with repeats and near-repeats."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        goal, room = int(rng.integers(goals)), int(rng.integers(4))
        state = f"you are in room {room} and see a door and a coin" + " here" * int(rng.integers(2))
        prompt = Prompt(prefix=f"Goal: fetch coin {goal}\n", state=f"{state}\nAction:")
        out.append(LookupRequest(state, prompt, ACTIONS[: 2 + room % 3]))
    return out


def test_shard_of_is_stable_in_range_and_spreads():
    prefixes = [f"Goal: go to the {c} ball {i}\n" for c in ("red", "green", "blue") for i in range(100)]
    for shards in (1, 2, 5):
        got = [shard_of(p, shards) for p in prefixes]
        assert got == [shard_of(p, shards) for p in prefixes]  # a digest, not the salted hash()
        assert set(got) == set(range(shards))
        assert min(Counter(got).values()) > len(prefixes) / shards / 2  # no shard starves
    with pytest.raises(ConfigError, match="shards must be ≥ 1"):
        shard_of("x", 0)


@pytest.mark.parametrize("shards", [1, 3])
def test_partitioned_cache_serves_as_one_cache(shards):
    """Entries only match within their prompt prefix, so a prefix partition serves every lookup as one
    cache does: the same kinds, priors and LLM calls (refreshes off: their draws are per shard)."""
    client, _ = make_client(shards)
    single = PriorCache(CacheConfig(mode="static", refresh_rate=0.0), ENCODER, FakeBackend())
    for request in lookups():
        ours = client.lookup(request.state_text, request.prompt, request.candidates)
        theirs = single.lookup(request.state_text, request.prompt, request.candidates)
        assert (ours.kind, ours.llm_calls) == (theirs.kind, theirs.llm_calls)
        np.testing.assert_allclose(ours.log_prior, theirs.log_prior)
    ours, theirs = client.stats(), single.stats()
    for key in ("lookups", "exact_hits", "similar_hits", "misses", "llm_calls", "size", "hit_rate", "query_rate"):
        assert ours[key] == theirs[key], key
    assert len(client) == len(single)


def test_a_batch_goes_out_as_one_call_per_shard_it_touches():
    client, handles = make_client(3)
    batch = lookups(12)
    results = client.lookup_batch(batch)
    touched = {shard_of(r.prompt.prefix, 3) for r in batch}
    assert sum(h.batches for h in handles) == len(touched) == client.sent_calls
    assert client.sent_lookups == len(batch) == len(results)
    for request, result in zip(batch, results):  # each answer comes back in its request's place
        assert result.candidates == list(request.candidates)
    per_shard = client.shard_stats()
    assert [s["lookups"] for s in per_shard] == [
        sum(shard_of(r.prompt.prefix, 3) == i for r in batch) for i in range(3)
    ]


def test_evaluation_copy_teaches_the_shared_cache_nothing():
    client, handles = make_client(2)
    client.lookup_batch(lookups(20))
    before, size = client.stats(), len(client)
    copy = client.evaluation_copy()
    copy.lookup_batch(lookups(20, seed=1))
    assert copy.stats()["lookups"] == 20  # its own count, as a one-process evaluation copy
    assert client.stats() == before and len(client) == size
    copy.release()
    assert all(not h._target._forks for h in handles)
    with pytest.raises(ConfigError, match="no evaluation copy"):
        handles[0]._target.lookup_batch([], fork=1)


def test_state_round_trips_across_shard_counts(tmp_path):
    client, _ = make_client(3)
    client.lookup_batch(lookups(40))
    state = client.state_dict()
    assert len(state["entries"]) == len(client)
    identities = sorted((e["prefix_hash"], e["state_text"]) for e in state["entries"])
    for shards in (1, 2, 4):
        other, _ = make_client(shards)
        other.load_state_dict(state)
        assert sorted((e["prefix_hash"], e["state_text"]) for e in other.state_dict()["entries"]) == identities
    client.save(tmp_path / "cache")  # the store's plain format, loadable by a one-process cache
    single = PriorCache(CacheConfig(mode="static", refresh_rate=0.0), ENCODER, FakeBackend())
    single.load(tmp_path / "cache")
    assert len(single) == len(client)
    again, _ = make_client(2)
    again.load(tmp_path / "cache")
    assert len(again) == len(client)


def test_split_and_join_states():
    client, _ = make_client(1)
    client.lookup_batch(lookups(30))
    state = client.state_dict()
    parts = split_state(state, 3)
    assert sum(len(p["entries"]) for p in parts) == len(state["entries"])
    for i, part in enumerate(parts):
        assert all(shard_of(part["prefixes"][e["prefix_hash"]], 3) == i for e in part["entries"])
        assert part["keys"].shape == (len(part["entries"]), ENCODER.dim)
    joined = join_states(parts)
    assert sorted(e["state_text"] for e in joined["entries"]) == sorted(e["state_text"] for e in state["entries"])
    broken = {**state, "prefixes": {}}
    with pytest.raises(CacheFormatError, match="prompt prefix"):
        split_state(broken, 2)
    with pytest.raises(CacheFormatError, match="keys"):
        split_state({**state, "keys": state["keys"][:1]}, 2)


def test_runtime_state_of_several_shards():
    client, _ = make_client(2)
    client.lookup_batch(lookups(10))
    runtime = client.runtime_state()
    assert len(runtime["shards"]) == 2
    other, _ = make_client(2)
    other.load_runtime_state(runtime)
    assert other.runtime_state()["shards"][0]["clock"] == runtime["shards"][0]["clock"]
    with pytest.raises(CacheFormatError, match="each of the 2 shards"):
        other.load_runtime_state({"clock": 3})


def test_shards_never_encode_and_clients_send_embeddings():
    with pytest.raises(ConfigError, match="does not encode"):
        KeyOnlyEncoder("x", 4).encode(["a state"])
    client, _ = make_client(1)
    calls = ENCODER.calls
    client.lookup_batch(lookups(5))  # no embeddings given: the client's encoder makes them, in one call
    assert ENCODER.calls == calls + 1
    with pytest.raises(ConfigError, match="at least one shard"):
        SharedCacheClient([], ENCODER, CacheConfig(), get=lambda x: x)
