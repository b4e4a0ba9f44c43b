"""Nearest-neighbour indexes over unit key vectors, searched by cosine (= inner product).

Every index maps integer ids to vectors and supports add / remove / search; the prior cache
owns the ids. ``make_index`` picks an implementation by name.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from priorcache.errors import ConfigError


class VectorIndex(Protocol):
    dim: int

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> None: ...

    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (ids, cosine similarities) of the ≤ k nearest vectors, best first."""
        ...

    def __len__(self) -> int: ...


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
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        for i, v in zip(ids, vectors):
            if int(i) in self._row_of:
                self._vectors[self._row_of[int(i)]] = v
                continue
            if self._size == len(self._ids):
                self._vectors = np.concatenate([self._vectors, np.zeros_like(self._vectors)])
                self._ids = np.concatenate([self._ids, np.zeros_like(self._ids)])
            self._vectors[self._size] = v
            self._ids[self._size] = i
            self._row_of[int(i)] = self._size
            self._size += 1

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
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        sims = self._vectors[: self._size] @ np.asarray(vector, dtype=np.float32).reshape(self.dim)
        k = min(k, self._size)
        top = np.argpartition(-sims, k - 1)[:k] if k < self._size else np.arange(self._size)
        top = top[np.argsort(-sims[top], kind="stable")]
        return self._ids[top].copy(), sims[top]


def make_index(kind: str, dim: int, capacity: int = 1024) -> VectorIndex:
    """Build an index by name for up to ``capacity`` vectors."""
    if kind == "numpy":
        return NumpyIndex(dim, initial_capacity=min(capacity, 4096))
    raise ConfigError(f"unknown index kind {kind!r}; choose one of ['numpy']")
