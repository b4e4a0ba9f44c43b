"""MetaWorld MT1 tasks (reach-v3, push-v3, pick-place-v3) as ``ControlEnv`` tasks, with describers and skills.

``MetaWorldEnv(task="push-v3", game_seed=0)`` (``make_env("metaworld:push-v3")``) builds MetaWorld's
goal-observable single-task environment (``metaworld.env_dict.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE``,
what ``gymnasium.make("Meta-World/goal_observable", env_name=..., seed=...)`` builds): ``game_seed``
draws the task instance, i.e. the object's start and the goal position (MetaWorld's "rand_vec"),
and every reset of that environment starts from that same instance. Training and held-out
evaluation tasks (other game seeds) therefore put the object and the goal elsewhere, as MT1's 50
training tasks do. The observation is MetaWorld's 39 floats (hand xyz, gripper opening, object
pose, padding, the previous frame's 18, goal xyz), as float32; the action is (dx, dy, dz, grip) in
[-1, 1]. ``info["success"]`` is MetaWorld's own success flag. As in MetaWorld, an episode never
terminates (success included) and is truncated at ``max_episode_steps`` (default 500).

``scripted_action(obs)`` is MetaWorld's scripted expert for the task (``metaworld.policies``), its
action clipped to [-1, 1] as the environment clips it.

**Describer φ(s)** (``described_dims``: hand 0-2, gripper 3, object 4-6, goal 36-38; reach reads
no object): the gripper "open" (opening > 0.8), "half closed" (> 0.5) or "closed"; where the object
is from the gripper (from its grasp point, 3.5 cm below the observed hand position, so a held
object is "at the gripper") and where the goal is from the object (reach: the goal from the gripper): a
distance bin and a direction, the dominant horizontal axis from the robot's view (+x "to the
right of", +y "ahead of") and "above"/"below" for offsets of 1.5 cm or more; and whether the object is
lifted (z > 5 cm; it rests at 2 cm).

**Skills and the segmentation rule** (``skill_label(obs, action)``): the phase of the scripted expert,
read from the gripper-object-goal relations of ``obs`` with the experts' own thresholds (the action
is not needed):

* reach-v3: hand within 5 cm of the goal (MetaWorld's success radius) → "hold the gripper at the
  goal"; else the larger of the vertical and horizontal offsets → "raise/lower the gripper toward
  the goal" or "move the gripper across toward the goal".
* push-v3: puck within 5 cm of the goal (the success radius) → "hold the puck at the goal"; hand
  more than 2 cm from the puck horizontally → "move the gripper above the puck"; more than 4 cm above
  it → "lower the gripper onto the puck"; gripper opening over 0.6 → "close the gripper on the puck";
  else "push the puck to the goal".
* pick-place-v3: puck within 7 cm of the goal (the success radius) → "hold the puck at the goal";
  with the puck on the table (z < 4 cm): hand more than 2 cm from it horizontally → "move the gripper
  above the puck", more than 5 cm above it → "lower the gripper onto the puck"; gripper opening over
  0.73 → "close the gripper on the puck"; else "lift the puck and carry it to the goal".
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from priorcache.envs.checks import check_game_seed, check_max_episode_steps
from priorcache.envs.control import ControlEnv, bin_word, direction_words, route_mujoco_warnings
from priorcache.errors import UnknownEnvironmentError

#: MetaWorld's episode length (``max_path_length``).
DEFAULT_MAX_EPISODE_STEPS = 500

HAND, GRIPPER, OBJECT, GOAL = slice(0, 3), 3, slice(4, 7), slice(36, 39)
#: Directions from the robot's view: +x, -x, +y, -y.
HORIZONTAL = ("to the right of", "to the left of", "ahead of", "behind")
#: Height of a resting puck is 2 cm; above this it is off the table.
LIFTED_Z = 0.05
#: Where a grasped object sits: 3.5 cm below the hand position MetaWorld observes (measured: a puck
#: held by the scripted experts sits 3.2-3.9 cm below it), so "at the gripper" means between the fingers.
GRASP_POINT = np.array([0.0, 0.0, -0.035])


@dataclass(frozen=True)
class ManipulationTask:
    """What ``MetaWorldEnv`` needs to know about one MT1 task."""

    objective: str
    skills: tuple[str, ...]
    #: The object's name in the text; None for reach (the object plays no part).
    thing: str | None
    #: MetaWorld's success radius of the task (object or hand to goal), metres.
    success_radius: float
    #: ``metaworld.policies`` class of the scripted expert.
    policy: str


TASKS: dict[str, ManipulationTask] = {
    "reach-v3": ManipulationTask(
        objective="Move the robot's gripper to the goal position.",
        skills=(
            "move the gripper across toward the goal",
            "raise the gripper toward the goal",
            "lower the gripper toward the goal",
            "hold the gripper at the goal",
        ),
        thing=None,
        success_radius=0.05,
        policy="SawyerReachV3Policy",
    ),
    "push-v3": ManipulationTask(
        objective="Push the puck across the table to the goal position.",
        skills=(
            "move the gripper above the puck",
            "lower the gripper onto the puck",
            "close the gripper on the puck",
            "push the puck to the goal",
            "hold the puck at the goal",
        ),
        thing="puck",
        success_radius=0.05,
        policy="SawyerPushV3Policy",
    ),
    "pick-place-v3": ManipulationTask(
        objective="Pick up the puck and place it at the goal position in the air.",
        skills=(
            "move the gripper above the puck",
            "lower the gripper onto the puck",
            "close the gripper on the puck",
            "lift the puck and carry it to the goal",
            "hold the puck at the goal",
        ),
        thing="puck",
        success_radius=0.07,
        policy="SawyerPickPlaceV3Policy",
    ),
}


def _unknown_task(task: Any) -> UnknownEnvironmentError:
    choices = sorted(TASKS)
    hint = ""
    if isinstance(task, str):
        if task.endswith(("-v1", "-v2")):
            hint = " (MetaWorld 3 names its tasks with -v3)"
        else:
            from metaworld.env_dict import ALL_V3_ENVIRONMENTS

            if task in ALL_V3_ENVIRONMENTS:
                hint = " (a MetaWorld task, but priorcache has no describer and skills for it yet)"
    return UnknownEnvironmentError(f"unknown MetaWorld task {task!r}{hint}; choose one of {choices}")


def _relation(delta: np.ndarray, edges: tuple[float, float, float], at: str, subject: str, reference: str) -> str:
    """One sentence: "{at}." within the first edge, else "{subject} is near, ahead of and below {reference}."."""
    distance = bin_word(float(np.linalg.norm(delta)), edges, ("", "near", "a short way off", "far"))
    if not distance:
        return f"{at}."
    # 1.5 cm: outside the first edge (3 cm) at least one component is over it, so a direction is named.
    where = direction_words(delta, HORIZONTAL, 0.015) or "from"
    return f"{subject} is {distance}, {where} {reference}."


class MetaWorldEnv(ControlEnv):
    """A MetaWorld MT1 task (see the module docstring).

    Args:
        task: ``"reach-v3"``, ``"push-v3"`` or ``"pick-place-v3"``.
        game_seed: the task instance (object start and goal position).
        max_episode_steps: episode length (default MetaWorld's 500).

    Raises:
        UnknownEnvironmentError: an unknown task (the message lists the -v3 names).
        ConfigError: a negative or non-integer ``game_seed`` or ``max_episode_steps``.
    """

    display_name = "MetaWorld"

    def __init__(self, task: str = "push-v3", game_seed: int = 0, max_episode_steps: int | None = None) -> None:
        if not isinstance(task, str) or task.strip() not in TASKS:
            raise _unknown_task(task.strip() if isinstance(task, str) else task)
        self.task = task.strip()
        spec = TASKS[self.task]
        game_seed = check_game_seed(game_seed)
        steps = DEFAULT_MAX_EPISODE_STEPS if max_episode_steps is None else check_max_episode_steps(max_episode_steps)
        route_mujoco_warnings()
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

        # Seeds numpy's global generator for the draw of the instance, then restores its state.
        inner = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{self.task}-goal-observable"](seed=game_seed)
        # MetaWorld refuses steps past its own path length; ControlEnv truncates at max_episode_steps.
        inner.max_path_length = max(inner.max_path_length, steps)
        self._spec = spec
        self._policy: Any = None
        dims = [0, 1, 2, 3, 36, 37, 38] + ([4, 5, 6] if spec.thing else [])
        super().__init__(
            inner,
            game_seed=game_seed,
            max_episode_steps=steps,
            objective=spec.objective,
            skills=spec.skills,
            described_dims=dims,
        )

    def _inner_reset(self, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
        # The instance (rand_vec) is frozen: every reset starts from it, whatever the seed.
        return self._inner.reset()

    def _success(self, info: dict[str, Any]) -> bool:
        return bool(info.get("success", False))

    def describe(self, obs: np.ndarray) -> str:
        """φ(s) of ``obs``; see the module docstring."""
        o = self.check_obs(obs)
        hand, goal = o[HAND], o[GOAL]
        gripper = bin_word(o[GRIPPER], (0.5, 0.8), ("Gripper closed.", "Gripper half closed.", "Gripper open."))
        thing = self._spec.thing
        if thing is None:
            goal_text = _relation(
                goal - hand, (0.05, 0.1, 0.25), "The gripper is at the goal", "The goal", "the gripper"
            )
            return f"{gripper} {goal_text}"
        obj = o[OBJECT]
        the = f"the {thing}"
        hold = _relation(
            obj - (hand + GRASP_POINT),
            (0.03, 0.08, 0.2),
            f"The {thing} is at the gripper",
            f"The {thing}",
            "the gripper",
        )
        place = _relation(goal - obj, (0.05, 0.1, 0.25), f"The {thing} is at the goal", "The goal", the)
        lifted = f"The {thing} is lifted." if obj[2] > LIFTED_Z else f"The {thing} is on the table."
        return f"{gripper} {hold} {place} {lifted}"

    def skill_label(self, obs: np.ndarray, action: np.ndarray) -> str:
        """The skill of ``obs`` by the module docstring's rule (``action`` is checked, not read)."""
        o = self.check_obs(obs)
        self.check_action(action)
        hand, goal, opening = o[HAND], o[GOAL], o[GRIPPER]
        skills = self.skills
        if self._spec.thing is None:
            delta = goal - hand
            if np.linalg.norm(delta) < self._spec.success_radius:
                return skills[3]
            if abs(delta[2]) > np.linalg.norm(delta[:2]):
                return skills[1] if delta[2] > 0 else skills[2]
            return skills[0]
        obj = o[OBJECT]
        if np.linalg.norm(goal - obj) < self._spec.success_radius:
            return skills[4]
        apart_xy, above = float(np.linalg.norm(hand[:2] - obj[:2])), float(hand[2] - obj[2])
        if self.task == "push-v3":
            if apart_xy > 0.02:
                return skills[0]
            if above > 0.04:
                return skills[1]
            return skills[2] if opening > 0.6 else skills[3]
        if obj[2] < 0.04:  # pick-place: the puck is still on the table
            if apart_xy > 0.02:
                return skills[0]
            if above > 0.05:
                return skills[1]
        return skills[2] if opening > 0.73 else skills[3]

    def scripted_action(self, obs: np.ndarray) -> np.ndarray:
        """MetaWorld's scripted expert's action in ``obs``, clipped to [-1, 1] (float32)."""
        o = self.check_obs(obs)
        if self._policy is None:
            from metaworld import policies

            self._policy = getattr(policies, self._spec.policy)()
        with warnings.catch_warnings():
            # The experts' gains exceed 1 on purpose and warn about it on every far move.
            warnings.simplefilter("ignore", UserWarning)
            action = self._policy.get_action(o)
        return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)


__all__ = ["TASKS", "ManipulationTask", "MetaWorldEnv"]
