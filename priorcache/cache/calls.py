"""The prior cache's encoder call with its cost booked, and the checks of what a caller hands it
(embeddings, Q values, α). Never called under the cache's lock. Backend calls, one or many prompts,
go through :func:`priorcache.cache.batch.ask_backend_batch`."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from priorcache.cache.records import LookupCost
from priorcache.errors import ConfigError
from priorcache.validation import is_number


def encode_state(encoder: Any, name: str, dim: int, state_text: str, cost: LookupCost) -> np.ndarray:
    """e(φ(s)) as a unit float32 vector; the encoder's time is booked in ``cost``."""
    with cost.timed("encode_time_s", "external_wall_s"):
        out = np.asarray(encoder.encode([state_text]), dtype=np.float32)
    if out.shape != (1, dim):
        raise ConfigError(f"encoder {name!r} returned shape {out.shape} for one text, expected (1, {dim})")
    return unit_vector(out[0], f"encoder {name!r} output")


def check_embedding(embedding: np.ndarray, dim: int, encoder_name: str) -> np.ndarray:
    arr = np.asarray(embedding, dtype=np.float32)
    if arr.size != dim or arr.ndim > 2 or (arr.ndim == 2 and arr.shape[0] != 1):
        raise ConfigError(
            f"embedding has shape {arr.shape}, but encoder {encoder_name!r} gives "
            f"{dim}-dimensional vectors: pass a ({dim},) vector"
        )
    return unit_vector(arr.reshape(dim), "embedding")


def unit_vector(v: np.ndarray, what: str) -> np.ndarray:
    if not np.all(np.isfinite(v)):
        raise ConfigError(f"{what} contains NaN or ±inf")
    norm = float(np.linalg.norm(v))
    if norm == 0.0:
        raise ConfigError(f"{what} is the zero vector; cosine similarity needs a direction")
    # Cosine = inner product only for unit vectors; renormalising costs nothing and
    # protects the index from a caller's unnormalised vector.
    return (v / norm).astype(np.float32)


def check_q(q_values: np.ndarray | None, n: int, alpha: float) -> np.ndarray | None:
    if not (is_number(alpha) and math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"temperature α must be a finite number > 0, got {alpha!r}")
    if q_values is None:
        return None
    q = np.asarray(q_values, dtype=np.float64)
    if q.shape != (n,):
        raise ConfigError(f"q_values has shape {q.shape}, expected ({n},) for {n} candidates")
    if not np.all(np.isfinite(q)):
        raise ConfigError("q_values contain NaN or ±inf")
    return q
