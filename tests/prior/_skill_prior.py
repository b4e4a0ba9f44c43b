"""A second, non-categorical ``Prior`` kind for the tests: skills with a Gaussian over continuous actions each.

p(z|s) comes from the LLM's F3 scores of the skill names; each skill z carries N(μ_z, σ_z²) over a
continuous action, fixed by the kind's config (as five demonstrations would fit them). A sample is
a skill and an action vector. The skill vocabulary is fixed, so the F7 hooks keep their defaults.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from priorcache.errors import ConfigError
from priorcache.prior.action_prior import PriorConfig, log_prior
from priorcache.prior.interface import Prior

Gaussians = Mapping[str, tuple[Sequence[float], Sequence[float]]]  # skill → (mean, std)


class SkillGaussianPrior(Prior):
    kind = "skill-gaussian"

    def __init__(self, scores: Mapping[str, float], gaussians: Gaussians) -> None:
        self._scores = dict(scores)
        self.gaussians = {
            z: (np.asarray(m, dtype=np.float64), np.asarray(s, dtype=np.float64))
            for z, (m, s) in gaussians.items()
            if z in self._scores
        }

    @property
    def actions(self) -> tuple[str, ...]:
        return tuple(self._scores)

    def log_prob(self, actions: Sequence[str]) -> np.ndarray:
        full = log_prior(np.array(list(self._scores.values())), PriorConfig())
        index = {z: i for i, z in enumerate(self._scores)}
        return full[[index[a] for a in actions]]

    def sample(self, rng: np.random.Generator) -> tuple[str, np.ndarray]:
        probs = np.exp(self.log_prob(self.actions))
        skill = self.actions[int(rng.choice(len(probs), p=probs / probs.sum()))]
        mean, std = self.gaussians[skill]
        return skill, rng.normal(mean, std)

    def action_log_density(self, skill: str, action: np.ndarray) -> float:
        mean, std = self.gaussians[skill]
        return float(np.sum(-0.5 * ((action - mean) / std) ** 2 - np.log(std) - 0.5 * math.log(2 * math.pi)))

    @classmethod
    def from_scores(cls, actions: Sequence[str], scores: np.ndarray, config: Gaussians) -> SkillGaussianPrior:
        return cls(dict(zip(actions, np.asarray(scores, dtype=np.float64).tolist())), config)

    def to_payload(self) -> dict[str, Any]:
        return {
            "skill_scores": dict(self._scores),
            "gaussians": {z: {"mean": m.tolist(), "std": s.tolist()} for z, (m, s) in self.gaussians.items()},
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], config: Any) -> SkillGaussianPrior:
        if not isinstance(payload, Mapping) or set(payload) != {"skill_scores", "gaussians"}:
            raise ConfigError("a skill-gaussian payload must be {skill_scores, gaussians}")
        scores, gaussians = payload["skill_scores"], payload["gaussians"]
        if (
            not isinstance(scores, Mapping)
            or not scores
            or not isinstance(gaussians, Mapping)
            or set(gaussians) != set(scores)
        ):
            raise ConfigError("every skill needs a score and a Gaussian")
        out = {}
        for z, g in gaussians.items():
            mean, std = np.asarray(g["mean"], dtype=np.float64), np.asarray(g["std"], dtype=np.float64)
            if mean.shape != std.shape or not np.all(np.isfinite(mean)) or not np.all(std > 0):
                raise ConfigError(f"skill {z!r}: mean and std must be finite vectors of one shape, std > 0")
            out[z] = (mean, std)
        return cls(scores, out)
