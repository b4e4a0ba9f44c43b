"""The prior cache's configuration (docs/design.md, "The prior cache"): K, δ, r, the mode and its settings."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from priorcache.cache.eviction import EVICTION_POLICIES
from priorcache.cache.kl_budget import KLBudgetConfig
from priorcache.cache.meta import MetaConfig
from priorcache.errors import ConfigError
from priorcache.validation import config_from_dict, is_int, is_number

MODES = ("none", "static", "adaptive", "kl-budget")
UNKNOWN_CANDIDATE_POLICIES = ("partial", "floor")


@dataclass(frozen=True)
class CacheConfig:
    """Parameters of the prior cache; every value is checked on construction."""

    mode: str = "static"
    # K: a TextWorld/ALFWorld run visits hundreds to a few thousand distinct state texts; 2048 keys
    # of 384 float32 are 3 MB and an exact search over them takes well under a millisecond.
    capacity: int = 2048
    # δ for MiniLM cosine on room descriptions: near-duplicates score > 0.95, different rooms of one
    # game 0.6–0.85. 0.92 sits above the different-room band with margin and still catches
    # near-duplicates (a changed item or count); F6: ‖e(s) − e(s')‖ ≤ √(2·0.08) ≈ 0.4.
    similarity_threshold: float = 0.92
    # r: 5 % of hits become audits, an unbiased F5 sample at a query-rate cost of ≤ 0.05.
    refresh_rate: float = 0.05
    eviction: str = "utility"
    # A few episodes (TextWorld episodes run 50–100 steps): an entry unused for that long has its
    # hit count halved, so priors of rooms no longer visited make way.
    utility_half_life: float = 500.0
    unknown_candidates: str = "partial"
    # Below half the candidates known, a partial call costs about as much as a full one (the prompt
    # dominates, F9) while the served ranking is mostly another state's: count it as a miss.
    min_coverage: float = 0.5
    # "numpy" is exact; an ANN kind ("auto"/"hnsw") is only worth it for K in the tens of thousands.
    index: str = "auto"
    # Seed of the refresh draws, so a run's sequence of audits is reproducible; None: OS entropy.
    seed: int | None = 0
    # Used by mode "adaptive" only: the meta-optimiser (K, δ, r above are its starting point).
    meta: MetaConfig = field(default_factory=MetaConfig)
    # Used by mode "kl-budget" only: target KL and confidence (δ above is not used; K and r are).
    kl_budget: KLBudgetConfig = field(default_factory=KLBudgetConfig)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown cache mode {self.mode!r}; choose one of {list(MODES)}")
        if not is_int(self.capacity) or self.capacity < 1:
            raise ConfigError(f"capacity K must be an integer ≥ 1, got {self.capacity!r}")
        if not is_number(self.similarity_threshold) or not -1.0 <= self.similarity_threshold <= 1.0:
            raise ConfigError(f"similarity_threshold δ must be a number in [-1, 1], got {self.similarity_threshold!r}")
        if not is_number(self.refresh_rate) or not 0.0 <= self.refresh_rate <= 1.0:
            raise ConfigError(f"refresh_rate r must be a number in [0, 1], got {self.refresh_rate!r}")
        if self.eviction not in EVICTION_POLICIES:
            raise ConfigError(f"eviction must be one of {list(EVICTION_POLICIES)}, got {self.eviction!r}")
        if (
            not is_number(self.utility_half_life)
            or not math.isfinite(self.utility_half_life)
            or self.utility_half_life <= 0
        ):
            raise ConfigError(f"utility_half_life must be a finite number of steps > 0, got {self.utility_half_life!r}")
        if self.unknown_candidates not in UNKNOWN_CANDIDATE_POLICIES:
            raise ConfigError(
                f"unknown_candidates must be one of {list(UNKNOWN_CANDIDATE_POLICIES)}, got {self.unknown_candidates!r}"
            )
        if not is_number(self.min_coverage) or not 0.0 <= self.min_coverage <= 1.0:
            raise ConfigError(f"min_coverage must be a fraction in [0, 1], got {self.min_coverage!r}")
        if not isinstance(self.index, str) or not self.index:
            raise ConfigError(f"index must be an index kind name such as 'numpy', got {self.index!r}")
        if self.seed is not None and (not is_int(self.seed) or self.seed < 0):
            raise ConfigError(f"seed must be an integer ≥ 0 or None, got {self.seed!r}")
        if isinstance(self.meta, Mapping):
            object.__setattr__(self, "meta", MetaConfig.from_dict(self.meta))
        if isinstance(self.kl_budget, Mapping):
            object.__setattr__(self, "kl_budget", KLBudgetConfig.from_dict(self.kl_budget))
        if not isinstance(self.meta, MetaConfig):
            raise ConfigError(f"meta must be a MetaConfig or a mapping, got {type(self.meta).__name__}")
        if not isinstance(self.kl_budget, KLBudgetConfig):
            raise ConfigError(f"kl_budget must be a KLBudgetConfig or a mapping, got {type(self.kl_budget).__name__}")
        if self.mode == "adaptive":
            (k_lo, k_hi), (d_lo, d_hi), (r_lo, r_hi) = (
                self.meta.capacity_bounds,
                self.meta.threshold_bounds,
                self.meta.refresh_bounds,
            )
            if not (
                k_lo <= self.capacity <= k_hi
                and d_lo <= self.similarity_threshold <= d_hi
                and r_lo <= self.refresh_rate <= r_hi
            ):
                raise ConfigError(
                    f"adaptive mode starts from K={self.capacity}, δ={self.similarity_threshold}, "
                    f"r={self.refresh_rate}, which must lie inside the meta bounds K {self.meta.capacity_bounds}, "
                    f"δ {self.meta.threshold_bounds}, r {self.meta.refresh_bounds}"
                )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CacheConfig:
        """Build from a mapping, refusing keys that are not parameters (a typo must not be ignored)."""
        return config_from_dict(cls, data, "cache")
