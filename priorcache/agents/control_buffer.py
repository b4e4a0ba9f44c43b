"""The replay buffer of the continuous-control agents (SAC-Prior): transitions over observation vectors,
with the skill in force at s and at s'.

A stored transition is (s, a, r, terminated, z, hit, s', z'); ``hit`` says whether z was chosen on a
cached prior (the adaptive cache compares TD errors of hits and misses). Arrays are preallocated;
``to_arrays`` / ``load_arrays`` save and restore the filled rows (safetensors via
:func:`priorcache.agents.saving.write_arrays`).
"""

from __future__ import annotations

import numpy as np

from priorcache.agents.buffers import RingBuffer

BUFFER_FIELDS = ("obs", "actions", "rewards", "dones", "skills", "hits", "next_obs", "next_skills")


class ControlReplayBuffer(RingBuffer):
    """A ring buffer of ``size`` transitions (s, a, r, terminated, z, hit, s', z')."""

    fields = BUFFER_FIELDS

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
