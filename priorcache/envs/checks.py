"""What every environment checks and does alike: constructor arguments and on-disk temp clean-up."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from priorcache.errors import ConfigError

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
