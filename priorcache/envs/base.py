"""What every text environment does alike: the Gymnasium episode protocol around env-specific hooks.

``TextEnv`` owns the parts the four environments (TextWorld, ALFWorld, BabyAI, WebShop) used to
write each for itself: the Text observation and action spaces, the guards of ``reset`` and
``step`` (a closed environment, a step before ``reset`` or after the episode ended, an action that
is not a string), the step counter and the truncation at ``max_episode_steps``, and ``close``
being safe to call twice. A subclass implements only what is its own:

* ``_reset()``: restart the game; return ``(observation, info)``;
* ``_step(command)``: play one command; return ``(observation, reward, terminated, info)``;
* ``_release()`` (optional): free the engine, called once by ``close()``;
* ``_parse_action(action)`` (optional): turn the action string into the command ``_step`` plays,
  raising for an action the environment refuses outright;
* ``_oracle_action()`` (optional): the expert's action in the current state (see ``oracle_action``).

``oracle_action()`` is the one oracle interface: the expert's next action in the state the episode
is in now. ``oracle_kind`` says what kind of expert it is: ``"reactive"`` (it plans from the
current state, so it recovers after any detour) or ``"open-loop"`` (it replays a fixed plan and
only works on that plan's path); None for an environment without an oracle.

Every ``info`` dict holds at least ``state_text`` (φ(s), the text the prior cache keys on),
``admissible_actions`` (sorted), ``objective``, ``won``, ``lost``, ``score`` and ``max_score``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, ClassVar

import gymnasium
from gymnasium import spaces

from priorcache.errors import ConfigError

#: Printable ASCII. Text spaces default to an alphanumeric charset; game text has punctuation and
#: ASCII art.
PRINTABLE = "".join(chr(c) for c in range(32, 127))
#: Longest observation the observation space admits (game pages stay far below it).
MAX_OBSERVATION_CHARS = 100_000


def clean_command(action: str, drop: str = "") -> str:
    """``action`` on one line with single spaces: non-printable characters and those in ``drop``
    become spaces, so that a command is what a player would type on one line."""
    printable = "".join(ch if ch.isprintable() and ch not in drop else " " for ch in action)
    return " ".join(printable.split())


class TextEnv(gymnasium.Env):
    """A game with text observations and text actions behind the Gymnasium API.

    Subclasses set ``display_name`` (the game's name in error messages), call
    ``super().__init__(...)`` with their action-space limits, set ``max_episode_steps`` and
    implement the hooks listed in the module docstring.
    """

    metadata = {"render_modes": []}
    #: "TextWorld", "BabyAI", ...: how error messages name the game's actions.
    display_name: ClassVar[str] = "text"
    #: "reactive", "open-loop" or None (no oracle): see the module docstring.
    oracle_kind: ClassVar[str | None] = None

    max_episode_steps: int

    def __init__(
        self,
        action_max_length: int,
        action_charset: str = PRINTABLE,
        observation_charset: str = PRINTABLE + "\n\t",
    ) -> None:
        self.observation_space = spaces.Text(
            max_length=MAX_OBSERVATION_CHARS, min_length=0, charset=observation_charset
        )
        self.action_space = spaces.Text(max_length=action_max_length, min_length=1, charset=action_charset)
        self._steps = 0
        # True until the first reset: stepping then is the same error as stepping after the end.
        self._done = True
        self._closed = False

    # ------------------------------------------------------------------ hooks

    def _reset(self) -> tuple[str, dict[str, Any]]:
        """Restart the game; return (observation, info)."""
        raise NotImplementedError

    def _step(self, command: Any) -> tuple[str, float, bool, dict[str, Any]]:
        """Play ``command``; return (observation, reward, terminated, info)."""
        raise NotImplementedError

    def _parse_action(self, action: str) -> Any:
        """The command ``_step`` plays for ``action``; runs before the episode checks."""
        return action

    def _release(self) -> None:
        """Free what the game holds (an interpreter, an engine); called once, by ``close()``."""

    def _oracle_action(self) -> str:
        """The expert's action in the current state; called only while an episode runs."""
        raise ConfigError(
            f"{type(self).__name__} has no oracle: {self.display_name} environments cannot say the expert's action"
        )

    # ------------------------------------------------------------------ gymnasium API

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError(f"this {type(self).__name__} is closed; create a new one")

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """Start a new episode; ``seed`` seeds ``self.np_random`` only (the game is fixed by the
        environment's own ``game_seed``). Returns (observation, info)."""
        super().reset(seed=seed)
        self._check_open()
        observation, info = self._reset()
        self._steps = 0
        self._done = False
        return observation, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Play one action string; ``truncated`` is set on the ``max_episode_steps``-th step of an
        episode that did not end by itself.

        Raises:
            TypeError: ``action`` is not a str.
            ConfigError: the environment is closed, or no episode is running (call ``reset()``).
        """
        if not isinstance(action, str):
            raise TypeError(f"{self.display_name} actions are strings, got {type(action).__name__}: {action!r}")
        command = self._parse_action(action)
        self._check_open()
        if self._done:
            raise ConfigError("episode is over or not started; call reset() first")
        self._steps += 1
        observation, reward, terminated, info = self._step(command)
        truncated = not terminated and self._steps >= self.max_episode_steps
        self._done = terminated or truncated
        return observation, reward, terminated, truncated, info

    def oracle_action(self) -> str:
        """The expert's action in the current state (after ``reset()`` or ``step()``).

        Following it step by step from ``reset()`` wins the game. A ``"reactive"`` oracle
        (``oracle_kind``) also answers after actions it did not suggest.

        Raises:
            ConfigError: the environment has no oracle, is closed, no episode is running, or the
                expert has no action from this state (the message says why).
        """
        self._check_open()
        if self._done:
            raise ConfigError("episode is over or not started; call reset() first")
        return self._oracle_action()

    def close(self) -> None:
        """Release the game; safe to call twice."""
        if not self._closed:
            self._release()
            self._closed = True
        super().close()


class ShadowPlanner:
    """A second engine that replays the episode's commands to read an expert's plan in the current state.

    TextWorld's and ALFWorld's engines can compute ``policy_commands`` (the quest solver's / the
    PDDL planner's plan from the current state) on every step, but that costs planning time on
    every step of every episode. The environments therefore play without it and, only when
    ``oracle_action()`` is asked, bring this second engine (started on first use, with the plan
    requested) to the same state by replaying the commands played since the last call (the whole
    episode after a ``reset()``); the games are deterministic, so the states agree.

    Args:
        start: loads the engine with the plan among its infos.
        plan: reads the plan (a list of commands) from an engine state.
        quiet: context manager the engine runs under (silences a planner's output).
        stop: frees the engine.
    """

    def __init__(
        self,
        start: Callable[[], Any],
        plan: Callable[[Any], Any],
        quiet: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
        stop: Callable[[Any], None] = lambda engine: engine.close(),
    ) -> None:
        self._start, self._plan, self._quiet, self._stop = start, plan, quiet, stop
        self._engine: Any = None
        self._played: list[str] = []
        self._state: Any = None

    def plan(self, history: list[str]) -> list[str]:
        """The expert's plan after the commands ``history`` (played from the start of the episode)."""
        with self._quiet():
            if self._engine is None:
                self._engine = self._start()
            if self._state is None or history[: len(self._played)] != self._played:
                self._state = self._engine.reset()
                self._played = []
            for command in history[len(self._played) :]:
                self._state, _, _ = self._engine.step(command)
                self._played.append(command)
        return [str(c) for c in self._plan(self._state) or ()]

    def close(self) -> None:
        """Free the engine (a later ``plan`` starts a new one)."""
        if self._engine is not None:
            self._stop(self._engine)
        self._engine, self._state, self._played = None, None, []
