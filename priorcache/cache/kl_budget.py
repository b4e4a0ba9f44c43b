"""The ``kl-budget`` cache mode (docs/design.md §3): the lowest similarity threshold δ that meets a KL target.

The user sets a target expected KL (nats) of the priors the cache serves and a confidence. F5 says
the error a served prior causes is KL(π̃‖π) ≤ 2ε(s), and the cache measures that KL on its audits
(refreshes of hits, and "shadow" audits of near-misses, where the LLM was called anyway and the
nearest entry's prior is compared with the fresh one). F6 says ε(s) ≤ L·√(2(1−δ)) + ε_stale: the
error of hits shrinks as δ rises, so a higher δ buys a lower KL with more LLM calls. This module
picks the trade-off from the audits: the LOWEST δ (most hits, fewest calls) whose one-sided upper
confidence bound (UCB) on the audited KL of hits meets the target, in the spirit of vCache's
error-rate guarantee, but for distributions. It is pure NumPy/SciPy: the cache feeds it
``observe(similarity, kl, entry_id, weight)`` and asks ``threshold(entry_id)``.

The threshold rule
------------------
Let A(δ) be the audits with similarity ≥ δ (the hits a threshold δ would serve).
Candidates are the audited similarities within [min_threshold, max_threshold], plus max_threshold.
Scan them from high to low. At a candidate δ:
  * fewer than ``min_audits`` audits in A(δ): no verdict yet, keep scanning;
  * otherwise the verdict is  UCB(KL of A(δ)) ≤ target_kl  (pass) or not (fail).
The scan stops at the first failing verdict; δ is the lowest candidate reached before it, provided
at least one candidate had a real (passing) verdict. If none had (no evidence yet), or the very first
verdict fails (even the top band breaks the budget), δ = CLOSED_THRESHOLD: no similarity hit is
served, only exact repeats of a state, until the shadow audits of near-misses (free: the LLM was
called for the miss anyway) show that some band meets the target. Starting closed rather than at
max_threshold keeps the budget from the first lookup, at the price of the ~min_audits misses the
first verdict needs. Since A(δ) only grows as δ falls, the candidates
without a verdict are all at the top, so the chosen δ always has a passing verdict of its own.

Why this rule, and not "the lowest δ that passes":
  * A lower δ means more hits and fewer LLM calls, so the lowest admissible δ is the goal; the
    UCB rather than the mean makes the target hold with the stated confidence, not merely on average.
  * Stopping at the first failure makes the choice monotone-safe: every threshold between the chosen
    one and the top that has enough data passes. The budget is then broken only if the one test at the
    first candidate past the true boundary passes by chance, i.e. at the nominal level 1 − confidence.
    "Any passing δ" would be a maximum over hundreds of correlated tests (a lucky dip), and it can
    pick a δ below a band of bad similarities whose KL is diluted by many good audits further down:
    the average meets the target only while the hit stream keeps that mix, which changes as soon as the
    cache serves those low similarities (entries, visitation and the agent all move).
  * F6 predicts KL falling with δ; a band that fails above one that passes contradicts it (different
    kinds of states at different similarities), and then the safe reading is the higher threshold.

Weights. Refresh audits of hits are drawn with probability r, so each stands for 1/r hits (weight
1/r); shadow audits of misses are taken on every near-miss (weight 1). The UCB uses the weighted
mean, the weighted variance and Kish's effective sample size n_eff = (Σw)²/Σw², so the inverse-
probability weights keep the estimate unbiased and their spread widens the bound honestly.

How exact the confidence is. The t bound is exact for normal KLs and close for symmetric noise
(measured: the target was exceeded in 4–6 % of 300 synthetic runs at 0.95), but audited KLs are
skewed (mostly ~0.01 nats, a few of 1–3 nats), and there a t bound under-covers: on exponential and
lognormal KLs with ~80 audits it missed 9 % and 12 % of the time, and lognormal still ~9 % at 300.
Read the confidence as nominal. What keeps the served KL low in practice is the scan's monotone
stopping rule and the closed start: the runs measured so far served well under their targets.

Per entry (``per_entry=True``, like vCache's per-embedding thresholds): an entry with at least
``min_entry_audits`` audits of its own gets the same scan over its own audits (``min_entry_audits``
as the verdict size, never below min_threshold). If its scan hit a failing verdict, its own δ stands
(higher than the global one for a bad entry, lower for one that is good further down); if its
evidence never failed, it gets min(own δ, global δ): an entry whose audits are all fine (e.g. only
exact-text refreshes at similarity 1) must not become stricter than the global threshold.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from priorcache.errors import ConfigError
from priorcache.validation import config_from_dict, is_int, is_number

# Bounded evidence. The KL of hits at a given similarity drifts: Q and α change the posteriors,
# refreshes replace entries, the agent visits other states. The last 4096 audits are several
# hundred episodes of refresh + shadow audits, plenty for a UCB at 0.95, while old evidence ages out;
# the bound also keeps a recompute (a sort and a vector of t quantiles) well under a few ms and the
# saved state small.
MAX_AUDITS = 4096
# An entry's own recent behaviour: 64 audits give a tight per-entry UCB, and entries × 64 stays small.
MAX_ENTRY_AUDITS = 64
# Safety net if the cache forgets to call forget() on eviction: the least recently audited entries go.
MAX_ENTRIES = 65536
# Cosines from float32 embeddings can overshoot ±1 by rounding; KLs computed in log space can be -1e-17.
_SIM_TOLERANCE = 1e-3
_KL_TOLERANCE = 1e-9

STATE_FORMAT = "kl-budget/1"
# δ without a passing verdict: no similarity hit is served (exact repeats still are).
CLOSED_THRESHOLD = 1.0


@dataclass(frozen=True)
class KLBudgetConfig:
    """Parameters of the ``kl-budget`` mode; every value is checked on construction."""

    # Nats of KL(π̃‖π) per served prior. Same-candidate-set hits on TextWorld measure 0.008–0.06 (F7),
    # so 0.05 lets the cache serve most near-duplicates while refusing cross-state hits (0.6–2.9).
    target_kl: float = 0.05
    confidence: float = 0.95
    per_entry: bool = False
    # 20 audits before a threshold may be chosen: below that the t quantile (and a heavy-tailed KL
    # sample's variance) makes the UCB too wide to mean much, and one lucky run would move δ.
    min_audits: int = 20
    # An entry sees few audits; 5 is the least that gives a t bound with 4 degrees of freedom.
    min_entry_audits: int = 5
    # The controller never goes below this cosine (MiniLM puts unrelated room descriptions ~0.3–0.6);
    # the cache also takes shadow audits only for misses at or above it.
    min_threshold: float = 0.5
    # The highest δ a verdict can choose: near-duplicates only. Before any verdict the cache is closed.
    max_threshold: float = 0.99

    def __post_init__(self) -> None:
        if not is_number(self.target_kl) or not math.isfinite(self.target_kl) or self.target_kl <= 0:
            raise ConfigError(f"target_kl must be a finite number of nats > 0, got {self.target_kl!r}")
        if not is_number(self.confidence) or not 0.5 < self.confidence < 1.0:
            raise ConfigError(f"confidence must be a number in (0.5, 1), got {self.confidence!r}")
        if not isinstance(self.per_entry, bool):
            raise ConfigError(f"per_entry must be a bool, got {self.per_entry!r}")
        # A t bound needs an effective sample size of at least 2.
        if not is_int(self.min_audits) or self.min_audits < 2:
            raise ConfigError(f"min_audits must be an integer ≥ 2, got {self.min_audits!r}")
        if not is_int(self.min_entry_audits) or self.min_entry_audits < 2:
            raise ConfigError(f"min_entry_audits must be an integer ≥ 2, got {self.min_entry_audits!r}")
        for name in ("min_threshold", "max_threshold"):
            value = getattr(self, name)
            if not is_number(value) or not -1.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be a cosine in [-1, 1], got {value!r}")
        if not self.min_threshold < self.max_threshold:
            raise ConfigError(
                f"min_threshold ({self.min_threshold}) must be below max_threshold ({self.max_threshold})"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KLBudgetConfig:
        """Build from a mapping, refusing keys that are not parameters (a typo must not be ignored)."""
        return config_from_dict(cls, data, "kl-budget")


# ---------------------------------------------------------------------------------------------
# The upper confidence bound
# ---------------------------------------------------------------------------------------------


def _ucb_from_sums(
    sw: np.ndarray, sw2: np.ndarray, swx: np.ndarray, swxx: np.ndarray, confidence: float
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and one-sided Student-t UCB from Σw, Σw², Σw·x, Σw·x² (vectorised).

    Kish: n_eff = (Σw)²/Σw². Variance with reliability weights, s² = Σw(x−m)² / (Σw − Σw²/Σw),
    which is the usual 1/(n−1) estimate for equal weights; the standard error is s/√n_eff and the
    quantile t_{confidence, n_eff−1}. n_eff < 2 gives +inf: no spread can be estimated.
    Callers pass x shifted by a reference value (the variance is shift-invariant), so that Σw·x²
    minus (Σw·x)²/Σw does not cancel catastrophically; they add the shift back to the mean.
    """
    sw, sw2, swx, swxx = (np.asarray(a, dtype=np.float64) for a in (sw, sw2, swx, swxx))
    mean = swx / sw
    n_eff = sw * sw / sw2
    ok = n_eff >= 2.0 - 1e-9
    ss = np.maximum(swxx - swx * swx / sw, 0.0)
    denom = np.where(ok, sw - sw2 / sw, 1.0)
    var = ss / denom
    se = np.sqrt(var / n_eff)
    df = np.where(ok, np.maximum(n_eff - 1.0, 1.0), 1.0)
    ucb = np.where(ok, mean + stats.t.ppf(confidence, df) * se, np.inf)
    return mean, ucb


def _check_confidence(confidence: Any) -> float:
    if not is_number(confidence) or not 0.5 < confidence < 1.0:
        raise ConfigError(f"confidence must be a number in (0.5, 1), got {confidence!r}")
    return float(confidence)


def kl_ucb(
    kls: Sequence[float] | np.ndarray, weights: Sequence[float] | np.ndarray | None = None, confidence: float = 0.95
) -> float:
    """One-sided upper confidence bound on the (weighted) mean KL: Student-t, Kish n_eff.

    Equal weights give the textbook bound mean + t_{conf, n−1}·s/√n. Returns +inf when n_eff < 2
    (no spread can be estimated). NaN/inf/negative KLs and non-positive weights raise ConfigError.
    """
    confidence = _check_confidence(confidence)
    x = np.asarray(kls, dtype=np.float64)
    if x.ndim != 1:
        raise ConfigError(f"kls must be a 1-D sequence, got shape {x.shape}")
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise ConfigError("kls must be finite and ≥ 0 (a KL divergence), got NaN, ±inf or a negative value")
    if weights is None:
        w = np.ones_like(x)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != x.shape:
            raise ConfigError(f"weights {w.shape} must align with kls {x.shape}")
        if not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise ConfigError("weights must be finite and > 0 (1 / sampling probability)")
    if x.size == 0:
        return math.inf
    ref = float(np.average(x, weights=w))
    xc = x - ref
    _, ucb = _ucb_from_sums(w.sum(), (w * w).sum(), (w * xc).sum(), (w * xc * xc).sum(), confidence)
    return float(ucb) + ref


# ---------------------------------------------------------------------------------------------
# The threshold scan
# ---------------------------------------------------------------------------------------------


def _scan(
    sims: np.ndarray, kls: np.ndarray, weights: np.ndarray, config: KLBudgetConfig, min_count: int
) -> tuple[float | None, bool]:
    """The module docstring's rule on one body of evidence.

    Returns (δ, refuted): δ is None when no candidate had a verdict (the caller falls back), and
    ``refuted`` says whether the scan stopped at a failing verdict.
    """
    if sims.size < min_count:  # A(δ) ⊆ all audits: no candidate can have a verdict
        return None, False
    order = np.argsort(-sims, kind="stable")
    s, x, w = sims[order], kls[order], weights[order]
    ref = float(np.average(x, weights=w))
    xc = x - ref
    cw, cw2 = np.cumsum(w), np.cumsum(w * w)
    cwx, cwxx = np.cumsum(w * xc), np.cumsum(w * xc * xc)

    in_range = s[(s >= config.min_threshold) & (s <= config.max_threshold)]
    candidates = np.unique(np.append(in_range, config.max_threshold))[::-1]  # high to low
    # |A(δ)| = number of audits with sim ≥ δ; s is descending, so -s is ascending.
    counts = np.searchsorted(-s, -candidates, side="right")
    verdict = counts >= min_count
    if not verdict.any():
        return None, False
    idx = np.maximum(counts - 1, 0)
    _, ucb = _ucb_from_sums(cw[idx], cw2[idx], cwx[idx], cwxx[idx], config.confidence)
    ucb = ucb + ref
    failing = verdict & ~(ucb <= config.target_kl)
    first_fail = int(np.argmax(failing)) if failing.any() else candidates.size
    reached = verdict[:first_fail]
    if not reached.any():  # the first verdict already fails: even the top band breaks the budget
        return CLOSED_THRESHOLD, True
    # counts grow as δ falls, so the lowest candidate reached has a (passing) verdict of its own.
    return float(candidates[first_fail - 1]), first_fail < candidates.size


def _as_arrays(audits: Sequence[tuple[float, float, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not audits:
        empty = np.zeros(0, dtype=np.float64)
        return empty, empty, empty
    arr = np.asarray(audits, dtype=np.float64)
    return arr[:, 0], arr[:, 1], arr[:, 2]


class KLBudgetController:
    """Keeps the audits and the threshold of the ``kl-budget`` mode (docs/design.md §3, F5/F6)."""

    def __init__(self, config: KLBudgetConfig) -> None:
        if not isinstance(config, KLBudgetConfig):
            raise ConfigError(f"config must be a KLBudgetConfig, got {type(config).__name__}")
        self.config = config
        # (similarity, kl, weight) triples, oldest first.
        self._audits: deque[tuple[float, float, float]] = deque(maxlen=MAX_AUDITS)
        self._entries: dict[int, deque[tuple[float, float, float]]] = {}
        # Lazy recompute: observe() only appends and marks dirty, threshold() rescans when needed.
        self._dirty = True
        self._global = CLOSED_THRESHOLD
        # entry → (own δ or None without a verdict, refuted); recomputed for dirty entries only.
        self._entry_scan: dict[int, tuple[float | None, bool]] = {}
        self._dirty_entries: set[int] = set()

    # -- input -----------------------------------------------------------------------------------

    @staticmethod
    def _check_audit(similarity: Any, kl: Any, weight: Any) -> tuple[float, float, float]:
        if not is_number(similarity) or not math.isfinite(similarity) or abs(similarity) > 1.0 + _SIM_TOLERANCE:
            raise ConfigError(f"similarity must be a cosine in [-1, 1], got {similarity!r}")
        if not is_number(kl) or not math.isfinite(kl) or kl < -_KL_TOLERANCE:
            raise ConfigError(f"kl must be a finite KL divergence ≥ 0 (nats), got {kl!r}")
        if not is_number(weight) or not math.isfinite(weight) or weight <= 0:
            raise ConfigError(f"weight must be a finite number > 0 (1 / sampling probability), got {weight!r}")
        return min(max(float(similarity), -1.0), 1.0), max(float(kl), 0.0), float(weight)

    @staticmethod
    def _check_entry(entry_id: Any) -> int:
        if not is_int(entry_id):
            raise ConfigError(f"entry_id must be an integer, got {entry_id!r}")
        return int(entry_id)

    def observe(self, similarity: float, kl: float, entry_id: int | None = None, weight: float = 1.0) -> None:
        """Record one audit: the KL a served (or would-be-served) prior had at that similarity.

        ``weight`` is 1 / the probability the audit was drawn with: 1/r for refresh audits of hits,
        1 for shadow audits of near-misses (every such miss is audited). O(1): the scan is lazy.
        """
        audit = self._check_audit(similarity, kl, weight)
        entry = None if entry_id is None else self._check_entry(entry_id)
        self._audits.append(audit)
        self._dirty = True
        if entry is not None and self.config.per_entry:
            own = self._entries.pop(entry, None)  # re-insert: dict order = least recently audited first
            if own is None:
                own = deque(maxlen=MAX_ENTRY_AUDITS)
                if len(self._entries) >= MAX_ENTRIES:
                    self.forget(next(iter(self._entries)))
            own.append(audit)
            self._entries[entry] = own
            self._dirty_entries.add(entry)

    def forget(self, entry_id: int) -> None:
        """Drop an entry's own evidence (evicted, or its key now stands for another state).

        The global audits stay: they describe how KL grows with similarity, whichever entry served.
        """
        entry = self._check_entry(entry_id)
        self._entries.pop(entry, None)
        self._entry_scan.pop(entry, None)
        self._dirty_entries.discard(entry)

    # -- output ----------------------------------------------------------------------------------

    def _global_threshold(self) -> float:
        if self._dirty:
            sims, kls, ws = _as_arrays(self._audits)
            chosen, _ = _scan(sims, kls, ws, self.config, self.config.min_audits)
            self._global = CLOSED_THRESHOLD if chosen is None else chosen
            self._dirty = False
        return self._global

    def _entry_result(self, entry: int) -> tuple[float | None, bool]:
        if entry in self._dirty_entries or entry not in self._entry_scan:
            sims, kls, ws = _as_arrays(self._entries.get(entry, ()))
            self._entry_scan[entry] = _scan(sims, kls, ws, self.config, self.config.min_entry_audits)
            self._dirty_entries.discard(entry)
        return self._entry_scan[entry]

    def _own_threshold(self, entry: int, global_threshold: float) -> float | None:
        """The entry's own δ (module docstring, "Per entry"), None without enough own audits."""
        if not self.config.per_entry or entry not in self._entries:
            return None
        own, refuted = self._entry_result(entry)
        if own is None:
            return None
        return own if refuted else min(own, global_threshold)

    def threshold(self, entry_id: int | None = None) -> float:
        """The global δ, or that entry's own δ when per_entry and it has ≥ min_entry_audits audits."""
        global_threshold = self._global_threshold()
        if entry_id is None:
            return global_threshold
        own = self._own_threshold(self._check_entry(entry_id), global_threshold)
        return global_threshold if own is None else own

    def summary(self) -> dict[str, Any]:
        """Plain-JSON numbers for summary.json: the threshold and what the audits say about it."""
        delta = self._global_threshold()
        sims, kls, ws = _as_arrays(self._audits)
        mask = sims >= delta
        achieved = achieved_ucb = None
        if mask.any():
            achieved = float(np.average(kls[mask], weights=ws[mask]))
            ucb = kl_ucb(kls[mask], ws[mask], self.config.confidence)
            achieved_ucb = ucb if math.isfinite(ucb) else None  # JSON has no inf
        own = [t for e in list(self._entries) if (t := self._own_threshold(e, delta)) is not None]
        return {
            "target_kl": float(self.config.target_kl),
            "confidence": float(self.config.confidence),
            "threshold": delta,
            "audits": int(sims.size),
            "audits_at_threshold": int(mask.sum()),
            "achieved_kl": achieved,
            "achieved_kl_ucb": achieved_ucb,
            "entries_with_own_threshold": len(own),
            "mean_own_threshold": float(np.mean(own)) if own else None,
            "min_own_threshold": float(np.min(own)) if own else None,
        }

    # -- persistence -----------------------------------------------------------------------------

    @staticmethod
    def _columns(audits: Sequence[tuple[float, float, float]]) -> dict[str, list[float]]:
        return {"similarity": [a[0] for a in audits], "kl": [a[1] for a in audits], "weight": [a[2] for a in audits]}

    def to_dict(self) -> dict[str, Any]:
        """The evidence as plain JSON (audits as column lists), so a saved cache keeps it."""
        return {
            "format": STATE_FORMAT,
            "config": self.config.to_dict(),
            "audits": self._columns(self._audits),
            "entries": {str(e): self._columns(a) for e, a in self._entries.items()},
        }

    def _load_columns(self, data: Any, where: str) -> list[tuple[float, float, float]]:
        if not isinstance(data, Mapping) or set(data) != {"similarity", "kl", "weight"}:
            raise ConfigError(f"{where} must be a mapping with exactly the lists 'similarity', 'kl', 'weight'")
        cols = [data["similarity"], data["kl"], data["weight"]]
        if not all(isinstance(c, list) for c in cols) or len({len(c) for c in cols}) != 1:
            raise ConfigError(f"{where}: 'similarity', 'kl' and 'weight' must be lists of one length")
        try:
            return [self._check_audit(s, k, w) for s, k, w in zip(*cols)]
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def load_dict(self, data: Mapping[str, Any]) -> None:
        """Replace the evidence with a saved one (from ``to_dict``); damaged state → ConfigError.

        The controller keeps its own config: the audits describe the cache, not the target, so a
        saved cache can warm-start a run with another target or confidence. The saved config is
        still validated, as a check that the state is whole. With ``per_entry=False`` the saved
        per-entry audits are dropped (they would never be used).
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a kl-budget state must be a mapping, got {type(data).__name__}")
        expected = {"format", "config", "audits", "entries"}
        if set(data) != expected:
            raise ConfigError(
                f"a kl-budget state needs exactly the keys {sorted(expected)}, got {sorted(map(str, data))}"
            )
        if data["format"] != STATE_FORMAT:
            raise ConfigError(f"kl-budget state format {data['format']!r} is not {STATE_FORMAT!r}")
        KLBudgetConfig.from_dict(data["config"])
        audits = self._load_columns(data["audits"], "kl-budget state 'audits'")
        if not isinstance(data["entries"], Mapping):
            raise ConfigError("kl-budget state 'entries' must be a mapping entry id → audits")
        entries: dict[int, deque[tuple[float, float, float]]] = {}
        for key, cols in data["entries"].items():
            try:
                entry = int(key)
            except (TypeError, ValueError):
                raise ConfigError(f"kl-budget state: entry id {key!r} is not an integer") from None
            entries[entry] = deque(self._load_columns(cols, f"kl-budget state entry {key}"), maxlen=MAX_ENTRY_AUDITS)
        # Everything validated: only now replace the evidence, so a failed load leaves it untouched.
        self._audits = deque(audits, maxlen=MAX_AUDITS)
        self._entries = entries if self.config.per_entry else {}
        self._entry_scan.clear()
        self._dirty_entries = set(self._entries)
        self._dirty = True
