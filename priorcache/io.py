"""Where priorcache keeps its files, atomic writes of files and folders, and per-path locks.

Atomic writes (``atomic_path``, ``atomic_write_*``, ``build_once``): a crash mid-write leaves the
previous version readable. The new version is written to a temp beside the target and renamed onto
it in one step.

- Symbolic links: a write to a path that is a symlink writes the file the link points to and keeps
  the link (the temp is made beside the link's target, so the rename replaces the target, never the
  link). A dangling link is written through as well: the file is created where the link points
  (and the folders above it), which mends the link rather than leaving a broken path.
- Permissions: temp files are created with mode 0o666 and temp folders with 0o777, which the kernel
  reduces by the process's umask (and a folder's default ACL) exactly as for ``open``/``mkdir``. So
  written files get the user's ordinary permissions (``-rw-r--r--`` under umask 022), not
  ``tempfile``'s private 0o600/0o700, and the umask is never read or changed (changing it, even
  briefly, would race with other threads creating files).
- Leftovers: a process killed mid-write leaves its temp (``.NAME.XXXXXXXX.tmp``) beside the target.
  ``atomic_path`` removes the leftovers of the same file name older than ``STALE_FILE_TMP_SECONDS``
  when it next writes that file: these writes take no lock (many files are rewritten after every
  episode), so a younger temp may be another process's write in flight; a write takes milliseconds
  to seconds, so ten minutes is far beyond any live write and short enough that a killed run's litter
  is gone by the next run. ``build_once``'s ``.tmp-*`` folders may belong to a build of minutes (a
  model conversion), so they are removed after ``STALE_TMP_SECONDS``.

``folder_lock(path)``: an advisory lock per target path (``fcntl.flock`` on ``.NAME.lock`` beside
the target, symlinks resolved first so that every spelling of one target shares one lock). Saves of
a prior cache and bench runs use it so that two processes never write one folder at once. The lock
file stays after release: removing it would let a third process lock a fresh file while a second
still holds the old one. Without ``fcntl`` (Windows, which the environments do not support) it
locks nothing.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from priorcache.errors import ConfigError, PriorCacheError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

T = TypeVar("T")

# A build_once temp folder this old was left by a process killed mid-build; younger ones may be in use.
STALE_TMP_SECONDS = 24 * 3600
# An atomic_path temp file this old was left by a killed write (see the module docstring).
STALE_FILE_TMP_SECONDS = 600

# Temp names end in 8 characters of this alphabet: the same as ``tempfile``'s, so that leftovers of
# earlier releases (written with tempfile.mkstemp) match the same patterns.
_TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"
_TOKEN = "[a-z0-9_]{8}"
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def resolve_target(path: str | Path) -> Path:
    """``path`` with every symbolic link resolved: where a write must go so that links stay links.

    A dangling link resolves to where it points; a link loop is refused (ConfigError)."""
    path = Path(path)
    resolved = Path(os.path.realpath(path))
    # realpath leaves a link it cannot resolve (a loop) in place, as the last part or above it.
    try:
        looped = stat.S_ISLNK(os.lstat(resolved).st_mode)
    except OSError as e:
        looped = e.errno == errno.ELOOP
    if looped:
        raise ConfigError(f"{path} goes through a symbolic link loop: there is no file or folder to write")
    return resolved


def _token() -> str:
    return "".join(secrets.choice(_TOKEN_CHARS) for _ in range(8))


def make_temp_file(folder: Path, prefix: str, suffix: str = "") -> Path:
    """A new empty file ``folder/<prefix>XXXXXXXX<suffix>`` with the umask's permissions (see the module docstring)."""
    for _ in range(100):
        path = Path(folder) / f"{prefix}{_token()}{suffix}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return path
    raise FileExistsError(f"no free temp file name {prefix}XXXXXXXX{suffix} in {folder}")  # pragma: no cover


def make_temp_dir(folder: Path, prefix: str) -> Path:
    """A new empty folder ``folder/<prefix>XXXXXXXX`` with the umask's permissions."""
    for _ in range(100):
        path = Path(folder) / f"{prefix}{_token()}"
        try:
            os.mkdir(path, 0o777)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temp folder name {prefix}XXXXXXXX in {folder}")  # pragma: no cover


def remove_file_temps(path: Path, suffix: str, older_than: float = STALE_FILE_TMP_SECONDS) -> None:
    """Delete ``atomic_path``'s leftover temps of ``path`` (``.NAME.XXXXXXXX<suffix>``) older than ``older_than`` s."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.{_TOKEN}{re.escape(suffix)}$")
    now = time.time()
    try:
        candidates = [p for p in path.parent.iterdir() if pattern.match(p.name)]
    except OSError:
        return
    for entry in candidates:
        try:
            st = entry.lstat()
            if entry.is_file() and not entry.is_symlink() and now - st.st_mtime > older_than:
                entry.unlink()
        except OSError:  # gone meanwhile, or not ours to remove: it is only clutter
            pass


@contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temp file beside ``path`` for the block to write; on success it is fsynced and renamed onto
    ``path`` in one step, on failure removed. ``suffix`` lets writers that pick a format by the file
    name (matplotlib) see the right one. A symlink at ``path`` is written through and kept."""
    target = resolve_target(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_file_temps(target, suffix)
    tmp = make_temp_file(target.parent, f".{target.name}.", suffix)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically; NaN and ±inf are refused (ValueError), not written."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def lock_file_of(path: str | Path) -> Path:
    """The lock file ``folder_lock`` uses for ``path``: ``.NAME.lock`` beside the resolved target."""
    target = resolve_target(path)
    return target.parent / f".{target.name}.lock"


@contextmanager
def folder_lock(path: str | Path, blocking: bool = True, *, shared: bool = False) -> Iterator[bool]:
    """Hold the advisory lock of ``path`` (a folder or file, which need not exist) for the block.

    Yields True once held. ``blocking=False``: yields False at once, holding nothing, when another
    process (or another ``folder_lock`` of this one) holds it; the caller then must not write.
    ``shared``: a reader's lock, held by any number of readers but never with a writer's. Creates the
    folder above ``path`` for the lock file. On platforms without ``fcntl`` it locks nothing and
    yields True."""
    lock = lock_file_of(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover - Windows
        yield True
        return
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | _CLOEXEC, 0o666)
    except PermissionError:
        fd = os.open(lock, os.O_RDONLY | _CLOEXEC)  # another user's lock file: flock works on a read-only fd
    try:
        flags = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, flags if blocking else flags | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            held = False
        try:
            yield held
        finally:
            if held:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def remove_stale_temps(root: Path) -> None:
    """Delete abandoned ``.tmp-*`` folders under ``root`` older than ``STALE_TMP_SECONDS``: they are
    never loaded (only renamed folders are), so they are only disk clutter."""
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
    folder that later loads. One process builds at a time (``folder_lock``): a second one waits and
    reads the first's folder rather than building (minutes of model conversion or fine-tuning) again.
    A symlink at ``final`` is built through (its target is built, the link kept); the folder gets the
    umask's permissions.
    """
    found = read(final)
    if found is not None:
        return found
    final = resolve_target(final)
    with folder_lock(final):
        return _build_locked(final, read, build)


def _build_locked(final: Path, read: Callable[[Path], T | None], build: Callable[[Path], None]) -> T:
    found = read(final)  # built by the process that held the lock before us
    if found is not None:
        return found
    remove_stale_temps(final.parent)
    tmp = make_temp_dir(final.parent, f".tmp-{final.name}-")
    try:
        build(tmp)
        if final.exists() and read(final) is None:
            # A foreign or incomplete folder sits there: move it aside, then take its place.
            trash = make_temp_dir(final.parent, f".tmp-trash-{final.name}-")
            os.rename(final, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(tmp, final)
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
