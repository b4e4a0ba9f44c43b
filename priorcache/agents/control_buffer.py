"""The replay buffer of the continuous-control agents (SAC-Prior): transitions over observation vectors,
with the skill in force at s and at s'.

A stored transition is (s, a, r, terminated, z, hit, s', z'); ``hit`` says whether z was chosen on a
cached prior (the adaptive cache compares TD errors of hits and misses). Arrays are preallocated;
``to_arrays`` / ``load_arrays`` save and restore the filled rows (safetensors via
:func:`priorcache.agents.saving.write_arrays`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from priorcache.errors import ConfigError

BUFFER_FIELDS = ("obs", "actions", "rewards", "dones", "skills", "hits", "next_obs", "next_skills")


class ControlReplayBuffer:
    """A ring buffer of ``size`` transitions (s, a, r, terminated, z, hit, s', z')."""

    def __init__(self, size: int, obs_dim: int, act_dim: int) -> None:
        self.obs = np.zeros((size, obs_dim), np.float32)
        self.actions = np.zeros((size, act_dim), np.float32)
        self.rewards = np.zeros(size, np.float32)
        self.dones = np.zeros(size, np.float32)
        self.skills = np.zeros(size, np.int64)
        self.hits = np.zeros(size, bool)
        self.next_obs = np.zeros((size, obs_dim), np.float32)
        self.next_skills = np.zeros(size, np.int64)
        self.size, self.pos, self.full = size, 0, False

    def __len__(self) -> int:
        return self.size if self.full else self.pos

    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: float,
        done: bool,
        skill: int,
        hit: bool,
        next_obs: np.ndarray,
        next_skill: int,
    ) -> None:
        i = self.pos
        self.obs[i], self.actions[i], self.rewards[i], self.dones[i] = obs, action, reward, done
        self.skills[i], self.hits[i], self.next_obs[i], self.next_skills[i] = skill, hit, next_obs, next_skill
        self.pos = (i + 1) % self.size
        self.full = self.full or self.pos == 0

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """``n`` transitions drawn uniformly with replacement (one ``rng.integers`` draw)."""
        idx = rng.integers(0, len(self), size=n)
        return {k: torch.as_tensor(getattr(self, k)[idx]) for k in BUFFER_FIELDS}

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The filled rows and the ring's position, for saving."""
        n = len(self)
        return {k: np.ascontiguousarray(getattr(self, k)[:n]) for k in BUFFER_FIELDS}, {
            "pos": self.pos,
            "full": self.full,
        }

    def load_arrays(self, arrays: dict[str, np.ndarray], pos: Any, full: Any) -> None:
        """Inverse of :meth:`to_arrays`; ConfigError (nothing changed) when they do not fit."""
        if not (isinstance(pos, int) and isinstance(full, bool) and 0 <= pos < self.size):
            raise ConfigError(f"replay buffer position {pos!r} (full={full!r}) does not fit a buffer of {self.size}")
        n = self.size if full else pos
        if sorted(arrays) != sorted(BUFFER_FIELDS):
            raise ConfigError(f"replay buffer arrays {sorted(arrays)}, expected {sorted(BUFFER_FIELDS)}")
        for k in BUFFER_FIELDS:
            mine = getattr(self, k)
            if arrays[k].shape != (n, *mine.shape[1:]) or arrays[k].dtype != mine.dtype:
                raise ConfigError(
                    f"replay buffer array {k!r} is {arrays[k].dtype}{list(arrays[k].shape)}, "
                    f"expected {mine.dtype}{[n, *mine.shape[1:]]}"
                )
            if mine.dtype.kind == "f" and not np.isfinite(arrays[k]).all():
                raise ConfigError(f"replay buffer array {k!r} holds non-finite numbers")
        for k in BUFFER_FIELDS:
            getattr(self, k)[:n] = arrays[k]
        self.pos, self.full = pos, full
