"""The prior cache (docs/design.md, "The prior cache"): serves priors for similar states instead of asking the LLM.

An entry holds a prior of any ``Prior`` kind for one state (categorical: F7's raw map action → ℓ,
so entries can be extended), its key e(φ(s)), the state text, the prompt prefix it was asked
under, and its bookkeeping.

Lookup:
1. ``mode == "none"``: a full LLM call every time, nothing stored (the uncached reference).
2. Exact fast path: the same prompt prefix and the same state text.
3. Nearest neighbour by cosine among the entries *of the same prompt prefix* (a prior asked under
   one goal must never be served for another). A hit needs ``sim ≥ δ`` (F6 turns δ into a bound
   on ε) and candidate coverage ``≥ min_coverage`` (F7: serving an entry that knows few of the
   current candidates gives KL of nats, not hundredths).
4. On a hit, with probability r, refresh: a full call anyway, the fresh prior is served, the entry
   replaced, and F5 measured between the prior that would have been served and the fresh one.
   When the controller asks for it (adaptive modes), a miss whose nearest entry lay just under δ is
   audited too ("shadow" audit): the LLM was called anyway, so it is free.
5. Otherwise F7 completes the served prior (``Prior.restrict``): unknown candidates are scored in one
   partial LLM call (or given the entry's floor), absent ones dropped. Partial calls are LLM queries
   of their own kind.
6. A miss makes a full call and inserts (evicting at capacity by the eviction policy).

``lookup_batch`` serves several lookups (N environments in lockstep) with one LLM call and one
encoder call for all of them, planned against the entries as they were when the batch began
(:mod:`priorcache.cache.batch`).

Steps 2-5 are planned by :mod:`priorcache.cache.planning`; counters, audits and what the controller
is told are kept by :mod:`priorcache.cache.bookkeeping`. K, δ and r come from the mode's controller
(:mod:`priorcache.cache.controllers`); which entry goes at capacity from the eviction policy
(:mod:`priorcache.cache.eviction`).

LLM and encoder calls run outside the lock; everything that reads or changes the entries runs
inside it, so lookups from several threads are safe and the invariants (size ≤ K, one entry per
exact key, index and entries in step) hold at every release of the lock.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from priorcache.cache import store
from priorcache.cache.batch import LLMCall, LookupRequest, ask_backend_batch, encode_states
from priorcache.cache.bookkeeping import Books, lookup_result
from priorcache.cache.calls import encode_state
from priorcache.cache.config import CacheConfig
from priorcache.cache.controllers import make_controller
from priorcache.cache.entry_table import EntryTable
from priorcache.cache.eviction import make_eviction
from priorcache.cache.planning import (
    Checked,
    Planned,
    Planner,
    call_of,
    check_request,
    exact_hit,
    plan_of,
    would_serve,
)
from priorcache.cache.records import CacheEntry, LookupCost, PriorLookup
from priorcache.cache.state import entry_to_json, merge_states, validate_state
from priorcache.errors import CacheFormatError, ConfigError
from priorcache.prior.action_prior import CategoricalPrior, PriorConfig
from priorcache.prior.base import LLMBackend, Prompt
from priorcache.prior.interface import Prior
from priorcache.validation import is_int, is_number

if TYPE_CHECKING:
    from priorcache.cache.encoder import Encoder


class PriorCache:
    """Serves priors for states, from the cache when a similar state was asked before."""

    def __init__(
        self,
        config: CacheConfig | Mapping[str, Any],
        encoder: Encoder,
        backend: LLMBackend,
        prior_config: Any = PriorConfig(),
        prior_kind: type[Prior] = CategoricalPrior,
    ) -> None:
        """``prior_kind`` builds priors from a backend's F3 scores; ``prior_config`` is its settings
        (F3's τ and ε for the categorical kind)."""
        if isinstance(config, Mapping):
            config = CacheConfig.from_dict(config)
        if not isinstance(config, CacheConfig):
            raise ConfigError(f"config must be a CacheConfig or a mapping, got {type(config).__name__}")
        if not (isinstance(prior_kind, type) and issubclass(prior_kind, Prior)):
            raise ConfigError(f"prior_kind must be a Prior subclass, got {prior_kind!r}")
        if prior_kind is CategoricalPrior and not isinstance(prior_config, PriorConfig):
            raise ConfigError(f"prior_config must be a PriorConfig, got {type(prior_config).__name__}")
        dim = getattr(encoder, "dim", None)
        if not is_int(dim) or dim < 1:
            raise ConfigError(f"the encoder must have an integer dim ≥ 1, got {dim!r}")
        self.config = config
        self.encoder = encoder
        self.backend = backend
        self.prior_config = prior_config
        self.prior_kind = prior_kind
        self.dim = int(dim)
        self._lock = threading.RLock()
        self._save_lock = threading.Lock()  # one save at a time per cache
        self.controller = make_controller(config)
        self.eviction = make_eviction(config.eviction, config.utility_half_life)
        self._table = EntryTable(config.index, self.dim, config.capacity, self.eviction, self.controller.forget)
        self._planner = Planner(config, self._table, self.controller)
        self._clock = 0
        self._books = Books(self.controller, self._table)

    # --- public API -------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock:
            return len(self._table)

    @property
    def encoder_name(self) -> str:
        return str(getattr(self.encoder, "name", type(self.encoder).__name__))

    @property
    def backend_name(self) -> str:
        return str(getattr(self.backend, "name", type(self.backend).__name__))

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
        """The prior for ``candidates`` in the state ``state_text`` asked with ``prompt``.

        ``q_values``/``alpha`` are only used by audits (F5 is measured on the agent's own
        posterior); ``embedding`` is e(state_text) when the caller already has it; ``step`` is the
        clock for recency and utility (an internal lookup counter when None)."""
        start = time.perf_counter()
        request = check_request(
            LookupRequest(state_text, prompt, candidates, q_values, alpha, embedding, step), self.dim, self.encoder_name
        )
        cost = LookupCost()
        if self.config.mode == "none":
            fresh = self._ask(request.prompt, request.cands, cost, partial=False)
            return self._finish(request, Planned(None, 0, "uncached"), fresh, cost, start)

        with self._lock:
            now = self._tick(step)
            match = self._planner.exact(request.p_hash, state_text, request.cands)
        near = exact_hit(match) if match is not None else None
        if near is None:
            if request.emb is None:
                request.emb = self._encode(state_text, cost)
            with self._lock:
                near = self._planner.similar(request.p_hash, request.emb, request.cands)
        plan = plan_of(near, now)
        call = call_of(request, plan, cost, self.config.unknown_candidates)
        fresh = self._ask(call.prompt, call.actions, cost, partial=call.partial) if call is not None else None
        return self._finish(request, plan, fresh, cost, start)

    def lookup_batch(self, requests: Sequence[LookupRequest]) -> list[PriorLookup]:
        """The priors of several lookups (e.g. N environments stepped in lockstep), with ONE backend
        call for every LLM call of the batch (misses, refreshes and F7 partial calls alike) and ONE
        encoder call for every state that came without an embedding.

        The same as ``lookup`` on each request in order (kinds, counters, audits, controller
        updates, clock), except that every lookup is planned against the entries as they were when
        the batch began: a state cannot hit an entry inserted (or refreshed) by an earlier state of
        the same batch, and K, δ, r moved by a meta-update within the batch apply from the next
        batch. Two equal states in one batch thus both miss and both pay a full call; the second
        insert extends the first's entry. A batch also encodes states that turn out to be exact hits
        (``lookup`` skips that); the encoder's memo makes such repeats cheap. LLM and encoder time and
        tokens are shared evenly among the lookups that took part (:mod:`priorcache.cache.batch`);
        each lookup's own time is an even share of the batch's."""
        start = time.perf_counter()
        checked = [check_request(r, self.dim, self.encoder_name) for r in requests]  # all checked before any change
        costs = [LookupCost() for _ in checked]
        if not checked:
            return []
        if self.config.mode == "none":
            plans = [Planned(None, 0, "uncached") for _ in checked]
        else:
            missing = [i for i, r in enumerate(checked) if r.emb is None]
            vectors = encode_states(
                self.encoder,
                self.encoder_name,
                self.dim,
                [checked[i].state_text for i in missing],
                [costs[i] for i in missing],
            )
            for i, vector in zip(missing, vectors):
                checked[i].emb = vector
            plans = []
            with self._lock:
                for r in checked:
                    now = self._tick(r.step)
                    match = self._planner.exact(r.p_hash, r.state_text, r.cands)
                    near = exact_hit(match) if match is not None else self._planner.similar(r.p_hash, r.emb, r.cands)
                    plans.append(plan_of(near, now))
        unknown = self.config.unknown_candidates
        calls = [call_of(r, plan, cost, unknown) for r, plan, cost in zip(checked, plans, costs)]
        wanted = [call for call in calls if call is not None]
        scores = iter(ask_backend_batch(self.backend, self.backend_name, wanted))
        results = []
        for r, plan, cost, call in zip(checked, plans, costs, calls):
            fresh = self.prior_kind.from_scores(call.actions, next(scores), self.prior_config) if call else None
            results.append(self._finish(r, plan, fresh, cost, None))
        own = max(0.0, time.perf_counter() - start - sum(c.external_wall_s for c in costs))
        with self._lock:
            self._books.counters.lookup_time_s += own
        for result in results:
            result.lookup_time_s = own / len(results)
        return results

    def _finish(
        self, request: Checked, plan: Planned, fresh: Prior | None, cost: LookupCost, start: float | None
    ) -> PriorLookup:
        """Apply a planned lookup, given its LLM call's prior (``fresh``: the full or the partial
        one; None when it made no call). ``start``: the lookup's start, for its own time; None in a
        batch, which books its own time once for all (``lookup_batch``)."""
        cands, q, alpha, emb, now, near = request.cands, request.q, request.alpha, request.emb, plan.now, plan.near
        completion, books = self.config.unknown_candidates, self._books
        if plan.kind == "uncached":
            assert fresh is not None
            with self._lock:
                self._tick(request.step)
                self._books.counters.uncached += 1
                self._books.count(cost, start, llm_calls=1, partial_calls=0)
            return lookup_result(cands, fresh, "uncached", None, cost, start, llm_calls=1, embedding=emb)

        if plan.kind == "miss":
            assert fresh is not None and emb is not None
            shadow_audit = None
            if near.shadow is not None:  # free audit: what the near-miss entry would have served
                with cost.timed("adaptation_time_s"):
                    shadow_audit = would_serve(near.shadow, cands, fresh, completion).divergence(fresh, q, alpha)
            with self._lock:
                evictions_before = self._table.evictions
                eid = self._table.upsert(
                    request.p_hash,
                    request.prompt.prefix,
                    request.state_text,
                    emb,
                    fresh,
                    now,
                    self.controller.params.capacity,
                )
                books.counters.misses += 1
                books.counters.coverage_rejections += int(near.rejected_for_coverage)
                record = None
                if shadow_audit is not None:
                    record = books.audit(now, near.shadow, shadow_audit, served=False, cost=cost)
                update = books.adapt(
                    near, cost, evictions_before, now, self._clock, hit=False, full_call=True, partial_call=False
                )
                books.count(cost, start, llm_calls=1, partial_calls=0)
            return lookup_result(
                cands,
                fresh,
                "miss",
                near.similarity,
                cost,
                start,
                llm_calls=1,
                embedding=emb,
                entry_id=eid,
                audit_record=record,
                meta_update=update,
            )

        match = near.match
        if plan.kind == "refresh":
            assert fresh is not None
            audit = would_serve(match, cands, fresh, completion).divergence(fresh, q, alpha)
            with self._lock:
                evictions_before = self._table.evictions
                self._table.apply_refresh(
                    match,
                    request.p_hash,
                    request.prompt.prefix,
                    request.state_text,
                    emb,
                    fresh,
                    audit,
                    now,
                    self.controller.params.capacity,
                )
                books.counters.refreshes += 1
                books.counters.add_audit(audit)
                record = books.audit(now, match, audit, served=True, cost=cost)
                update = books.adapt(
                    near, cost, evictions_before, now, self._clock, hit=False, full_call=True, partial_call=False
                )
                books.count(cost, start, llm_calls=1, partial_calls=0)
            return lookup_result(
                cands,
                fresh,
                "refresh",
                match.similarity,
                cost,
                start,
                llm_calls=1,
                audit=audit,
                embedding=emb,
                coverage=match.coverage,
                entry_id=match.entry_id,
                audit_record=record,
                meta_update=update,
            )

        # A hit: F7 completion of the candidates the entry does not know (``fresh``: their partial call).
        unknown = [a for a in cands if a not in set(match.prior.actions)]
        served = match.prior.restrict(cands, fill=fresh)
        partial_calls = int(fresh is not None)
        with self._lock:
            evictions_before = self._table.evictions
            self._table.apply_hit(match, fresh, now)
            c = books.counters
            if match.kind == "exact":
                c.exact_hits += 1
            else:
                c.similar_hits += 1
            n_partial = len(fresh.actions) if fresh is not None else 0
            c.partial_actions += n_partial
            c.floor_filled += len(unknown) - n_partial
            update = books.adapt(
                near,
                cost,
                evictions_before,
                now,
                self._clock,
                hit=True,
                full_call=False,
                partial_call=bool(partial_calls),
            )
            books.count(cost, start, llm_calls=0, partial_calls=partial_calls)
        return lookup_result(
            cands,
            served,
            match.kind,
            match.similarity,
            cost,
            start,
            partial_calls=partial_calls,
            embedding=emb,
            coverage=match.coverage,
            entry_id=match.entry_id,
            meta_update=update,
        )

    def params(self) -> dict[str, Any]:
        """The live K, δ and r (in ``kl-budget`` mode with per-entry thresholds, δ is the global one)."""
        with self._lock:
            return self.controller.params.to_dict()

    @property
    def learns_from_outcomes(self) -> bool:
        """Whether ``observe_reward`` / ``observe_td`` are used (adaptive mode); an agent skips the work otherwise."""
        return self.controller.learns_from_outcomes

    def observe_reward(self, reward: float) -> None:
        """The agent's reward for its last step: the return term of the meta-optimiser (adaptive mode)."""
        if not self.controller.learns_from_outcomes:
            return
        if not (is_number(reward) and math.isfinite(reward)):
            raise ConfigError(f"reward must be a finite number, got {reward!r}")
        with self._lock:
            self._books.observe_reward(float(reward))

    def observe_td(self, hit: bool, td_sum: float, count: int) -> None:
        """Summed |TD error| of ``count`` replayed transitions that acted on a cached (``hit``) or a fresh
        prior: the meta-optimiser prices KL higher when cached priors train worse (adaptive mode)."""
        if not self.controller.learns_from_outcomes or count == 0:
            return
        if not (is_number(td_sum) and math.isfinite(td_sum) and td_sum >= 0) or not is_int(count) or count < 0:
            raise ConfigError(
                f"observe_td needs a finite td_sum ≥ 0 and an integer count ≥ 0, got {td_sum!r}, {count!r}"
            )
        with self._lock:
            self._books.observe_td(hit, float(td_sum), int(count))

    def meta_log(self) -> list[dict[str, Any]]:
        """The controller's parameter updates (the meta-optimiser's windows in adaptive mode), oldest first."""
        with self._lock:
            return self.controller.log()

    def stats(self) -> dict[str, Any]:
        """Counters since construction. ``hit_rate`` = hits / lookups (a hit makes no full LLM call);
        ``query_rate`` = lookups that asked the LLM anything (full or partial) / lookups;
        ``full_query_rate`` counts full calls only."""
        with self._lock:
            return {
                "mode": self.config.mode,
                **self._books.counters.stats(),
                "evictions": self._table.evictions,
                "size": len(self._table),
                "capacity": self.config.capacity,
                "params": self.controller.params.to_dict(),
                **self.controller.summary(),
            }

    def audit_log(self) -> list[dict[str, Any]]:
        """The most recent audits (step, kind, similarity, coverage, ε, KL, bound), oldest first."""
        with self._lock:
            return [dict(a) for a in self._books.audits]

    def entries(self) -> list[CacheEntry]:
        """Copies of the entries, in insertion order."""
        with self._lock:
            return [e.copy() for e in self._table.entries.values()]

    # --- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The whole cache as plain data (format version 2, see :mod:`priorcache.cache.state`)."""
        with self._lock:
            entries = list(self._table.entries.values())
            keys = (
                np.stack([e.key for e in entries]).astype(np.float32)
                if entries
                else np.zeros((0, self.dim), dtype=np.float32)
            )
            return {
                "keys": keys,
                "encoder": {"name": self.encoder_name, "dim": self.dim},
                "backend": {"name": self.backend_name},
                "config": self.config.to_dict(),
                "clock": self._clock,
                "prefixes": {h: self._table.prefixes[h] for h in sorted({e.prefix_hash for e in entries})},
                "entries": [entry_to_json(e) for e in entries],
                "controller": {
                    "mode": self.config.mode,
                    "params": self.controller.params.to_dict(),
                    "state": self.controller.state_dict(),
                },
            }

    def load_state_dict(self, state: Mapping[str, Any], *, check_backend: bool = True) -> None:
        """Replace the entries (and what the controller learnt) with ``state``'s, after checking all
        of it: CacheFormatError naming the problem, and then nothing has changed.

        ``check_backend``: refuse a state scored by another LLM backend (raw scores of two models
        are not comparable). Entries' steps are rebased onto this cache's clock (ages survive).

        All or nothing: the new entries are installed in a table of their own and evicted down to
        capacity there; only when that and the controller's restore have succeeded does the table
        take them over (plain assignments). If anything fails before, the controller is put back as
        it was, so the cache is exactly as before the call."""
        loaded = validate_state(
            state,
            encoder_name=self.encoder_name,
            dim=self.dim,
            backend_name=self.backend_name if check_backend else None,
            prior_kind=self.prior_kind,
            prior_config=self.prior_config,
        )
        try:
            restore = self.controller.check_state(loaded.controller_mode, loaded.controller_state)
        except ConfigError as e:
            raise CacheFormatError(f"damaged 'controller' state: {e}") from None
        with self._lock:
            # Loads are rare and a controller is small (θ, or at most a few thousand audits): a deep
            # copy is the one way to undo whatever a failed restore or forget did to it.
            controller_before = copy.deepcopy(self.controller.__dict__, {id(self.config): self.config})
            try:
                fresh = self._table.loaded(loaded.entries, loaded.prefixes, self._clock, self.config.capacity)
                self._table.forget_all()  # before the restore: it may bring audits under the same ids
                restore()
                evicted = fresh.evict_to(self.controller.params.capacity, self._clock)
                for eid in evicted:
                    self.controller.forget(eid)
            except BaseException as e:
                self.controller.__dict__.clear()
                self.controller.__dict__.update(controller_before)
                if not isinstance(e, Exception):  # Ctrl-C: undone, and passed on as it is
                    raise
                raise CacheFormatError(
                    f"the state passed its checks but could not be installed ({type(e).__name__}: {e}); "
                    "the cache is unchanged"
                ) from e
            self._table.adopt(fresh)

    def save(self, directory: str | Path, *, merge: bool = False) -> None:
        """Write the cache to ``directory`` atomically, under the folder's lock (see :mod:`priorcache.cache.store`).

        ``merge=False``: replace whatever save is there (a run's own output folder). ``merge=True``:
        for a folder other processes save to as well: write the union of this cache's entries and
        the save already there (rule in :func:`priorcache.cache.state.merge_states`). The save there
        is validated as a load would be (CacheFormatError if damaged or from another encoder or
        backend, and then nothing is written), and the union is evicted by this cache's eviction
        policy down to the larger of this cache's capacity K and the size of the save there: the
        file stays bounded by the largest K that saved into it, and a smaller cache merging into a
        larger shared save does not shrink it."""
        with self._save_lock:
            store.write_state(directory, self.state_dict(), merge=merge, combine=self._merged)

    def _merged(self, ours: Mapping[str, Any], saved: Mapping[str, Any]) -> dict[str, Any]:
        """``ours`` merged with a ``saved`` state, validated and evicted down to size (see ``save``)."""
        merged = merge_states(ours, saved)
        # The merged state is what will be written: validate it as a load will, so that a forged or
        # damaged save on disk is refused now rather than written into an unloadable one.
        loaded = validate_state(
            merged,
            encoder_name=self.encoder_name,
            dim=self.dim,
            backend_name=self.backend_name,
            prior_kind=self.prior_kind,
            prior_config=self.prior_config,
        )
        with self._lock:
            limit = max(self.controller.params.capacity, len(saved["entries"]))
        if len(loaded.entries) <= limit:
            return merged
        # Eviction picks the lowest rank at a fixed step: dropping the lowest ranks at once is the same.
        now = merged["clock"]
        order = sorted(range(len(loaded.entries)), key=lambda i: self.eviction.rank(loaded.entries[i], now))
        keep = sorted(order[len(order) - limit :])
        entries = [merged["entries"][i] for i in keep]
        used = {e["prefix_hash"] for e in entries}
        return {
            **merged,
            "keys": np.asarray(merged["keys"])[keep],
            "entries": entries,
            "prefixes": {h: t for h, t in merged["prefixes"].items() if h in used},
        }

    def load(self, directory: str | Path, *, check_backend: bool = True) -> None:
        """Replace the entries with a saved cache's, after validating all of it (CacheFormatError)."""
        where, state = store.read_state(directory)
        try:
            self.load_state_dict(state, check_backend=check_backend)
        except CacheFormatError as e:
            raise CacheFormatError(f"{where}: {e}") from None

    def runtime_state(self) -> dict[str, Any]:
        """What a run's checkpoint keeps beside :meth:`state_dict`: counters, audit log, clock,
        evictions, the refresh draws' RNG and the controller's run-time state (adaptive: the
        meta-optimiser's moments, pair and open window), so that a resumed run counts and draws on."""
        with self._lock:
            return {
                **self._books.runtime_state(),
                "clock": self._clock,
                "evictions": self._table.evictions,
                "rng": self._planner.rng.bit_generator.state,
                "controller": self.controller.runtime_state(),
            }

    def load_runtime_state(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`runtime_state` (call it before ``load_state_dict``, which rebases the
        entries onto the restored clock); CacheFormatError when it does not fit."""
        clock, evictions = state.get("clock"), state.get("evictions")
        if not all(is_int(v) and 0 <= v <= 2**53 for v in (clock, evictions)):
            raise CacheFormatError(f"damaged run-time state: clock {clock!r}, evictions {evictions!r}")
        rng = np.random.default_rng()
        try:
            rng.bit_generator.state = state.get("rng")
        except (TypeError, ValueError, KeyError) as e:
            raise CacheFormatError(f"damaged run-time state: rng: {e}") from None
        with self._lock:
            before = self.controller.runtime_state()
            try:
                self.controller.load_runtime_state(state.get("controller"))
            except ConfigError as e:
                raise CacheFormatError(f"damaged run-time state: {e}") from None
            try:
                self._books.load_runtime_state(dict(state))
            except CacheFormatError:
                self.controller.load_runtime_state(before)  # all or nothing
                raise
            self._clock, self._table.evictions, self._planner.rng = clock, evictions, rng

    # --- under the lock ---------------------------------------------------------------------------
    def _tick(self, step: int | None) -> int:
        """Advance the clock; the step a lookup is planned at."""
        if step is None:
            self._clock += 1
            return self._clock
        self._clock = max(self._clock, int(step))
        return int(step)

    # --- outside calls (never under the lock) ---------------------------------------------------
    def _ask(self, prompt: Prompt, actions: list[str], cost: LookupCost, *, partial: bool) -> Prior:
        scores = ask_backend_batch(self.backend, self.backend_name, [LLMCall(prompt, actions, cost, partial)])[0]
        return self.prior_kind.from_scores(actions, scores, self.prior_config)

    def _encode(self, state_text: str, cost: LookupCost) -> np.ndarray:
        return encode_state(self.encoder, self.encoder_name, self.dim, state_text, cost)

    def _assert_consistent(self) -> None:
        """Invariants, for tests: size ≤ K, one entry per exact key, index in step with the entries."""
        with self._lock:
            self._table.check(self.controller.params.capacity)
