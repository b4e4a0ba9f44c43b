"""Where priorcache keeps its files, and atomic writes of files and folders: a crash mid-write leaves the
previous version readable."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from priorcache.errors import PriorCacheError

T = TypeVar("T")

# A temp folder this old was left by a process killed mid-build; younger ones may be in use.
STALE_TMP_SECONDS = 24 * 3600


@contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temp file beside ``path`` for the block to write; on success it is fsynced and renamed onto
    ``path`` in one step, on failure removed. ``suffix`` lets writers that pick a format by the file
    name (matplotlib) see the right one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


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


def build_once(final: Path, read: Callable[[Path], T | None], build: Callable[[Path], None]) -> T:
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
        raise PriorCacheError(f"the folder built at {final} could not be read back")
    return found


def cache_root() -> Path:
    """``$PRIORCACHE_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/priorcache``, else ``~/.cache/priorcache``:
    converted models and generated games live here."""
    root = os.environ.get("PRIORCACHE_CACHE_DIR")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "priorcache"
