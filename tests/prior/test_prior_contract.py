"""The ``Prior`` contract, once for every kind: the categorical prior and the skill prior (a Gaussian per skill)."""

from __future__ import annotations

import numpy as np
import pytest

from priorcache.errors import ConfigError
from priorcache.prior.action_prior import CategoricalPrior, PriorConfig
from priorcache.prior.interface import Prior
from priorcache.prior.skill_prior import SkillGaussians, SkillPrior, SkillPriorConfig

ACTIONS = ["go north", "take key", "open door", "look"]
SCORES = np.array([-0.5, -1.5, -0.7, -3.0])
# The actions as skills, each with a Gaussian over 2-d actions whose mean depends on a 3-d observation.
GAUSSIANS = SkillGaussians(
    tuple(ACTIONS),
    np.arange(4 * 2 * 3).reshape(4, 2, 3) / 50.0,
    np.array([[float(i) / 4, -0.5] for i in range(4)]),
    np.array([[0.5, 0.2]] * 4),
    np.zeros(3),
    np.ones(3),
)
KINDS = {
    "categorical": (CategoricalPrior, PriorConfig(temperature=0.8, floor=0.05)),
    "skill": (SkillPrior, SkillPriorConfig(GAUSSIANS, PriorConfig(temperature=0.8, floor=0.05))),
}


@pytest.fixture(params=sorted(KINDS))
def kind(request) -> tuple[type[Prior], object]:
    return KINDS[request.param]


def test_log_prob_is_a_distribution_over_its_actions(kind) -> None:
    cls, cfg = kind
    prior = cls.from_scores(ACTIONS, SCORES, cfg)
    assert prior.actions == tuple(ACTIONS)
    lp = prior.log_prob(ACTIONS)
    assert lp.shape == (4,) and np.exp(lp).sum() == pytest.approx(1.0)
    np.testing.assert_allclose(prior.log_prob(ACTIONS[::-1]), lp[::-1])


def test_support_is_the_top_k_by_prior(kind) -> None:
    cls, cfg = kind
    prior = cls.from_scores(ACTIONS, SCORES, cfg)
    assert prior.support(2) == ["go north", "open door"]
    assert prior.support(10) == ["go north", "open door", "take key", "look"]


def test_sampling_follows_the_prior(kind) -> None:
    cls, cfg = kind
    prior = cls.from_scores(ACTIONS, SCORES, cfg)
    rng = np.random.default_rng(0)
    draws = [prior.sample(rng) for _ in range(4000)]
    names = [d if isinstance(d, str) else d[0] for d in draws]
    freq = np.array([names.count(a) for a in ACTIONS]) / len(names)
    np.testing.assert_allclose(freq, np.exp(prior.log_prob(ACTIONS)), atol=0.03)


def test_divergence_is_f5_zero_for_itself_and_bounded_otherwise(kind) -> None:
    cls, cfg = kind
    prior = cls.from_scores(ACTIONS, SCORES, cfg)
    same = prior.divergence(prior, np.array([1.0, 0.0, 2.0, -1.0]), 0.5)
    assert same.epsilon == 0.0 and same.kl == pytest.approx(0.0, abs=1e-12)
    other = cls.from_scores(ACTIONS, SCORES[::-1].copy(), cfg)
    audit = prior.divergence(other, np.array([1.0, 0.0, 2.0, -1.0]), 0.5)
    assert 0 < audit.kl <= audit.kl_bound == pytest.approx(2 * audit.epsilon)
    assert audit.log_z_gap <= audit.epsilon + 1e-12


def test_payload_round_trips_through_json(kind) -> None:
    import json

    cls, cfg = kind
    prior = cls.from_scores(ACTIONS, SCORES, cfg)
    back = cls.from_payload(json.loads(json.dumps(prior.to_payload(), allow_nan=False)), cfg)
    assert back.actions == prior.actions
    np.testing.assert_allclose(back.log_prob(ACTIONS), prior.log_prob(ACTIONS))
    assert back.to_payload() == prior.to_payload()


def test_a_damaged_payload_is_refused(kind) -> None:
    cls, cfg = kind
    with pytest.raises(ConfigError):
        cls.from_payload({"nonsense": 1}, cfg)


def test_categorical_restrict_and_merge_follow_f7() -> None:
    prior = CategoricalPrior.from_scores(ACTIONS, SCORES)
    fill = CategoricalPrior.from_scores(["jump"], np.array([-0.1]))
    served = prior.restrict(["look", "jump", "go north"], fill=fill)
    assert served.score_map == {"look": -3.0, "jump": -0.1, "go north": -0.5}
    assert prior.restrict(["jump"]).score_map == {"jump": -3.0}  # no fill: the entry's floor score
    assert prior.merge(fill).score_map == {**dict(zip(ACTIONS, SCORES.tolist())), "jump": -0.1}
