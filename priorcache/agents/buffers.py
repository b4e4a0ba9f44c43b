"""The replay buffer of the DQN agents: transitions over encoded text, with the next state's support.

A stored transition is (e(s), e(a), r, done, hit, e(s'), C(s')), C(s') the (up to ``support``)
encoded next actions the target bootstraps over (padded, with a mask). ``hit`` says whether the
action was drawn around a cached prior (the adaptive cache compares TD errors of hits and misses).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from priorcache.errors import ConfigError
from priorcache.validation import is_json_int

FIELDS = ("states", "actions", "rewards", "dones", "hits", "next_states", "next_support", "next_mask")


@dataclass
class Transition:
    """A transition whose next-state support C(s') is known only at the next decision."""

    state: np.ndarray
    action: np.ndarray
    reward: float = 0.0
    done: bool = False
    hit: bool = False


class RingBuffer:
    """What every replay buffer here shares: preallocated arrays named ``fields`` (one row per
    transition, set by the subclass's ``__init__`` with ``size``, ``pos`` and ``full``), uniform
    sampling, and saving/restoring the filled rows."""

    fields: tuple[str, ...] = ()
    size: int
    pos: int
    full: bool

    def __len__(self) -> int:
        return self.size if self.full else self.pos

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """``n`` transitions drawn uniformly with replacement (one ``rng.integers`` draw)."""
        idx = rng.integers(0, len(self), size=n)
        return {k: torch.as_tensor(getattr(self, k)[idx]) for k in self.fields}

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, int | bool]]:
        """The stored transitions (the filled rows only) and the ring's position, for saving."""
        n = len(self)
        return {k: np.ascontiguousarray(getattr(self, k)[:n]) for k in self.fields}, {
            "pos": self.pos,
            "full": self.full,
        }

    def load_arrays(self, arrays: dict[str, np.ndarray], pos: int, full: bool) -> None:
        """Inverse of :meth:`to_arrays`; ConfigError (nothing changed) when they do not fit this buffer."""
        if not (is_json_int(pos) and isinstance(full, bool) and 0 <= pos < self.size):
            raise ConfigError(f"replay buffer position {pos!r} (full={full!r}) does not fit a buffer of {self.size}")
        n = self.size if full else pos
        if sorted(arrays) != sorted(self.fields):
            raise ConfigError(f"replay buffer arrays {sorted(arrays)}, expected {sorted(self.fields)}")
        for k in self.fields:
            mine = getattr(self, k)
            if arrays[k].shape != (n, *mine.shape[1:]) or arrays[k].dtype != mine.dtype:
                raise ConfigError(
                    f"replay buffer array {k!r} is {arrays[k].dtype}{list(arrays[k].shape)}, "
                    f"expected {mine.dtype}{[n, *mine.shape[1:]]}"
                )
            if mine.dtype.kind == "f" and not np.isfinite(arrays[k]).all():
                raise ConfigError(f"replay buffer array {k!r} holds non-finite numbers")
        for k in self.fields:
            getattr(self, k)[:n] = arrays[k]
        self.pos, self.full = pos, full


class ReplayBuffer(RingBuffer):
    """A ring buffer of ``size`` transitions in preallocated arrays (``dim``: the encoder's, of
    actions; ``state_dim``: of the stored state features, ``dim`` when None)."""

    fields = FIELDS

    def __init__(self, size: int, dim: int, support: int, state_dim: int | None = None) -> None:
        state_dim = dim if state_dim is None else state_dim
        self.states = np.zeros((size, state_dim), np.float32)
        self.actions = np.zeros((size, dim), np.float32)
        self.rewards = np.zeros(size, np.float32)
        self.dones = np.zeros(size, np.float32)
        self.hits = np.zeros(size, bool)
        self.next_states = np.zeros((size, state_dim), np.float32)
        self.next_support = np.zeros((size, support, dim), np.float32)
        self.next_mask = np.zeros((size, support), bool)
        self.size, self.pos, self.full = size, 0, False

    def add(self, t: Transition, next_state: np.ndarray, support: np.ndarray) -> None:
        i = self.pos
        self.states[i], self.actions[i], self.rewards[i], self.dones[i] = t.state, t.action, t.reward, t.done
        self.hits[i] = t.hit
        self.next_states[i] = next_state
        self.next_support[i] = 0.0
        self.next_mask[i] = False
        self.next_support[i, : len(support)] = support
        self.next_mask[i, : len(support)] = True
        self.pos = (i + 1) % self.size
        self.full = self.full or self.pos == 0
