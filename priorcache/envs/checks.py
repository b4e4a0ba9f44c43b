"""What every environment checks and does alike: constructor arguments, and games built once on disk.

Generated games (TextWorld's, ALFWorld's) live in one folder each under a games directory; the
folder's ``meta.json`` is written last, so a folder is a finished game exactly when its
``meta.json`` reads back (``read_meta``). ``build_game_folder`` makes such a folder atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from priorcache.errors import ConfigError
from priorcache.io import atomic_write_text, build_once
from priorcache.validation import is_int

T = TypeVar("T")

#: The file that marks a finished game folder and records how the game was made.
META_FILE = "meta.json"


def check_game_seed(game_seed: Any) -> int:
    """``game_seed`` as an int; a ConfigError unless it is a non-negative integer (not a bool)."""
    if not is_int(game_seed) or game_seed < 0:
        raise ConfigError(f"game_seed must be a non-negative int, got {game_seed!r}")
    # A numpy integer becomes a plain int: seeds go into JSON metadata and folder names.
    return int(game_seed)


def check_max_episode_steps(max_episode_steps: Any) -> int:
    """``max_episode_steps`` as an int; a ConfigError unless it is a positive integer (not a bool)."""
    if not is_int(max_episode_steps) or max_episode_steps < 1:
        raise ConfigError(f"max_episode_steps must be a positive int, got {max_episode_steps!r}")
    return int(max_episode_steps)


def games_root(games_dir: str | os.PathLike[str] | None, default: Callable[[], Path]) -> Path:
    """The games directory: ``games_dir`` (``~`` expanded) if given, else ``default()``."""
    return Path(games_dir).expanduser() if games_dir is not None else default()


def read_meta(folder: Path, cache_format: int, required: Iterable[str] = ()) -> dict[str, Any] | None:
    """The ``meta.json`` of a finished game folder, or None when the folder is not one: the file is
    missing or damaged, was written in another ``cache_format``, or a ``required`` file is missing."""
    if not all((folder / name).is_file() for name in (META_FILE, *required)):
        return None
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != cache_format:
        return None
    return meta


def build_game_folder(final: Path, read: Callable[[Path], T | None], generate: Callable[[Path], dict[str, Any]]) -> T:
    """``read(final)``, generating the game first when ``final`` holds none (see ``build_once``).

    ``generate(folder)`` writes the game files into ``folder`` and returns its metadata, which is
    written to ``meta.json`` last: a folder without it is never taken for a finished game.
    """

    def build(folder: Path) -> None:
        meta = generate(folder)
        atomic_write_text(folder / META_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")

    return build_once(final, read, build)
