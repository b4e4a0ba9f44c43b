"""The game files of the ALFWorld environment: generated games, certified and cached, and the official ones.

Generated games: :func:`ensure_game` returns the :class:`GameFiles` of the certified game for a
(task type, split, seed), writing it on first use: problems drawn by :mod:`priorcache.envs.alfworld_gen`
are tried in turn until ALFWorld's planner expert plans one and the plan plays to a win in the engine
(:mod:`priorcache.envs.alfworld_engine`); the game, its ``traj_data.json`` and its walkthrough are
kept under ``default_games_dir()`` in a folder named by :func:`game_key`. Official games: the
``json_2.1.1/<split>`` folders of ``$ALFWORLD_DATA`` (or ``data_dir``) are listed per task type,
:func:`official_game` picks one for a seed and ``_official_walkthrough`` plans and certifies it once,
caching the plan by the game file's content.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from priorcache.envs import alfworld_gen as gen
from priorcache.envs.alfworld_engine import expert_plan, plays_to_win
from priorcache.envs.alfworld_gen import SPLITS, TASK_TYPES
from priorcache.envs.alfworld_pddl import game_data, traj_data
from priorcache.envs.checks import build_game_folder, games_root, read_meta
from priorcache.errors import ConfigError, UnknownEnvironmentError
from priorcache.io import atomic_write_json, cache_root

# ALFRED's goal names -> our task-type names.
_ALFRED_NAMES: Mapping[str, str] = MappingProxyType({goal: ours for ours, goal in TASK_TYPES.items()})

_GAME_FILE = "game.tw-pddl"
_TRAJ_FILE = "traj_data.json"
_OFFICIAL_DIR = "json_2.1.1"
# Bumped when the on-disk layout or the certification changes.
_CACHE_FORMAT = 1
_MAX_ATTEMPTS = 30


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

    blob = b"".join(Path(p).read_bytes() for p in (alfworld.info.ALFRED_PDDL_PATH, alfworld.info.ALFRED_TWL2_PATH))
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
        data = game_data(scene)
        game_path = folder / _GAME_FILE
        atomic_write_json(folder / _TRAJ_FILE, traj_data(scene))
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
        f"no certified {task_type} problem for seed {seed} in {_MAX_ATTEMPTS} attempts: " + "; ".join(rejected[-3:])
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
        raise UnknownEnvironmentError(f"unknown ALFWorld task type {task_type!r}; choose one of {list(TASK_TYPES)}")
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


def official_game(task_type: str, seed: int, split: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
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
    atomic_write_json(cache_file, {"format": _CACHE_FORMAT, "game": str(game_path), "walkthrough": plan})
    return tuple(plan)
