"""What every continuous-control environment does alike: ``ControlEnv``, the base of MuJoCo and MetaWorld tasks.

``ControlEnv`` wraps one simulator environment (Gymnasium MuJoCo v5, MetaWorld) behind the Gymnasium
API that SAC-Prior, the skill prior and the learned state abstraction are written against:

* ``observation_space``: the simulator's observation vector as ``float32``;
* ``action_space``: ``Box(-1, 1, (d,), float32)``; an action is clipped to it and mapped linearly onto
  the simulator's own action box (the same box for every task here, so the map is the identity);
* ``objective`` (the task's goal in words) and ``skills`` (the task's symbolic skill vocabulary z);
* ``info`` of ``reset`` and ``step`` always holds ``state_text`` (φ(s): ``describe(obs)``) and
  ``success`` (MetaWorld's success flag; always False on locomotion), next to the simulator's own keys;
* ``describe(obs)``: the describer φ(s), short binned text of the state; ``described_dims`` says
  which observation dimensions it reads (the tests check that each of them changes the text and no
  other does);
* ``skill_label(obs, action)``: the documented rule that segments a demonstration into skills.

Training and held-out tasks: ``game_seed`` picks the task instance, as it picks the game of a text
environment (``priorcache.envs.registry.GameSplit``). What it fixes is the subclass's to say:
MetaWorld's object and goal positions, the initial-state stream of a locomotion task.
``reset(seed=...)`` draws the episode's initial state from ``SeedSequence((game_seed, seed))``, so a
training task and an evaluation task never share an initial-state stream even for equal reset seeds.

The step counter, the truncation at ``max_episode_steps``, and the guards (a step before ``reset``
or after the episode ended, a closed environment, an action of the wrong shape or not finite) live
here; a subclass implements the hooks only: ``_inner_reset``, ``_success``, ``describe`` and
``skill_label``.

MuJoCo's C library appends its warnings ("Nan, Inf or huge value in QACC ...") to ``MUJOCO_LOG.TXT``
in the working directory. ``route_mujoco_warnings`` installs a warning callback (once per process,
only where none is installed) that sends them to the ``priorcache.mujoco`` logger instead, so no run
leaves that file behind.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium
import numpy as np
from gymnasium import spaces

from priorcache.envs.checks import check_game_seed, check_max_episode_steps
from priorcache.errors import ConfigError

LOG = logging.getLogger("priorcache.mujoco")


def route_mujoco_warnings() -> None:
    """Send MuJoCo's warnings to the ``priorcache.mujoco`` logger instead of ``MUJOCO_LOG.TXT``.

    MuJoCo has one process-wide warning callback; it is set only while none is set, so a user's own
    callback (or an earlier call) is kept.
    """
    import mujoco

    if mujoco.get_mju_user_warning() is None:
        # logging, not warnings.warn: the callback runs inside mj_step, where an exception (a warnings
        # filter set to "error") could not propagate cleanly.
        mujoco.set_mju_user_warning(lambda message: LOG.warning("MuJoCo: %s", message))


def bin_word(value: float, edges: Sequence[float], words: Sequence[str]) -> str:
    """The word of the bin ``value`` falls in: ``words[i]`` for ``edges[i-1] <= value < edges[i]``.

    ``len(words) == len(edges) + 1``; ``edges`` ascending. A NaN falls in the last bin.
    """
    if len(words) != len(edges) + 1:
        raise ValueError(f"{len(edges)} edges need {len(edges) + 1} words, got {len(words)}")
    for edge, word in zip(edges, words):
        if value < edge:
            return word
    return words[-1]


def direction_words(delta: np.ndarray, horizontal: tuple[str, str, str, str], tolerance: float) -> str:
    """Where ``delta`` (x, y, z) points, in words: the dominant horizontal axis, then above/below.

    ``horizontal`` names +x, -x, +y, -y (as prepositions: "ahead of"). A component whose magnitude is
    below ``tolerance`` is left out; a delta entirely below it gives "".
    """
    dx, dy, dz = (float(v) for v in delta[:3])
    parts = []
    if max(abs(dx), abs(dy)) >= tolerance:
        if abs(dx) >= abs(dy):
            parts.append(horizontal[0] if dx > 0 else horizontal[1])
        else:
            parts.append(horizontal[2] if dy > 0 else horizontal[3])
    if abs(dz) >= tolerance:
        parts.append("above" if dz > 0 else "below")
    return " and ".join(parts)


class ControlEnv(gymnasium.Env):
    """A continuous-control task behind the contract of the module docstring.

    Subclasses call ``super().__init__(inner, ...)`` with the simulator environment (unwrapped: this
    class truncates episodes itself) and implement the hooks.
    """

    metadata = {"render_modes": []}
    #: "MuJoCo", "MetaWorld": how error messages name the simulator.
    display_name: ClassVar[str] = "control"

    objective: str
    skills: tuple[str, ...]
    #: The observation dimensions ``describe`` reads (sorted).
    described_dims: tuple[int, ...]

    def __init__(
        self,
        inner: gymnasium.Env,
        *,
        game_seed: int,
        max_episode_steps: int,
        objective: str,
        skills: Sequence[str],
        described_dims: Sequence[int],
    ) -> None:
        if not isinstance(inner.action_space, spaces.Box) or not isinstance(inner.observation_space, spaces.Box):
            raise ConfigError(f"{type(inner).__name__} has no Box action and observation spaces")
        self._inner = inner
        self.game_seed = check_game_seed(game_seed)
        self.max_episode_steps = check_max_episode_steps(max_episode_steps)
        self.objective = objective
        self.skills = tuple(skills)
        if not self.skills or len(set(self.skills)) != len(self.skills):
            raise ConfigError(f"a skill vocabulary must be non-empty and without duplicates, got {self.skills}")
        shape = inner.observation_space.shape
        self.described_dims = tuple(sorted(set(int(d) for d in described_dims)))
        if any(not 0 <= d < shape[0] for d in self.described_dims):
            raise ConfigError(f"described_dims {self.described_dims} are outside the observation of shape {shape}")
        with np.errstate(over="ignore"):  # float64 bounds beyond float32's range become ±inf
            self.observation_space = spaces.Box(
                inner.observation_space.low.astype(np.float32),
                inner.observation_space.high.astype(np.float32),
                dtype=np.float32,
            )
        self._act_low = inner.action_space.low.astype(np.float64)
        self._act_high = inner.action_space.high.astype(np.float64)
        self.action_space = spaces.Box(-1.0, 1.0, inner.action_space.shape, dtype=np.float32)
        self._steps = 0
        self._done = True  # stepping before the first reset is the same error as stepping after the end
        self._closed = False

    # ------------------------------------------------------------------ hooks

    def _inner_reset(self, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset the simulator for an episode whose randomness comes from ``seed``."""
        raise NotImplementedError

    def _success(self, info: dict[str, Any]) -> bool:
        """Whether the task is solved in the state the simulator's ``info`` describes."""
        return False

    def describe(self, obs: np.ndarray) -> str:
        """φ(s): short binned text of observation ``obs`` (the same text as ``info["state_text"]``)."""
        raise NotImplementedError

    def skill_label(self, obs: np.ndarray, action: np.ndarray) -> str:
        """The skill of ``skills`` that taking ``action`` in ``obs`` belongs to (the module's rule)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ checks the hooks share

    def check_obs(self, obs: Any) -> np.ndarray:
        """``obs`` as a float64 vector of this task's observation shape; ConfigError otherwise."""
        array = np.asarray(obs, dtype=np.float64)
        if array.shape != self.observation_space.shape:
            raise ConfigError(
                f"{self.display_name} observations have shape {self.observation_space.shape}, got {array.shape}"
            )
        return array

    def check_action(self, action: Any) -> np.ndarray:
        """``action`` as a finite float64 vector of the action shape, clipped to [-1, 1]; ConfigError otherwise."""
        try:
            array = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError):
            raise ConfigError(f"{self.display_name} actions are float vectors, got {action!r}") from None
        if array.shape != self.action_space.shape:
            raise ConfigError(f"{self.display_name} actions have shape {self.action_space.shape}, got {array.shape}")
        if not np.all(np.isfinite(array)):
            raise ConfigError(f"action has a NaN or infinite entry: {array}")
        return np.clip(array, -1.0, 1.0)

    # ------------------------------------------------------------------ gymnasium API

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError(f"this {type(self).__name__} is closed; create a new one")

    def _info(self, obs: np.ndarray, inner_info: dict[str, Any]) -> dict[str, Any]:
        info = dict(inner_info)
        info["success"] = bool(self._success(inner_info))
        info["state_text"] = self.describe(obs)
        return info

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode; its initial state comes from ``SeedSequence((game_seed, seed))`` (a seed
        drawn from ``self.np_random`` when ``seed`` is None). Returns (observation, info)."""
        super().reset(seed=seed)
        self._check_open()
        episode_seed = int(seed) if seed is not None else int(self.np_random.integers(2**63))
        inner_seed = int(np.random.SeedSequence([self.game_seed, episode_seed]).generate_state(1)[0])
        raw, inner_info = self._inner_reset(inner_seed)
        obs = np.asarray(raw, dtype=np.float32)
        self._steps = 0
        self._done = False
        return obs, self._info(obs, inner_info)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply one action in [-1, 1]^d (clipped); ``truncated`` on the ``max_episode_steps``-th step.

        Raises:
            ConfigError: wrong shape or a non-finite action, the environment is closed, or no
                episode is running (call ``reset()``).
        """
        clipped = self.check_action(action)
        self._check_open()
        if self._done:
            raise ConfigError("episode is over or not started; call reset() first")
        scaled = self._act_low + (clipped + 1.0) * 0.5 * (self._act_high - self._act_low)
        raw, reward, terminated, _, inner_info = self._inner.step(scaled.astype(self._inner.action_space.dtype))
        self._steps += 1
        obs = np.asarray(raw, dtype=np.float32)
        terminated = bool(terminated)
        truncated = not terminated and self._steps >= self.max_episode_steps
        self._done = terminated or truncated
        return obs, float(reward), terminated, truncated, self._info(obs, inner_info)

    def close(self) -> None:
        """Release the simulator; safe to call twice."""
        if not self._closed:
            self._inner.close()
            self._closed = True
        super().close()


__all__ = ["ControlEnv", "bin_word", "direction_words", "route_mujoco_warnings"]
