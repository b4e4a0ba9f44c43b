"""ALFWorld household tasks as Gymnasium environments on the real ALFWorld engine (docs/design.md §5).

The engine is ALFWorld's text engine: the ALFRED PDDL domain and grammar shipped in the
``alfworld`` wheel (``alfworld/data/alfred.pddl``, ``alfred.twl2``), played by TextWorld's PDDL
environment with ALFWorld's ``AlfredDemangler`` (object ids -> "apple 1") and ``AlfredInfos``
wrappers, so texts and commands are ALFWorld's own ("go to fridge 1", "heat apple 1 with
microwave 1").

Games come from one of two sources, and ``env.source`` / ``info["source"]`` always says which:

* ``"official:<split>"``: the official ALFWorld game files, when ``$ALFWORLD_DATA`` (or
  ``data_dir``) holds ``json_2.1.1/<split>/...``: ``game_seed`` picks a game deterministically
  among the split's solvable games of the task type. Their download needs the internet.
* ``"generated"``: problems written offline by :mod:`priorcache.envs.alfworld_gen` (six task
  types, small scenes drawn from the wheel's FloorPlan data), each certified before use: ALFWorld's
  planner expert (``AlfredExpert(expert_type="planner")``, fast-downward) plans it and the plan is
  played to a win in the engine. Certified games are cached under ``cache_root()/"alfworld"``.

The game files (generating, certifying and caching games; listing and picking official ones) are
:mod:`priorcache.envs.alfworld_games`; loading and driving the engine is
:mod:`priorcache.envs.alfworld_engine`.

``info["state_text"]`` is φ(s): where the agent is, what that receptacle shows (open/closed and its
contents, with the states that matter to the tasks: hot, cool, clean, a lamp turned on) and what
the agent carries; never the last action's feedback. ``env.walkthrough`` is the certified planner
plan. ``help`` is answered by the engine but not listed as admissible: it prints the command
manual and never changes anything.

**Oracle** (reactive): ``oracle_action()`` is the first command of ALFWorld's planner expert
(``AlfredExpert(expert_type="planner")``: fast-downward on the current PDDL state), so it recovers
after any detour (measured: after 4 random admissible commands it still wins pick_and_place,
pick_heat_then_place and pick_two_obj_and_place, seed 0). The plan is read from a second engine
that replays the episode's commands (``ShadowPlanner``), about 50-110 ms per step (one planner
call per replayed command), paid only when the oracle is asked.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from priorcache.envs import alfworld_gen as gen
from priorcache.envs.alfworld_engine import _engine_infos, _quiet, _start, _stop
from priorcache.envs.alfworld_games import (
    _ALFRED_NAMES,
    _OFFICIAL_DIR,
    _official_walkthrough,
    default_games_dir,
    ensure_game,
    has_official_games,
    official_data_dir,
    official_game,
)
from priorcache.envs.base import ShadowPlanner, TextEnv, clean_command
from priorcache.envs.checks import check_game_seed, check_max_episode_steps, games_root
from priorcache.errors import ConfigError, UnknownEnvironmentError

#: The six ALFWorld task types (the ``task_type`` variants), with ALFRED's name for each.
TASK_TYPES: Mapping[str, str] = gen.TASK_TYPES
#: ALFWorld's splits (official folders under ``json_2.1.1``; generated scenes follow ALFRED's
#: split of FloorPlans).
SPLITS: tuple[str, ...] = gen.SPLITS
#: ``auto``: official games when the data is there, else generated ones.
SOURCES: tuple[str, ...] = ("auto", "official", "generated")
# Listed by the engine, hidden from the admissible actions (see the module docstring).
_HIDDEN_COMMANDS = frozenset({"help"})
_OBJECTIVE_RE = re.compile(r"Your task is to: [^\n]*")


# --------------------------------------------------------------------------- φ(s)


def _natural(name: str) -> tuple[str, int]:
    base, _, number = name.rpartition(" ")
    return (base, int(number)) if number.isdigit() else (name, 0)


def _listing(things: list[str]) -> str:
    if not things:
        return "nothing"
    if len(things) == 1:
        return things[0]
    return ", ".join(things[:-1]) + ", and " + things[-1]


def describe_state(facts: Iterable[Any]) -> str:
    """φ(s) from the engine's facts (TextWorld ``Proposition`` objects with demangled names).

    "You are at fridge 1. The fridge 1 is open. In it, you see a egg 1, and a tomato 1. You are
    carrying: a hot apple 1." The sentences follow the engine's own wording (at the starting
    point, which is no receptacle's, the list of receptacles around); objects carry the states the
    tasks check (hot, cool, clean, sliced; a lamp that was turned on). Lists are sorted, so the
    text depends on the state only. The task itself is not part of it (see ``objective``).
    """
    true: dict[str, list[tuple[str, ...]]] = {}
    for fact in facts:
        if fact.name.startswith("not_"):
            continue
        true.setdefault(fact.name, []).append(tuple(a.name.strip() for a in fact.arguments))

    def unary(predicate: str) -> set[str]:
        return {args[0] for args in true.get(predicate, ())}

    hot, cool, clean, sliced = unary("ishot"), unary("iscool"), unary("isclean"), unary("issliced")
    lit = unary("istoggled") & unary("toggleable")
    openable, opened = unary("openable"), unary("opened")

    def thing(obj: str) -> str:
        states = (("hot", hot), ("cool", cool), ("clean", clean), ("sliced", sliced))
        words = [word for word, having in states if obj in having]
        text = "a " + " ".join(words + [obj])
        return text + " (turned on)" if obj in lit else text

    def things(objs: Iterable[str]) -> str:
        return _listing([thing(o) for o in sorted(set(objs), key=_natural)])

    here = {args[1] for args in true.get("atlocation", ()) if len(args) == 2}
    receptacles = sorted((r for r, loc in true.get("receptacleatlocation", ()) if loc in here), key=_natural)
    contents: dict[str, list[str]] = {}
    for obj, rec in true.get("inreceptacle", ()):
        contents.setdefault(rec, []).append(obj)
    held = [obj for _, obj in true.get("holds", ())]

    parts = []
    if not receptacles:
        # Only the starting point is no receptacle's; the engine describes the room from there.
        around = sorted({r for r, _ in true.get("receptacleatlocation", ())}, key=_natural)
        parts.append("You are in the middle of a room.")
        parts.append(f"Looking quickly around you, you see {things(around)}.")
    else:
        parts.append(f"You are at {' and '.join(receptacles)}.")
        for rec in receptacles:
            if rec in openable and rec not in opened:
                parts.append(f"The {rec} is closed.")
            elif rec in openable:
                parts.append(f"The {rec} is open. In it, you see {things(contents.get(rec, []))}.")
            else:
                parts.append(f"On the {rec}, you see {things(contents.get(rec, []))}.")
        in_receptacles = {o for rec in receptacles for o in contents.get(rec, [])}
        loose = [
            obj
            for obj, loc in true.get("objectatlocation", ())
            if loc in here and obj not in in_receptacles and obj not in held
        ]
        if loose:
            parts.append(f"Next to it, you see {things(loose)}.")
    parts.append(f"You are carrying: {things(held)}." if held else "You are not carrying anything.")
    return " ".join(parts)


# --------------------------------------------------------------------------- the environment


class ALFWorldEnv(TextEnv):
    """One ALFWorld game (official or generated) behind the Gymnasium API.

    Args:
        task_type: one of :data:`TASK_TYPES`; None draws it from ``game_seed``
            (``TASK_TYPES[game_seed % 6]``, then the game as for that task type).
        game_seed: selects the game; the same seed always gives the same game, and every
            ``reset()`` restarts it (``reset(seed=...)`` only seeds ``self.np_random``).
        max_episode_steps: episodes are truncated after this many steps.
        split: ALFWorld split, ``train``, ``valid_seen`` or ``valid_unseen``.
        source: ``auto`` (official games if ``data_dir``/``$ALFWORLD_DATA`` holds the split, else
            generated), ``official`` (error without them) or ``generated``.
        data_dir: folder holding ``json_2.1.1`` (default ``$ALFWORLD_DATA``).
        games_dir: cache of certified games (default ``cache_root()/"alfworld"``).

    ``info`` holds ``state_text`` (φ(s)), ``admissible_actions`` (sorted), ``won``, ``lost``
    (always False: ALFWorld has no losing moves), ``objective`` ("Your task is to: ..."),
    ``score`` (1.0 once won), ``max_score`` (1.0), ``source`` and ``task_type``.
    """

    display_name = "ALFWorld"
    oracle_kind = "reactive"

    def __init__(
        self,
        task_type: str | None = None,
        game_seed: int = 0,
        max_episode_steps: int = 50,
        split: str = "train",
        source: str = "auto",
        data_dir: str | os.PathLike[str] | None = None,
        games_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        game_seed = check_game_seed(game_seed)
        max_episode_steps = check_max_episode_steps(max_episode_steps)
        super().__init__(action_max_length=200)
        # ALFRED's own names ("pick_and_place_simple", ...) are accepted too.
        task_type = _ALFRED_NAMES.get(task_type, task_type) if isinstance(task_type, str) else task_type
        if task_type is not None and task_type not in TASK_TYPES:
            raise UnknownEnvironmentError(f"unknown ALFWorld task type {task_type!r}; choose one of {list(TASK_TYPES)}")
        if split not in SPLITS:
            raise ConfigError(f"unknown ALFWorld split {split!r}; choose one of {list(SPLITS)}")
        if source not in SOURCES:
            raise ConfigError(f"unknown ALFWorld source {source!r}; choose one of {list(SOURCES)}")
        for name, value in (("data_dir", data_dir), ("games_dir", games_dir)):
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise ConfigError(f"{name} must be a path, got {value!r}")

        self.game_seed = game_seed
        self.task_type: str = task_type or list(TASK_TYPES)[game_seed % len(TASK_TYPES)]
        self.max_episode_steps = max_episode_steps
        self.split = split
        self._games_dir = games_root(games_dir, default_games_dir)

        official = source == "official" or (source == "auto" and has_official_games(split, data_dir))
        if official:
            if not has_official_games(split, data_dir):
                raise ConfigError(
                    f"source='official' needs the ALFWorld game files in "
                    f"{official_data_dir(data_dir) / _OFFICIAL_DIR / split} (set $ALFWORLD_DATA "
                    "or data_dir; the download needs the internet), or use source='generated'"
                )
            #: "generated" or "official:<split>"; also in every info dict.
            self.source = f"official:{split}"
            self.game_path: Path = official_game(self.task_type, game_seed, split, data_dir)
            self._walkthrough: tuple[str, ...] | None = None
            self.game_meta: Mapping[str, Any] = MappingProxyType({"source": self.source, "game": str(self.game_path)})
        else:
            self.source = "generated"
            files = ensure_game(self.task_type, game_seed, split, self._games_dir)
            self.game_path = files.game_path
            self._walkthrough = files.walkthrough
            #: What was recorded when the game was generated (FloorPlan, attempts, timing, ...).
            self.game_meta = files.meta

        self._engine: Any = _start(self.game_path, _engine_infos())
        with _quiet():
            first = self._engine.reset()
        found = _OBJECTIVE_RE.search(first.feedback or "")
        #: The task sentence, "Your task is to: put a clean apple in fridge."
        self.objective: str = found.group(0).strip() if found else ""
        self.max_score = 1.0
        self._fresh: Any = first  # the engine state right after a reset, not stepped yet
        # Commands played this episode, and the planner expert's engine behind oracle_action().
        self._history: list[str] = []
        game_path = self.game_path
        self._shadow = ShadowPlanner(
            lambda: _start(game_path, _engine_infos(), expert=True),
            lambda state: state["extra.expert_plan"],
            quiet=_quiet,
            stop=_stop,
        )

    @property
    def walkthrough(self) -> tuple[str, ...]:
        """The planner expert's plan, verified to win this game (official games: planned on
        first access and cached on disk)."""
        if self._walkthrough is None:
            self._walkthrough = _official_walkthrough(self.game_path, self._games_dir)
        return self._walkthrough

    def _info(self, state: Any) -> dict[str, Any]:
        won = bool(state["won"])
        return {
            "state_text": describe_state(state["facts"]),
            "admissible_actions": sorted(set(state["admissible_commands"] or ()) - _HIDDEN_COMMANDS),
            "won": won,
            "lost": False,
            "objective": self.objective,
            "score": 1.0 if won else 0.0,
            "max_score": self.max_score,
            "source": self.source,
            "task_type": self.task_type,
        }

    def _reset(self) -> tuple[str, dict[str, Any]]:
        """Restart the game; return (the engine's opening text, info)."""
        if self._fresh is not None:
            state, self._fresh = self._fresh, None
        else:
            with _quiet():
                state = self._engine.reset()
        self._history = []
        return state.feedback, self._info(state)

    def _parse_action(self, action: str) -> str:
        """One line, single spaces, lower case: ALFWorld commands are all written that way."""
        return clean_command(action).lower()

    def _step(self, command: str) -> tuple[str, float, bool, dict[str, Any]]:
        """Send one command; reward 1.0 on the step that completes the task, else 0.0."""
        self._fresh = None
        state, _, _ = self._engine.step(command)
        self._history.append(command)
        info = self._info(state)
        terminated = info["won"]
        return state.feedback, (1.0 if terminated else 0.0), terminated, info

    def _oracle_action(self) -> str:
        """The first command of the planner expert's plan from the current state."""
        plan = self._shadow.plan(self._history)
        if not plan:
            raise ConfigError(
                f"ALFWorld's planner expert finds no plan for {self.task_type} game_seed={self.game_seed} "
                f"from this state (after {len(self._history)} commands)"
            )
        return plan[0]

    def _release(self) -> None:
        """Unload the engine (and the oracle's)."""
        self._shadow.close()
        _stop(self._engine)
        self._engine = None
        self._fresh = None
