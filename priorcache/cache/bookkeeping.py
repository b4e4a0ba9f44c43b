"""What a lookup leaves behind besides its entry (docs/design.md, "The prior cache" and "Modes"): the
cache's counters, the log of F5 audits, what the mode's controller is told, and the ``PriorLookup``
returned to the caller.

The controller is told of every finished lookup (a K it moves applies at once, by eviction), every
audit (a refresh is drawn with probability r among hits, so it stands for 1/r of them; a shadow
audit of a near-miss stands for itself) and, in adaptive mode, the agent's rewards and TD errors;
its time is booked as adaptation time. Everything here runs under the cache's lock.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from typing import Any

from priorcache.cache.controllers import CacheController
from priorcache.cache.entry_table import EntryTable, Match
from priorcache.cache.planning import Nearest
from priorcache.cache.records import CacheCounters, LookupCost, PriorLookup
from priorcache.errors import CacheFormatError
from priorcache.prior.divergence import Audit
from priorcache.prior.interface import Prior
from priorcache.validation import is_json_number

# How many audits the log keeps: enough for a meta-optimiser window, bounded memory.
AUDIT_LOG_SIZE = 4096


class Books:
    """The counters and the audit log of one cache, and its controller's observations."""

    def __init__(self, controller: CacheController, table: EntryTable) -> None:
        self.controller = controller
        self.table = table
        self.counters = CacheCounters()
        self.audits: deque[dict[str, Any]] = deque(maxlen=AUDIT_LOG_SIZE)

    def count(self, cost: LookupCost, start: float | None, *, llm_calls: int, partial_calls: int) -> None:
        """Count a finished lookup; its own time from ``start`` (None: a batch's, booked by the batch)."""
        c = self.counters
        c.lookups += 1
        c.llm_calls += llm_calls
        c.partial_calls += partial_calls
        c.add_cost(cost)
        if start is not None:
            c.lookup_time_s += max(0.0, time.perf_counter() - start - cost.external_wall_s)

    def audit(self, now: int, match: Match, audit: Audit, *, served: bool, cost: LookupCost) -> dict[str, Any]:
        """Keep the audit in the log and hand it to the controller; the record, as logged."""
        with cost.timed("adaptation_time_s"):
            rate = match.refresh_rate if served else 1.0
            record = {
                "step": now,
                "kind": match.kind,
                "served": served,
                "similarity": match.similarity,
                "coverage": match.coverage,
                "entry_id": match.entry_id,
                **audit.to_dict(),
                "refresh_rate": rate,
                "weight": 1.0 / rate,
            }
            self.audits.append(record)
            if not served:
                self.counters.shadow_audits += 1
            self.controller.observe_audit(match.similarity, audit.kl, 1.0 / rate, served, match.entry_id)
        return dict(record)

    def adapt(
        self,
        near: Nearest,
        cost: LookupCost,
        evictions_before: int,
        now: int,
        clock: int,
        *,
        hit: bool,
        full_call: bool,
        partial_call: bool,
    ) -> dict[str, Any] | None:
        """Feed the lookup to the controller and apply a changed K (evicting at the cache's ``clock``)."""
        with cost.timed("adaptation_time_s"):
            update = self.controller.observe_lookup(
                near.similarity,
                near.servable,
                hit=hit,
                full_call=full_call,
                partial_call=partial_call,
                evictions=self.table.evictions - evictions_before,
                step=now,
            )
            if update is not None:
                self.table.evict_to(self.controller.params.capacity, clock)
        return update

    def observe_reward(self, reward: float) -> None:
        """Hand the agent's reward to the controller (checked by the caller)."""
        cost = LookupCost()
        with cost.timed("adaptation_time_s"):
            self.controller.observe_reward(reward)
        self.counters.adaptation_time_s += cost.adaptation_time_s

    def observe_td(self, hit: bool, td_sum: float, count: int) -> None:
        """Hand summed |TD error| of ``count`` transitions to the controller (checked by the caller)."""
        cost = LookupCost()
        with cost.timed("adaptation_time_s"):
            self.controller.observe_td(hit, td_sum, count)
        self.counters.adaptation_time_s += cost.adaptation_time_s

    # --- a run's checkpoint -------------------------------------------------------------------
    def runtime_state(self) -> dict[str, Any]:
        """The counters and the audit log as plain data."""
        return {"counters": dataclasses.asdict(self.counters), "audits": [dict(a) for a in self.audits]}

    def load_runtime_state(self, state: Any) -> None:
        """Inverse of :meth:`runtime_state`; CacheFormatError (nothing changed) when it does not fit."""
        if not isinstance(state, dict) or not isinstance(state.get("counters"), dict):
            raise CacheFormatError("the cache's run-time state needs 'counters' and 'audits'")
        names = {f.name: f.type for f in dataclasses.fields(CacheCounters)}
        counters = state["counters"]
        if set(counters) != set(names) or not all(
            is_json_number(v) and v >= 0 and (isinstance(v, int) or names[k] == "float") for k, v in counters.items()
        ):
            raise CacheFormatError(f"damaged cache counters: need {sorted(names)} as numbers ≥ 0")
        audits = state.get("audits")
        if not isinstance(audits, list) or not all(
            isinstance(a, dict)
            and all(v is None or isinstance(v, (str, bool)) or is_json_number(v) for v in a.values())
            for a in audits
        ):
            raise CacheFormatError("damaged audit log: it must be a list of flat records")
        self.counters = CacheCounters(**counters)
        self.audits = deque(audits[-AUDIT_LOG_SIZE:], maxlen=AUDIT_LOG_SIZE)


def lookup_result(
    cands: list[str],
    prior: Prior,
    kind: str,
    similarity: float | None,
    cost: LookupCost,
    start: float | None,
    **fields: Any,
) -> PriorLookup:
    """The ``PriorLookup`` of a finished lookup; its own time from ``start`` (None in a batch: 0 here,
    the batch's share set by the batch)."""
    lookup_time = max(0.0, time.perf_counter() - start - cost.external_wall_s) if start is not None else 0.0
    hit = kind in ("exact", "similar")
    return PriorLookup(cands, prior, kind, hit, similarity, cost=cost, lookup_time_s=lookup_time, **fields)
