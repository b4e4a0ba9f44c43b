"""A small ControlEnv-shaped task for SAC-Prior's tests: Gymnasium's Pendulum-v1 behind the interface of
the continuous-control contract (objective, skills, ``info["state_text"]``, ``describe``, ``skill_label``),
with actions rescaled to [−1, 1], and a scripted swing-up controller that records demonstrations.

The describer bins the angle into eight sectors and the angular velocity into five bands, so the
state texts repeat (about 40 of them) as a real describer's do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

MAX_TORQUE = 2.0
SKILLS = ("pump energy by pushing along the swing", "brake the swing", "balance upright")
OBJECTIVE = "Swing the pendulum up and keep it balanced upright."
SECTORS = ("upright", "upright, tilted right", "right", "low right", "hanging down", "low left", "left",
           "upright, tilted left")  # fmt: skip


def angle_of(obs: np.ndarray) -> float:
    """θ in (−π, π], 0 upright (Pendulum's convention), from (cos θ, sin θ)."""
    return math.atan2(float(obs[1]), float(obs[0]))


class PendulumControl(gym.Env):
    """Pendulum-v1 as a ControlEnv: obs (cos θ, sin θ, θ̇), action a ∈ [−1, 1] (torque 2a)."""

    objective = OBJECTIVE
    skills = SKILLS

    def __init__(self, max_episode_steps: int = 200) -> None:
        self._env = gym.make("Pendulum-v1", max_episode_steps=max_episode_steps)
        self.observation_space = self._env.observation_space
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def describe(self, obs: np.ndarray) -> str:
        theta, speed = angle_of(obs), float(obs[2])
        sector = SECTORS[int(round((theta % (2 * math.pi)) / (math.pi / 4))) % 8]
        if abs(speed) < 0.5:
            motion = "almost still"
        else:
            direction = "counter-clockwise" if speed > 0 else "clockwise"
            motion = f"turning {'fast' if abs(speed) > 3 else 'slowly'} {direction}"
        return f"The pendulum is {sector}, {motion}."

    def skill_label(self, obs: np.ndarray, action: np.ndarray) -> str:
        """Segmentation rule: near upright (cos θ > 0.8) it is balancing; else torque along θ̇ pumps
        energy and torque against it brakes."""
        if float(obs[0]) > 0.8:
            return SKILLS[2]
        return SKILLS[0] if float(action[0]) * float(obs[2]) >= 0 else SKILLS[1]

    def _info(self, obs: np.ndarray) -> dict:
        return {"state_text": self.describe(obs), "success": False}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        obs, _ = self._env.reset(seed=seed, options=options)
        return obs.astype(np.float32), self._info(obs)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        a = np.clip(np.asarray(action, np.float32).reshape(1), -1.0, 1.0)
        obs, reward, terminated, truncated, _ = self._env.step(a * MAX_TORQUE)
        return obs.astype(np.float32), float(reward), terminated, truncated, self._info(obs)

    def close(self) -> None:
        self._env.close()


def scripted_action(obs: np.ndarray) -> np.ndarray:
    """An energy-pumping swing-up with a PD balance near the top, in [−1, 1]."""
    theta, speed = angle_of(obs), float(obs[2])
    if float(obs[0]) > 0.85:
        torque = -(8.0 * theta + 1.5 * speed)
    else:
        # energy relative to upright at rest: ½θ̇² + (3g/2l)(cos θ − 1), g = 10, l = 1
        energy = 0.5 * speed**2 + 15.0 * (math.cos(theta) - 1.0)
        torque = 2.0 * np.sign(speed if speed != 0 else 1.0) * (1.0 if energy < 0 else -0.3)
    return np.array([np.clip(torque / MAX_TORQUE, -1.0, 1.0)], np.float32)


@dataclass(frozen=True)
class Demos:
    """ControlDemos-shaped arrays (the fields SAC-Prior's prior fit reads)."""

    observations: np.ndarray
    actions: np.ndarray
    skills: list[str]
    episode: np.ndarray
    returns: list[float]


def record_demos(env: PendulumControl, episodes: int, seed: int = 0, noise: float = 0.1) -> Demos:
    """``episodes`` scripted episodes (with a little action noise, as demonstrations have)."""
    rng = np.random.default_rng(seed)
    obs_list, act_list, skills, ep, returns = [], [], [], [], []
    for e in range(episodes):
        obs, _ = env.reset(seed=10_000 + seed * 100 + e)
        total, done = 0.0, False
        while not done:
            action = np.clip(scripted_action(obs) + rng.normal(0.0, noise, 1), -1.0, 1.0).astype(np.float32)
            obs_list.append(obs)
            act_list.append(action)
            skills.append(env.skill_label(obs, action))
            ep.append(e)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += reward
            done = terminated or truncated
        returns.append(total)
    return Demos(np.array(obs_list), np.array(act_list), skills, np.array(ep), returns)
