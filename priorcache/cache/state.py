"""The prior cache's state dict (format version 2) and its validation, before anything is replaced.

``PriorCache.state_dict()`` returns, and ``load_state_dict`` takes, a plain mapping:

- ``keys``: float32 matrix (n, dim) of unit key vectors; row i belongs to entry i;
- ``encoder`` {name, dim} and ``backend`` {name}: whose keys and scores these are;
- ``config``: the CacheConfig, for the record; ``clock``: the cache's step counter;
- ``prefixes``: prompt-prefix sha256 → prefix text;
- ``entries``: per entry ``id``, ``state_text``, ``prefix_hash``, ``prior`` {kind, payload} (the
  prior kind's own JSON; categorical: {scores: {action: ℓ}}), ``created_step``, ``last_used_step``,
  ``hit_count``, ``refresh_count`` and ``last_audit`` (F5: {epsilon, kl, kl_bound, log_z_gap} or null);
- ``controller``: {mode, params, state} of the mode's controller (what an adaptive or kl-budget
  cache learnt), or null.
Everything but ``keys`` is JSON, which is how :mod:`priorcache.cache.store` writes it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from priorcache.cache.records import CacheEntry
from priorcache.errors import CacheFormatError, ConfigError
from priorcache.prior.divergence import Audit
from priorcache.prior.interface import Prior
from priorcache.validation import is_json_int, is_json_number

STATE_KEYS = frozenset({"keys", "encoder", "backend", "config", "clock", "prefixes", "entries", "controller"})
ENTRY_KEYS = frozenset(
    {
        "id",
        "state_text",
        "prefix_hash",
        "prior",
        "created_step",
        "last_used_step",
        "hit_count",
        "refresh_count",
        "last_audit",
    }
)
AUDIT_KEYS = frozenset({"epsilon", "kl", "kl_bound", "log_z_gap"})
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# Keys are stored unit-norm in float32; anything further off was not written by us.
_NORM_TOLERANCE = 1e-3


def entry_to_json(e: CacheEntry) -> dict[str, Any]:
    return {
        "id": e.id,
        "state_text": e.state_text,
        "prefix_hash": e.prefix_hash,
        "prior": {"kind": e.prior.kind, "payload": e.prior.to_payload()},
        "created_step": e.created_step,
        "last_used_step": e.last_used_step,
        "hit_count": e.hit_count,
        "refresh_count": e.refresh_count,
        "last_audit": e.last_audit.to_dict() if e.last_audit is not None else None,
    }


@dataclass
class LoadedState:
    """A validated state: what ``load_state_dict`` installs."""

    entries: list[CacheEntry]
    prefixes: dict[str, str]
    controller_mode: str | None
    controller_state: Any


def check_keys(keys: Any) -> np.ndarray:
    if not isinstance(keys, np.ndarray) or keys.dtype != np.float32 or keys.ndim != 2:
        raise CacheFormatError(
            f"keys must be a 2-D float32 matrix, got {getattr(keys, 'dtype', type(keys).__name__)} "
            f"of shape {getattr(keys, 'shape', '?')}"
        )
    if not np.all(np.isfinite(keys)):
        raise CacheFormatError("keys contain NaN or ±inf key vectors")
    if keys.shape[0] and np.any(np.abs(np.linalg.norm(keys, axis=1) - 1.0) > _NORM_TOLERANCE):
        raise CacheFormatError("keys hold key vectors that are not unit length")
    return keys


def validate_state(
    state: Any, *, encoder_name: str, dim: int, backend_name: str | None, prior_kind: type[Prior], prior_config: Any
) -> LoadedState:
    """Check every field of ``state`` (CacheFormatError naming the first problem); change nothing.

    ``backend_name`` None skips the backend check (raw scores of two models are not comparable, so
    only a caller who knows better skips it)."""
    if not isinstance(state, Mapping) or set(state) != STATE_KEYS:
        got = sorted(map(str, state)) if isinstance(state, Mapping) else type(state).__name__
        raise CacheFormatError(f"a cache state needs exactly the keys {sorted(STATE_KEYS)}, got {got}")
    enc = state["encoder"]
    if not isinstance(enc, Mapping) or not isinstance(enc.get("name"), str) or not is_json_int(enc.get("dim")):
        raise CacheFormatError("'encoder' must be {name: str, dim: int}")
    if enc["name"] != encoder_name or enc["dim"] != dim:
        raise CacheFormatError(
            f"saved with encoder {enc['name']!r} (dim {enc['dim']}), but this cache uses "
            f"{encoder_name!r} (dim {dim}): its keys are not comparable"
        )
    backend = state["backend"]
    if not isinstance(backend, Mapping) or not isinstance(backend.get("name"), str):
        raise CacheFormatError("'backend' must be {name: str}")
    if backend_name is not None and backend["name"] != backend_name:
        raise CacheFormatError(
            f"scored by LLM backend {backend['name']!r}, but this cache uses {backend_name!r}: "
            "raw scores of different models are not comparable (load with check_backend=False "
            "to force)"
        )
    if not isinstance(state["config"], Mapping):
        raise CacheFormatError("'config' must be an object")
    if not is_json_int(state["clock"]):
        raise CacheFormatError("'clock' must be an integer")
    prefixes = state["prefixes"]
    if not isinstance(prefixes, Mapping):
        raise CacheFormatError("'prefixes' must map prefix sha256 → prefix text")
    for h, text in prefixes.items():
        if not isinstance(text, str) or hashlib.sha256(text.encode("utf-8")).hexdigest() != h:
            raise CacheFormatError(f"prefix {str(h)[:16]!r}… does not hash to its key")
    raw = state["entries"]
    if not isinstance(raw, list):
        raise CacheFormatError("'entries' must be a list")
    keys = check_keys(state["keys"])
    if keys.shape != (len(raw), dim):
        raise CacheFormatError(f"{len(raw)} entries but the keys have shape {keys.shape}, expected ({len(raw)}, {dim})")
    entries = [_entry(i, item, keys[i], prefixes, prior_kind, prior_config) for i, item in enumerate(raw)]
    ids, exact = set(), set()
    for i, e in enumerate(entries):
        if e.id in ids:
            raise CacheFormatError(f"entry {i}: duplicate id {e.id}")
        if (e.prefix_hash, e.state_text) in exact:
            raise CacheFormatError(f"entry {i}: a second entry for the same prefix and state text")
        ids.add(e.id)
        exact.add((e.prefix_hash, e.state_text))
    mode, controller_state = _controller(state["controller"])
    return LoadedState(entries, dict(prefixes), mode, controller_state)


def _entry(
    i: int, item: Any, key: np.ndarray, prefixes: Mapping[str, str], prior_kind: type[Prior], prior_config: Any
) -> CacheEntry:
    def bad(msg: str) -> CacheFormatError:
        return CacheFormatError(f"entry {i}: {msg}")

    if not isinstance(item, Mapping) or set(item) != ENTRY_KEYS:
        got = sorted(item) if isinstance(item, Mapping) else type(item).__name__
        raise CacheFormatError(f"entry {i} must have exactly the keys {sorted(ENTRY_KEYS)}, has {got}")
    for name in ("id", "created_step", "last_used_step", "hit_count", "refresh_count"):
        if not is_json_int(item[name]):
            raise bad(f"{name} must be an integer, got {item[name]!r}")
    if item["id"] < 0 or item["hit_count"] < 0 or item["refresh_count"] < 0:
        raise bad("id, hit_count and refresh_count must be ≥ 0")
    if not isinstance(item["state_text"], str):
        raise bad("state_text must be a string")
    p_hash = item["prefix_hash"]
    if not isinstance(p_hash, str) or not _HEX64.match(p_hash) or p_hash not in prefixes:
        raise bad(f"prefix_hash must be a sha256 listed in 'prefixes', got {p_hash!r}")
    prior = item["prior"]
    if not isinstance(prior, Mapping) or set(prior) != {"kind", "payload"}:
        raise bad("prior must be {kind, payload}")
    if prior["kind"] != prior_kind.kind:
        raise bad(f"holds a {prior['kind']!r} prior, but this cache serves {prior_kind.kind!r} priors")
    try:
        decoded = prior_kind.from_payload(prior["payload"], prior_config)
    except ConfigError as e:
        raise bad(f"damaged {prior_kind.kind} prior: {e}") from None
    audit = item["last_audit"]
    if audit is not None:
        if (
            not isinstance(audit, Mapping)
            or set(audit) != AUDIT_KEYS
            or not all(is_json_number(audit[k]) and audit[k] >= 0 for k in AUDIT_KEYS)
        ):
            raise bad(f"last_audit must be null or {{{', '.join(sorted(AUDIT_KEYS))}}} of finite numbers ≥ 0")
        audit = Audit(**{k: float(audit[k]) for k in AUDIT_KEYS})
    return CacheEntry(
        id=item["id"],
        prefix_hash=p_hash,
        state_text=item["state_text"],
        key=key.copy(),
        prior=decoded,
        created_step=item["created_step"],
        last_used_step=item["last_used_step"],
        hit_count=item["hit_count"],
        refresh_count=item["refresh_count"],
        last_audit=audit,
    )


def _controller(controller: Any) -> tuple[str | None, Any]:
    if controller is None:
        return None, None
    if (
        not isinstance(controller, Mapping)
        or set(controller) != {"mode", "params", "state"}
        or not isinstance(controller["mode"], str)
    ):
        raise CacheFormatError("damaged 'controller' state: it must be {mode: str, params, state}")
    return controller["mode"], controller["state"]
