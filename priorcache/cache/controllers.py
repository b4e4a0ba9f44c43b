"""Cache modes as controller strategies: what sets the cache's K, δ and r (docs/design.md, "Modes").

A controller supplies the parameters in force (``params``, and ``threshold_for`` an entry), observes
what the cache does (every lookup, every F5 audit, the agent's rewards and TD errors), and saves and
restores what it learnt. The cache itself has no branch on its mode:

- ``static`` (and ``none``, which never plans a hit): K, δ, r as configured;
- ``adaptive``: θ = (log K, logit δ, logit r) moved by the meta-optimiser (:mod:`priorcache.cache.meta`);
- ``kl-budget``: δ from the audited KL's upper confidence bound (:mod:`priorcache.cache.kl_budget`),
  globally or per entry; K and r as configured.
The adaptive modes also ask for shadow audits of near-misses (``shadow_floor``): the LLM is called
for the miss anyway, so what the nearest entry would have served is measured for free.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from priorcache.cache.config import CacheConfig
from priorcache.cache.kl_budget import KLBudgetController
from priorcache.cache.meta import CacheParams, MetaOptimiser, check_theta
from priorcache.errors import ConfigError

# How many meta-optimiser window records ``log`` keeps: bounded memory over long runs.
LOG_SIZE = 4096


class CacheController:
    """The ``static`` mode, and the base of the others: fixed K, δ, r; learns nothing."""

    #: Misses whose nearest entry lies at or above this cosine get a shadow audit; None: none do.
    shadow_floor: float | None = None
    #: Whether the agent's rewards and TD errors are used (an agent skips that work otherwise).
    learns_from_outcomes: bool = False

    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        self._params = CacheParams(config.capacity, float(config.similarity_threshold), float(config.refresh_rate))

    @property
    def params(self) -> CacheParams:
        """K, δ, r in force."""
        return self._params

    def threshold_for(self, entry_id: int) -> float:
        """δ a hit on this entry needs."""
        return self._params.similarity_threshold

    def observe_lookup(
        self,
        similarity: float | None,
        servable: bool,
        *,
        hit: bool,
        full_call: bool,
        partial_call: bool,
        evictions: int,
        step: int,
    ) -> dict[str, Any] | None:
        """One lookup: the nearest entry's similarity (None: empty partition), whether it covered enough
        candidates to be served, what happened. Returns an update record when the parameters moved."""
        return None

    def observe_audit(self, similarity: float, kl: float, weight: float, served: bool, entry_id: int) -> None:
        """One F5 audit (weight 1/r for a refresh of a hit, 1 for a shadow audit of a near-miss)."""

    def observe_reward(self, reward: float) -> None:
        """The agent's reward for its last step."""

    def observe_td(self, hit: bool, td_sum: float, count: int) -> None:
        """Summed |TD error| of ``count`` replayed transitions that acted on a cached or a fresh prior."""

    def forget(self, entry_id: int) -> None:
        """The entry was evicted, or its key now stands for another state."""

    def log(self) -> list[dict[str, Any]]:
        """The parameter updates so far, oldest first."""
        return []

    def summary(self) -> dict[str, Any]:
        return {"meta_updates": 0, "kl_budget": None}

    # --- persistence --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any] | None:
        """What this controller learnt, as plain JSON (None: nothing)."""
        return None

    def runtime_state(self) -> dict[str, Any] | None:
        """What a run's checkpoint keeps beyond :meth:`state_dict` so that a resumed run goes on
        exactly (None: nothing)."""
        return None

    def load_runtime_state(self, state: Any) -> None:
        """Inverse of :meth:`runtime_state` (ConfigError when it does not fit)."""

    def check_state(self, mode: str, state: Any) -> Callable[[], None]:
        """Validate a saved controller state of mode ``mode`` (ConfigError) and return what applies it.

        A controller takes over only a state of its own mode (an adaptive cache continues from a saved
        θ, a kl-budget cache from saved audits); any other pairing keeps the configured values."""
        return lambda: None


class AdaptiveController(CacheController):
    """``adaptive``: the meta-optimiser's θ, perturbed in antithetic pairs, sets K, δ and r."""

    learns_from_outcomes = True

    def __init__(self, config: CacheConfig) -> None:
        super().__init__(config)
        self.meta = MetaOptimiser(config.meta, self._params, seed=config.seed)
        self._params = self.meta.params
        self.shadow_floor = config.meta.threshold_bounds[0]
        self._log: deque[dict[str, Any]] = deque(maxlen=LOG_SIZE)

    def observe_lookup(
        self,
        similarity: float | None,
        servable: bool,
        *,
        hit: bool,
        full_call: bool,
        partial_call: bool,
        evictions: int,
        step: int,
    ) -> dict[str, Any] | None:
        update = self.meta.record_lookup(similarity, servable, hit, full_call, partial_call, evictions=evictions)
        if update is None:
            return None
        self._params = self.meta.params
        update["step"] = step
        self._log.append(update)
        return dict(update)

    def observe_audit(self, similarity: float, kl: float, weight: float, served: bool, entry_id: int) -> None:
        self.meta.record_audit(similarity, kl, weight, served)

    def observe_reward(self, reward: float) -> None:
        self.meta.record_reward(reward)

    def observe_td(self, hit: bool, td_sum: float, count: int) -> None:
        self.meta.record_td(hit, td_sum, count)

    def log(self) -> list[dict[str, Any]]:
        return [dict(u) for u in self._log]

    def summary(self) -> dict[str, Any]:
        return {"meta_updates": self.meta.updates, "kl_budget": None}

    def state_dict(self) -> dict[str, Any]:
        return {"theta": self.meta.theta.tolist()}

    def runtime_state(self) -> dict[str, Any]:
        return {"meta": self.meta.runtime_state(), "log": [dict(u) for u in self._log]}

    def load_runtime_state(self, state: Any) -> None:
        if state is None:  # a checkpoint from before this state was kept: θ alone is restored
            return
        if not isinstance(state, Mapping) or set(state) != {"meta", "log"} or not isinstance(state["log"], list):
            raise ConfigError("an adaptive controller's run-time state must be {meta: {...}, log: [...]}")
        self.meta.load_runtime_state(state["meta"])
        self._params = self.meta.params
        self._log = deque((dict(u) for u in state["log"] if isinstance(u, Mapping)), maxlen=LOG_SIZE)

    def check_state(self, mode: str, state: Any) -> Callable[[], None]:
        if mode != "adaptive":
            return lambda: None
        if not isinstance(state, Mapping) or set(state) != {"theta"}:
            raise ConfigError("an adaptive controller state must be {theta: [log K, logit δ, logit r]}")
        theta = check_theta(state["theta"]).tolist()

        def restore() -> None:
            self.meta.load_theta(theta)
            self._params = self.meta.params

        return restore


class KLBudgetCacheController(CacheController):
    """``kl-budget``: the lowest δ whose audited-KL upper bound meets the target (globally or per entry)."""

    def __init__(self, config: CacheConfig) -> None:
        super().__init__(config)
        self.kl_budget = KLBudgetController(config.kl_budget)
        self._params.similarity_threshold = self.kl_budget.threshold()
        self.shadow_floor = config.kl_budget.min_threshold

    def threshold_for(self, entry_id: int) -> float:
        if self.config.kl_budget.per_entry:
            return self.kl_budget.threshold(entry_id)
        return self._params.similarity_threshold

    def observe_audit(self, similarity: float, kl: float, weight: float, served: bool, entry_id: int) -> None:
        self.kl_budget.observe(similarity, kl, entry_id=entry_id, weight=weight)
        self._params.similarity_threshold = self.kl_budget.threshold()

    def forget(self, entry_id: int) -> None:
        self.kl_budget.forget(entry_id)

    def summary(self) -> dict[str, Any]:
        return {"meta_updates": 0, "kl_budget": self.kl_budget.summary()}

    def state_dict(self) -> dict[str, Any]:
        return self.kl_budget.to_dict()

    def check_state(self, mode: str, state: Any) -> Callable[[], None]:
        if mode != "kl-budget":
            return lambda: None
        if not isinstance(state, Mapping):
            raise ConfigError(f"a kl-budget controller state must be a mapping, got {type(state).__name__}")
        KLBudgetController(self.config.kl_budget).load_dict(state)  # validates without touching this one

        def restore() -> None:
            self.kl_budget.load_dict(state)
            self._params.similarity_threshold = self.kl_budget.threshold()

        return restore


def make_controller(config: CacheConfig) -> CacheController:
    """The controller of ``config.mode`` (``none`` and ``static`` share the fixed one)."""
    if config.mode == "adaptive":
        return AdaptiveController(config)
    if config.mode == "kl-budget":
        return KLBudgetCacheController(config)
    return CacheController(config)
