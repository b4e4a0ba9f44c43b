"""The meta-optimiser of the ``adaptive`` cache mode (docs/design.md §3): θ = (log K, logit δ, logit r) by Adam.

Every ``update_every`` lookups closes a window. Over it the cache has recorded, per lookup, the
similarity of the nearest same-prompt entry and whether that entry knew enough candidates to be
served; per audit (refreshes and shadow audits of near-misses), the similarity and the measured
KL(π̃‖π); from the agent, the rewards and the TD errors of hit vs. miss transitions. The objective is

    J(θ) = R̂ − λ_q·q − λ_κ·(1 + g_TD)·κ

with R̂ the return per step (normalised by its spread across windows), q the LLM queries per lookup,
κ the expected KL per lookup of the served priors (F5 "under state visitation"), and g_TD ≥ 0
the excess TD error of transitions that acted on a cached prior over those that acted on a fresh
one (our design: when cached priors make the critic's targets worse, their KL is costlier).

Gradients (our design where the paper says only "surrogate gradients"):
- **Query and KL terms, analytic.** A lookup at similarity s counts as a hit with the soft
  probability h(s) = σ((s − δ)/T). A hit without refresh saves a full call but pays a partial call
  with the window's observed probability π_partial, and serves a prior whose KL is predicted by the
  F6-shaped fit k̂(s) = a + b·√(2(1 − s)) on all recent audits. So
      q(δ, r) = 1 − mean_i[h_i·c_i]·(1 − r)·(1 − π_partial),   κ(δ, r) = mean_i[h_i·c_i·k̂(s_i)]·(1 − r),
  c_i = 1 when the entry covered enough candidates to be served at all. Both are smooth in δ and r.
- **Return term, antithetic.** Windows come in pairs: θ + c·Δ, then θ − c·Δ, Δ a random sign per
  coordinate; (R̂₊ − R̂₋)/(2c)·Δ estimates ∇R̂ (SPSA). K has no smooth surrogate (it acts through
  evictions), so its whole gradient is antithetic on the observed J, and only while the cache evicts:
  a capacity nobody reaches changes nothing and is left alone.
After each pair: one Adam ascent step on θ, clipped to the bounds. Shadow audits (misses whose
nearest entry lay just under δ, so the LLM was called anyway) give the k̂ fit data below the
current δ at no extra LLM cost, which is what lets δ move down safely.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from priorcache.errors import ConfigError
from priorcache.prior.divergence import f6_distance
from priorcache.validation import config_from_dict, is_int, is_number


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def _sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


@dataclass(frozen=True)
class MetaConfig:
    """Settings of the meta-optimiser; every value is checked on construction."""

    # N: one TextWorld/BabyAI episode is ~50 lookups. A 10-episode run then has 10 windows and 5
    # Adam steps; larger windows average more but leave a run of that length almost unadapted.
    update_every: int = 50
    query_weight: float = 1.0  # λ_q per LLM query per lookup
    # λ_κ: with λ_q = 1, an expected KL of 0.05 nats per decision costs as much as querying on every
    # decision; δ settles where the predicted KL of a marginal hit is worth the query it saves.
    kl_weight: float = 20.0
    # λ_R per spread of the window return. SPSA over 100-step windows is noisy (about √2/2c ≈ 7
    # spreads per θ unit per pair), so it nudges rather than steers: at 0.01 its noise stays below
    # the analytic terms, and on a stream with pure-noise returns δ settles within ~0.03 of its optimum.
    return_weight: float = 0.01
    soft_hit_temperature: float = 0.02  # T, in cosine: the soft hit goes from 12 % to 88 % over ±0.04
    # Adam step in θ units: logit δ moves ~0.2 a step, δ ±0.015 near 0.92, so five steps can cover
    # most of the bounds' range while the jitter around an optimum stays near ±0.02.
    learning_rate: float = 0.2
    perturbation: float = 0.1  # c of the antithetic pairs, in θ units
    capacity_bounds: tuple[int, int] = (64, 8192)
    threshold_bounds: tuple[float, float] = (0.80, 0.99)
    refresh_bounds: tuple[float, float] = (0.02, 0.25)
    # Until this many audits exist, the KL fit leans on a cautious prior slope (nats per unit of
    # embedding distance): 0.25 predicts 0.1 nats at cosine 0.92, so δ does not drop on no evidence.
    prior_kl_slope: float = 0.25
    prior_audits: int = 10

    def __post_init__(self) -> None:
        if not is_int(self.update_every) or self.update_every < 2:
            raise ConfigError(f"meta update_every must be an integer ≥ 2 lookups, got {self.update_every!r}")
        for name in ("query_weight", "kl_weight", "return_weight", "prior_kl_slope"):
            value = getattr(self, name)
            if not is_number(value) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"meta {name} must be a finite number ≥ 0, got {value!r}")
        for name in ("soft_hit_temperature", "learning_rate", "perturbation"):
            value = getattr(self, name)
            if not is_number(value) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"meta {name} must be a finite number > 0, got {value!r}")
        if not is_int(self.prior_audits) or self.prior_audits < 0:
            raise ConfigError(f"meta prior_audits must be an integer ≥ 0, got {self.prior_audits!r}")
        self._check_bounds("capacity_bounds", 1, math.inf, integer=True)
        self._check_bounds("threshold_bounds", 0.0, 1.0)
        self._check_bounds("refresh_bounds", 0.0, 1.0)

    def _check_bounds(self, name: str, lo: float, hi: float, integer: bool = False) -> None:
        value = getattr(self, name)
        ok = (
            isinstance(value, (tuple, list))
            and len(value) == 2
            and all(is_int(v) if integer else is_number(v) for v in value)
        )
        # logit needs the open interval; log K needs K ≥ 1
        if ok:
            a, b = value
            ok = (a >= lo if integer else a > lo) and (b <= hi if integer else b < hi) and a < b
        if not ok:
            kind = "integers" if integer else "numbers"
            raise ConfigError(
                f"meta {name} must be two {kind} (low, high) with low < high inside "
                f"{'[' if integer else '('}{lo}, {hi}{']' if integer else ')'}, got {value!r}"
            )
        object.__setattr__(self, name, tuple(value))  # JSON gives lists back

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetaConfig:
        return config_from_dict(cls, data, "meta")


@dataclass
class CacheParams:
    """The cache's live (K, δ, r)."""

    capacity: int
    similarity_threshold: float
    refresh_rate: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_kl_model(
    similarities: Sequence[float], kls: Sequence[float], weights: Sequence[float], prior_slope: float, prior_audits: int
) -> tuple[float, float]:
    """(a, b) ≥ 0 of k̂(s) = a + b·√(2(1 − s)) by weighted least squares, shrunk towards (0, prior_slope).

    The shrinkage adds ``prior_audits`` pseudo-audits on the prior line, spread over the distance
    range seen, so a handful of lucky audits cannot declare low similarities safe."""
    d = f6_distance(similarities)
    k = np.asarray(kls, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if prior_audits > 0:
        span = max(float(d.max()) if d.size else 0.0, 0.4)
        d_prior = np.linspace(0.0, span, prior_audits)
        w_scale = float(w.mean()) if w.size else 1.0
        d = np.concatenate([d, d_prior])
        k = np.concatenate([k, prior_slope * d_prior])
        w = np.concatenate([w, np.full(prior_audits, w_scale)])
    if d.size == 0 or w.sum() <= 0:
        return 0.0, prior_slope
    sw = np.sqrt(w)
    design = np.stack([np.ones_like(d), d], axis=1) * sw[:, None]
    (a, b), *_ = np.linalg.lstsq(design, k * sw, rcond=None)
    # Non-negative least squares over two parameters: try each boundary when the free fit leaves it.
    if b < 0:
        a, b = float(np.average(k, weights=w)), 0.0
    if a < 0:
        denom = float(np.sum(w * d * d))
        a, b = 0.0, (float(np.sum(w * d * k)) / denom if denom > 0 else prior_slope)
    return float(max(a, 0.0)), float(max(b, 0.0))


def check_theta(theta: Any) -> np.ndarray:
    """A saved θ = (log K, logit δ, logit r) as an array; ConfigError unless three finite numbers."""
    if (
        not isinstance(theta, (list, tuple))
        or len(theta) != 3
        or not all(is_number(t) and math.isfinite(t) for t in theta)
    ):
        raise ConfigError(f"a saved meta-optimiser θ must be three finite numbers, got {theta!r}")
    return np.asarray(theta, dtype=np.float64)


def _vector(values: Any, size: int = 3) -> np.ndarray:
    """``values`` as a finite float vector of ``size`` entries (ValueError otherwise)."""
    out = np.asarray(values, dtype=np.float64)
    if out.shape != (size,) or not np.isfinite(out).all():
        raise ValueError(f"expected {size} finite numbers, got {values!r:.80}")
    return out


class _Adam:
    def __init__(self, dim: int, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.m = np.zeros(dim)
        self.v = np.zeros(dim)
        self.t = 0

    def ascent(self, grad: np.ndarray) -> np.ndarray:
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * grad
        self.v = self.beta2 * self.v + (1 - self.beta2) * grad * grad
        m_hat = self.m / (1 - self.beta1**self.t)
        v_hat = self.v / (1 - self.beta2**self.t)
        return self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


class MetaOptimiser:
    """θ = (log K, logit δ, logit r), windows of lookups, antithetic pairs, Adam (module docstring).

    The cache calls ``record_lookup`` once per lookup, ``record_audit`` per audit and, from the agent,
    ``record_reward`` / ``record_td``. ``record_lookup`` returns the update record when a window
    closed; ``params`` are the (perturbed) parameters the cache must use from then on."""

    def __init__(self, config: MetaConfig, initial: CacheParams, seed: int | None = 0) -> None:
        self.config = config
        lo_k, hi_k = config.capacity_bounds
        lo_d, hi_d = config.threshold_bounds
        lo_r, hi_r = config.refresh_bounds
        # A start outside the bounds is clipped onto them (CacheConfig refuses one for the cache).
        self._lower = np.array([math.log(lo_k), _logit(lo_d), _logit(lo_r)])
        self._upper = np.array([math.log(hi_k), _logit(hi_d), _logit(hi_r)])
        start = [
            math.log(max(1, initial.capacity)),
            _logit(min(max(initial.similarity_threshold, 1e-6), 1 - 1e-6)),
            _logit(min(max(initial.refresh_rate, 1e-6), 1 - 1e-6)),
        ]
        self.theta = np.clip(np.array(start), self._lower, self._upper)
        self._rng = np.random.default_rng(seed)
        self._adam = _Adam(3, config.learning_rate)
        self._direction = np.zeros(3)
        self._sign = 1.0  # +1: first window of a pair, −1: second
        self._pair_returns: list[float] = []
        self._pair_objectives: list[float] = []
        self._pair_grads: list[np.ndarray] = []
        self._pair_evicted = False
        self._return_spread: float | None = None
        self._audit_sims: list[float] = []
        self._audit_kls: list[float] = []
        self._audit_weights: list[float] = []
        self.updates = 0
        self._reset_window()
        self._start_pair()

    # --- recording (called by the cache under its lock) ---------------------------------------
    def _reset_window(self) -> None:
        self._sims: list[float] = []
        self._served_ok: list[bool] = []
        self._queries = 0
        self._hits = 0
        self._partial_hits = 0
        self._evictions = 0
        self._window_audit_kl: list[float] = []
        self._window_audit_w: list[float] = []
        self._rewards = 0.0
        self._reward_steps = 0
        self._td: dict[bool, list[float]] = {True: [0.0, 0], False: [0.0, 0]}  # hit → [sum, count]

    def record_lookup(
        self,
        similarity: float | None,
        servable: bool,
        hit: bool,
        full_call: bool,
        partial_call: bool,
        evictions: int = 0,
    ) -> dict[str, Any] | None:
        """One lookup: the nearest entry's similarity (None: the partition was empty), whether that
        entry covered enough candidates to be served, what happened, and evictions it caused."""
        self._sims.append(-1.0 if similarity is None else float(similarity))
        self._served_ok.append(bool(servable))
        self._queries += int(full_call) + int(partial_call)
        self._hits += int(hit)
        self._partial_hits += int(hit and partial_call)
        self._evictions += evictions
        return self._close_window() if len(self._sims) >= self.config.update_every else None

    def record_audit(self, similarity: float, kl: float, weight: float, served: bool) -> None:
        """One F5 audit; ``served`` audits (refreshes of hits) also measure the window's realised κ."""
        self._audit_sims.append(float(similarity))
        self._audit_kls.append(float(kl))
        self._audit_weights.append(float(weight))
        if len(self._audit_sims) > 4096:  # the fit wants recent behaviour, and memory stays bounded
            del self._audit_sims[:1024], self._audit_kls[:1024], self._audit_weights[:1024]
        if served:
            self._window_audit_kl.append(float(kl))
            self._window_audit_w.append(float(weight))

    def record_reward(self, reward: float) -> None:
        self._rewards += float(reward)
        self._reward_steps += 1

    def record_td(self, hit: bool, td_sum: float, count: int) -> None:
        """Summed |TD error| of ``count`` replayed transitions that acted on a cached (hit) or fresh prior."""
        acc = self._td[bool(hit)]
        acc[0] += float(td_sum)
        acc[1] += int(count)

    # --- the update ---------------------------------------------------------------------------
    @property
    def params(self) -> CacheParams:
        """The parameters in force: θ plus this window's antithetic perturbation."""
        return self._params_of(self._applied_theta())

    def load_theta(self, theta: Sequence[float]) -> None:
        """Continue from a saved θ (clipped to this optimiser's bounds); a damaged θ → ConfigError."""
        self.theta = np.clip(check_theta(theta), self._lower, self._upper)

    # Run-time state: what a run's checkpoint keeps beside θ, so that a resumed run (or a seed
    # started afresh) perturbs, windows and steps exactly as an uninterrupted one.
    _FLOAT_LISTS = (
        "_pair_returns",
        "_pair_objectives",
        "_audit_sims",
        "_audit_kls",
        "_audit_weights",
        "_sims",
        "_window_audit_kl",
        "_window_audit_w",
    )
    _COUNTS = ("updates", "_queries", "_hits", "_partial_hits", "_evictions", "_reward_steps")

    def runtime_state(self) -> dict[str, Any]:
        """θ, Adam's moments, the pair's perturbation and results, the open window and the RNG, as JSON."""
        return {
            "theta": self.theta.tolist(),
            "rng": self._rng.bit_generator.state,
            "adam": {"m": self._adam.m.tolist(), "v": self._adam.v.tolist(), "t": self._adam.t},
            "direction": self._direction.tolist(),
            "sign": self._sign,
            "pair_grads": [g.tolist() for g in self._pair_grads],
            "pair_evicted": self._pair_evicted,
            "return_spread": self._return_spread,
            "rewards": self._rewards,
            "served_ok": list(self._served_ok),
            "td": [list(self._td[True]), list(self._td[False])],
            **{name: list(getattr(self, name)) for name in self._FLOAT_LISTS},
            **{name: getattr(self, name) for name in self._COUNTS},
        }

    def load_runtime_state(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`runtime_state`; ConfigError, and nothing changed, when it does not fit."""
        try:
            rng = np.random.default_rng()
            rng.bit_generator.state = state["rng"]
            adam = _Adam(3, self.config.learning_rate)
            adam.m, adam.v, adam.t = _vector(state["adam"]["m"]), _vector(state["adam"]["v"]), state["adam"]["t"]
            counts = {name: state[name] for name in self._COUNTS}
            if not all(is_int(v) and v >= 0 for v in [adam.t, *counts.values()]):
                raise ValueError("counts must be non-negative integers")
            spread = state["return_spread"]
            if spread is not None and not is_number(spread):
                raise ValueError("return_spread must be a number or null")
            served_ok, td = state["served_ok"], state["td"]
            if not (isinstance(served_ok, list) and all(isinstance(b, bool) for b in served_ok)):
                raise ValueError("served_ok must be a list of booleans")
            if not isinstance(state["pair_evicted"], bool) or not is_number(state["sign"]):
                raise ValueError("bad pair_evicted or sign")
            new = {
                "theta": np.clip(check_theta(state["theta"]), self._lower, self._upper),
                "_rng": rng,
                "_adam": adam,
                "_direction": _vector(state["direction"]),
                "_sign": float(state["sign"]),
                "_pair_grads": [_vector(g) for g in state["pair_grads"]],
                "_pair_evicted": state["pair_evicted"],
                "_return_spread": None if spread is None else float(spread),
                "_rewards": float(state["rewards"]),
                "_served_ok": list(served_ok),
                "_td": {True: [float(td[0][0]), int(td[0][1])], False: [float(td[1][0]), int(td[1][1])]},
                **{name: [float(x) for x in state[name]] for name in self._FLOAT_LISTS},
                **counts,
            }
        except (KeyError, IndexError, TypeError, ValueError, ConfigError) as e:
            raise ConfigError(f"damaged meta-optimiser state: {type(e).__name__}: {e}") from None
        self.__dict__.update(new)

    @property
    def center(self) -> CacheParams:
        """The parameters at θ itself, without the perturbation: what the optimiser believes best."""
        return self._params_of(self.theta)

    def _applied_theta(self) -> np.ndarray:
        return np.clip(self.theta + self._sign * self.config.perturbation * self._direction, self._lower, self._upper)

    def _params_of(self, theta: np.ndarray) -> CacheParams:
        # Clipped again after the transform: sigmoid(logit(b)) can land an ulp outside b.
        (k_lo, k_hi), (d_lo, d_hi), (r_lo, r_hi) = (
            self.config.capacity_bounds,
            self.config.threshold_bounds,
            self.config.refresh_bounds,
        )
        return CacheParams(
            capacity=min(max(int(round(math.exp(theta[0]))), k_lo), k_hi),
            similarity_threshold=min(max(float(_sigmoid(theta[1])), d_lo), d_hi),
            refresh_rate=min(max(float(_sigmoid(theta[2])), r_lo), r_hi),
        )

    def _start_pair(self) -> None:
        # K is perturbed only while it binds (the last pair evicted); otherwise its coordinate rests.
        self._direction = self._rng.choice([-1.0, 1.0], size=3)
        if not self._pair_evicted:
            self._direction[0] = 0.0
        self._sign = 1.0
        self._pair_returns, self._pair_objectives, self._pair_grads = [], [], []
        self._pair_evicted = False

    def td_gap(self) -> float:
        """g_TD = max(0, mean|TD| on hits / mean|TD| on misses − 1), capped at 2; 0 without both kinds."""
        (hit_sum, hit_n), (miss_sum, miss_n) = self._td[True], self._td[False]
        if hit_n == 0 or miss_n == 0 or miss_sum <= 0:
            return 0.0
        return float(min(2.0, max(0.0, (hit_sum / hit_n) / (miss_sum / miss_n) - 1.0)))

    def surrogate(self, similarity_threshold: float, refresh_rate: float) -> dict[str, float]:
        """q, κ and their derivatives in (logit δ, logit r) on the current window (module docstring)."""
        cfg = self.config
        sims = np.asarray(self._sims, dtype=np.float64)
        servable = np.asarray(self._served_ok, dtype=np.float64)
        n = max(1, sims.size)
        hits_seen = self._hits
        partial_share = self._partial_hits / hits_seen if hits_seen else 0.5
        a, b = fit_kl_model(
            self._audit_sims, self._audit_kls, self._audit_weights, cfg.prior_kl_slope, cfg.prior_audits
        )
        kl_hat = a + b * f6_distance(sims)
        delta, r = similarity_threshold, refresh_rate
        h = _sigmoid((sims - delta) / cfg.soft_hit_temperature) * servable
        dh_ddelta = -h * (1.0 - h) / cfg.soft_hit_temperature
        saved = 1.0 - partial_share
        q = 1.0 - float(h.sum()) / n * (1 - r) * saved
        kappa = float((h * kl_hat).sum()) / n * (1 - r)
        dq_ddelta = -float(dh_ddelta.sum()) / n * (1 - r) * saved
        dkappa_ddelta = float((dh_ddelta * kl_hat).sum()) / n * (1 - r)
        dq_dr = float(h.sum()) / n * saved
        dkappa_dr = -float((h * kl_hat).sum()) / n
        # chain rule to θ: dδ/dθ = δ(1 − δ), dr/dθ = r(1 − r)
        jd, jr = delta * (1 - delta), r * (1 - r)
        return {
            "query_rate": q,
            "expected_kl": kappa,
            "kl_fit_a": a,
            "kl_fit_b": b,
            "dq_dtheta_delta": dq_ddelta * jd,
            "dkappa_dtheta_delta": dkappa_ddelta * jd,
            "dq_dtheta_r": dq_dr * jr,
            "dkappa_dtheta_r": dkappa_dr * jr,
        }

    def _close_window(self) -> dict[str, Any]:
        cfg = self.config
        applied = self._params_of(self._applied_theta())
        n = len(self._sims)
        surrogate = self.surrogate(applied.similarity_threshold, applied.refresh_rate)
        kl_price = cfg.kl_weight * (1.0 + self.td_gap())
        grad = np.zeros(3)
        grad[1] = -cfg.query_weight * surrogate["dq_dtheta_delta"] - kl_price * surrogate["dkappa_dtheta_delta"]
        grad[2] = -cfg.query_weight * surrogate["dq_dtheta_r"] - kl_price * surrogate["dkappa_dtheta_r"]

        observed_q = self._queries / n
        # Realised κ: the hit share times the importance-weighted mean audited KL of served hits
        # (refreshes are drawn with probability r, so each audit stands for 1/r hits).
        if self._window_audit_kl:
            observed_kl = self._hits / n * float(np.average(self._window_audit_kl, weights=self._window_audit_w))
        else:
            observed_kl = surrogate["expected_kl"]
        return_rate = self._rewards / self._reward_steps if self._reward_steps else 0.0
        objective = -cfg.query_weight * observed_q - kl_price * observed_kl

        self._pair_returns.append(return_rate)
        self._pair_objectives.append(objective)
        self._pair_grads.append(grad)
        self._pair_evicted = self._pair_evicted or self._evictions > 0
        record: dict[str, Any] = {
            "window": self.updates + 1,
            "lookups": n,
            "phase": "+" if self._sign > 0 else "-",
            **{f"window_{k}": v for k, v in applied.to_dict().items()},
            "query_rate": observed_q,
            "expected_kl": observed_kl,
            "model_query_rate": surrogate["query_rate"],
            "model_expected_kl": surrogate["expected_kl"],
            "kl_fit_a": surrogate["kl_fit_a"],
            "kl_fit_b": surrogate["kl_fit_b"],
            "return_rate": return_rate,
            "td_gap": self.td_gap(),
            "objective": return_rate + objective,
            "stepped": False,
        }
        if self._sign > 0:
            self._sign = -1.0
        else:
            self._step(record)
        self.updates += 1
        self._reset_window()
        # K, δ, r: what the cache uses from now on (θ ± the next window's perturbation); centre: θ itself.
        record.update(self.params.to_dict())
        record.update({f"center_{k}": v for k, v in self.center.to_dict().items()})
        return record

    def _step(self, record: dict[str, Any]) -> None:
        """End of an antithetic pair: SPSA for the return (and K), analytic for q and κ, one Adam step."""
        cfg = self.config
        r_plus, r_minus = self._pair_returns
        spread = abs(r_plus - r_minus)
        self._return_spread = spread if self._return_spread is None else 0.9 * self._return_spread + 0.1 * spread
        scale = max(self._return_spread, 1e-6)
        # Δ_i ∈ {−1, 0, +1}: 1/Δ_i = Δ_i for the perturbed coordinates, 0 for resting ones.
        spsa_return = (r_plus - r_minus) / (2 * cfg.perturbation * scale) * self._direction
        spsa_objective = (
            (self._pair_objectives[0] - self._pair_objectives[1]) / (2 * cfg.perturbation) * self._direction
        )
        grad = np.mean(self._pair_grads, axis=0) + cfg.return_weight * spsa_return
        grad[0] = cfg.return_weight * spsa_return[0] + spsa_objective[0]
        self.theta = np.clip(self.theta + self._adam.ascent(grad), self._lower, self._upper)
        record.update(
            {
                "stepped": True,
                "grad_log_capacity": float(grad[0]),
                "grad_logit_threshold": float(grad[1]),
                "grad_logit_refresh": float(grad[2]),
            }
        )
        self._start_pair()
