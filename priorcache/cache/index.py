"""Nearest-neighbour indexes over unit key vectors, searched by cosine (= inner product).

Every index maps integer ids to vectors and supports add / remove / search; the prior cache
owns the ids. ``make_index`` picks an implementation by name:

- ``"numpy"``: exact, a contiguous float32 matrix times the query (single-threaded row dots).
- ``"faiss"``: exact, faiss ``IndexFlatIP`` with our own id map (O(d) removal by swapping in the
  last row, where ``IndexIDMap2.remove_ids`` would shift every later row).
- ``"hnsw"``: approximate, hnswlib graph in inner-product space (M=32, ef_construction=128,
  ef=64). Removal marks the element deleted and its slot is reused by the next insertion, so a
  cache that keeps evicting and inserting does not grow the graph without bound.
- ``"auto"``: exact ``numpy`` for ``capacity <= AUTO_EXACT_MAX_ENTRIES`` (10,000), ``hnsw`` above.
  It decides once, from the capacity the index is made for (the cache's K), not per lookup.

All return ``(ids int64, similarities float32)`` best first; an empty index gives empty arrays;
adding an existing id replaces its vector; removing an unknown id does nothing. Similarities are
raw inner products, so they are cosines exactly when keys and queries are unit vectors.

Numbers behind the defaults (``python benchmarks/bench_lookup.py``, results in
benchmarks/results/lookup.json; the 2 CPU cores shared with other jobs, load average 1.3-3.7
during the run; uniform random unit 384-d keys; queries = a stored key plus noise at cosine ~0.9,
the cache-hit regime; one query per call; median over 5 rounds of 500 queries). The 2k/5k/20k
rows come from ``--sizes 2000,5000,20000`` runs of the same script:

=========  ===============  ===============  ===============  ========  =================
entries    numpy p50/p95    faiss p50/p95    hnsw p50/p95     recall@1  memory numpy/hnsw
=========  ===============  ===============  ===============  ========  =================
1,000      0.05 / 0.07 ms   0.03 / 0.05 ms   0.07 / 0.09 ms   1.00      1.10× / 3.13×
2,000      0.09 / 0.13 ms                    0.10 / 0.13 ms   1.00
5,000      0.21 / 0.30 ms                    0.15 / 0.25 ms   1.00
10,000     0.52 / 0.68 ms   4.0 / 16 ms      0.35 / 0.47 ms   1.00      1.17× / 1.53×
20,000     1.5 / 1.7 ms                      0.55 / 0.72 ms   1.00
100,000    7.8 / 10.6 ms    35 / 48 ms       0.80 / 1.04 ms   0.99      1.08× / 1.36×
=========  ===============  ===============  ===============  ========  =================

(recall@1 is HNSW's; memory is resident-set growth over the raw n·384·4 bytes of keys.)

- Exact search reads all n·384·4 bytes per query, so it grows linearly and cannot meet a 2 ms
  budget at 100k. Up to 10k it costs at most ~0.2 ms more than HNSW, uses less memory and never
  misses a neighbour; at 20k it is ~1 ms slower. Hence ``auto`` = exact up to 10k, HNSW above.
- The numpy index multiplies with ``np.vecdot`` (one thread) rather than a BLAS matvec. BLAS is
  faster on idle cores (0.14 ms vs 0.26 ms at 10k) but splits the work over both cores and,
  whenever another job holds one, waits for it: p95 ~8 ms from 5k entries on, p50 up to 5.7 ms
  at 10k in our runs. The lookup sits on every decision, so its tail matters more.
- faiss' flat index is no faster than numpy for one query at a time and its OpenMP threads have
  the same stall (4-16 ms at 10k under load, 0.25 ms on idle cores), so ``auto`` never picks it;
  it stays for comparison and batched use.
- HNSW M=32 rather than 16: on these keys (uniform in 384-d, the hardest case for a graph
  index) M=16 reaches recall@1 0.78 / 0.93 / 0.99 at ef 64 / 128 / 256 with 100k entries
  (p50 0.43 / 0.71 / 1.3 ms), M=32 0.99 / 1.00 at ef 64 / 128 (p50 0.9 / 2.3 ms). Clustered keys,
  closer to real sentence embeddings, already gave recall 1.00 with M=16, ef=64 at 100k.
  Building costs ~2 ms per insertion at 100k (once per cache miss, next to a ~0.4 s LLM call).
- HNSW memory is 1.4-1.5× the raw keys at 10k-100k; at 1k it is ~3× because hnswlib allocates
  a fixed ~2.6 MB of per-label locks for every index (one more reason to stay exact when small).
- On random queries (best cosine ~0.2: a miss at any useful threshold) HNSW recall@1 falls to
  ~0.65 at 10k; that never changes a hit/miss decision.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from priorcache.errors import ConfigError

INDEX_KINDS = ("numpy", "faiss", "hnsw", "auto")
# Largest capacity for which "auto" chooses exact search; see the module docstring.
AUTO_EXACT_MAX_ENTRIES = 10_000
# Indexes start at most this large and grow, so a large capacity K costs nothing until it is used.
_MAX_INITIAL_CAPACITY = 4096


class VectorIndex(Protocol):
    dim: int

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> None: ...

    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (ids, cosine similarities) of the ≤ k nearest vectors, best first."""
        ...

    def __len__(self) -> int: ...


# numpy >= 2.0; see _row_dot.
_VECDOT = getattr(np, "vecdot", None)


def _row_dot(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """``matrix @ vector`` on one thread where numpy allows it.

    ``np.vecdot`` takes one short dot product per row, single-threaded; a BLAS matvec splits the
    rows over the cores and, when another job holds one of them, stalls ~8 ms waiting for it.
    """
    if _VECDOT is not None:
        return _VECDOT(matrix, vector)
    return matrix @ vector


def _empty_result() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)


def _as_batch(ids: np.ndarray, vectors: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate an (ids, vectors) batch; a repeated id keeps its last vector, like sequential adds."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.size != len(ids) * dim:
        raise ConfigError(f"expected {len(ids)} vectors of dimension {dim}, got an array of shape {vectors.shape}")
    vectors = vectors.reshape(len(ids), dim)
    if len(np.unique(ids)) != len(ids):
        # np.unique on the reversed ids finds each id's last occurrence.
        _, first_in_reversed = np.unique(ids[::-1], return_index=True)
        keep = np.sort(len(ids) - 1 - first_in_reversed)
        ids, vectors = ids[keep], vectors[keep]
    return ids, np.ascontiguousarray(vectors)


def _as_query(vector: np.ndarray, dim: int) -> np.ndarray:
    query = np.asarray(vector, dtype=np.float32)
    if query.size != dim:
        raise ConfigError(f"expected a query vector of dimension {dim}, got shape {query.shape}")
    return np.ascontiguousarray(query.reshape(1, dim))


class NumpyIndex:
    """Exact inner-product search over a contiguous float32 matrix (rows swapped on removal)."""

    def __init__(self, dim: int, initial_capacity: int = 1024) -> None:
        self.dim = dim
        self._vectors = np.zeros((max(1, initial_capacity), dim), dtype=np.float32)
        self._ids = np.zeros(max(1, initial_capacity), dtype=np.int64)
        self._row_of: dict[int, int] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids, vectors = _as_batch(ids, vectors, self.dim)
        for i, v in zip(ids, vectors):
            if int(i) in self._row_of:
                self._vectors[self._row_of[int(i)]] = v
                continue
            if self._size == len(self._ids):
                self._grow()
            self._vectors[self._size] = v
            self._ids[self._size] = i
            self._row_of[int(i)] = self._size
            self._size += 1

    def _grow(self) -> None:
        # ×1.5 rather than ×2 keeps allocated rows within 1.5× the live ones (memory budget: 2×
        # the raw key matrix, and the old and new arrays coexist while copying).
        capacity = len(self._ids) + max(1, len(self._ids) // 2)
        vectors = np.empty((capacity, self.dim), dtype=np.float32)
        vectors[: self._size] = self._vectors[: self._size]
        ids = np.empty(capacity, dtype=np.int64)
        ids[: self._size] = self._ids[: self._size]
        self._vectors, self._ids = vectors, ids

    def remove(self, ids: np.ndarray) -> None:
        for i in np.asarray(ids, dtype=np.int64).reshape(-1):
            row = self._row_of.pop(int(i), None)
            if row is None:
                continue
            last = self._size - 1
            if row != last:
                self._vectors[row] = self._vectors[last]
                self._ids[row] = self._ids[last]
                self._row_of[int(self._ids[row])] = row
            self._size -= 1

    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._size == 0 or k < 1:
            return _empty_result()
        sims = _row_dot(self._vectors[: self._size], _as_query(vector, self.dim)[0])
        k = min(k, self._size)
        top = np.argpartition(-sims, k - 1)[:k] if k < self._size else np.arange(self._size)
        top = top[np.argsort(-sims[top], kind="stable")]
        return self._ids[top].copy(), sims[top]


class FaissIndex:
    """Exact inner-product search with faiss ``IndexFlatIP``; ids mapped to rows by us.

    Rows are kept dense like ``NumpyIndex``: removal copies the last row into the freed one and
    truncates, and replacement overwrites in place, both through a numpy view of faiss' storage.
    """

    def __init__(self, dim: int, initial_capacity: int = 1024) -> None:
        import faiss  # imported here so that the other kinds work without loading faiss

        self._faiss = faiss
        self.dim = dim
        self._index = faiss.IndexFlatIP(dim)
        self._ids = np.zeros(max(1, initial_capacity), dtype=np.int64)
        self._row_of: dict[int, int] = {}

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def _rows(self) -> np.ndarray:
        # A fresh view every time: faiss may reallocate its storage on add.
        n = int(self._index.ntotal)
        flat = self._faiss.rev_swig_ptr(self._index.get_xb(), n * self.dim)
        return flat.reshape(n, self.dim)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids, vectors = _as_batch(ids, vectors, self.dim)
        known = np.fromiter((int(i) in self._row_of for i in ids), dtype=bool, count=len(ids))
        if known.any():
            rows = self._rows()
            for i, v in zip(ids[known], vectors[known]):
                rows[self._row_of[int(i)]] = v
        new_ids, new_vectors = ids[~known], vectors[~known]
        if len(new_ids) == 0:
            return
        start = len(self)
        if start + len(new_ids) > len(self._ids):
            grown = np.zeros(max(2 * len(self._ids), start + len(new_ids)), dtype=np.int64)
            grown[:start] = self._ids[:start]
            self._ids = grown
        self._index.add(new_vectors)
        self._ids[start : start + len(new_ids)] = new_ids
        for offset, i in enumerate(new_ids):
            self._row_of[int(i)] = start + offset

    def remove(self, ids: np.ndarray) -> None:
        doomed = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1) if int(i) in self._row_of]
        if not doomed:
            return
        rows = self._rows()
        size = len(self)
        for i in doomed:
            row = self._row_of.pop(i, None)
            if row is None:  # the same id twice in one call
                continue
            last = size - 1
            if row != last:
                rows[row] = rows[last]
                self._ids[row] = self._ids[last]
                self._row_of[int(self._ids[row])] = row
            size -= 1
        # Only the tail is selected, so faiss drops it without moving any other row.
        self._index.remove_ids(self._faiss.IDSelectorRange(size, len(self)))

    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self) == 0 or k < 1:
            return _empty_result()
        k = min(k, len(self))
        sims, rows = self._index.search(_as_query(vector, self.dim), k)
        return self._ids[rows[0]].copy(), sims[0].astype(np.float32, copy=False)


class HnswIndex:
    """Approximate inner-product search with an hnswlib graph.

    hnswlib labels are our slots, not the caller's ids: a removed id's slot is marked deleted and
    handed to the next new id (hnswlib then rewires it in place), so the graph holds at most the
    peak number of live entries however many evictions happen.
    """

    def __init__(
        self,
        dim: int,
        initial_capacity: int = 1024,
        *,
        m: int = 32,
        ef_construction: int = 128,
        ef_search: int = 64,
        seed: int = 0,
    ) -> None:
        import hnswlib  # imported here so that the other kinds work without loading hnswlib

        if m < 2 or ef_construction < 1 or ef_search < 1:
            raise ConfigError(
                f"hnsw needs m >= 2, ef_construction >= 1, ef_search >= 1; got {m}, {ef_construction}, {ef_search}"
            )
        self.dim = dim
        self.ef_search = ef_search
        capacity = max(1, initial_capacity)
        self._index: Any = hnswlib.Index(space="ip", dim=dim)
        self._index.init_index(max_elements=capacity, ef_construction=ef_construction, M=m, random_seed=seed)
        self._index.set_ef(ef_search)
        self._id_at = np.full(capacity, -1, dtype=np.int64)
        self._slot_of: dict[int, int] = {}
        self._free: list[int] = []
        self._used = 0  # slots ever handed out; hnswlib's element count

    def __len__(self) -> int:
        return len(self._slot_of)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids, vectors = _as_batch(ids, vectors, self.dim)
        if len(ids) == 0:
            return
        slots = np.empty(len(ids), dtype=np.int64)
        for n, i in enumerate(ids):
            slot = self._slot_of.get(int(i))
            if slot is None:
                if self._free:
                    slot = self._free.pop()
                else:
                    slot = self._used
                    self._used += 1
                self._slot_of[int(i)] = slot
            slots[n] = slot
        capacity = self._index.get_max_elements()
        if self._used > capacity:
            capacity = max(2 * capacity, self._used)
            self._index.resize_index(capacity)
            grown = np.full(capacity, -1, dtype=np.int64)
            grown[: len(self._id_at)] = self._id_at
            self._id_at = grown
        self._id_at[slots] = ids
        # New slots are inserted, live or deleted ones are updated (and undeleted) in place.
        self._index.add_items(vectors, slots)

    def remove(self, ids: np.ndarray) -> None:
        for i in np.asarray(ids, dtype=np.int64).reshape(-1):
            slot = self._slot_of.pop(int(i), None)
            if slot is None:
                continue
            self._index.mark_deleted(slot)
            self._id_at[slot] = -1
            self._free.append(slot)

    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self) == 0 or k < 1:
            return _empty_result()
        k = min(k, len(self))
        query = _as_query(vector, self.dim)
        ef = max(self.ef_search, k)
        while True:
            self._index.set_ef(ef)
            try:
                slots, distances = self._index.knn_query(query, k=k, num_threads=1)
                break
            except RuntimeError:
                # Fewer than k live elements reached (many deleted ones in the way): widen the
                # beam; at ef >= every slot the search visits the whole connected graph.
                if ef >= self._used:
                    raise
                ef = min(2 * ef, self._used)
            finally:
                self._index.set_ef(self.ef_search)
        ids = self._id_at[slots[0].astype(np.int64)]
        # The "ip" space reports distance = 1 - inner product.
        sims = (1.0 - distances[0]).astype(np.float32)
        return ids, sims


def resolve_index_kind(kind: str, capacity: int) -> str:
    """The concrete kind ``make_index`` builds: ``"auto"`` becomes ``"numpy"`` or ``"hnsw"``."""
    if kind not in INDEX_KINDS:
        raise ConfigError(f"unknown index kind {kind!r}; choose one of {list(INDEX_KINDS)}")
    if kind == "auto":
        return "numpy" if capacity <= AUTO_EXACT_MAX_ENTRIES else "hnsw"
    return kind


def make_index(kind: str, dim: int, capacity: int = 1024) -> VectorIndex:
    """Build an index by name for up to ``capacity`` vectors (it still grows past it if asked)."""
    initial = max(1, min(capacity, _MAX_INITIAL_CAPACITY))
    kind = resolve_index_kind(kind, capacity)
    if kind == "numpy":
        return NumpyIndex(dim, initial_capacity=initial)
    if kind == "faiss":
        return FaissIndex(dim, initial_capacity=initial)
    return HnswIndex(dim, initial_capacity=initial)
