"""The ``Prior`` type: what an agent, the cache and the store need of a prior over one state's actions.

A prior kind (categorical over text actions now, a distribution over skills with a Gaussian per
skill next) implements this class. The cache never looks inside a prior: it asks a backend for
raw F3 scores of the candidates, builds a prior with ``from_scores``, serves ``restrict``-ed
copies, extends entries with ``merge``, audits with ``divergence`` (F5) and saves ``to_payload``.

Priors are immutable: ``restrict`` and ``merge`` return new objects, so a cache can hand out the
prior of an entry without copying it and without a lock.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from priorcache.prior.divergence import Audit, f5_audit


class Prior(ABC):
    """A prior p(a|s) over the actions of one state."""

    #: The name a saved cache records for this kind (format version 2: ``{"kind", "payload"}``).
    kind: ClassVar[str]

    # --- what an agent needs ------------------------------------------------------------------
    @property
    @abstractmethod
    def actions(self) -> tuple[str, ...]:
        """The actions this prior has a value for: for a served prior, exactly the candidates."""

    @abstractmethod
    def log_prob(self, actions: Sequence[str]) -> np.ndarray:
        """log p(a|s) of the given actions, normalised over this prior's own ``actions``."""

    @abstractmethod
    def sample(self, rng: np.random.Generator) -> Any:
        """One action drawn from the prior (a continuous kind may return more than a name)."""

    def support(self, k: int) -> list[str]:
        """C(s): the ``k`` most probable actions, ties kept in ``actions`` order (value targets use it)."""
        order = np.argsort(-self.log_prob(self.actions), kind="stable")
        return [self.actions[i] for i in order[:k]]

    def divergence(self, fresh: Prior, q_values: np.ndarray | None = None, alpha: float = 1.0) -> Audit:
        """F5 between this (served) prior and a ``fresh`` one on this prior's actions, under the same Q and α."""
        return f5_audit(self.log_prob(self.actions), fresh.log_prob(self.actions), q_values, alpha)

    # --- what the cache needs (F7: candidate sets change between visits) ----------------------
    @classmethod
    @abstractmethod
    def from_scores(cls, actions: Sequence[str], scores: np.ndarray, config: Any) -> Prior:
        """The prior a backend's raw F3 scores ℓ of ``actions`` give; ``config`` is the kind's settings."""

    def restrict(self, candidates: Sequence[str], fill: Prior | None = None) -> Prior:
        """The prior to serve for ``candidates``. Candidates this prior lacks take their value from
        ``fill`` (a fresh prior of just those), or a kind-specific stand-in when ``fill`` is None.
        The default suits kinds whose actions never change (a fixed skill vocabulary)."""
        return self

    def merge(self, newer: Prior) -> Prior:
        """This prior extended (and overridden) by ``newer``'s values for the same state and prompt."""
        return newer

    # --- what the store needs -----------------------------------------------------------------
    @abstractmethod
    def to_payload(self) -> dict[str, Any]:
        """Plain JSON (finite numbers, strings, lists, maps) from which ``from_payload`` rebuilds it."""

    @classmethod
    @abstractmethod
    def from_payload(cls, payload: Mapping[str, Any], config: Any) -> Prior:
        """Rebuild from ``to_payload``'s output; ConfigError naming what is wrong if it is damaged."""
