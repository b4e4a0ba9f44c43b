"""Saving and loading a prior cache (SPEC §4 "Persistence") in plain, versioned, checksummed files.

A saved cache is a directory of three files, none of them pickled:

- ``keys.npy``: float32 matrix (n, dim) of unit key vectors; row i belongs to entry i.
- ``entries.json``: ``format``, ``format_version``, ``encoder`` {name, dim}, ``backend`` {name},
  ``config`` (the CacheConfig, for the record), ``clock``, ``prefixes`` (prefix sha256 → prefix
  text) and ``entries``: per entry ``id``, ``state_text``, ``prefix_hash``, ``scores`` (F7's raw map
  action → ℓ), ``created_step``, ``last_used_step``, ``hit_count``, ``refresh_count`` and
  ``last_audit`` (F5: {epsilon, kl, kl_bound, log_z_gap} or null); optionally ``adaptation``: the
  live K, δ, r and what the adaptive modes learnt (the meta-optimiser's θ, the KL budget's audits),
  so an ``adaptive`` or ``kl-budget`` cache warm-starts where the saved one stopped.
- ``manifest.json``: ``format``, ``format_version`` and, per other file, its size and sha256.

Writes are atomic: the files are written and fsynced in a temp directory beside the target, then
the previous save is renamed to ``.<name>.old``, the temp directory renamed into place, and the
backup removed. A crash leaves either the previous or the new save at ``<name>``, or (between the
two renames) the previous one at ``.<name>.old``, which ``load`` falls back to. One writer per
directory at a time (a cache serialises its own saves; two processes must not share a target).

``load`` checks everything before it touches the cache (manifest, sizes, checksums, array dtype
and shape, JSON schema, finite scores, encoder and backend identity) and raises CacheFormatError
naming the problem; on any error the cache is left as it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from priorcache.cache.kl_audit import Audit
from priorcache.errors import CacheFormatError, ConfigError

if TYPE_CHECKING:
    from priorcache.cache.prior_cache import CacheEntry, PriorCache

FORMAT_NAME = "priorcache.prior-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ENTRIES = "entries.json"
KEYS = "keys.npy"
DATA_FILES = (ENTRIES, KEYS)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ENTRY_KEYS = {"id", "state_text", "prefix_hash", "scores", "created_step", "last_used_step", "hit_count",
               "refresh_count", "last_audit"}
_DOC_KEYS = {"format", "format_version", "encoder", "backend", "config", "clock", "prefixes", "entries"}
_OPTIONAL_DOC_KEYS = {"adaptation"}  # absent in saves made before the adaptive modes
_AUDIT_KEYS = {"epsilon", "kl", "kl_bound", "log_z_gap"}
# Keys are stored unit-norm in float32; anything further off was not written by us.
_NORM_TOLERANCE = 1e-3


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


def _backup_of(directory: Path) -> Path:
    return directory.parent / f".{directory.name}.old"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- save --------------------------------------------------------------------------------------
def save(cache: "PriorCache", directory: str | Path) -> None:
    """Write ``cache``'s entries to ``directory`` atomically (see the module docstring)."""
    directory = Path(directory)
    with cache._save_lock:
        entries, prefixes, clock = cache._snapshot()
        keys = (np.stack([e.key for e in entries]).astype(np.float32) if entries
                else np.zeros((0, cache.dim), dtype=np.float32))
        doc = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "encoder": {"name": cache.encoder_name, "dim": cache.dim},
            "backend": {"name": cache.backend_name},
            "config": cache.config.to_dict(),
            "clock": clock,
            "prefixes": {h: prefixes[h] for h in sorted({e.prefix_hash for e in entries})},
            "entries": [_entry_to_json(e) for e in entries],
            "adaptation": cache._adaptation_state(),
        }
        entries_bytes = json.dumps(doc, ensure_ascii=False, allow_nan=False, indent=1).encode("utf-8")
        buf = io.BytesIO()
        np.save(buf, keys, allow_pickle=False)
        keys_bytes = buf.getvalue()
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "files": {name: {"bytes": len(data), "sha256": _sha256(data)}
                      for name, data in ((ENTRIES, entries_bytes), (KEYS, keys_bytes))},
        }
        manifest_bytes = json.dumps(manifest, indent=1).encode("utf-8")

        _check_target(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
        try:
            _write_file(tmp / KEYS, keys_bytes)
            _write_file(tmp / ENTRIES, entries_bytes)
            _write_file(tmp / MANIFEST, manifest_bytes)  # last: a temp dir without it is never a save
            _fsync_dir(tmp)
            _swap_into_place(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


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
        raise CacheFormatError(f"refusing to overwrite {directory}: it is not empty and holds no saved prior "
                               f"cache ({MANIFEST} of format {FORMAT_NAME!r} missing)")


def _swap_into_place(tmp: Path, directory: Path) -> None:
    backup = _backup_of(directory)
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


def _entry_to_json(e: "CacheEntry") -> dict[str, Any]:
    return {
        "id": e.id,
        "state_text": e.state_text,
        "prefix_hash": e.prefix_hash,
        "scores": {a: float(s) for a, s in e.scores.items()},
        "created_step": e.created_step,
        "last_used_step": e.last_used_step,
        "hit_count": e.hit_count,
        "refresh_count": e.refresh_count,
        "last_audit": e.last_audit.to_dict() if e.last_audit is not None else None,
    }


# --- load --------------------------------------------------------------------------------------
def has_saved_cache(directory: str | Path) -> bool:
    """Whether ``directory`` (or the backup an interrupted save left beside it) holds a save."""
    directory = Path(directory)
    return (directory / MANIFEST).is_file() or (_backup_of(directory) / MANIFEST).is_file()


def load(cache: "PriorCache", directory: str | Path, *, check_backend: bool = True) -> None:
    """Replace ``cache``'s entries with the save in ``directory``; CacheFormatError if it is unusable.

    ``check_backend``: refuse a save scored by another LLM backend (raw scores of two models are
    not comparable)."""
    directory = Path(directory)
    source = _source_dir(directory)
    manifest = _parse_json(_read(source / MANIFEST, source), source / MANIFEST)
    _validate_manifest(manifest, source)
    blobs = {}
    for name in DATA_FILES:
        data = _read(source / name, source)
        meta = manifest["files"][name]
        if len(data) != meta["bytes"]:
            raise CacheFormatError(f"{source / name} is {len(data)} bytes, the manifest says {meta['bytes']}: "
                                   "truncated or replaced")
        if _sha256(data) != meta["sha256"]:
            raise CacheFormatError(f"{source / name} does not match its sha256 checksum in {MANIFEST}: damaged or edited")
        blobs[name] = data
    keys = _parse_keys(blobs[KEYS], source / KEYS)
    doc = _parse_json(blobs[ENTRIES], source / ENTRIES)
    entries, prefixes = _validate_doc(doc, keys, cache, source / ENTRIES, check_backend)
    try:  # checked in full before anything changes, like the entries
        restore = cache._check_adaptation_state(doc.get("adaptation"))
    except ConfigError as e:
        raise CacheFormatError(f"{source / ENTRIES}: damaged 'adaptation' state: {e}") from None
    cache._replace_entries(entries, prefixes)
    restore()


def _source_dir(directory: Path) -> Path:
    if (directory / MANIFEST).is_file():
        return directory
    backup = _backup_of(directory)
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
        if (not isinstance(meta, dict) or not _is_json_int(meta.get("bytes")) or meta["bytes"] < 0
                or not isinstance(meta.get("sha256"), str) or not _HEX64.match(meta["sha256"])):
            raise CacheFormatError(f"{where}: entry for {name} needs 'bytes' (int ≥ 0) and 'sha256' (64 hex digits)")


def _check_version(version: Any, where: Path) -> None:
    if version != FORMAT_VERSION or not _is_json_int(version):
        raise CacheFormatError(f"{where} has format version {version!r}; this priorcache reads version "
                               f"{FORMAT_VERSION} only")


def _parse_keys(data: bytes, path: Path) -> np.ndarray:
    try:
        keys = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise CacheFormatError(f"{path} is not a readable .npy array: {e}") from e
    if not isinstance(keys, np.ndarray) or keys.dtype != np.float32 or keys.ndim != 2:
        raise CacheFormatError(f"{path} must hold a 2-D float32 matrix, holds {getattr(keys, 'dtype', '?')} "
                               f"of shape {getattr(keys, 'shape', '?')}")
    if not np.all(np.isfinite(keys)):
        raise CacheFormatError(f"{path} contains NaN or ±inf key vectors")
    if keys.shape[0] and np.any(np.abs(np.linalg.norm(keys, axis=1) - 1.0) > _NORM_TOLERANCE):
        raise CacheFormatError(f"{path} holds key vectors that are not unit length")
    return keys


def _is_json_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_json_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _validate_doc(doc: Any, keys: np.ndarray, cache: "PriorCache", where: Path,
                  check_backend: bool) -> tuple[list["CacheEntry"], dict[str, str]]:
    from priorcache.cache.prior_cache import CacheEntry

    def bad(msg: str) -> CacheFormatError:
        return CacheFormatError(f"{where}: {msg}")

    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise bad(f"not a priorcache entries file (format {doc.get('format') if isinstance(doc, dict) else None!r})")
    _check_version(doc.get("format_version"), where)
    if not _DOC_KEYS <= set(doc) <= _DOC_KEYS | _OPTIONAL_DOC_KEYS:
        raise bad(f"top-level keys must be {sorted(_DOC_KEYS)} (and optionally {sorted(_OPTIONAL_DOC_KEYS)}); "
                  f"missing {sorted(_DOC_KEYS - set(doc))}, unexpected {sorted(set(doc) - _DOC_KEYS - _OPTIONAL_DOC_KEYS)}")
    enc = doc["encoder"]
    if not isinstance(enc, dict) or not isinstance(enc.get("name"), str) or not _is_json_int(enc.get("dim")):
        raise bad("'encoder' must be {name: str, dim: int}")
    if enc["name"] != cache.encoder_name or enc["dim"] != cache.dim:
        raise bad(f"saved with encoder {enc['name']!r} (dim {enc['dim']}), but this cache uses "
                  f"{cache.encoder_name!r} (dim {cache.dim}): its keys are not comparable")
    backend = doc["backend"]
    if not isinstance(backend, dict) or not isinstance(backend.get("name"), str):
        raise bad("'backend' must be {name: str}")
    if check_backend and backend["name"] != cache.backend_name:
        raise bad(f"scored by LLM backend {backend['name']!r}, but this cache uses {cache.backend_name!r}: "
                  "raw scores of different models are not comparable (load with check_backend=False to force)")
    if not isinstance(doc["config"], dict):
        raise bad("'config' must be an object")
    if not _is_json_int(doc["clock"]):
        raise bad("'clock' must be an integer")
    prefixes = doc["prefixes"]
    if not isinstance(prefixes, dict):
        raise bad("'prefixes' must map prefix sha256 → prefix text")
    for h, text in prefixes.items():
        if not isinstance(text, str) or hashlib.sha256(text.encode("utf-8")).hexdigest() != h:
            raise bad(f"prefix {h[:16]!r}… does not hash to its key")
    raw = doc["entries"]
    if not isinstance(raw, list):
        raise bad("'entries' must be a list")
    if keys.shape != (len(raw), cache.dim):
        raise bad(f"{len(raw)} entries but {KEYS} has shape {keys.shape}, expected ({len(raw)}, {cache.dim})")

    entries: list[CacheEntry] = []
    ids: set[int] = set()
    exact: set[tuple[str, str]] = set()
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) != _ENTRY_KEYS:
            got = sorted(item) if isinstance(item, dict) else type(item).__name__
            raise bad(f"entry {i} must have exactly the keys {sorted(_ENTRY_KEYS)}, has {got}")
        for name in ("id", "created_step", "last_used_step", "hit_count", "refresh_count"):
            if not _is_json_int(item[name]):
                raise bad(f"entry {i}: {name} must be an integer, got {item[name]!r}")
        if item["id"] < 0 or item["hit_count"] < 0 or item["refresh_count"] < 0:
            raise bad(f"entry {i}: id, hit_count and refresh_count must be ≥ 0")
        if item["id"] in ids:
            raise bad(f"entry {i}: duplicate id {item['id']}")
        ids.add(item["id"])
        if not isinstance(item["state_text"], str):
            raise bad(f"entry {i}: state_text must be a string")
        p_hash = item["prefix_hash"]
        if not isinstance(p_hash, str) or not _HEX64.match(p_hash) or p_hash not in prefixes:
            raise bad(f"entry {i}: prefix_hash must be a sha256 listed in 'prefixes', got {p_hash!r}")
        if (p_hash, item["state_text"]) in exact:
            raise bad(f"entry {i}: a second entry for the same prefix and state text")
        exact.add((p_hash, item["state_text"]))
        scores = item["scores"]
        if not isinstance(scores, dict) or not scores:
            raise bad(f"entry {i}: scores must be a non-empty map action → score")
        bad_scores = [a for a, s in scores.items() if not _is_json_number(s)]
        if bad_scores:
            raise bad(f"entry {i}: non-finite or non-numeric scores for actions {bad_scores[:5]}")
        audit = item["last_audit"]
        if audit is not None:
            if (not isinstance(audit, dict) or set(audit) != _AUDIT_KEYS
                    or not all(_is_json_number(audit[k]) and audit[k] >= 0 for k in _AUDIT_KEYS)):
                raise bad(f"entry {i}: last_audit must be null or {{{', '.join(sorted(_AUDIT_KEYS))}}} of finite numbers ≥ 0")
            audit = Audit(**{k: float(audit[k]) for k in _AUDIT_KEYS})
        entries.append(CacheEntry(
            id=item["id"], prefix_hash=p_hash, state_text=item["state_text"], key=keys[i].copy(),
            scores={a: float(s) for a, s in scores.items()}, created_step=item["created_step"],
            last_used_step=item["last_used_step"], hit_count=item["hit_count"],
            refresh_count=item["refresh_count"], last_audit=audit,
        ))
    return entries, {h: t for h, t in prefixes.items()}
