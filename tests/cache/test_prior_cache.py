"""The prior cache's lookup rule, F7 completion, refresh audits, eviction, stats and thread safety."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from priorcache.cache.prior_cache import CacheConfig, PriorCache
from priorcache.errors import BackendError, ConfigError
from priorcache.prior.action_prior import PriorConfig, log_prior
from priorcache.prior.base import Prompt
from tests.cache._fakes import FakeBackend, HashEncoder, at_cosine, audit_prior, unit

GOAL = Prompt("Goal: find the key.\n", "")
OTHER_GOAL = Prompt("Goal: eat the apple.\n", "")

ROOM = (
    "You are in the kitchen. There is a wooden table with a red apple and a silver key on it. "
    "A door leads north to the hallway and a window looks out over the garden"
)
ROOM_NEAR = ROOM.replace("red apple", "green apple")
ELSEWHERE = "Cellar: dark, damp stone walls, a barrel of wine, stairs going up toward daylight"
ACTIONS = ["go north", "take key", "take apple", "look"]


def prompt(state: str, goal: Prompt = GOAL) -> Prompt:
    return Prompt(goal.prefix, state)


def make(backend: FakeBackend | None = None, encoder: HashEncoder | None = None, **cfg) -> PriorCache:
    cfg.setdefault("refresh_rate", 0.0)
    return PriorCache(CacheConfig(**cfg), encoder or HashEncoder(), backend or FakeBackend())


def look(cache: PriorCache, state: str, actions=ACTIONS, goal: Prompt = GOAL, **kw):
    return cache.lookup(state, prompt(state, goal), actions, **kw)


# --- configuration --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        (dict(similarity_threshold=1.5), "similarity_threshold"),
        (dict(similarity_threshold=-1.01), "similarity_threshold"),
        (dict(similarity_threshold=float("nan")), "similarity_threshold"),
        (dict(capacity=0), "capacity"),
        (dict(capacity=2.5), "capacity"),
        (dict(capacity=True), "capacity"),
        (dict(refresh_rate=-0.1), "refresh_rate"),
        (dict(refresh_rate=1.01), "refresh_rate"),
        (dict(eviction="fifo"), "eviction"),
        (dict(unknown_candidates="zero"), "unknown_candidates"),
        (dict(min_coverage=1.5), "min_coverage"),
        (dict(utility_half_life=0), "utility_half_life"),
        (dict(mode="bogus"), "mode"),
        (dict(mode="adaptive", similarity_threshold=0.5), "meta bounds"),
        (dict(mode="adaptive", meta={"update_every": 1}), "update_every"),
        (dict(mode="adaptive", meta={"typo": 1}), "typo"),
        (dict(seed=-1), "seed"),
    ],
)
def test_config_refuses_out_of_range_values(kwargs: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        CacheConfig(**kwargs)


def test_config_accepts_the_range_ends() -> None:
    CacheConfig(similarity_threshold=-1.0, refresh_rate=0.0, min_coverage=0.0, capacity=1)
    CacheConfig(similarity_threshold=1.0, refresh_rate=1.0, min_coverage=1.0)


def test_from_dict_names_unknown_keys_and_round_trips() -> None:
    with pytest.raises(ConfigError, match="similarity_treshold"):
        CacheConfig.from_dict({"similarity_treshold": 0.9})
    cfg = CacheConfig(capacity=7, similarity_threshold=0.8, eviction="lfu")
    assert CacheConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_index_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        make(index="no-such-index")


# --- lookup rule ---------------------------------------------------------------------------
def test_mode_none_always_asks_and_never_stores() -> None:
    backend = FakeBackend()
    cache = make(backend, mode="none")
    for _ in range(3):
        r = look(cache, ROOM)
        assert (r.kind, r.hit, r.llm_calls) == ("uncached", False, 1)
    assert len(cache) == 0 and backend.n_calls == 3
    s = cache.stats()
    assert (s["lookups"], s["llm_calls"], s["uncached"], s["size"], s["hit_rate"]) == (3, 3, 3, 0, 0.0)


def test_miss_then_exact_hit_serves_the_stored_scores() -> None:
    backend, encoder = FakeBackend(), HashEncoder()
    cache = make(backend, encoder)
    first = look(cache, ROOM)
    assert (first.kind, first.hit, first.llm_calls, first.partial_calls) == ("miss", False, 1, 0)
    assert first.embedding is not None and np.linalg.norm(first.embedding) == pytest.approx(1.0, abs=1e-6)
    encodes = encoder.calls
    second = look(cache, ROOM)
    assert (second.kind, second.hit, second.llm_calls, second.similarity) == ("exact", True, 0, 1.0)
    assert backend.n_calls == 1
    assert encoder.calls == encodes  # the exact path needs no embedding
    np.testing.assert_array_equal(second.scores, first.scores)
    np.testing.assert_allclose(second.log_prior, log_prior(first.scores, PriorConfig()))


def test_similar_state_hits_and_a_different_one_misses() -> None:
    encoder = HashEncoder()
    sims = encoder.encode([ROOM, ROOM_NEAR, ELSEWHERE])
    assert sims[0] @ sims[1] > 0.92 > sims[0] @ sims[2]  # the fixture's premise
    backend = FakeBackend()
    cache = make(backend, encoder)
    stored = look(cache, ROOM)
    near = look(cache, ROOM_NEAR)
    assert (near.kind, near.hit, near.llm_calls) == ("similar", True, 0)
    assert near.similarity == pytest.approx(float(sims[0] @ sims[1]), abs=1e-5)
    np.testing.assert_array_equal(near.scores, stored.scores)
    far = look(cache, ELSEWHERE)
    assert (far.kind, far.hit, far.llm_calls) == ("miss", False, 1)
    assert far.similarity == pytest.approx(float(sims[0] @ sims[2]), abs=1e-5)  # nearest, though too far
    assert backend.n_calls == 2


def test_threshold_is_inclusive_on_given_embeddings() -> None:
    cache = make(similarity_threshold=0.9)
    look(cache, "a", embedding=unit([1.0]))
    assert look(cache, "b", embedding=at_cosine(0.905)).kind == "similar"
    assert look(cache, "c", embedding=at_cosine(0.895)).kind == "miss"


def test_prompt_prefix_partitions_the_cache() -> None:
    backend = FakeBackend()
    cache = make(backend)
    look(cache, ROOM, goal=GOAL)
    # Same state text, other goal: neither the exact path nor the similarity search may serve it.
    other = look(cache, ROOM, goal=OTHER_GOAL)
    assert other.kind == "miss" and backend.n_calls == 2
    assert look(cache, ROOM_NEAR, goal=OTHER_GOAL).kind == "similar"
    assert look(cache, ROOM_NEAR, goal=GOAL).kind == "similar"
    assert backend.calls[-1][0].prefix == OTHER_GOAL.prefix and backend.n_calls == 2


def test_search_finds_the_same_prefix_entry_behind_many_nearer_foreign_ones() -> None:
    cache = make(similarity_threshold=0.9, capacity=100)
    look(cache, "mine", goal=GOAL, embedding=at_cosine(0.95))
    for i in range(60):  # other-goal entries, all nearer to the query than ours
        look(cache, f"theirs {i}", goal=OTHER_GOAL, embedding=unit([1.0, 0.01 * (i % 7), 0.0, 0.001 * i]))
    r = look(cache, "query", goal=GOAL, embedding=unit([1.0]))
    assert r.kind == "similar" and r.similarity == pytest.approx(0.95, abs=1e-5)
    assert cache.entries()[0].state_text == "mine" and r.entry_id == cache.entries()[0].id


# --- F7 candidate mismatch -----------------------------------------------------------------
def test_partial_call_scores_only_the_unknown_candidates() -> None:
    backend = FakeBackend()
    cache = make(backend)
    look(cache, ROOM, ["go north", "take key", "take apple"])
    r = look(cache, ROOM_NEAR, ["take key", "go north", "open window"])
    assert (r.kind, r.hit, r.llm_calls, r.partial_calls) == ("similar", True, 0, 1)
    assert backend.calls[-1] == (prompt(ROOM_NEAR), ["open window"])  # the current prompt, unknown only
    assert r.candidates == ["take key", "go north", "open window"]  # "take apple" is dropped
    stored = cache.entries()[0].scores
    expected = [stored["take key"], stored["go north"], backend.fn(prompt(ROOM_NEAR), "open window")]
    np.testing.assert_allclose(r.scores, expected)
    assert r.coverage == pytest.approx(2 / 3)
    assert r.prompt_tokens > 0 and r.continuation_tokens == 2
    s = cache.stats()
    assert (s["partial_calls"], s["llm_calls"], s["partial_actions"], s["similar_hits"]) == (1, 1, 1, 1)
    assert s["partial_continuation_tokens"] == 2 and s["partial_prompt_tokens"] > 0
    assert s["query_rate"] == pytest.approx(1.0) and s["full_query_rate"] == pytest.approx(0.5)
    # The partial result was merged into the entry: the same candidates now need no call at all.
    again = look(cache, ROOM_NEAR, ["take key", "go north", "open window"])
    assert (again.partial_calls, again.llm_calls) == (0, 0) and backend.n_calls == 2


def test_floor_mode_fills_unknown_candidates_with_the_entrys_lowest_score() -> None:
    backend = FakeBackend()
    cache = make(backend, unknown_candidates="floor")
    look(cache, ROOM, ["go north", "take key", "take apple"])
    r = look(cache, ROOM_NEAR, ["go north", "take key", "open window"])
    assert (r.kind, r.partial_calls, r.llm_calls) == ("similar", 0, 0) and backend.n_calls == 1
    stored = cache.entries()[0].scores
    assert r.scores[2] == min(stored.values())
    assert "open window" not in stored  # a floor value is no score: never merged
    assert cache.stats()["floor_filled"] == 1


def test_coverage_is_part_of_the_hit_rule() -> None:
    backend = FakeBackend()
    cache = make(backend, min_coverage=0.5)
    look(cache, ROOM, ["a", "b", "c", "d"])
    low = look(cache, ROOM_NEAR, ["a", "x", "y", "z"])  # 1/4 known
    assert low.kind == "miss" and low.llm_calls == 1
    assert cache.stats()["coverage_rejections"] == 1
    lenient = make(FakeBackend(), min_coverage=0.25)
    look(lenient, ROOM, ["a", "b", "c", "d"])
    assert look(lenient, ROOM_NEAR, ["a", "x", "y", "z"]).kind == "similar"


def test_exact_path_completes_low_coverage_in_partial_mode_but_not_in_floor_mode() -> None:
    partial = make(FakeBackend(), min_coverage=0.9)
    look(partial, ROOM, ["a", "b"])
    r = look(partial, ROOM, ["a", "x", "y"])
    # Same state, same prompt: the partial call is exactly what a full call would return.
    assert (r.kind, r.partial_calls, r.llm_calls) == ("exact", 1, 0)

    floor = make(FakeBackend(), min_coverage=0.9, unknown_candidates="floor")
    look(floor, ROOM, ["a", "b"])
    r = look(floor, ROOM, ["a", "x", "y"])
    assert (r.kind, r.llm_calls) == ("miss", 1)
    assert len(floor) == 1 and set(floor.entries()[0].scores) == {"a", "b", "x", "y"}  # merged, not duplicated


# --- refresh and audits ---------------------------------------------------------------------
def test_refresh_rate_zero_never_refreshes() -> None:
    backend = FakeBackend()
    cache = make(backend, refresh_rate=0.0)
    look(cache, ROOM)
    for _ in range(50):
        assert look(cache, ROOM_NEAR).kind == "similar"
    assert cache.stats()["refreshes"] == 0 and backend.n_calls == 1


def test_refresh_rate_one_always_refreshes_and_audits_the_would_be_served_prior() -> None:
    backend = FakeBackend()
    cache = make(backend, refresh_rate=1.0)
    look(cache, ROOM, ["go north", "take key", "take apple"])
    old = cache.entries()[0]
    q = np.array([0.5, -0.2, 1.0])
    cands = ["go north", "take key", "open window"]
    r = look(cache, ROOM_NEAR, cands, q_values=q, alpha=0.7)
    assert (r.kind, r.hit, r.llm_calls, r.partial_calls) == ("refresh", False, 1, 0)
    fresh = np.array([backend.fn(prompt(ROOM_NEAR), a) for a in cands])
    np.testing.assert_allclose(r.scores, fresh)  # the fresh prior is served
    # Would have been served: the entry's known scores, the unknown one as a partial call gives it.
    would = np.array([old.scores["go north"], old.scores["take key"], fresh[2]])
    expected = audit_prior(would, fresh, q, 0.7, PriorConfig())
    assert r.audit == expected and r.audit.epsilon > 0
    entry = cache.entries()[0]
    assert entry.state_text == ROOM_NEAR and entry.refresh_count == 1 and entry.last_audit == expected
    assert set(entry.scores) == set(cands)  # replaced: the old state's other scores are gone
    s = cache.stats()
    assert (s["refreshes"], s["audits"], s["hits"]) == (1, 1, 0)
    assert s["mean_kl"] == pytest.approx(expected.kl) and s["max_epsilon"] == pytest.approx(expected.epsilon)
    assert cache.audit_log()[0]["kind"] == "similar"
    # The refreshed entry now stands for the new state, so the next match is exact (and, r = 1,
    # refreshed again: the same prompt scores the same, so the audit measures no error).
    assert look(cache, ROOM_NEAR, cands).kind == "refresh"
    assert cache.audit_log()[-1]["kind"] == "exact" and cache.audit_log()[-1]["epsilon"] == pytest.approx(0.0)
    assert len(cache) == 1


def test_floor_mode_audit_measures_the_floor_fill() -> None:
    backend = FakeBackend()
    cache = make(backend, refresh_rate=1.0, unknown_candidates="floor")
    look(cache, ROOM, ["a", "b", "c"])
    old = cache.entries()[0].scores
    r = look(cache, ROOM_NEAR, ["a", "b", "d"])
    fresh = np.array([backend.fn(prompt(ROOM_NEAR), a) for a in ["a", "b", "d"]])
    would = np.array([old["a"], old["b"], min(old.values())])
    assert r.audit == audit_prior(would, fresh)


def test_refresh_frequency_follows_r_and_the_seed() -> None:
    def run(seed: int) -> list[str]:
        cache = make(FakeBackend(), refresh_rate=0.3, seed=seed)
        look(cache, ROOM)
        return [look(cache, ROOM).kind for _ in range(400)]

    kinds = run(3)
    share = kinds.count("refresh") / len(kinds)
    assert 0.22 < share < 0.38
    assert set(kinds) == {"exact", "refresh"}
    assert run(3) == kinds  # reproducible from the seed


# --- eviction -------------------------------------------------------------------------------
def _put(cache: PriorCache, name: str, axis: int, step: int) -> str:
    """Look up state ``name`` whose key is basis vector ``axis`` (orthogonal states never match)."""
    return look(cache, name, ["x"], embedding=unit([0.0] * axis + [1.0]), step=step).kind


def _states(cache: PriorCache) -> set[str]:
    return {e.state_text for e in cache.entries()}


def test_lru_evicts_the_least_recently_used() -> None:
    cache = make(capacity=3, eviction="lru")
    for axis, (name, step) in enumerate([("A", 1), ("B", 2), ("C", 3)]):
        assert _put(cache, name, axis, step) == "miss"
    assert _put(cache, "A", 0, 4) == "exact"
    assert _put(cache, "D", 3, 5) == "miss"
    assert _states(cache) == {"A", "C", "D"} and cache.stats()["evictions"] == 1


def test_lfu_evicts_the_least_frequently_hit() -> None:
    cache = make(capacity=3, eviction="lfu")
    for axis, (name, step) in enumerate([("A", 1), ("B", 2), ("C", 3)]):
        _put(cache, name, axis, step)
    _put(cache, "B", 1, 4)
    _put(cache, "B", 1, 5)
    _put(cache, "C", 2, 6)
    _put(cache, "D", 3, 7)  # A: 0 hits, though not the least recently used
    assert _states(cache) == {"B", "C", "D"}


def _utility_scenario(eviction: str) -> set[str]:
    cache = make(capacity=3, eviction=eviction, utility_half_life=10.0)
    _put(cache, "A", 0, 1)
    for step in range(2, 7):  # A was popular long ago
        assert _put(cache, "A", 0, step) == "exact"
    _put(cache, "B", 1, 98)
    _put(cache, "C", 2, 99)
    _put(cache, "D", 3, 100)
    return _states(cache)


def test_utility_decays_old_popularity_where_lfu_keeps_it() -> None:
    # A: 5 hits, unused for 94 steps (9.4 half-lives) → utility 6·2^-9.4 ≈ 0.01 < 1 of a fresh entry.
    assert _utility_scenario("utility") == {"B", "C", "D"}
    assert _utility_scenario("lfu") == {"A", "C", "D"}
    assert _utility_scenario("lru") == {"B", "C", "D"}


def test_utility_keeps_recently_popular_entries_where_lru_does_not() -> None:
    def scenario(eviction: str) -> set[str]:
        cache = make(capacity=3, eviction=eviction, utility_half_life=1000.0)
        for axis, (name, step) in enumerate([("A", 1), ("B", 2), ("C", 3)]):
            _put(cache, name, axis, step)
        for step in (4, 5, 6):
            _put(cache, "A", 0, step)
        _put(cache, "B", 1, 7)
        _put(cache, "C", 2, 8)
        _put(cache, "D", 3, 9)
        return _states(cache)

    assert scenario("utility") == {"A", "C", "D"}  # B: 1 hit; A: 3 hits, a little older
    assert scenario("lru") == {"B", "C", "D"}


@pytest.mark.parametrize("eviction", ["utility", "lru", "lfu"])
def test_capacity_is_never_exceeded(eviction: str) -> None:
    rng = np.random.default_rng(0)
    cache = make(capacity=5, eviction=eviction)
    for _ in range(200):
        i = int(rng.integers(0, 20))
        look(cache, f"state {i} " + "word " * i, ["a", "b", f"c{i % 3}"])
        assert len(cache) <= 5
        cache._assert_consistent()
    s = cache.stats()
    assert s["evictions"] == s["misses"] - s["size"]


# --- stats, validation -----------------------------------------------------------------------
def test_stats_add_up() -> None:
    backend = FakeBackend()
    cache = make(backend, refresh_rate=0.2, seed=1)
    for i in range(60):
        state = [ROOM, ROOM_NEAR, ELSEWHERE][i % 3]
        look(cache, state, ACTIONS[: 2 + i % 3])
    s = cache.stats()
    assert s["lookups"] == 60
    assert s["hits"] == s["exact_hits"] + s["similar_hits"]
    assert s["hits"] + s["misses"] + s["refreshes"] == 60
    assert s["llm_calls"] == s["misses"] + s["refreshes"]
    assert s["llm_calls"] + s["partial_calls"] == backend.n_calls
    assert s["audits"] == s["refreshes"] > 0
    assert s["hit_rate"] == pytest.approx(s["hits"] / 60)
    assert s["query_rate"] == pytest.approx(backend.n_calls / 60)
    assert 0 <= s["mean_kl"] <= s["max_kl"] and s["mean_epsilon"] <= s["max_epsilon"]
    assert all(a["kl"] <= a["kl_bound"] + 1e-9 for a in cache.audit_log())
    assert s["lookup_time_s"] >= 0 and s["encode_time_s"] >= 0


def test_empty_or_duplicate_candidates_are_refused() -> None:
    cache = make()
    with pytest.raises(ConfigError, match="empty"):
        look(cache, ROOM, [])
    with pytest.raises(ConfigError, match="duplicate"):
        look(cache, ROOM, ["look", "look"])


def test_non_finite_backend_scores_name_the_action_and_store_nothing() -> None:
    backend = FakeBackend(fn=lambda p, a: float("nan") if a == "take key" else -1.0)
    cache = make(backend)
    with pytest.raises(BackendError, match="take key"):
        look(cache, ROOM)
    assert len(cache) == 0 and cache.stats()["lookups"] == 0


def test_backend_returning_the_wrong_number_of_vectors_is_a_backend_error() -> None:
    backend = FakeBackend()
    real = backend.score
    backend.score = lambda ps, cs, length_normalise=True: type(real(ps, cs))([], 0.0, 0, 0)  # type: ignore
    with pytest.raises(BackendError, match="0 score vectors"):
        look(make(backend), ROOM)


def test_wrong_embedding_dimension_is_a_clear_error() -> None:
    cache = make(encoder=HashEncoder(dim=64))
    with pytest.raises(ConfigError, match="64-dimensional"):
        look(cache, ROOM, embedding=np.ones(32, dtype=np.float32))
    with pytest.raises(ConfigError, match="zero vector"):
        look(cache, ROOM, embedding=np.zeros(64, dtype=np.float32))


def test_given_embedding_is_used_instead_of_encoding() -> None:
    encoder = HashEncoder()
    cache = make(encoder=encoder)
    v = 3.0 * encoder.encode([ROOM])[0]  # unnormalised on purpose
    calls = encoder.calls
    r = look(cache, ROOM, embedding=v)
    assert encoder.calls == calls
    np.testing.assert_allclose(r.embedding, v / np.linalg.norm(v), atol=1e-6)


def test_q_values_of_the_wrong_shape_are_refused() -> None:
    with pytest.raises(ConfigError, match="q_values"):
        look(make(), ROOM, q_values=np.zeros(len(ACTIONS) + 1))


# --- threads ---------------------------------------------------------------------------------
def test_concurrent_lookups_keep_the_invariants() -> None:
    backend = FakeBackend()
    cache = make(backend, capacity=8, refresh_rate=0.2, seed=5)
    states = [f"room {i} has a chest and {i % 4} candles near door {i % 3}" for i in range(30)]
    errors: list[BaseException] = []
    n_threads, per_thread = 6, 150

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(per_thread):
                state = states[int(rng.integers(len(states)))]
                k = int(rng.integers(1, 5))
                cands = [f"act {j}" for j in rng.choice(6, size=k, replace=False)]
                r = look(cache, state, cands)
                assert len(r.scores) == k and np.all(np.isfinite(r.log_prior))
                assert math.isclose(float(np.exp(r.log_prior).sum()), 1.0, rel_tol=1e-9)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    cache._assert_consistent()
    s = cache.stats()
    assert s["lookups"] == n_threads * per_thread
    assert s["hits"] + s["misses"] + s["refreshes"] == s["lookups"]
    assert s["llm_calls"] + s["partial_calls"] == backend.n_calls
    assert s["size"] <= 8 and s["hits"] > 0 and s["refreshes"] > 0


# --- kl-budget mode --------------------------------------------------------------------------------
def _arc_backend() -> FakeBackend:
    """Scores that turn smoothly with the state's angle, so a prior served from an entry at cosine s
    is off by an amount that grows with the angle between them (a known error profile)."""

    def score(p: Prompt, action: str) -> float:
        angle = float(p.state.split()[1])
        j = ACTIONS.index(action)
        return 3.0 * math.cos(3.0 * angle * (j + 1) + j)

    return FakeBackend(score)


def _arc_lookups(cache: PriorCache, n: int, seed: int) -> tuple[list[float], int]:
    """n lookups at random angles on an arc; returns the true KL of every served hit, and the LLM calls."""
    rng = np.random.default_rng(seed)
    truth, oracle = [], _arc_backend()
    for i in range(n):
        angle = float(rng.uniform(0.0, 0.8))
        state = f"angle {angle:.6f}"
        q = rng.normal(size=len(ACTIONS))
        out = cache.lookup(
            state,
            Prompt(GOAL.prefix, state),
            ACTIONS,
            q_values=q,
            embedding=unit([math.cos(angle), math.sin(angle)]),
            step=i,
        )
        if out.hit:
            fresh = oracle.score([Prompt(GOAL.prefix, state)], [ACTIONS]).scores[0]
            truth.append(audit_prior(out.scores, fresh, q, 1.0).kl)
    return truth, cache.stats()["llm_calls"] + cache.stats()["partial_calls"]


@pytest.mark.parametrize("target", [0.01, 0.05, 0.2])
def test_kl_budget_meets_its_target_on_a_stream_with_known_error(target):
    config = CacheConfig(mode="kl-budget", refresh_rate=0.05, kl_budget={"target_kl": target})
    cache = PriorCache(config, HashEncoder(), _arc_backend())
    truth, queries = _arc_lookups(cache, 1500, seed=0)
    budget = cache.stats()["kl_budget"]
    assert len(truth) > 100, "the budget must allow hits"
    assert float(np.mean(truth)) <= target * 1.15  # the true KL of what was served
    assert budget["achieved_kl"] <= target and budget["threshold"] < 0.99
    assert cache.params()["similarity_threshold"] == budget["threshold"]
    assert queries < 1500
    cache._assert_consistent()


def test_a_looser_kl_budget_costs_fewer_queries():
    queries = {}
    for target in (0.01, 0.2):
        cache = PriorCache(
            CacheConfig(mode="kl-budget", refresh_rate=0.05, kl_budget={"target_kl": target}),
            HashEncoder(),
            _arc_backend(),
        )
        queries[target] = _arc_lookups(cache, 1000, seed=1)[1]
    assert queries[0.2] < 0.8 * queries[0.01]


def test_kl_budget_per_entry_thresholds_serve_within_the_target():
    config = CacheConfig(mode="kl-budget", refresh_rate=0.1, kl_budget={"target_kl": 0.05, "per_entry": True})
    cache = PriorCache(config, HashEncoder(), _arc_backend())
    truth, _ = _arc_lookups(cache, 1500, seed=2)
    assert truth and float(np.mean(truth)) <= 0.05 * 1.15
    cache._assert_consistent()
