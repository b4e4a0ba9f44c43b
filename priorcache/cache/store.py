"""Saving and loading a prior cache's state dict in plain, versioned, checksummed files.

A saved cache is a directory of three files, none of them pickled:

- ``keys.npy``: the state's float32 key matrix (n, dim); row i belongs to entry i;
- ``entries.json``: ``format``, ``format_version`` and every other field of the state dict
  (:mod:`priorcache.cache.state`: encoder, backend, config, clock, prefixes, entries, controller);
- ``manifest.json``: ``format``, ``format_version`` and, per other file, its size and sha256.

Format version 2 stores each entry's prior as ``{kind, payload}`` and the mode's controller state;
version 1 (a categorical score map per entry, an ``adaptation`` block) is read and upgraded, so
caches saved by earlier releases still load.

Writes are atomic: the files are written and fsynced in a temp directory beside the target, then
the previous save is renamed to ``.<name>.old``, the temp directory renamed into place, and the
backup removed. A crash leaves either the previous or the new save at ``<name>``, or (between the
two renames) the previous one at ``.<name>.old``, which ``read_state`` falls back to. Temp
directories a killed save left (``.<name>.tmp-*``) are removed by the next save to the same place.

Symbolic links: a target that is a symlink (``--cache-path`` pointing elsewhere) is written through:
the temp directory, the backup and the lock sit beside the link's target, the target is replaced and
the link kept. A dangling link is written through too: the save is created where the link points,
which mends it. A link loop is refused.

Several writers: every save holds the target's ``folder_lock`` (``.<name>.lock`` beside it) from
reading what is there to the last rename, so saves to one target never interleave, whether from
threads or processes; a load holds it shared (where a save made the lock file), so it never reads
a save half replaced. What a save does with a save already there depends on ``merge``:

- ``merge=False`` (a run's own output folder): a plain overwrite; the previous save is replaced.
- ``merge=True`` (a folder shared by runs, ``--cache-path``): the written state is the union of
  the save on disk and the writer's (``combine``, by default :func:`priorcache.cache.state.merge_states`:
  entries identified by (state text, prompt prefix); for one identity the entry with more refreshes,
  then more hits, then the writer's wins; the on-disk entries' steps are rebased onto the writer's
  clock; prefixes united; the writer's encoder, backend, config, clock and controller kept). Two
  runs that share a ``--cache-path`` thus both keep their entries, whichever saves last. A save on
  disk made with another encoder, key size or LLM backend, or one that is damaged, is refused
  (CacheFormatError), never merged or overwritten silently. ``PriorCache.save`` also validates the
  union in full and evicts it down to the larger of its capacity and the size of the save there.

A state that breaks a bound a load enforces (``check_savable``: a score beyond ±1e4 nats from a
broken backend, a counter past 2**53) is not written: a save must load again.

``read_state`` checks the files (manifest, sizes, checksums, array dtype, JSON, version) and raises
CacheFormatError naming the problem; the cache's ``load_state_dict`` checks the content.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from priorcache.cache.state import check_keys, check_savable, merge_states
from priorcache.errors import CacheFormatError, ConfigError
from priorcache.io import folder_lock, lock_file_of, make_temp_dir, resolve_target
from priorcache.validation import is_json_int

FORMAT_NAME = "priorcache.prior-cache"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
ENTRIES = "entries.json"
KEYS = "keys.npy"
DATA_FILES = (ENTRIES, KEYS)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# --- small file helpers (module functions so tests can simulate crashes) ---------------------------
def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _rename(src: Path, dst: Path) -> None:
    os.rename(src, dst)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms that cannot open a directory (Windows) have no directory fsync
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def backup_of(directory: Path) -> Path:
    return directory.parent / f".{directory.name}.old"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- save --------------------------------------------------------------------------------------
def write_state(
    directory: str | Path,
    state: Mapping[str, Any],
    *,
    merge: bool = False,
    combine: Callable[[Mapping[str, Any], Mapping[str, Any]], Mapping[str, Any]] | None = None,
) -> None:
    """Write a cache's ``state_dict()`` to ``directory`` atomically, under its lock (see the module docstring).

    ``merge``: write the union of ``state`` and the save already at ``directory`` (if any), made by
    ``combine(state, saved_state)`` (default :func:`priorcache.cache.state.merge_states`) while the
    lock is held; a damaged or incomparable save there is refused with CacheFormatError."""
    target = _target(directory)
    with folder_lock(target):
        _remove_own_temps(target)
        _check_target(target)
        if merge and has_saved_cache(target):
            try:
                _, saved = _read_unlocked(target)
                state = (combine or merge_states)(state, saved)
            except CacheFormatError as e:
                raise CacheFormatError(
                    f"cannot merge into {target}: {e}. Save elsewhere, or move that save away to replace it"
                ) from None
        try:
            check_savable(state)
        except CacheFormatError as e:
            raise CacheFormatError(f"not saving to {target}: {e}, and a load would refuse the save") from None
        _write_unlocked(target, state)


def _target(directory: str | Path) -> Path:
    try:
        return resolve_target(directory)
    except ConfigError as e:
        raise CacheFormatError(f"cannot use {directory} for a saved cache: {e}") from None


def _write_unlocked(directory: Path, state: Mapping[str, Any]) -> None:
    doc = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **{k: v for k, v in state.items() if k != "keys"}}
    entries_bytes = json.dumps(doc, ensure_ascii=False, allow_nan=False, indent=1).encode("utf-8")
    buf = io.BytesIO()
    np.save(buf, np.asarray(state["keys"], dtype=np.float32), allow_pickle=False)
    keys_bytes = buf.getvalue()
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "files": {
            name: {"bytes": len(data), "sha256": _sha256(data)}
            for name, data in ((ENTRIES, entries_bytes), (KEYS, keys_bytes))
        },
    }
    manifest_bytes = json.dumps(manifest, indent=1).encode("utf-8")

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(directory.parent, _temp_prefix(directory))
    try:
        _write_file(tmp / KEYS, keys_bytes)
        _write_file(tmp / ENTRIES, entries_bytes)
        _write_file(tmp / MANIFEST, manifest_bytes)  # last: a temp dir without it is never a save
        _fsync_dir(tmp)
        swap_into_place(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _temp_prefix(directory: Path) -> str:
    return f".{directory.name}.tmp-"


def _remove_own_temps(directory: Path) -> None:
    """Remove temp directories earlier saves to ``directory`` left (killed mid-write). Only under the
    lock: every save holds it while its temp exists, so none of these is a save in progress."""
    pattern = re.compile(rf"^{re.escape(_temp_prefix(directory))}[a-z0-9_]{{8}}$")
    try:
        leftovers = [p for p in directory.parent.iterdir() if pattern.match(p.name)]
    except OSError:
        return
    for path in leftovers:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def _check_target(directory: Path) -> None:
    """Refuse to replace anything that is not an earlier save (or an empty directory)."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise CacheFormatError(f"cannot save a cache to {directory}: it exists and is not a directory")
    if not any(directory.iterdir()):
        return
    manifest = directory / MANIFEST
    try:
        ours = json.loads(manifest.read_bytes()).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise CacheFormatError(
            f"refusing to overwrite {directory}: it is not empty and holds no saved prior "
            f"cache ({MANIFEST} of format {FORMAT_NAME!r} missing)"
        )


def swap_into_place(tmp: Path, directory: Path) -> None:
    """Make the complete folder ``tmp`` the folder ``directory`` by two renames (the previous one
    waits at ``backup_of(directory)`` in between and is removed after); used for any folder that
    must be replaced whole, a cache save or a run's checkpoint."""
    backup = backup_of(directory)
    if directory.exists():
        if backup.exists():
            # A backup next to a complete save is left over from an earlier crash after the swap.
            shutil.rmtree(backup)
        _rename(directory, backup)
    # Else, a backup (if any) is the previous save from a crash between the renames: it stays
    # until the new save is in place.
    _rename(tmp, directory)
    _fsync_dir(directory.parent)
    if backup.exists():
        shutil.rmtree(backup)
        _fsync_dir(directory.parent)


# --- load --------------------------------------------------------------------------------------
def has_saved_cache(directory: str | Path) -> bool:
    """Whether ``directory`` (or the backup an interrupted save left beside it) holds a save."""
    directory = _target(directory)
    return (directory / MANIFEST).is_file() or (backup_of(directory) / MANIFEST).is_file()


def read_state(directory: str | Path) -> tuple[Path, dict[str, Any]]:
    """The state dict saved in ``directory`` (or in the backup an interrupted save left), upgraded to
    the current version, and the file it came from; CacheFormatError if the files are unusable.
    Reads under the target's shared lock, so never while a save replaces it."""
    target = _target(directory)
    with ExitStack() as stack:
        # A read creates no lock file (nor folder): where none exists, no save has run yet, and
        # loading a cache must not litter a folder that is only read (a shipped or shared one).
        if lock_file_of(target).exists():
            try:
                stack.enter_context(folder_lock(target, shared=True))
            except OSError:  # a lock file this user cannot open: read as before locks existed
                pass
        return _read_unlocked(target)


def _read_unlocked(directory: Path) -> tuple[Path, dict[str, Any]]:
    source = _source_dir(directory)
    manifest = _parse_json(_read(source / MANIFEST, source), source / MANIFEST)
    _validate_manifest(manifest, source)
    blobs = {}
    for name in DATA_FILES:
        data = _read(source / name, source)
        meta = manifest["files"][name]
        if len(data) != meta["bytes"]:
            raise CacheFormatError(
                f"{source / name} is {len(data)} bytes, the manifest says {meta['bytes']}: truncated or replaced"
            )
        if _sha256(data) != meta["sha256"]:
            raise CacheFormatError(
                f"{source / name} does not match its sha256 checksum in {MANIFEST}: damaged or edited"
            )
        blobs[name] = data
    keys = _parse_keys(blobs[KEYS], source / KEYS)
    where = source / ENTRIES
    doc = _parse_json(blobs[ENTRIES], where)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        found = doc.get("format") if isinstance(doc, dict) else None
        raise CacheFormatError(f"{where}: not a priorcache entries file (format {found!r})")
    version = doc.pop("format_version", None)
    _check_version(version, where)
    if version != manifest["format_version"]:
        raise CacheFormatError(f"{where} has format version {version}, its manifest {manifest['format_version']}")
    del doc["format"]
    if version == 1:
        doc = _upgrade_v1(doc, where)
    return where, {**doc, "keys": keys}


def _upgrade_v1(doc: dict[str, Any], where: Path) -> dict[str, Any]:
    """Version 1 → 2: score maps become categorical priors, ``adaptation`` the controller state."""
    entries = doc.get("entries")
    if isinstance(entries, list):
        for item in entries:
            if isinstance(item, dict) and "scores" in item:
                item["prior"] = {"kind": "categorical", "payload": {"scores": item.pop("scores")}}
    adaptation = doc.pop("adaptation", None)
    controller = None
    if adaptation is not None:
        if not isinstance(adaptation, dict) or set(adaptation) != {"mode", "params", "meta_theta", "kl_budget"}:
            raise CacheFormatError(
                f"{where}: damaged 'adaptation' state: it must be {{mode, params, meta_theta, kl_budget}}"
            )
        theta, kl_state = adaptation["meta_theta"], adaptation["kl_budget"]
        state = {"theta": theta} if theta is not None else kl_state
        controller = {"mode": adaptation["mode"], "params": adaptation["params"], "state": state}
    doc["controller"] = controller
    return doc


def _source_dir(directory: Path) -> Path:
    if (directory / MANIFEST).is_file():
        return directory
    backup = backup_of(directory)
    if (backup / MANIFEST).is_file() and not (directory.is_dir() and any(directory.iterdir())):
        return backup  # an interrupted save: the previous one waits in the backup
    if not directory.exists():
        raise CacheFormatError(f"no saved prior cache at {directory}: the directory does not exist")
    if not directory.is_dir():
        raise CacheFormatError(f"no saved prior cache at {directory}: it is not a directory")
    raise CacheFormatError(f"{directory} is not a saved prior cache: {MANIFEST} is missing")


def _read(path: Path, source: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CacheFormatError(f"saved cache {source} is incomplete: {path.name} is missing") from None
    except OSError as e:
        raise CacheFormatError(f"cannot read {path}: {e}") from e


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _parse_json(data: bytes, path: Path) -> Any:
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise CacheFormatError(f"{path} is not valid JSON: {e}") from e


def _validate_manifest(manifest: Any, source: Path) -> None:
    where = source / MANIFEST
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise CacheFormatError(f"{where} is not a priorcache manifest (format {found!r}, expected {FORMAT_NAME!r})")
    _check_version(manifest.get("format_version"), where)
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != set(DATA_FILES):
        listed = sorted(files) if isinstance(files, dict) else files
        raise CacheFormatError(f"{where} must list exactly {sorted(DATA_FILES)}, lists {listed}")
    for name, meta in files.items():
        if (
            not isinstance(meta, dict)
            or not is_json_int(meta.get("bytes"))
            or meta["bytes"] < 0
            or not isinstance(meta.get("sha256"), str)
            or not _HEX64.match(meta["sha256"])
        ):
            raise CacheFormatError(f"{where}: entry for {name} needs 'bytes' (int ≥ 0) and 'sha256' (64 hex digits)")


def _check_version(version: Any, where: Path) -> None:
    if not is_json_int(version) or version not in READABLE_VERSIONS:
        raise CacheFormatError(
            f"{where} has format version {version!r}; this priorcache reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )


def _parse_keys(data: bytes, path: Path) -> np.ndarray:
    try:
        keys = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise CacheFormatError(f"{path} is not a readable .npy array: {e}") from e
    try:
        return check_keys(keys)
    except CacheFormatError as e:
        raise CacheFormatError(f"{path}: {e}") from None
