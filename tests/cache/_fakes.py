"""Deterministic stand-ins for the encoder and the LLM backend, for the cache's unit tests."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Sequence

import numpy as np

from priorcache.prior.action_prior import CategoricalPrior, PriorConfig
from priorcache.prior.base import Prompt, ScoreResult
from priorcache.prior.divergence import Audit


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


class HashEncoder:
    """Hashed bag of words → unit vector: texts sharing most words get a cosine near 1."""

    def __init__(self, dim: int = 64, name: str = "fake-hash-bow") -> None:
        self.dim = dim
        self.name = name
        self.calls = 0
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                d = _digest(word)
                out[i, int.from_bytes(d[:4], "little") % self.dim] += 1.0 if d[4] % 2 else -1.0
            if not out[i].any():
                out[i, 0] = 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def hashed_score(prompt: Prompt, action: str) -> float:
    """A score in [-5, 0) that depends on the state part of the prompt and the action."""
    d = _digest(prompt.state + "\x00" + action)
    return -5.0 * int.from_bytes(d[:4], "little") / 2**32


class FakeBackend:
    """Scores with ``fn(prompt, action)``; records every call (thread-safe)."""

    def __init__(self, fn: Callable[[Prompt, str], float] | None = None, name: str = "fake-llm") -> None:
        self.fn = fn or hashed_score
        self.name = name
        self.calls: list[tuple[Prompt, list[str]]] = []
        self._lock = threading.Lock()

    @property
    def n_calls(self) -> int:
        with self._lock:
            return len(self.calls)

    def score(
        self, prompts: Sequence[Prompt], candidates: Sequence[Sequence[str]], length_normalise: bool = True
    ) -> ScoreResult:
        assert length_normalise, "the cache must ask for length-normalised scores (F3)"
        with self._lock:
            for p, c in zip(prompts, candidates):
                self.calls.append((p, list(c)))
        scores = [np.array([self.fn(p, a) for a in c], dtype=np.float64) for p, c in zip(prompts, candidates)]
        return ScoreResult(
            scores=scores,
            wall_time_s=0.001,
            prompt_tokens=sum(len(p.text.split()) for p in prompts),
            continuation_tokens=sum(len(a.split()) for c in candidates for a in c),
        )


def unit(v: Sequence[float], dim: int = 64) -> np.ndarray:
    """A unit vector of ``dim`` values starting with ``v`` (zeros after)."""
    out = np.zeros(dim, dtype=np.float32)
    out[: len(v)] = v
    return out / np.linalg.norm(out)


def at_cosine(c: float, dim: int = 64) -> np.ndarray:
    """A unit vector whose cosine with ``unit([1])`` is ``c``."""
    return unit([c, float(np.sqrt(max(0.0, 1.0 - c * c)))], dim)


def audit_prior(
    served_scores: Sequence[float],
    fresh_scores: Sequence[float],
    q_values: np.ndarray | None = None,
    alpha: float = 1.0,
    prior_config: PriorConfig = PriorConfig(),
) -> Audit:
    """F5 between two raw score vectors on the same actions, through the categorical prior kind as the cache
    audits it."""

    def prior(scores: Sequence[float]) -> CategoricalPrior:
        return CategoricalPrior.from_scores([f"a{i}" for i in range(len(scores))], np.asarray(scores), prior_config)

    return prior(served_scores).divergence(prior(fresh_scores), q_values, alpha)
