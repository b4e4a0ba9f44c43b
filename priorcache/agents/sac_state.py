"""SAC-Prior's bookkeeping (:mod:`priorcache.agents.sac_prior`): the running spread of Q over skills that F1
divides Q by, the cost counters, the recurrent skill state of ``predict``, a skill decision, and the training
episode in progress that ``learn`` goes on with and a save keeps."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class QSpread:
    """The bias-corrected running mean square of Q(s,z) − mean_z Q(s,z) over skill decisions, and the
    scale F1 divides Q by: max(1, its root), so Q is shrunk to unit spread, never magnified."""

    beta: float
    mean_square: float = 0.0
    count: int = 0

    def observe(self, q: np.ndarray) -> None:
        spread = float(np.mean((q - q.mean()) ** 2))
        self.mean_square = self.beta * self.mean_square + (1.0 - self.beta) * spread
        self.count += 1

    @property
    def scale(self) -> float:
        if self.count == 0:
            return 1.0
        return max(1.0, math.sqrt(self.mean_square / (1.0 - self.beta**self.count)))


@dataclass
class SACPriorCounters:
    """What learning cost: environment steps, skill decisions, and the LLM queries the prior source
    reports (full and F7 partial apart), cache hits, gradient steps, and their times."""

    env_steps: int = 0
    episodes: int = 0
    skill_decisions: int = 0
    llm_queries: int = 0
    partial_queries: int = 0
    cache_hits: int = 0
    gradient_steps: int = 0
    llm_time_s: float = 0.0
    decision_time_s: float = 0.0  # skill decisions, LLM included
    train_time_s: float = 0.0  # gradient steps


@dataclass(frozen=True)
class SkillState:
    """``predict``'s recurrent state: the skill in force and how many steps it is still held."""

    skill: int
    steps_left: int


@dataclass
class SkillDecision:
    skill: int
    hit: bool
    lookup: Any = None  # what the prior source served (None without one)


@dataclass
class EpisodeInProgress:
    """The training episode ``learn`` is in the middle of: it goes on at the next call. ``actions``
    are the episode's so far: a save keeps them, and a load replays them from the reset with
    ``reset_seed`` to bring a fresh env to ``obs`` (MuJoCo's state cannot be saved simply)."""

    reset_seed: int
    obs: np.ndarray  # the observation the next step acts on
    decision: SkillDecision  # the skill in force
    steps_left: int  # steps it is still held (≥ 1)
    episode_return: float = 0.0
    length: int = 0
    success: bool = False
    actions: list[np.ndarray] = field(default_factory=list)
