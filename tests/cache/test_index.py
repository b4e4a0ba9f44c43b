"""Vector indexes: agreement with brute force, add/remove/replace semantics, growth, edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from priorcache.cache.index import (
    AUTO_EXACT_MAX_ENTRIES,
    FaissIndex,
    HnswIndex,
    NumpyIndex,
    make_index,
)
from priorcache.errors import ConfigError

DIM = 32
EXACT = ["numpy", "faiss"]
ALL = ["numpy", "faiss", "hnsw", "auto"]


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(ids: np.ndarray, keys: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = keys @ query
    order = np.argsort(-sims)[:k]
    return ids[order], sims[order]


@pytest.mark.parametrize("kind", EXACT)
def test_exact_kinds_agree_with_brute_force(kind: str) -> None:
    rng = np.random.default_rng(1)
    keys = unit(rng, 500)
    ids = rng.permutation(10_000)[:500].astype(np.int64)  # arbitrary, non-contiguous ids
    index = make_index(kind, DIM, capacity=64)  # forces growth on the way
    index.add(ids, keys)
    assert len(index) == 500
    for query in unit(rng, 30):
        got_ids, got_sims = index.search(query, 10)
        want_ids, want_sims = brute_force(ids, keys, query, 10)
        assert got_ids.dtype == np.int64 and got_sims.dtype == np.float32
        np.testing.assert_array_equal(got_ids, want_ids)
        np.testing.assert_allclose(got_sims, want_sims, atol=1e-5)


def test_hnsw_results_are_true_similarities_best_first() -> None:
    rng = np.random.default_rng(2)
    keys = unit(rng, 200)
    ids = np.arange(100, 300, dtype=np.int64)
    index = HnswIndex(DIM, initial_capacity=16)
    index.add(ids, keys)
    found = 0
    for query in unit(rng, 20):
        got_ids, got_sims = index.search(query, 5)
        assert got_ids.dtype == np.int64 and got_sims.dtype == np.float32
        assert len(got_ids) == 5 and len(set(got_ids.tolist())) == 5
        # Whatever it returns, the similarities are the real ones for those ids, best first.
        np.testing.assert_allclose(got_sims, keys[got_ids - 100] @ query, atol=1e-5)
        assert np.all(np.diff(got_sims) <= 1e-6)
        found += len(set(got_ids.tolist()) & set(brute_force(ids, keys, query, 5)[0].tolist()))
    assert found / 100 >= 0.95  # recall@5 on a graph this small (ef=64 of 200 points)


def test_hnsw_recall_at_10k() -> None:
    """Recall@1 on the cache's hit regime: queries near (cosine ~0.9) a stored key, 384-d."""
    rng = np.random.default_rng(3)
    n, dim = 10_000, 384
    keys = unit(rng, n, dim)
    index = make_index("hnsw", dim, capacity=n)
    index.add(np.arange(n), keys)
    picked = rng.integers(0, n, 200)
    queries = keys[picked] + 0.48 * unit(rng, 200, dim)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = np.argmax(queries @ keys.T, axis=1)
    found = np.array([index.search(q, 1)[0][0] for q in queries])
    assert np.mean(found == truth) >= 0.95


def test_hnsw_recall_after_churn() -> None:
    """Evict half the keys and insert new ones into the freed slots: search stays accurate."""
    rng = np.random.default_rng(4)
    index = HnswIndex(DIM, initial_capacity=256)
    first = unit(rng, 2000)
    index.add(np.arange(2000), first)
    index.remove(np.arange(0, 2000, 2))
    second = unit(rng, 1000)
    index.add(np.arange(5000, 6000), second)
    assert len(index) == 2000
    assert index._used == 2000  # slots were reused, the graph did not grow
    live_ids = np.concatenate([np.arange(1, 2000, 2), np.arange(5000, 6000)])
    live_keys = np.concatenate([first[1::2], second])
    hits = 0
    for query_row in rng.integers(0, 2000, 200):
        query = live_keys[query_row] + 0.3 * unit(rng, 1)[0]
        query /= np.linalg.norm(query)
        got, _ = index.search(query, 1)
        hits += int(got[0] == brute_force(live_ids, live_keys, query, 1)[0][0])
        assert got[0] in set(live_ids.tolist())
    assert hits / 200 >= 0.95


@pytest.mark.parametrize("kind", ALL)
def test_empty_index(kind: str) -> None:
    index = make_index(kind, DIM)
    ids, sims = index.search(np.ones(DIM, dtype=np.float32) / np.sqrt(DIM), 5)
    assert ids.shape == (0,) and ids.dtype == np.int64
    assert sims.shape == (0,) and sims.dtype == np.float32
    assert len(index) == 0
    index.remove(np.array([1, 2, 3]))  # unknown ids: no-op
    assert len(index) == 0


@pytest.mark.parametrize("kind", ALL)
def test_add_remove_replace(kind: str) -> None:
    rng = np.random.default_rng(5)
    keys = unit(rng, 3)
    index = make_index(kind, DIM, capacity=8)
    index.add(np.array([10, 20, 30]), keys)

    # Replacing id 20's vector: it is found at the new place, not the old one, and counted once.
    moved = unit(rng, 1)[0]
    index.add(np.array([20]), moved[None])
    assert len(index) == 3
    ids, sims = index.search(moved, 3)
    assert ids[0] == 20 and sims[0] == pytest.approx(1.0, abs=1e-5)
    ids, sims = index.search(keys[1], 3)
    assert sorted(ids.tolist()) == [10, 20, 30]
    assert sims[list(ids).index(20)] == pytest.approx(float(moved @ keys[1]), abs=1e-5)

    # Removing, including an unknown id and the same id twice.
    index.remove(np.array([10, 999, 10]))
    assert len(index) == 2
    ids, _ = index.search(keys[0], 5)
    assert sorted(ids.tolist()) == [20, 30]

    # A removed id can come back.
    index.add(np.array([10]), keys[0][None])
    ids, sims = index.search(keys[0], 1)
    assert ids[0] == 10 and sims[0] == pytest.approx(1.0, abs=1e-5)
    assert len(index) == 3


@pytest.mark.parametrize("kind", ALL)
def test_duplicate_ids_in_one_batch_keep_the_last_vector(kind: str) -> None:
    rng = np.random.default_rng(6)
    keys = unit(rng, 3)
    index = make_index(kind, DIM)
    index.add(np.array([7, 8, 7]), keys)
    assert len(index) == 2
    ids, sims = index.search(keys[2], 1)
    assert ids[0] == 7 and sims[0] == pytest.approx(1.0, abs=1e-5)
    ids, sims = index.search(keys[0], 2)
    assert sims[list(ids).index(7)] == pytest.approx(float(keys[2] @ keys[0]), abs=1e-5)


@pytest.mark.parametrize("kind", ALL)
def test_growth_past_initial_capacity_one_at_a_time(kind: str) -> None:
    rng = np.random.default_rng(7)
    keys = unit(rng, 300)
    index = make_index(kind, DIM, capacity=4)
    for i, key in enumerate(keys):
        index.add(np.array([i]), key[None])
    assert len(index) == 300
    for i in rng.integers(0, 300, 25):
        ids, sims = index.search(keys[i], 1)
        assert ids[0] == i and sims[0] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("kind", ALL)
def test_k_larger_than_size_and_k_zero(kind: str) -> None:
    rng = np.random.default_rng(8)
    keys = unit(rng, 4)
    index = make_index(kind, DIM)
    index.add(np.arange(4), keys)
    ids, sims = index.search(keys[0], 10)
    assert len(ids) == 4 and len(sims) == 4
    assert np.all(np.diff(sims) <= 1e-6)  # best first
    assert len(index.search(keys[0], 0)[0]) == 0


@pytest.mark.parametrize("kind", EXACT)
def test_exact_kinds_match_after_random_operations(kind: str) -> None:
    """A random mix of adds, replacements and removals, checked against a dict model."""
    rng = np.random.default_rng(9)
    index = make_index(kind, DIM, capacity=8)
    model: dict[int, np.ndarray] = {}
    for _ in range(300):
        op = rng.random()
        if op < 0.6 or not model:
            batch = rng.integers(0, 80, rng.integers(1, 4))
            vectors = unit(rng, len(batch))
            index.add(batch, vectors)
            for i, v in zip(batch, vectors):
                model[int(i)] = v
        else:
            doomed = rng.integers(0, 80, rng.integers(1, 4))
            index.remove(doomed)
            for i in doomed:
                model.pop(int(i), None)
        assert len(index) == len(model)
    ids = np.array(sorted(model), dtype=np.int64)
    keys = np.stack([model[int(i)] for i in ids])
    for query in unit(rng, 20):
        got_ids, got_sims = index.search(query, 5)
        want_ids, want_sims = brute_force(ids, keys, query, 5)
        np.testing.assert_array_equal(got_ids, want_ids)
        np.testing.assert_allclose(got_sims, want_sims, atol=1e-5)


def test_auto_picks_exact_below_threshold_and_hnsw_above() -> None:
    assert isinstance(make_index("auto", DIM, capacity=AUTO_EXACT_MAX_ENTRIES), NumpyIndex)
    assert isinstance(make_index("auto", DIM, capacity=AUTO_EXACT_MAX_ENTRIES + 1), HnswIndex)
    assert isinstance(make_index("faiss", DIM), FaissIndex)


def test_unknown_kind_lists_choices() -> None:
    with pytest.raises(ConfigError) as err:
        make_index("annoy", DIM)
    for name in ("numpy", "faiss", "hnsw", "auto"):
        assert name in str(err.value)


@pytest.mark.parametrize("kind", ALL)
def test_wrong_shapes_are_refused(kind: str) -> None:
    index = make_index(kind, DIM)
    with pytest.raises(ConfigError):
        index.add(np.array([1, 2]), np.zeros((2, DIM + 1), dtype=np.float32))
    index.add(np.array([1]), np.ones((1, DIM), dtype=np.float32) / np.sqrt(DIM))
    with pytest.raises(ConfigError):
        index.search(np.zeros(DIM - 1, dtype=np.float32), 1)


@pytest.mark.parametrize("kind", ALL)
def test_search_after_removing_most_entries_returns_every_live_one(kind: str) -> None:
    rng = np.random.default_rng(10)
    keys = unit(rng, 300)
    index = make_index(kind, DIM)
    index.add(np.arange(300), keys)
    index.remove(np.arange(5, 300))
    ids, sims = index.search(keys[250], 10)  # a removed key as the query
    assert sorted(ids.tolist()) == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(sims, keys[ids] @ keys[250], atol=1e-5)
