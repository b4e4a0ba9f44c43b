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

``validate_state`` checks more than the types, since a forged or damaged file can hold finite
numbers that still break the cache (a prior that no longer sums to 1, an OverflowError during
eviction). What a real cache can write, and so what loads:

- raw scores ℓ: finite and |ℓ| ≤ ``SCORE_BOUND`` = 1e4 nats. Backends give length-normalised
  log-probabilities, a mean per token of at least about −100 nats, so no real score comes near it;
  every decoded prior must then also sum to 1 (within 1e-6), whatever its kind;
- counters (``id``, ``hit_count``, ``refresh_count``, ``clock``): integers in [0, 2**53]
  (``COUNTER_BOUND``), where they are exact as floats and eviction's float arithmetic cannot overflow;
- steps (``created_step``, ``last_used_step``): integers with |step| ≤ 2**53. They may be negative:
  loading rebases an entry's steps onto the loading cache's clock, which starts at 0, so a warm-started
  cache's older entries carry negative steps, and its saves with them (ages are what matter);
- audits (``last_audit``): finite numbers in [0, 2**53].

``merge_states`` is the union of two states of one encoder and backend, which
:mod:`priorcache.cache.store` writes when several processes save to one folder.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from priorcache.cache.records import CacheEntry
from priorcache.errors import CacheFormatError, ConfigError
from priorcache.prior.action_prior import CategoricalPrior
from priorcache.prior.divergence import Audit
from priorcache.prior.interface import Prior
from priorcache.validation import is_json_int

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
#: Largest |raw score ℓ| a saved categorical prior may hold (nats; see the module docstring).
SCORE_BOUND = 1e4
#: Largest counter, |step| and audit number a saved state may hold: exact as a float64.
COUNTER_BOUND = 2**53
# How far from 1 a decoded prior's probabilities may sum (float64 rounding over many actions).
_SUM_TOLERANCE = 1e-6
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
    if not is_json_int(state["clock"]) or not 0 <= state["clock"] <= COUNTER_BOUND:
        raise CacheFormatError(f"'clock' must be an integer in [0, 2**53], got {_short(state['clock'])}")
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
            raise bad(f"{name} must be an integer, got {_short(item[name])}")
    for name in ("id", "hit_count", "refresh_count"):
        if not 0 <= item[name] <= COUNTER_BOUND:
            raise bad(f"{name} must be in [0, 2**53], got {_short(item[name])}")
    for name in ("created_step", "last_used_step"):
        if abs(item[name]) > COUNTER_BOUND:
            raise bad(f"{name} must be in [-2**53, 2**53], got {_short(item[name])}")
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
    huge = _huge_int(prior["payload"])
    if huge is not None:  # a prior kind would turn it into a float and overflow
        raise bad(f"its prior holds the integer {_short(huge)}, beyond ±2**53")
    try:
        decoded = prior_kind.from_payload(prior["payload"], prior_config)
    except (ConfigError, ArithmeticError) as e:
        raise bad(f"damaged {prior_kind.kind} prior: {e}") from None
    if isinstance(decoded, CategoricalPrior):
        worst = max(abs(v) for v in decoded.score_map.values())
        if worst > SCORE_BOUND:
            raise bad(f"a raw score of magnitude {worst:.3g} is beyond ±{SCORE_BOUND:g} nats: no model scores that")
    _check_normalised(decoded, bad)
    audit = item["last_audit"]
    if audit is not None:
        if (
            not isinstance(audit, Mapping)
            or set(audit) != AUDIT_KEYS
            or not all(_number_in(audit[k], 0, COUNTER_BOUND) for k in AUDIT_KEYS)
        ):
            raise bad(f"last_audit must be null or {{{', '.join(sorted(AUDIT_KEYS))}}} of finite numbers in [0, 2**53]")
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


def check_savable(state: Mapping[str, Any]) -> None:
    """CacheFormatError if a cache's own ``state_dict()`` breaks a bound ``validate_state`` enforces
    (a backend scoring beyond ±``SCORE_BOUND``, a counter past 2**53), so that no save is written that
    a load would refuse. Cheap (no prior is decoded): the rest holds by construction."""
    if not _number_in(state["clock"], 0, COUNTER_BOUND):
        raise CacheFormatError(f"the clock {_short(state['clock'])} is beyond [0, 2**53]")
    for i, item in enumerate(state["entries"]):
        where = f"entry {i} (state {_short(item['state_text'])})"
        for name in ("id", "hit_count", "refresh_count", "created_step", "last_used_step"):
            low = -COUNTER_BOUND if name.endswith("_step") else 0
            if not _number_in(item[name], low, COUNTER_BOUND):
                raise CacheFormatError(f"{where}: {name} {_short(item[name])} is beyond [{low}, 2**53]")
        if item["prior"]["kind"] == CategoricalPrior.kind:
            worst = max((abs(v) for v in item["prior"]["payload"]["scores"].values()), default=0.0)
            if not worst <= SCORE_BOUND:
                raise CacheFormatError(f"{where}: a raw score of magnitude {worst:.3g} is beyond ±{SCORE_BOUND:g} nats")
        elif _huge_int(item["prior"]["payload"]) is not None:
            raise CacheFormatError(f"{where}: its prior holds an integer beyond ±2**53")


def _check_normalised(prior: Prior, bad: Callable[[str], CacheFormatError]) -> None:
    """Refuse a prior whose probabilities are not finite or do not sum to 1."""
    try:
        with np.errstate(all="ignore"):
            total = float(np.exp(prior.log_prob(prior.actions)).sum())
    except (ArithmeticError, ValueError) as e:
        raise bad(f"its prior cannot be evaluated: {e}") from None
    if not math.isfinite(total) or abs(total - 1.0) > _SUM_TOLERANCE:
        raise bad(f"its prior's probabilities sum to {total:.6g}, not 1")


def _number_in(x: Any, low: float, high: float) -> bool:
    """A finite JSON number in [low, high]; a huge integer is compared exactly, never turned into a float."""
    if is_json_int(x):
        return low <= x <= high
    return isinstance(x, float) and math.isfinite(x) and low <= x <= high


def _huge_int(payload: Any) -> int | None:
    """The first integer of magnitude beyond 2**53 anywhere in a JSON payload, or None."""
    stack = [payload]
    while stack:
        x = stack.pop()
        if is_json_int(x) and abs(x) > COUNTER_BOUND:
            return x
        if isinstance(x, Mapping):
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return None


def _short(value: Any) -> str:
    """``repr`` of a value for a message, cut short (a forged counter can have hundreds of digits)."""
    if is_json_int(value) and abs(value) > 10**30:  # repr of a 5,000-digit integer raises
        return f"an integer of about {'-' if value < 0 else ''}2**{value.bit_length() - 1}"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}…({len(text)} characters)"


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


# --- merging two saves -------------------------------------------------------------------------
def merge_states(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> dict[str, Any]:
    """The union of ``ours`` (the writer's state) and ``theirs`` (a state saved earlier to the same place).

    Entries are identified by (``state_text``, ``prefix_hash``). For an identity both hold, the
    entry with more refreshes wins, then the one with more hits, then ours: refreshes and hits are
    evidence that the prior was checked against the LLM and used, and counts are not summed, since
    both may descend from one loaded save and would count its hits twice. The winner keeps our id
    (the writer's controller may hold per-entry audits under it); their other entries get fresh ids
    after ours. Their steps are rebased onto our clock (each cache counts steps on its own clock, so
    an entry keeps its age relative to the clock it was saved with). Prefixes are the union of those
    the entries use; encoder, backend, config, clock and controller are ours.

    CacheFormatError when the two are not comparable (other encoder, key size, backend or prior
    kind) or ``theirs`` lacks what merging reads. Both states are left unchanged."""
    for name, what in (("encoder", "keys"), ("backend", "raw scores")):
        if not isinstance(theirs.get(name), Mapping) or dict(theirs[name]) != dict(ours[name]):
            raise CacheFormatError(
                f"the saved cache was made with {name} {_describe(theirs.get(name))}, this one with "
                f"{_describe(ours[name])}: their {what} are not comparable, so they are not merged"
            )
    their_entries, their_keys = theirs.get("entries"), theirs.get("keys")
    ours_keys = np.asarray(ours["keys"], dtype=np.float32)
    if (
        not isinstance(their_entries, list)
        or not isinstance(their_keys, np.ndarray)
        or their_keys.shape != (len(their_entries), ours_keys.shape[1])
        or not is_json_int(theirs.get("clock"))
        or not isinstance(theirs.get("prefixes"), Mapping)
    ):
        raise CacheFormatError("the saved cache lacks entries, keys of the right shape, a clock or prefixes")
    for i, item in enumerate(their_entries):
        if (
            not isinstance(item, Mapping)
            or set(item) != ENTRY_KEYS
            or not all(is_json_int(item[k]) for k in ("created_step", "last_used_step", "hit_count", "refresh_count"))
            or not isinstance(item["prior"], Mapping)
            or item["prefix_hash"] not in theirs["prefixes"]
        ):
            raise CacheFormatError(f"saved entry {i} is damaged: it cannot be merged")
    kinds = {e["prior"]["kind"] for e in [*ours["entries"], *their_entries]}
    if len(kinds) > 1:
        raise CacheFormatError(f"the saved cache holds {sorted(map(str, kinds))} priors together: not mergeable")

    entries = [dict(e) for e in ours["entries"]]
    keys = list(ours_keys)
    prefixes = dict(ours["prefixes"])
    where = {(e["state_text"], e["prefix_hash"]): i for i, e in enumerate(entries)}
    next_id = max((e["id"] for e in entries), default=-1) + 1
    shift = ours["clock"] - theirs["clock"]
    for j, item in enumerate(their_entries):
        moved = {
            **item,
            # A step stays in range even if the clocks are far apart (a cache of 2**53 steps is not real).
            "created_step": _clamp(item["created_step"] + shift),
            "last_used_step": _clamp(item["last_used_step"] + shift),
        }
        i = where.get((item["state_text"], item["prefix_hash"]))
        if i is None:
            moved["id"] = next_id
            next_id += 1
            where[(item["state_text"], item["prefix_hash"])] = len(entries)
            entries.append(moved)
            keys.append(their_keys[j])
        elif _evidence(item) > _evidence(entries[i]):
            moved["id"] = entries[i]["id"]
            entries[i] = moved
            keys[i] = their_keys[j]
        else:
            continue
        prefixes.setdefault(item["prefix_hash"], theirs["prefixes"][item["prefix_hash"]])
    used = {e["prefix_hash"] for e in entries}
    return {
        **ours,
        "keys": np.stack(keys).astype(np.float32) if keys else np.zeros_like(ours_keys),
        "prefixes": {h: prefixes[h] for h in sorted(used)},
        "entries": entries,
    }


def _describe(part: Any) -> str:
    """An encoder or backend block for a message: its name (and dim)."""
    if not isinstance(part, Mapping):
        return _short(part)
    dim = f" (dim {_short(part['dim'])})" if "dim" in part else ""
    return f"{_short(part.get('name'))}{dim}"


def _evidence(item: Mapping[str, Any]) -> tuple[int, int]:
    return item["refresh_count"], item["hit_count"]


def _clamp(step: int) -> int:
    return max(-COUNTER_BOUND, min(COUNTER_BOUND, step))
