"""What every environment checks and does alike: constructor arguments, and games built once on disk."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from priorcache.errors import ConfigError, UnknownEnvironmentError

T = TypeVar("T")

# A temp folder this old was left by a process killed mid-generation; younger ones may be in use.
STALE_TMP_SECONDS = 24 * 3600


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_game_seed(game_seed: Any) -> int:
    if not _is_int(game_seed) or game_seed < 0:
        raise ConfigError(f"game_seed must be a non-negative int, got {game_seed!r}")
    return game_seed


def check_max_episode_steps(max_episode_steps: Any) -> int:
    if not _is_int(max_episode_steps) or max_episode_steps < 1:
        raise ConfigError(f"max_episode_steps must be a positive int, got {max_episode_steps!r}")
    return max_episode_steps


def remove_stale_temps(root: Path) -> None:
    """Delete abandoned ``.tmp-*`` folders under ``root``: they are never loaded (only renamed
    folders are), so they are only disk clutter."""
    now = time.time()
    for entry in Path(root).glob(".tmp-*"):
        try:
            if now - entry.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass


def build_once(final: Path, read: Callable[[Path], Optional[T]], build: Callable[[Path], None]) -> T:
    """``read(final)``, building the folder first when it holds nothing readable.

    ``build`` fills a temporary folder beside ``final`` (writing the file ``read`` checks last),
    which becomes visible only through one ``os.rename``: an interrupted build never leaves a
    folder that later loads, and when two processes race the first finished folder is kept.
    """
    found = read(final)
    if found is not None:
        return found
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        build(tmp)
        if final.exists() and read(final) is None:
            # A foreign or incomplete folder sits there: move it aside, then take its place.
            trash = Path(tempfile.mkdtemp(prefix=f".tmp-trash-{final.name}-", dir=final.parent))
            os.rename(final, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if read(final) is None:  # another process did not finish it first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    found = read(final)
    if found is None:  # pragma: no cover - only if the folder is removed under our feet
        raise UnknownEnvironmentError(f"the game built at {final} could not be read back")
    return found
