"""The skill prior kind for continuous control: p(a|s) = Σ_z p_LLM(z|s)·N(a; μ_z(s), σ_z²).

A task has a small, fixed vocabulary of symbolic skills z (short English phrases). The LLM scores the
skill names as it scores text actions (F3: candidates = skill names, prompt = objective + φ(s)); each
skill carries a Gaussian action prior N(μ_z(s), diag σ_z²) fitted on demonstrations (F8 (c)) by
:func:`fit_skill_gaussians`: μ_z(s) = clip(W_z·x̃ + b_z, −1, 1), a ridge regression of the
demonstrated action on the standardised observation x̃, with σ_z from leave-one-out residuals.

**What a cache entry holds** (the plan said "skill logits plus Gaussian parameters"; the choice
here, docs/design.md §3 "The Prior type"): the entry stores the LLM's raw skill scores ℓ_z only,
``{"scores": {skill: ℓ}}``. The Gaussians' parameters (W_z, b_z, σ_z and the standardisation) are
stored once, in the kind's config (:class:`SkillPriorConfig`), and every served prior evaluates μ_z
at the *current* observation. Reasons:

- μ_z(s) depends on s. An entry that stored μ_z(s_cached) would serve the action mean of the state
  it was asked for to every similar state, an error the cache cannot see: F5 audits only what the
  LLM said. Storing the state-independent parameters (W_z, b_z, σ_z) in every entry instead would
  copy one per-task model into thousands of entries, and a refit (0-, 5-, 10-shot) would leave a
  saved cache holding stale copies.
- The Gaussians are not an LLM output. Served and fresh priors of one cache share them, so the
  cache's whole error is in p(z|s): KL(π̃(z, a)‖π(z, a)) = KL(π̃(z)‖π(z)) + E_π̃(z)[KL(π̃(a|z)‖π(a|z))],
  and the second term is zero because the conditionals over actions are the same. F5 on the skill
  posterior (``Prior.divergence``, unchanged) is therefore exactly F5 on the hybrid posterior.
  Entries can be loaded under refitted Gaussians of the same vocabulary (``from_payload`` checks it).

The flat action prior (:meth:`SkillGaussians.uniform`: log N_z(a|s) = −d·log 2 on [−1, 1]^d) is the
one under which SAC-Prior's objective is SAC's (:mod:`priorcache.agents.sac_prior`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from priorcache.errors import ConfigError
from priorcache.prior.action_prior import PriorConfig, check_candidates, log_prior, scores_from_payload
from priorcache.prior.base import Prompt
from priorcache.prior.interface import Prior

if TYPE_CHECKING:  # torch only for SAC-Prior's losses: the cache and the store use the NumPy side
    import torch

LOG_2PI = math.log(2.0 * math.pi)


def check_vocabulary(skills: Sequence[str]) -> tuple[str, ...]:
    """The skill vocabulary as a tuple; ConfigError for an empty one, duplicates or blank names."""
    if isinstance(skills, str):
        raise ConfigError(f"the skill vocabulary must be a sequence of names, not the string {skills!r}")
    skills = tuple(skills)
    if not skills:
        raise ConfigError("the skill vocabulary is empty: a skill prior needs at least one skill")
    bad = [z for z in skills if not isinstance(z, str) or not z.strip()]
    if bad:
        raise ConfigError(f"skill names must be non-empty strings, got {bad[:5]}")
    dupes = sorted({z for z in skills if skills.count(z) > 1})
    if dupes:
        raise ConfigError(f"the skill vocabulary has duplicates: {dupes}")
    return skills


def gaussian_log_density(mean: np.ndarray, std: np.ndarray, x: np.ndarray) -> np.ndarray:
    """log N(x; mean, diag std²), summed over the last axis."""
    z = (np.asarray(x, np.float64) - mean) / std
    return np.sum(-0.5 * z * z - np.log(std) - 0.5 * LOG_2PI, axis=-1)


def gaussian_kl(mean_p: np.ndarray, std_p: np.ndarray, mean_q: np.ndarray, std_q: np.ndarray) -> np.ndarray:
    """KL(N_p‖N_q) of diagonal Gaussians in closed form, summed over the last axis:
    Σ_i log(σ_q/σ_p) + (σ_p² + (μ_p − μ_q)²)/(2σ_q²) − ½."""
    mean_p, std_p, mean_q, std_q = (np.asarray(v, np.float64) for v in (mean_p, std_p, mean_q, std_q))
    terms = np.log(std_q / std_p) + (std_p**2 + (mean_p - mean_q) ** 2) / (2.0 * std_q**2) - 0.5
    return np.sum(terms, axis=-1)


def _finite_array(name: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != shape:
        raise ConfigError(f"{name} must have shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name} holds non-finite numbers")
    return arr


@dataclass(frozen=True, eq=False)
class SkillGaussians:
    """Per-skill Gaussian action priors N(μ_z(s), diag σ_z²) over actions in [−1, 1]^d.

    μ_z(s) = clip(W_z·(s − obs_mean)/obs_scale + b_z, −1, 1): the clip keeps a linear fit from
    extrapolating outside the action box at states the demonstrations never reached.
    ``steps[z]``: demonstration steps the skill was fitted on; ``fitted[z]``: False when it had too
    few and got the fallback (state-independent, σ = the widest allowed). ``flat``: every N_z is
    the uniform density on [−1, 1]^d instead (log N_z = −d·log 2), the prior of plain SAC."""

    skills: tuple[str, ...]
    weights: np.ndarray  # (Z, act_dim, obs_dim), on standardised observations
    bias: np.ndarray  # (Z, act_dim)
    std: np.ndarray  # (Z, act_dim)
    obs_mean: np.ndarray  # (obs_dim,)
    obs_scale: np.ndarray  # (obs_dim,)
    steps: tuple[int, ...] = ()
    fitted: tuple[bool, ...] = ()
    flat: bool = False

    def __post_init__(self) -> None:
        skills = check_vocabulary(self.skills)
        object.__setattr__(self, "skills", skills)
        weights = np.asarray(self.weights, dtype=np.float64)
        if weights.ndim != 3 or weights.shape[0] != len(skills) or 0 in weights.shape:
            raise ConfigError(f"weights must have shape (skills={len(skills)}, act_dim, obs_dim), got {weights.shape}")
        n, act_dim, obs_dim = weights.shape
        object.__setattr__(self, "weights", _finite_array("weights", weights, (n, act_dim, obs_dim)))
        object.__setattr__(self, "bias", _finite_array("bias", self.bias, (n, act_dim)))
        object.__setattr__(self, "std", _finite_array("std", self.std, (n, act_dim)))
        object.__setattr__(self, "obs_mean", _finite_array("obs_mean", self.obs_mean, (obs_dim,)))
        object.__setattr__(self, "obs_scale", _finite_array("obs_scale", self.obs_scale, (obs_dim,)))
        if not np.all(self.std > 0) or not np.all(self.obs_scale > 0):
            raise ConfigError("std and obs_scale must be > 0")
        steps = tuple(self.steps) if self.steps else (0,) * n
        fitted = tuple(self.fitted) if self.fitted else (False,) * n
        if len(steps) != n or len(fitted) != n or any(not isinstance(s, int) or s < 0 for s in steps):
            raise ConfigError(f"steps and fitted need one entry per skill ({n}), steps integers ≥ 0")
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "fitted", tuple(bool(f) for f in fitted))
        object.__setattr__(self, "flat", bool(self.flat))

    @classmethod
    def uniform(cls, skills: Sequence[str], obs_dim: int, act_dim: int) -> SkillGaussians:
        """The flat action prior: N_z is the uniform density on [−1, 1]^d for every skill."""
        n = len(check_vocabulary(skills))
        return cls(
            tuple(skills),
            np.zeros((n, act_dim, obs_dim)),
            np.zeros((n, act_dim)),
            np.ones((n, act_dim)),
            np.zeros(obs_dim),
            np.ones(obs_dim),
            flat=True,
        )

    @property
    def obs_dim(self) -> int:
        return int(self.weights.shape[2])

    @property
    def act_dim(self) -> int:
        return int(self.weights.shape[1])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SkillGaussians):
            return NotImplemented
        arrays = ("weights", "bias", "std", "obs_mean", "obs_scale")
        return (self.skills, self.steps, self.fitted, self.flat) == (
            other.skills,
            other.steps,
            other.fitted,
            other.flat,
        ) and all(np.array_equal(getattr(self, a), getattr(other, a)) for a in arrays)

    __hash__ = None  # type: ignore[assignment]

    def index(self, skill: str) -> int:
        try:
            return self.skills.index(skill)
        except ValueError:
            raise ConfigError(f"unknown skill {skill!r}; the vocabulary is {list(self.skills)}") from None

    # --- NumPy: one state or a batch --------------------------------------------------------------
    def mean(self, obs: np.ndarray, skill: np.ndarray | int) -> np.ndarray:
        """μ_z(s) for observations (…, obs_dim) and skill indices (…) → (…, act_dim)."""
        obs = np.asarray(obs, np.float64)
        if self.flat:
            return np.zeros((*obs.shape[:-1], self.act_dim))
        x = (obs - self.obs_mean) / self.obs_scale
        skill = np.asarray(skill)
        return np.clip(np.einsum("...ij,...j->...i", self.weights[skill], x) + self.bias[skill], -1.0, 1.0)

    def log_density(self, obs: np.ndarray, actions: np.ndarray, skill: np.ndarray | int) -> np.ndarray:
        """log N_z(a|s) (…,); the flat prior gives −d·log 2 inside [−1, 1]^d and −inf outside."""
        actions = np.asarray(actions, np.float64)
        if self.flat:
            inside = np.all(np.abs(actions) <= 1.0, axis=-1)
            return np.where(inside, -self.act_dim * math.log(2.0), -np.inf)
        return gaussian_log_density(self.mean(obs, skill), self.std[np.asarray(skill)], actions)

    def sample(self, obs: np.ndarray, skill: int, rng: np.random.Generator) -> np.ndarray:
        """One action from N_z(·|s), clipped to [−1, 1]^d (uniform for the flat prior)."""
        if self.flat:
            return rng.uniform(-1.0, 1.0, self.act_dim)
        return np.clip(rng.normal(self.mean(obs, skill), self.std[skill]), -1.0, 1.0)

    # --- torch: what SAC-Prior's losses need, differentiable in the actions ---------------------
    @cached_property
    def _tensors(self) -> dict[str, torch.Tensor]:
        import torch

        names = ("weights", "bias", "std", "obs_mean", "obs_scale")
        return {n: torch.as_tensor(getattr(self, n), dtype=torch.float32) for n in names}

    def log_density_torch(self, obs: torch.Tensor, actions: torch.Tensor, skill: torch.Tensor) -> torch.Tensor:
        """log N_z(a|s) for a batch: obs (B, obs_dim), actions (B, d), skill indices (B,) → (B,)."""
        import torch

        if self.flat:  # actions of a tanh policy lie inside the box: the constant −d·log 2
            return torch.full(actions.shape[:-1], -self.act_dim * math.log(2.0), dtype=actions.dtype)
        mean, std = self.mean_std_torch(obs, skill)
        z = (actions - mean) / std
        return torch.sum(-0.5 * z * z - torch.log(std) - 0.5 * LOG_2PI, dim=-1)

    def mean_std_torch(self, obs: torch.Tensor, skill: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ_z(s), σ_z), each (B, d), for obs (B, obs_dim) and skill indices (B,); not for the flat prior."""
        import torch

        if self.flat:
            raise ConfigError("the flat prior is uniform on [-1, 1]^d: it has no Gaussian mean and std")
        t = self._tensors
        x = (obs - t["obs_mean"]) / t["obs_scale"]
        mean = torch.clamp(torch.einsum("bij,bj->bi", t["weights"][skill], x) + t["bias"][skill], -1.0, 1.0)
        return mean, t["std"][skill]

    # --- plain data (an agent's save) ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able (floats written by ``repr``, so a round trip is exact)."""
        return {
            "skills": list(self.skills),
            "weights": self.weights.tolist(),
            "bias": self.bias.tolist(),
            "std": self.std.tolist(),
            "obs_mean": self.obs_mean.tolist(),
            "obs_scale": self.obs_scale.tolist(),
            "steps": list(self.steps),
            "fitted": list(self.fitted),
            "flat": self.flat,
        }

    @classmethod
    def from_dict(cls, data: Any) -> SkillGaussians:
        """Inverse of :meth:`to_dict`; ConfigError naming what is wrong."""
        keys = {"skills", "weights", "bias", "std", "obs_mean", "obs_scale", "steps", "fitted", "flat"}
        if not isinstance(data, Mapping) or set(data) != keys:
            raise ConfigError(f"skill Gaussians must be a map with keys {sorted(keys)}")
        if not all(isinstance(data[k], list) for k in ("skills", "steps", "fitted")):
            raise ConfigError("skill Gaussians: skills, steps and fitted must be lists")
        try:
            return cls(**{k: tuple(data[k]) if k in ("skills", "steps", "fitted") else data[k] for k in keys})
        except (TypeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"damaged skill Gaussians: {e}") from None


def fit_skill_gaussians(
    observations: np.ndarray,
    actions: np.ndarray,
    skills: Sequence[str],
    vocabulary: Sequence[str],
    *,
    obs_dim: int | None = None,
    act_dim: int | None = None,
    ridge: float = 1.0,
    min_std: float = 0.1,
    max_std: float = 1.0,
    min_steps: int = 10,
) -> SkillGaussians:
    """Fit N(μ_z(s), σ_z²) per skill on demonstrations (the arrays of a ``ControlDemos``).

    ``observations`` (N, obs_dim), ``actions`` (N, act_dim) in [−1, 1], ``skills`` (N,) each step's
    skill label; ``obs_dim``/``act_dim``: the environment's, checked when given. Per skill with at
    least ``min_steps`` steps: ridge regression (penalty ``ridge`` on the weights, not the bias) of
    the action on the observation standardised over all steps; σ_z per action dimension is the RMS
    of the *leave-one-out* residuals (closed form e_i/(1 − h_ii)), so a fit with few steps is not
    overconfident, clipped to [``min_std``, ``max_std``]. Fallback (documented, not refused): a
    skill with fewer than ``min_steps`` steps (none included) gets a state-independent Gaussian, the
    mean of its actions (0 without any) with σ = ``max_std``, and ``fitted`` False.

    ConfigError: an empty or duplicated vocabulary, labels outside it, arrays of mismatched lengths or
    of other dimensions than the environment's, actions outside [−1, 1], non-finite data, no
    demonstrations, or no skill with ``min_steps`` steps."""
    vocabulary = check_vocabulary(vocabulary)
    obs = np.asarray(observations, dtype=np.float64)
    act = np.asarray(actions, dtype=np.float64)
    labels = list(skills)
    if obs.ndim != 2 or act.ndim != 2:
        raise ConfigError(f"observations and actions must be 2-d (N, dim), got {obs.shape} and {act.shape}")
    if not len(obs) == len(act) == len(labels):
        raise ConfigError(f"{len(obs)} observations, {len(act)} actions and {len(labels)} skill labels: need one each")
    if len(obs) == 0:
        raise ConfigError("no demonstration steps to fit skill Gaussians on")
    if act_dim is not None and act.shape[1] != act_dim:
        raise ConfigError(f"the demonstrations' actions have dimension {act.shape[1]}, the environment's {act_dim}")
    if obs_dim is not None and obs.shape[1] != obs_dim:
        raise ConfigError(
            f"the demonstrations' observations have dimension {obs.shape[1]}, the environment's {obs_dim}"
        )
    for name, arr in (("observations", obs), ("actions", act)):
        if not np.all(np.isfinite(arr)):
            rows = np.flatnonzero(~np.all(np.isfinite(arr), axis=1))
            raise ConfigError(f"the demonstrations' {name} hold non-finite numbers (steps {rows[:5].tolist()})")
    if np.any(np.abs(act) > 1.0):
        raise ConfigError(f"demonstrated actions must lie in [-1, 1], found {np.abs(act).max():.4g}")
    unknown = sorted({z for z in labels if z not in vocabulary}, key=str)
    if unknown:
        raise ConfigError(f"skill labels {unknown[:5]} are not in the vocabulary {list(vocabulary)}")
    if not (ridge >= 0 and 0 < min_std <= max_std and math.isfinite(max_std)) or min_steps < 1:
        raise ConfigError(
            f"need ridge ≥ 0, 0 < min_std ≤ max_std < inf, min_steps ≥ 1; got {ridge}, {min_std}, "
            f"{max_std}, {min_steps}"
        )

    n_skills, d_obs, d_act = len(vocabulary), obs.shape[1], act.shape[1]
    obs_mean = obs.mean(axis=0)
    obs_scale = obs.std(axis=0)
    obs_scale = np.where(obs_scale > 1e-8, obs_scale, 1.0)  # a constant feature is left unscaled
    x_all = (obs - obs_mean) / obs_scale
    weights, bias = np.zeros((n_skills, d_act, d_obs)), np.zeros((n_skills, d_act))
    std = np.full((n_skills, d_act), max_std)
    label_arr = np.array(labels, dtype=object)
    steps, fitted = [], []
    for k, skill in enumerate(vocabulary):
        rows = label_arr == skill
        m = int(rows.sum())
        steps.append(m)
        if m < min_steps:
            fitted.append(False)
            if m:
                bias[k] = act[rows].mean(axis=0)
            continue
        x = np.hstack([x_all[rows], np.ones((m, 1))])  # the last column is the unpenalised bias
        penalty = ridge * np.eye(d_obs + 1)
        penalty[-1, -1] = 0.0
        inverse = np.linalg.pinv(x.T @ x + penalty)
        coef = inverse @ x.T @ act[rows]  # (obs_dim + 1, act_dim)
        residual = act[rows] - x @ coef
        leverage = np.einsum("ij,jk,ik->i", x, inverse, x)
        loo = residual / np.maximum(1.0 - leverage, 1e-3)[:, None]
        weights[k], bias[k] = coef[:-1].T, coef[-1]
        std[k] = np.clip(np.sqrt(np.mean(loo**2, axis=0)), min_std, max_std)
        fitted.append(True)
    if not any(fitted):
        raise ConfigError(
            f"no skill has {min_steps} demonstration steps (steps per skill: {dict(zip(vocabulary, steps))}): "
            "record more demonstrations or lower min_steps"
        )
    return SkillGaussians(vocabulary, weights, bias, std, obs_mean, obs_scale, tuple(steps), tuple(fitted))


@dataclass(frozen=True)
class SkillPriorConfig:
    """The skill prior kind's settings, the ``prior_config`` a :class:`PriorCache` passes on: the
    per-skill Gaussians (whose skills are the vocabulary) and F3's τ and ε for p(z|s)."""

    gaussians: SkillGaussians
    f3: PriorConfig = field(default_factory=PriorConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.gaussians, SkillGaussians) or not isinstance(self.f3, PriorConfig):
            raise ConfigError("SkillPriorConfig needs SkillGaussians and a PriorConfig")

    @property
    def skills(self) -> tuple[str, ...]:
        return self.gaussians.skills


class SkillPrior(Prior):
    """p(z|s) by F3 from the LLM's raw scores of the skill names, times the per-skill Gaussians of
    ``config`` evaluated at the current observation (see the module docstring for why the entry
    holds the scores only). ``actions`` are the skill names: the prior's discrete part."""

    kind = "skill"

    def __init__(self, scores: Mapping[str, float], config: SkillPriorConfig) -> None:
        if not isinstance(config, SkillPriorConfig):
            raise ConfigError(f"a skill prior needs a SkillPriorConfig, got {type(config).__name__}")
        names = check_candidates(list(scores))
        if set(names) != set(config.skills):
            raise ConfigError(
                f"a skill prior needs a score for exactly the vocabulary {list(config.skills)}, got {names}"
            )
        values = np.array([scores[z] for z in names], dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise ConfigError(f"non-finite skill scores {dict(zip(names, values.tolist()))}")
        self._scores = dict(zip(names, values.tolist()))
        self.config = config

    def __repr__(self) -> str:
        return f"SkillPrior({self._scores!r})"

    @property
    def gaussians(self) -> SkillGaussians:
        return self.config.gaussians

    @cached_property
    def actions(self) -> tuple[str, ...]:
        return tuple(self._scores)

    @property
    def score_map(self) -> dict[str, float]:
        return dict(self._scores)

    @cached_property
    def _log_probs(self) -> np.ndarray:
        return log_prior(np.array(list(self._scores.values())), self.config.f3)

    def log_prob(self, actions: Sequence[str]) -> np.ndarray:
        """log p(z|s) of skill names (F3 over the vocabulary)."""
        index = {z: i for i, z in enumerate(self._scores)}
        missing = [z for z in actions if z not in index]
        if missing:
            raise ConfigError(f"skills {missing[:5]} are not in this prior's vocabulary {list(self.actions)}")
        return self._log_probs[[index[z] for z in actions]]

    def sample(self, rng: np.random.Generator) -> str:
        """A skill z ~ p(z|s) (the action needs the observation: :meth:`sample_action`)."""
        probs = np.exp(self._log_probs)
        return self.actions[int(rng.choice(probs.size, p=probs / probs.sum()))]

    def sample_action(self, obs: np.ndarray, rng: np.random.Generator) -> tuple[str, np.ndarray]:
        """(z, a) from the mixture at observation ``obs``: z ~ p(z|s), a ~ N_z(·|s)."""
        skill = self.sample(rng)
        return skill, self.gaussians.sample(obs, self.gaussians.index(skill), rng)

    def action_log_density(self, obs: np.ndarray, action: np.ndarray) -> float:
        """log p(a|s) = log Σ_z p(z|s)·N_z(a|s) of one action at observation ``obs``."""
        g = self.gaussians
        idx = np.array([g.index(z) for z in self.actions])
        per_skill = g.log_density(
            np.broadcast_to(obs, (len(idx), g.obs_dim)), np.broadcast_to(action, (len(idx), g.act_dim)), idx
        )
        return float(np.logaddexp.reduce(self._log_probs + per_skill))

    @classmethod
    def from_scores(cls, actions: Sequence[str], scores: np.ndarray, config: SkillPriorConfig) -> SkillPrior:
        arr = np.asarray(scores, dtype=np.float64)
        if arr.shape != (len(actions),):
            raise ConfigError(f"need one score per skill ({len(actions)}), got shape {arr.shape}")
        return cls(dict(zip(actions, arr.tolist())), config)

    def restrict(self, candidates: Sequence[str], fill: Prior | None = None) -> SkillPrior:
        """The vocabulary is fixed, so a served prior is this one; other candidate sets are refused."""
        if set(candidates) != set(self.actions) or len(candidates) != len(self.actions):
            raise ConfigError(
                f"a skill prior serves exactly its vocabulary {list(self.actions)}, not {list(candidates)}"
            )
        return self

    def merge(self, newer: Prior) -> SkillPrior:
        if not isinstance(newer, SkillPrior):
            raise ConfigError(f"cannot merge a {newer.kind} prior into a skill prior")
        return newer

    def to_payload(self) -> dict[str, Any]:
        return {"scores": {z: float(s) for z, s in self._scores.items()}}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], config: SkillPriorConfig) -> SkillPrior:
        return cls(scores_from_payload(payload, "skill", "skill"), config)


# --- the prompt the LLM scores skill names under (F9: objective in the prefix, φ(s) in the state part) ---
SKILL_PROMPT_PREFIX = (
    "You control a robot with a few skills. Choose the skill that makes progress toward the goal.\n"
    "Goal: {objective}\nSkills: {skills}.\n\n{examples}"
)
SKILL_PROMPT_EXAMPLE = "State: {state}\nSkill: {skill}\n\n"


def skill_prompt(
    objective: str, state_text: str, skills: Sequence[str] = (), examples: Sequence[tuple[str, str]] = ()
) -> Prompt:
    """The F3/F9 prompt for a skill decision: the objective, the skill list and optional few-shot
    (state text, skill) ``examples`` in the episode-constant prefix; φ(s) alone in the state part,
    which ends in the cue "Skill:" that each scored skill name completes."""

    def one_line(text: str) -> str:
        return " ".join(str(text).split())

    block = "".join(SKILL_PROMPT_EXAMPLE.format(state=one_line(s), skill=one_line(z)) for s, z in examples)
    prefix = SKILL_PROMPT_PREFIX.format(
        objective=one_line(objective), skills="; ".join(one_line(z) for z in skills) or "any", examples=block
    )
    return Prompt.marked(prefix, "State:", " " + one_line(state_text), "\nSkill:")
