"""One prior cache shared by many rollout workers (docs/design.md §10, "Scale-out"), held by Ray actors.

- :class:`CacheShard` is one partition of the shared cache: a :class:`PriorCache` with the LLM backend
  it asks on a miss, built inside the process that holds it (a Ray actor), so a miss is answered
  there and never crosses the network twice. It also holds short-lived *evaluation copies* (forks)
  that a held-out evaluation asks, so evaluation games teach training nothing (as in a one-process run).
- :func:`shard_of` partitions by the prompt prefix (instructions, goal, few-shot block): the cache
  only ever matches a state against entries *of the same prefix*, so a prefix partition serves
  every lookup exactly as one cache would; only the capacity and the counters are per shard.
- :class:`SharedCacheClient` is what an agent holds instead of a ``PriorCache``: the same methods
  (``lookup``, ``lookup_batch``, ``stats``, ``state_dict``, ``save``, …), each a call to the shards.
  A batch of lookups goes out as ONE call per shard it touches; embeddings are computed by the
  caller's encoder before sending (the shards hold no encoder); outcome feedback (rewards, TD errors)
  is sent without waiting for it.

The shards' handles only need ``handle.method.remote(*args)``, and the client takes the function
that resolves what ``remote`` returns (``ray.get``): :class:`LocalHandle` and ``get=lambda x: x``
run the same client against shards in this process, without Ray (the unit tests do).

Across processes of one Ray cluster arguments travel by Ray's own serialisation (pickle); nothing is
read from a file that way: saves are written by the driver in the store's plain formats.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from priorcache.cache import store
from priorcache.cache.batch import LookupRequest
from priorcache.cache.config import CacheConfig
from priorcache.cache.prior_cache import PriorCache
from priorcache.cache.records import CacheCounters, PriorLookup
from priorcache.cache.state import merge_states
from priorcache.errors import CacheFormatError, ConfigError
from priorcache.prior.action_prior import PriorConfig
from priorcache.prior.base import LLMBackend, Prompt


def shard_of(prefix: str, shards: int) -> int:
    """The shard that holds every entry asked under the prompt prefix ``prefix`` (stable across
    processes and Python versions: a digest, not ``hash``)."""
    if shards < 1:
        raise ConfigError(f"shards must be ≥ 1, got {shards}")
    digest = hashlib.blake2b(prefix.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % shards


class KeyOnlyEncoder:
    """The encoder identity a shard's cache needs (name and dim, to check keys and saves) without the
    model: callers send every lookup's embedding, so a shard never encodes."""

    def __init__(self, name: str, dim: int) -> None:
        self.name, self.dim = name, int(dim)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        raise ConfigError("a shared-cache shard does not encode: send every lookup with its embedding")


@dataclass
class CacheSpec:
    """How to build a shard inside its own process. ``backend_factory`` builds the LLM backend there
    (the run's: ``priorcache.experiments.workers`` passes one that builds the configured backend;
    a benchmark may pass a small fake); ``examples`` come back from it when it adapts the prior."""

    config: CacheConfig
    encoder_name: str
    encoder_dim: int
    backend_factory: Callable[[], tuple[LLMBackend, dict[str, Any]]]
    prior: PriorConfig = field(default_factory=PriorConfig)
    torch_threads: int = 1


class CacheShard:
    """One partition of the shared cache (see the module docstring); thread-safe, as ``PriorCache`` is,
    so its actor may serve several workers' lookups at once (hits need not wait for a miss's LLM call)."""

    def __init__(self, spec: CacheSpec) -> None:
        try:
            import torch

            torch.set_num_threads(max(1, spec.torch_threads))
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
        backend, self.info = spec.backend_factory()
        encoder = KeyOnlyEncoder(spec.encoder_name, spec.encoder_dim)
        self.cache = PriorCache(spec.config, encoder, backend, prior_config=spec.prior)
        self._forks: dict[int, PriorCache] = {}
        self._fork_ids = itertools.count(1)
        self._lock = threading.Lock()

    def ready(self) -> dict[str, Any]:
        """The shard's process id and what building its backend reported (adaptation info, examples)."""
        return {"pid": os.getpid(), "backend": self.cache.backend_name, **self.info}

    def _view(self, fork: int | None) -> PriorCache:
        if fork is None:
            return self.cache
        with self._lock:
            if fork not in self._forks:
                raise ConfigError(f"no evaluation copy {fork} on this shard (released already?)")
            return self._forks[fork]

    def lookup_batch(self, requests: Sequence[LookupRequest], fork: int | None = None) -> list[PriorLookup]:
        return self._view(fork).lookup_batch(requests)

    def fork(self) -> int:
        """A copy of the cache as it is now, for an evaluation; returns its id."""
        cache = self.cache
        copy = PriorCache(cache.config, cache.encoder, cache.backend, cache.prior_config, cache.prior_kind)
        copy.load_state_dict(cache.state_dict())
        with self._lock:
            fork = next(self._fork_ids)
            self._forks[fork] = copy
        return fork

    def release(self, fork: int) -> None:
        with self._lock:
            self._forks.pop(fork, None)

    def stats(self, fork: int | None = None) -> dict[str, Any]:
        return self._view(fork).stats()

    def params(self) -> dict[str, Any]:
        return self.cache.params()

    def learns_from_outcomes(self) -> bool:
        return self.cache.learns_from_outcomes

    def observe_reward(self, reward: float) -> None:
        self.cache.observe_reward(reward)

    def observe_td(self, hit: bool, td_sum: float, count: int) -> None:
        self.cache.observe_td(hit, td_sum, count)

    def meta_log(self) -> list[dict[str, Any]]:
        return self.cache.meta_log()

    def audit_log(self) -> list[dict[str, Any]]:
        return self.cache.audit_log()

    def size(self) -> int:
        return len(self.cache)

    def state_dict(self) -> dict[str, Any]:
        return self.cache.state_dict()

    def load_state_dict(self, state: Mapping[str, Any], check_backend: bool = True) -> None:
        self.cache.load_state_dict(state, check_backend=check_backend)

    def runtime_state(self) -> dict[str, Any]:
        return self.cache.runtime_state()

    def load_runtime_state(self, state: Mapping[str, Any]) -> None:
        self.cache.load_runtime_state(state)


class LocalHandle:
    """An object called as a Ray actor handle is (``handle.method.remote(...)``), in this process:
    the shared-cache client without Ray (unit tests, one-process tools)."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._target, name)

        class _Remote:
            @staticmethod
            def remote(*args: Any, **kwargs: Any) -> Any:
                return method(*args, **kwargs)

        return _Remote


def _counters_of(stats: Mapping[str, Any]) -> dict[str, Any]:
    """A shard's raw counters back from its ``stats`` (sums of ε and KL from their means)."""
    raw = {f.name: stats[f.name] for f in fields(CacheCounters) if f.name in stats}
    for name in ("epsilon", "kl"):
        raw[f"{name}_sum"] = (stats.get(f"mean_{name}") or 0.0) * stats.get("audits", 0)
        raw[f"{name}_max"] = stats.get(f"max_{name}") or 0.0
    return raw


def split_state(state: Mapping[str, Any], shards: int) -> list[dict[str, Any]]:
    """A whole cache's state cut into one state per shard by :func:`shard_of` on each entry's prefix
    (the inverse of :func:`join_states` for the entries)."""
    prefixes = state.get("prefixes")
    entries, keys = state.get("entries"), state.get("keys")
    if not isinstance(prefixes, Mapping) or not isinstance(entries, list) or not isinstance(keys, np.ndarray):
        raise CacheFormatError("the saved cache lacks prefixes, entries or keys")
    if len(keys) != len(entries):
        raise CacheFormatError(f"the saved cache has {len(entries)} entries but {len(keys)} keys")
    out = []
    for shard in range(shards):
        mine = [
            i
            for i, e in enumerate(entries)
            if isinstance(e, Mapping)
            and isinstance(prefixes.get(e.get("prefix_hash")), str)
            and shard_of(prefixes[e["prefix_hash"]], shards) == shard
        ]
        used = {entries[i]["prefix_hash"] for i in mine}
        out.append(
            {
                **state,
                "keys": keys[mine] if mine else keys[:0],
                "entries": [entries[i] for i in mine],
                "prefixes": {h: t for h, t in prefixes.items() if h in used},
            }
        )
    dropped = len(entries) - sum(len(s["entries"]) for s in out)
    if dropped:
        raise CacheFormatError(f"{dropped} saved entries name a prompt prefix the save does not hold")
    return out


def join_states(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The shards' states as one cache's state (the union of their entries; their prefixes are
    disjoint, so no entry is in two). The first shard's config and controller stand for all (several
    shards run only with the static and none modes, whose controllers learn nothing)."""
    if not states:
        raise ConfigError("no shard states to join")
    joined = dict(states[0])
    for state in states[1:]:
        joined = merge_states(joined, state)
        joined["clock"] = max(joined["clock"], int(state["clock"]))
    return joined


class SharedCacheClient:
    """A ``PriorCache`` stand-in whose entries live in the shard actors ``shards`` (module docstring).

    ``encoder`` is the caller's (it encodes states that come without an embedding); ``get`` resolves
    what a ``remote`` call returns (``ray.get``; identity for :class:`LocalHandle`); ``fork``: the
    evaluation copy this client asks (one id per shard), None for the shared cache itself."""

    def __init__(
        self,
        shards: Sequence[Any],
        encoder: Any,
        config: CacheConfig,
        *,
        get: Callable[[Any], Any],
        fork: Sequence[int] | None = None,
        learns_from_outcomes: bool | None = None,
    ) -> None:
        if not shards:
            raise ConfigError("a shared cache needs at least one shard")
        self.shards = list(shards)
        self.encoder = encoder
        self.config = config
        self._get = get
        self._fork = list(fork) if fork is not None else None
        if learns_from_outcomes is None:
            learns_from_outcomes = bool(get(self.shards[0].learns_from_outcomes.remote()))
        self._learns = learns_from_outcomes
        #: Lookups this client sent and shard calls it made (a worker's own share of the shared cache's load).
        self.sent_lookups = 0
        self.sent_calls = 0

    # --- lookups ---------------------------------------------------------------------------------
    def lookup(
        self,
        state_text: str,
        prompt: Prompt,
        candidates: Sequence[str],
        q_values: np.ndarray | None = None,
        alpha: float = 1.0,
        embedding: np.ndarray | None = None,
        step: int | None = None,
    ) -> PriorLookup:
        """``PriorCache.lookup`` through the shard of ``prompt``'s prefix (a batch of one)."""
        return self.lookup_batch([LookupRequest(state_text, prompt, candidates, q_values, alpha, embedding, step)])[0]

    def lookup_batch(self, requests: Sequence[LookupRequest]) -> list[PriorLookup]:
        """``PriorCache.lookup_batch`` over the shards: ONE call per shard the batch touches, all in
        flight at once. The callers' step counters are dropped: workers count steps apart, so the
        shared cache's clock (recency, utility) is its own lookup count."""
        requests = list(requests)
        if not requests:
            return []
        missing = [i for i, r in enumerate(requests) if r.embedding is None]
        if missing:
            vectors = self.encoder.encode([requests[i].state_text for i in missing])
            for i, vector in zip(missing, vectors):
                requests[i] = replace(requests[i], embedding=vector)
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(requests):
            if not isinstance(getattr(r.prompt, "prefix", None), str):
                raise ConfigError("prompt must be a Prompt with a string prefix")
            groups.setdefault(shard_of(r.prompt.prefix, len(self.shards)), []).append(i)
        calls = {
            shard: self.shards[shard].lookup_batch.remote(
                [replace(requests[i], step=None) for i in idx], self._fork[shard] if self._fork else None
            )
            for shard, idx in groups.items()
        }
        results: list[PriorLookup | None] = [None] * len(requests)
        for shard, ref in calls.items():
            for i, result in zip(groups[shard], self._get(ref)):
                results[i] = result
        self.sent_lookups += len(requests)
        self.sent_calls += len(calls)
        return results  # type: ignore[return-value]

    # --- outcome feedback (adaptive mode; one shard) --------------------------------------------------
    @property
    def learns_from_outcomes(self) -> bool:
        return self._learns

    def observe_reward(self, reward: float) -> None:
        if self._learns:
            self.shards[0].observe_reward.remote(float(reward))  # not waited for: the caller goes on

    def observe_td(self, hit: bool, td_sum: float, count: int) -> None:
        if self._learns and count:
            self.shards[0].observe_td.remote(bool(hit), float(td_sum), int(count))

    # --- statistics -------------------------------------------------------------------------------------
    def _views(self) -> list[int | None]:
        return list(self._fork) if self._fork else [None] * len(self.shards)

    def stats(self) -> dict[str, Any]:
        """``PriorCache.stats`` of the whole shared cache: counters summed over the shards (maxima for
        the audit maxima), rates derived from the sums, sizes and capacities summed."""
        parts = self._get([s.stats.remote(v) for s, v in zip(self.shards, self._views())])
        if len(parts) == 1:
            return parts[0]
        total = CacheCounters()
        for part in parts:
            for name, value in _counters_of(part).items():
                mine = getattr(total, name)
                setattr(total, name, max(mine, value) if name.endswith("_max") else mine + value)
        return {
            **parts[0],
            **total.stats(),
            "evictions": sum(p["evictions"] for p in parts),
            "size": sum(p["size"] for p in parts),
            "capacity": sum(p["capacity"] for p in parts),
        }

    def shard_stats(self) -> list[dict[str, Any]]:
        """Each shard's own lookups, LLM queries and size (how evenly the partition spreads the load)."""
        out = []
        for stats in self._get([s.stats.remote(v) for s, v in zip(self.shards, self._views())]):
            out.append({k: stats[k] for k in ("lookups", "llm_calls", "partial_calls", "hits", "size")})
        return out

    def params(self) -> dict[str, Any]:
        return self._get(self.shards[0].params.remote())

    def meta_log(self) -> list[dict[str, Any]]:
        return self._get(self.shards[0].meta_log.remote())

    def audit_log(self) -> list[dict[str, Any]]:
        logs = self._get([s.audit_log.remote() for s in self.shards])
        return sorted((a for log in logs for a in log), key=lambda a: a.get("step", 0))

    def __len__(self) -> int:
        return int(sum(self._get([s.size.remote() for s in self.shards])))

    # --- evaluation copies ------------------------------------------------------------------------------
    def evaluation_copy(self) -> SharedCacheClient:
        """A client of copies of every shard as they are now (``release`` drops them): what a held-out
        evaluation asks, so that nothing it teaches reaches training."""
        forks = self._get([s.fork.remote() for s in self.shards])
        return SharedCacheClient(
            self.shards, self.encoder, self.config, get=self._get, fork=forks, learns_from_outcomes=False
        )

    def release(self) -> None:
        if self._fork:
            self._get([s.release.remote(f) for s, f in zip(self.shards, self._fork)])
            self._fork = None

    # --- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The whole shared cache as one cache's state (:func:`join_states`)."""
        return join_states(self._get([s.state_dict.remote() for s in self.shards]))

    def load_state_dict(self, state: Mapping[str, Any], *, check_backend: bool = True) -> None:
        """Install ``state`` cut by partition, one part per shard; every part is checked by its shard
        (CacheFormatError naming the problem). A shard that refuses leaves the shards before it loaded."""
        parts = split_state(state, len(self.shards)) if len(self.shards) > 1 else [dict(state)]
        self._get([s.load_state_dict.remote(p, check_backend) for s, p in zip(self.shards, parts)])

    def runtime_state(self) -> dict[str, Any]:
        """Each shard's counters, clock and RNG (a checkpoint's ``cache_runtime.json``); one shard's as
        ``PriorCache.runtime_state``, several as ``{"shards": [...]}``."""
        states = self._get([s.runtime_state.remote() for s in self.shards])
        return states[0] if len(states) == 1 else {"shards": states}

    def load_runtime_state(self, state: Mapping[str, Any]) -> None:
        if len(self.shards) == 1:
            self._get(self.shards[0].load_runtime_state.remote(state))
            return
        parts = state.get("shards")
        if not isinstance(parts, list) or len(parts) != len(self.shards):
            raise CacheFormatError(f"the run-time state holds no state for each of the {len(self.shards)} shards")
        self._get([s.load_runtime_state.remote(p) for s, p in zip(self.shards, parts)])

    def save(self, directory: str | Path, *, merge: bool = False) -> None:
        """Write the whole shared cache into ``directory`` from this (the driver's) process, as
        ``PriorCache.save`` does; ``merge``: union with a save already there (merge rule of
        :func:`priorcache.cache.state.merge_states`; no eviction to capacity here)."""

        def combine(ours: Mapping[str, Any], saved: Mapping[str, Any]) -> dict[str, Any]:
            return merge_states(ours, saved)

        store.write_state(directory, self.state_dict(), merge=merge, combine=combine)

    def load(self, directory: str | Path, *, check_backend: bool = True) -> None:
        where, state = store.read_state(directory)
        try:
            self.load_state_dict(state, check_backend=check_backend)
        except CacheFormatError as e:
            raise CacheFormatError(f"{where}: {e}") from None
