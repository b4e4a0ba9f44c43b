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

``info["state_text"]`` is φ(s): where the agent is, what that receptacle shows (open/closed and its
contents, with the states that matter to the tasks: hot, cool, clean, a lamp turned on) and what
the agent carries; never the last action's feedback. ``env.walkthrough`` is the certified planner
plan. ``help`` is answered by the engine but not listed as admissible: it prints the command
manual and never changes anything.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import io
import json
import os
import random
import re
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from priorcache.envs import alfworld_gen as gen
from priorcache.envs.base import TextEnv, clean_command
from priorcache.envs.checks import (
    build_game_folder,
    check_game_seed,
    check_max_episode_steps,
    games_root,
    read_meta,
)
from priorcache.errors import ConfigError, UnknownEnvironmentError
from priorcache.io import atomic_write_json, cache_root

#: The six ALFWorld task types (the ``task_type`` variants), with ALFRED's name for each.
TASK_TYPES: Mapping[str, str] = gen.TASK_TYPES
_ALFRED_NAMES: Mapping[str, str] = MappingProxyType({goal: ours for ours, goal in TASK_TYPES.items()})
#: ALFWorld's splits (official folders under ``json_2.1.1``; generated scenes follow ALFRED's
#: split of FloorPlans).
SPLITS: tuple[str, ...] = gen.SPLITS
#: ``auto``: official games when the data is there, else generated ones.
SOURCES: tuple[str, ...] = ("auto", "official", "generated")

_GAME_FILE = "game.tw-pddl"
_TRAJ_FILE = "traj_data.json"
_OFFICIAL_DIR = "json_2.1.1"
# Bumped when the on-disk layout or the certification changes.
_CACHE_FORMAT = 1
_MAX_ATTEMPTS = 30
# Listed by the engine, hidden from the admissible actions (see the module docstring).
_HIDDEN_COMMANDS = frozenset({"help"})
_OBJECTIVE_RE = re.compile(r"Your task is to: [^\n]*")


# --------------------------------------------------------------------------- engine plumbing


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the engine: Python prints and the planner's C++ output go to /dev/null.

    fast-downward's PDDL translator also overwrites ``sys.argv``; it is restored.
    """
    argv = sys.argv
    sys.stdout.flush()
    saved = None
    try:
        saved = os.dup(1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    except OSError:  # pragma: no cover - no file descriptor 1
        saved = None
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        if saved is not None:
            try:
                ctypes.CDLL(None).fflush(None)  # C stdio buffers, before fd 1 comes back
            except (OSError, AttributeError):  # pragma: no cover - no libc
                pass
            os.dup2(saved, 1)
            os.close(saved)
        sys.argv = argv


def _start(game_path: Path, infos: Any, expert: bool = False) -> Any:
    """Load one game in TextWorld's PDDL environment with ALFWorld's wrappers."""
    import textworld
    from alfworld.agents.environment.alfred_tw_env import (
        AlfredDemangler,
        AlfredExpert,
        AlfredInfos,
    )

    wrappers: list[Any] = [AlfredDemangler(), AlfredInfos]
    if expert:
        wrappers.append(AlfredExpert(expert_type="planner"))
    with _quiet():
        return textworld.start(str(game_path), infos, wrappers=wrappers)


def _stop(engine: Any) -> None:
    """Free the planner's memory in the engine's private copy of fast-downward's library.

    The library itself stays loaded: unloading it (``fast_downward.close_lib``) makes the
    interpreter crash at exit. Each engine so keeps about 1 MB until the process ends.
    """
    lib = getattr(engine.unwrapped, "downward_lib", None)
    engine.close()
    if lib is not None:
        lib.cleanup()


def _engine_infos() -> Any:
    import textworld

    return textworld.EnvInfos(admissible_commands=True, won=True, facts=True)


def expert_plan(game_path: Path) -> list[str]:
    """ALFWorld's planner expert's plan from the initial state ([] if none, or already won)."""
    import textworld

    engine = _start(game_path, textworld.EnvInfos(admissible_commands=True, won=True), expert=True)
    try:
        with _quiet():
            state = engine.reset()
        if state["won"]:
            return []
        return [str(c) for c in state["extra.expert_plan"] or []]
    finally:
        _stop(engine)


def plays_to_win(game_path: Path, commands: Iterable[str]) -> bool:
    """Play ``commands`` from the start; True iff each is admissible and the last one wins."""
    import textworld

    engine = _start(game_path, textworld.EnvInfos(admissible_commands=True, won=True))
    try:
        with _quiet():
            state = engine.reset()
        commands = list(commands)
        for command in commands:
            if state["won"] or command not in state["admissible_commands"]:
                return False
            state, _, _ = engine.step(command)
        return bool(commands) and bool(state["won"])
    finally:
        _stop(engine)


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
    receptacles = sorted(
        (r for r, loc in true.get("receptacleatlocation", ()) if loc in here), key=_natural
    )
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


# --------------------------------------------------------------------------- generated games


@dataclass(frozen=True)
class GameFiles:
    """A certified generated game on disk and what was recorded when it was made."""

    folder: Path
    game_path: Path
    walkthrough: tuple[str, ...]
    meta: Mapping[str, Any]


def default_games_dir() -> Path:
    """Where certified generated games are kept unless ``games_dir`` is given."""
    return cache_root() / "alfworld"


@functools.lru_cache(maxsize=1)
def _logic_digest() -> str:
    import alfworld.info

    blob = b"".join(
        Path(p).read_bytes() for p in (alfworld.info.ALFRED_PDDL_PATH, alfworld.info.ALFRED_TWL2_PATH)
    )
    return hashlib.sha256(blob).hexdigest()[:16]


def game_key(task_type: str, split: str, seed: int) -> str:
    """A stable folder name: readable prefix plus a hash of everything that shapes the game."""
    import alfworld.info

    blob = json.dumps(
        {
            "task_type": task_type,
            "split": split,
            "seed": seed,
            "generator": gen.GENERATOR_VERSION,
            "format": _CACHE_FORMAT,
            "alfworld": alfworld.info.__version__,
            "logic": _logic_digest(),
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
    return f"{task_type}-{split}-seed{seed}-{digest}"


def _read_game(folder: Path) -> GameFiles | None:
    """Load a finished game folder, or None if it is incomplete or not ours."""
    meta = read_meta(folder, _CACHE_FORMAT, (_GAME_FILE, _TRAJ_FILE))
    if meta is None:
        return None
    try:
        walkthrough = tuple(str(c) for c in meta["walkthrough"])
    except (KeyError, TypeError):
        return None
    if not walkthrough:
        return None
    return GameFiles(folder, folder / _GAME_FILE, walkthrough, MappingProxyType(meta))


def _generate_game(task_type: str, split: str, seed: int, folder: Path) -> dict[str, Any]:
    """Draw problems for (task_type, split, seed) until one is certified; return its metadata."""
    import alfworld.info

    start = time.perf_counter()
    rejected: list[str] = []
    for attempt in range(_MAX_ATTEMPTS):
        try:
            scene = gen.sample_scene(task_type, seed, attempt, split)
        except gen.GenerationError as exc:
            rejected.append(f"attempt {attempt}: {exc}")
            continue
        data = gen.game_data(scene)
        game_path = folder / _GAME_FILE
        atomic_write_json(folder / _TRAJ_FILE, gen.traj_data(scene))
        atomic_write_json(game_path, data)
        try:
            plan = expert_plan(game_path)
            won = bool(plan) and plays_to_win(game_path, plan)
        except Exception as exc:  # noqa: BLE001 - the engine fails to load some unsolvable problems
            rejected.append(f"attempt {attempt}: the engine failed: {exc!r}")
            continue
        if not plan:
            rejected.append(f"attempt {attempt}: the planner expert found no plan")
            continue
        if not won:
            rejected.append(f"attempt {attempt}: the planner's plan does not win")
            continue
        data["solvable"] = True
        data["walkthrough"] = plan
        atomic_write_json(game_path, data)
        return {
            "format": _CACHE_FORMAT,
            "source": "generated",
            "task_type": task_type,
            "split": split,
            "seed": seed,
            "attempt": attempt,
            "rejected": rejected,
            "floorplan": scene.floorplan,
            "task_sentence": scene.task_sentence,
            "receptacles": len(scene.receptacles),
            "objects": len(scene.objects),
            "walkthrough": plan,
            "generator": gen.GENERATOR_VERSION,
            "alfworld": alfworld.info.__version__,
            "generation_seconds": round(time.perf_counter() - start, 3),
        }
    raise UnknownEnvironmentError(
        f"no certified {task_type} problem for seed {seed} in {_MAX_ATTEMPTS} attempts: "
        + "; ".join(rejected[-3:])
    )


def ensure_game(
    task_type: str,
    seed: int = 0,
    split: str = "train",
    games_dir: str | os.PathLike[str] | None = None,
) -> GameFiles:
    """Return the certified generated game for (task_type, split, seed), making it on first use.

    Generation happens in a temporary folder beside the cache and becomes visible only through a
    single ``os.rename``, so an interrupted generation never leaves a game that later loads.
    """
    if task_type not in TASK_TYPES:
        raise UnknownEnvironmentError(
            f"unknown ALFWorld task type {task_type!r}; choose one of {list(TASK_TYPES)}"
        )
    if split not in SPLITS:
        raise ConfigError(f"unknown ALFWorld split {split!r}; choose one of {list(SPLITS)}")
    final = games_root(games_dir, default_games_dir) / "generated" / game_key(task_type, split, seed)
    return build_game_folder(final, _read_game, lambda folder: _generate_game(task_type, split, seed, folder))


# --------------------------------------------------------------------------- official games


def official_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder that would hold ``json_2.1.1``: ``data_dir``, else ``$ALFWORLD_DATA``.

    (Importing ``alfworld`` sets ``$ALFWORLD_DATA`` to ``~/.cache/alfworld`` when it is unset.)
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    return Path(os.environ.get("ALFWORLD_DATA") or "~/.cache/alfworld").expanduser()


@functools.lru_cache(maxsize=8)
def _official_listing(split_dir: str) -> Mapping[str, tuple[str, ...]]:
    """task type -> game files (relative paths, sorted) under one official split folder.

    Like ALFWorld's own loader, games with movable receptacles or sliced objects are skipped.
    """
    goal_to_type = _ALFRED_NAMES
    found: dict[str, list[str]] = {t: [] for t in TASK_TYPES}
    root = Path(split_dir)
    for dirpath, _, files in os.walk(root):
        if _GAME_FILE not in files:
            continue
        rel = Path(dirpath).relative_to(root)
        if "movable" in str(rel) or "Sliced" in str(rel):
            continue
        goal = rel.parts[0].split("-", 1)[0] if rel.parts else ""
        if goal in goal_to_type:
            found[goal_to_type[goal]].append(str(rel / _GAME_FILE))
    return MappingProxyType({t: tuple(sorted(v)) for t, v in found.items()})


def has_official_games(split: str, data_dir: str | os.PathLike[str] | None = None) -> bool:
    split_dir = official_data_dir(data_dir) / _OFFICIAL_DIR / split
    if not split_dir.is_dir():
        return False
    return any(_official_listing(str(split_dir.resolve())).values())


def _is_solvable_game(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("solvable") is True
    except (OSError, ValueError, AttributeError):
        return False


def official_game(
    task_type: str, seed: int, split: str, data_dir: str | os.PathLike[str] | None = None
) -> Path:
    """The official game file ``seed`` selects among the split's solvable games of ``task_type``.

    The games are put in a fixed pseudo-random order (so that nearby seeds are not all trials of
    one scene and object); ``seed`` indexes it modulo the number of games, and a game marked
    unsolvable (``"solvable"`` not true) passes the choice to the next one.
    """
    split_dir = (official_data_dir(data_dir) / _OFFICIAL_DIR / split).resolve()
    games = list(_official_listing(str(split_dir)).get(task_type, ()))
    if not games:
        raise ConfigError(f"no official {task_type} games under {split_dir}")
    random.Random(f"priorcache-alfworld-official:{split}:{task_type}").shuffle(games)
    for offset in range(len(games)):
        path = split_dir / games[(seed + offset) % len(games)]
        if _is_solvable_game(path):
            return path
    raise ConfigError(f"none of the official {task_type} games under {split_dir} is solvable")


def _official_walkthrough(game_path: Path, games_dir: Path) -> tuple[str, ...]:
    """Certified planner plan for an official game, cached by the game file's content."""
    digest = hashlib.sha256(game_path.read_bytes()).hexdigest()[:24]
    cache_file = games_dir / "official" / f"{digest}.json"
    try:
        cached = json.loads(cache_file.read_text(encoding="utf-8"))
        if cached.get("format") == _CACHE_FORMAT and cached.get("walkthrough"):
            return tuple(str(c) for c in cached["walkthrough"])
    except (OSError, ValueError, AttributeError):
        pass
    plan = expert_plan(game_path)
    if not plan or not plays_to_win(game_path, plan):
        raise UnknownEnvironmentError(f"the planner expert cannot solve the official game {game_path}")
    atomic_write_json(
        cache_file, {"format": _CACHE_FORMAT, "game": str(game_path), "walkthrough": plan}
    )
    return tuple(plan)


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
            raise UnknownEnvironmentError(
                f"unknown ALFWorld task type {task_type!r}; choose one of {list(TASK_TYPES)}"
            )
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
            self.game_meta: Mapping[str, Any] = MappingProxyType(
                {"source": self.source, "game": str(self.game_path)}
            )
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
        return state.feedback, self._info(state)

    def _parse_action(self, action: str) -> str:
        """One line, single spaces, lower case: ALFWorld commands are all written that way."""
        return clean_command(action).lower()

    def _step(self, command: str) -> tuple[str, float, bool, dict[str, Any]]:
        """Send one command; reward 1.0 on the step that completes the task, else 0.0."""
        self._fresh = None
        state, _, _ = self._engine.step(command)
        info = self._info(state)
        terminated = info["won"]
        return state.feedback, (1.0 if terminated else 0.0), terminated, info

    def _release(self) -> None:
        """Unload the engine."""
        _stop(self._engine)
        self._engine = None
        self._fresh = None
