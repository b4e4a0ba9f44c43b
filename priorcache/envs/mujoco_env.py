"""Gymnasium MuJoCo v5 locomotion (HalfCheetah, Walker2d, Ant) as ``ControlEnv`` tasks, with describers and skills.

``MuJoCoEnv(task="halfcheetah" | "walker2d" | "ant", game_seed=0)`` (``make_env("mujoco:ant")``)
wraps ``HalfCheetah-v5``, ``Walker2d-v5`` or ``Ant-v5`` with Gymnasium's default settings (rewards,
reset noise, termination when unhealthy, 1000-step episodes). The observation is Gymnasium's
(17, 17 and 105 floats: positions without the x/y of the torso, then velocities; Ant adds contact
forces), as float32; the actions are the joint torques, already in [-1, 1].

Locomotion has no goal to vary, so ``game_seed`` picks the initial-state stream only: each episode
starts from Gymnasium's reset noise drawn from ``SeedSequence((game_seed, reset seed))``. Held-out
evaluation therefore means other random starting poses and velocities of the same task.

**Describers φ(s)** (the observation dimensions each reads, as ``described_dims``):

* HalfCheetah (0 torso height, 1 torso pitch, 2 back thigh, 5 front thigh, 8 forward velocity): pitch
  (wrapped to [-π, π)) "level" / "nose up" / "nose down" / "flipped over"; height "low" / "normal" /
  "high"; forward speed in five bins; each thigh "reaching forward" / "under the body" / "pushed back".
* Walker2d (0 torso height, 1 torso angle, 2 right thigh, 5 left thigh, 8 forward velocity): height,
  lean ("upright", "leaning forward/back", "about to fall forward/back"), speed, and which foot is
  forward from the thigh angles' difference.
* Ant (0 torso height, 1-4 torso orientation quaternion, 13-14 x/y velocity): height, tilt of the
  torso's up axis ("upright" … "upside down"), heading in four 90° sectors, forward speed and
  sideways drift. The contact forces are not read.

The bin edges are round numbers around Gymnasium's healthy ranges and the speeds a short SAC run
reaches; nearby states share their text, which is what the prior cache keys on.

**Skills and the segmentation rule** (``skill_label(obs, action)``). Each task's vocabulary has a
posture-recovery skill and four gait phases named by the sign pattern of the torques that drive the
legs fore and aft:

1. if the posture needs recovery (HalfCheetah: |wrapped pitch| > 0.8 rad; Walker2d: |torso angle| >
   0.5 rad or torso height < 1.0; Ant: the torso's up axis tilted more than 60° from vertical, or
   height < 0.3), the step is the recovery skill;
2. otherwise the signs of two leg drives choose one of four phases. HalfCheetah: back thigh torque
   ``a[0]`` and front thigh torque ``a[3]`` (a positive thigh torque swings that foot backward, a
   push); Walker2d: right thigh ``a[0]`` and left thigh ``a[3]`` (positive swings the foot forward);
   Ant: the backward stroke of the two diagonal leg pairs, front-left + back-right
   ``(a[2] - a[6]) / 2`` and front-right + back-left ``(a[4] - a[0]) / 2`` (hip torques of legs 1, 3,
   2 and 4; positive turns a hip counter-clockwise, which strokes the +x legs backward and the -x legs
   forward). A drive counts as positive when > 0.

The rule reads one step; a demonstrator that switches torque signs often gives short segments.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from priorcache.envs.checks import check_game_seed, check_max_episode_steps
from priorcache.envs.control import ControlEnv, bin_word, route_mujoco_warnings
from priorcache.errors import UnknownEnvironmentError

#: Gymnasium's episode length for the three tasks.
DEFAULT_MAX_EPISODE_STEPS = 1000

SPEED_WORDS = (
    "moving backward",
    "nearly still",
    "moving forward slowly",
    "moving forward steadily",
    "running forward fast",
)


@dataclass(frozen=True)
class LocomotionTask:
    """What ``MuJoCoEnv`` needs to know about one task."""

    gym_id: str
    objective: str
    skills: tuple[str, ...]
    described_dims: tuple[int, ...]
    describe: Callable[[np.ndarray], str]
    #: (obs, action) -> index into ``skills``
    skill_index: Callable[[np.ndarray, np.ndarray], int]


def _phase(first: float, second: float) -> int:
    """Skill index 1-4 of the sign pattern (first > 0, second > 0): (+,-) 1, (-,+) 2, (+,+) 3, (-,-) 4."""
    if first > 0:
        return 3 if second > 0 else 1
    return 2 if second > 0 else 4


# --------------------------------------------------------------------------- HalfCheetah


def _wrapped(angle: float) -> float:
    """``angle`` in [-π, π): HalfCheetah's pitch joint is unbounded, and a cheetah that rolled over
    once is level again."""
    return (float(angle) + math.pi) % (2 * math.pi) - math.pi


def _describe_halfcheetah(obs: np.ndarray) -> str:
    pitch = bin_word(
        _wrapped(obs[1]), (-1.3, -0.3, 0.3, 1.3), ("flipped over", "nose up", "level", "nose down", "flipped over")
    )
    height = bin_word(obs[0], (-0.25, 0.15), ("body low", "body at normal height", "body high"))
    speed = bin_word(obs[8], (-0.5, 0.5, 2.0, 5.0), SPEED_WORDS)
    back = bin_word(obs[2], (-0.2, 0.4), ("reaching forward", "under the body", "pushed back"))
    front = bin_word(obs[5], (-0.4, 0.3), ("reaching forward", "under the body", "pushed back"))
    return f"Torso {pitch}, {height}, {speed}. Back leg {back}, front leg {front}."


def _skill_halfcheetah(obs: np.ndarray, action: np.ndarray) -> int:
    if abs(_wrapped(obs[1])) > 0.8:
        return 0
    return _phase(action[0], action[3])


HALFCHEETAH = LocomotionTask(
    gym_id="HalfCheetah-v5",
    objective="Make the cheetah run forward as fast as possible without flipping over.",
    skills=(
        "bring the torso level",
        "push back with the back leg and reach forward with the front leg",
        "swing the back leg forward and pull back with the front leg",
        "push back with both legs",
        "swing both legs forward",
    ),
    described_dims=(0, 1, 2, 5, 8),
    describe=_describe_halfcheetah,
    skill_index=_skill_halfcheetah,
)

# --------------------------------------------------------------------------- Walker2d


def _describe_walker2d(obs: np.ndarray) -> str:
    height = bin_word(obs[0], (1.0, 1.15), ("crouching low", "slightly crouched", "standing tall"))
    lean = bin_word(
        obs[1],
        (-0.7, -0.3, 0.3, 0.7),
        ("about to fall backward", "leaning back", "upright", "leaning forward", "about to fall forward"),
    )
    speed = bin_word(obs[8], (-0.3, 0.3, 1.0, 2.5), SPEED_WORDS)
    feet = bin_word(obs[2] - obs[5], (-0.3, 0.3), ("left foot forward", "feet together", "right foot forward"))
    return f"Walker {height}, {lean}, {speed}; {feet}."


def _skill_walker2d(obs: np.ndarray, action: np.ndarray) -> int:
    if abs(obs[1]) > 0.5 or obs[0] < 1.0:
        return 0
    return _phase(action[0], action[3])


WALKER2D = LocomotionTask(
    gym_id="Walker2d-v5",
    objective="Make the two-legged walker walk forward as fast as possible without falling.",
    skills=(
        "straighten up and regain balance",
        "swing the right leg forward and push back with the left leg",
        "swing the left leg forward and push back with the right leg",
        "swing both legs forward",
        "push back with both legs",
    ),
    described_dims=(0, 1, 2, 5, 8),
    describe=_describe_walker2d,
    skill_index=_skill_walker2d,
)

# --------------------------------------------------------------------------- Ant


def _orientation(quaternion: np.ndarray) -> tuple[float, float]:
    """(z component of the torso's up axis, yaw in radians) of a (w, x, y, z) quaternion, normalised
    first (a raw observation need not be a unit quaternion)."""
    norm = float(np.linalg.norm(quaternion))
    if not norm > 1e-9:
        return 1.0, 0.0
    w, x, y, z = (float(v) / norm for v in quaternion)
    up_z = 1.0 - 2.0 * (x * x + y * y)
    yaw = math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))
    return up_z, yaw


def _describe_ant(obs: np.ndarray) -> str:
    up_z, yaw = _orientation(obs[1:5])
    height = bin_word(obs[0], (0.4, 0.65, 0.9), ("body low", "body at walking height", "body raised", "body high"))
    tilt = bin_word(up_z, (0.0, 0.5, 0.9), ("upside down", "steeply tilted", "tilted", "upright"))
    quarter = round(yaw / (math.pi / 2)) % 4  # 0: +x, 1: +y (left), 2: -x, 3: -y
    heading = ("facing forward", "facing left", "facing backward", "facing right")[quarter]
    speed = bin_word(obs[13], (-0.3, 0.3, 1.0, 2.5), SPEED_WORDS)
    drift = bin_word(obs[14], (-0.5, 0.5), ("drifting right", "no sideways drift", "drifting left"))
    return f"Ant {height}, {tilt}, {heading}; {speed}, {drift}."


def _skill_ant(obs: np.ndarray, action: np.ndarray) -> int:
    up_z, _ = _orientation(obs[1:5])
    if up_z < 0.5 or obs[0] < 0.3:
        return 0
    # Actuators: 0 hip_4, 2 hip_1, 4 hip_2, 6 hip_3 (Ant-v5's order).
    return _phase((action[2] - action[6]) / 2, (action[4] - action[0]) / 2)


ANT = LocomotionTask(
    gym_id="Ant-v5",
    objective="Make the four-legged ant walk forward (along +x) as fast as possible without flipping over.",
    skills=(
        "level the torso and regain balance",
        "push back with the front-left and back-right legs",
        "push back with the front-right and back-left legs",
        "push back with all four legs",
        "swing all four legs forward",
    ),
    described_dims=(0, 1, 2, 3, 4, 13, 14),
    describe=_describe_ant,
    skill_index=_skill_ant,
)

#: task name -> what it is; the registry's variants of the ``mujoco`` family.
TASKS: dict[str, LocomotionTask] = {"halfcheetah": HALFCHEETAH, "walker2d": WALKER2D, "ant": ANT}


class MuJoCoEnv(ControlEnv):
    """A Gymnasium MuJoCo v5 locomotion task (see the module docstring).

    Args:
        task: ``"halfcheetah"``, ``"walker2d"`` or ``"ant"``.
        game_seed: the task instance: here the stream the initial states are drawn from.
        max_episode_steps: episode length (default Gymnasium's 1000).

    Raises:
        UnknownEnvironmentError: an unknown task (the message lists the tasks).
        ConfigError: a negative or non-integer ``game_seed`` or ``max_episode_steps``.
    """

    display_name = "MuJoCo"

    def __init__(self, task: str = "halfcheetah", game_seed: int = 0, max_episode_steps: int | None = None) -> None:
        if not isinstance(task, str) or task.strip().lower() not in TASKS:
            raise UnknownEnvironmentError(f"unknown MuJoCo task {task!r}; choose one of {sorted(TASKS)}")
        self.task = task.strip().lower()
        spec = TASKS[self.task]
        check_game_seed(game_seed)  # before the simulator is built
        steps = DEFAULT_MAX_EPISODE_STEPS if max_episode_steps is None else check_max_episode_steps(max_episode_steps)
        route_mujoco_warnings()
        import gymnasium

        # The bare environment: ControlEnv truncates episodes itself, and checks actions.
        inner = gymnasium.make(spec.gym_id, disable_env_checker=True).unwrapped
        self._spec = spec
        super().__init__(
            inner,
            game_seed=game_seed,
            max_episode_steps=steps,
            objective=spec.objective,
            skills=spec.skills,
            described_dims=spec.described_dims,
        )

    def _inner_reset(self, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
        return self._inner.reset(seed=seed)

    def describe(self, obs: np.ndarray) -> str:
        """φ(s) of ``obs``; see the module docstring for the bins."""
        return self._spec.describe(self.check_obs(obs))

    def skill_label(self, obs: np.ndarray, action: np.ndarray) -> str:
        """The skill of ``(obs, action)`` by the module docstring's rule."""
        return self.skills[self._spec.skill_index(self.check_obs(obs), self.check_action(action))]


__all__ = ["TASKS", "LocomotionTask", "MuJoCoEnv"]
