"""The cache stores, serves, audits, saves and loads priors of any ``Prior`` kind, not only categorical ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from priorcache.cache.config import CacheConfig
from priorcache.cache.prior_cache import PriorCache
from priorcache.errors import CacheFormatError
from priorcache.prior.base import Prompt
from priorcache.prior.skill_prior import SkillGaussians, SkillPrior, SkillPriorConfig
from tests.cache._fakes import FakeBackend, HashEncoder, at_cosine

SKILLS = ["lean forward and push with the back leg", "stand still", "hop on the front leg"]
# Per-skill Gaussians over 2-d actions with a mean that depends on a 3-d observation.
GAUSSIANS = SkillGaussians(
    tuple(SKILLS),
    np.arange(3 * 2 * 3).reshape(3, 2, 3) / 40.0,
    np.array([[0.3 * i, -0.2] for i in range(3)]),
    np.array([[0.1, 0.4 + i] for i in range(3)]),
    np.zeros(3),
    np.ones(3),
)
CONFIG = SkillPriorConfig(GAUSSIANS)
GOAL = Prompt("Goal: run forward.\n", "")


def skill_cache(**cfg) -> PriorCache:
    cfg.setdefault("refresh_rate", 0.0)
    return PriorCache(
        CacheConfig(similarity_threshold=0.9, **cfg),
        HashEncoder(),
        FakeBackend(),
        prior_config=CONFIG,
        prior_kind=SkillPrior,
    )


def look(cache: PriorCache, state: str, cosine: float):
    return cache.lookup(state, Prompt(GOAL.prefix, state), SKILLS, embedding=at_cosine(cosine))


def test_skill_priors_are_stored_served_audited_saved_and_loaded(tmp_path: Path) -> None:
    cache = skill_cache()
    miss = look(cache, "torso low, moving slowly", 1.0)
    assert miss.kind == "miss" and isinstance(miss.prior, SkillPrior)
    similar = look(cache, "torso low, moving a bit faster", 0.95)
    assert similar.kind == "similar" and similar.llm_calls == similar.partial_calls == 0
    # The served prior is the stored one: same skill distribution; the Gaussians are the kind's config,
    # evaluated at the observation of the state it is served for (not the one it was asked for).
    np.testing.assert_allclose(similar.log_prior, miss.log_prior)
    assert similar.prior.gaussians is GAUSSIANS
    obs = np.array([0.5, -1.0, 2.0])
    skill, action = similar.prior.sample_action(obs, np.random.default_rng(0))
    assert skill in SKILLS and action.shape == (2,)
    k = SKILLS.index(skill)
    np.testing.assert_allclose(GAUSSIANS.mean(obs, k), np.clip(GAUSSIANS.weights[k] @ obs + GAUSSIANS.bias[k], -1, 1))

    # Audited: every hit refreshes, F5 is measured between the served and the fresh skill prior.
    auditing = skill_cache(refresh_rate=1.0)
    look(auditing, "torso low, moving slowly", 1.0)
    refresh = look(auditing, "torso high, falling backwards", 0.93)
    assert refresh.kind == "refresh" and refresh.audit is not None
    assert 0 < refresh.audit.kl <= refresh.audit.kl_bound
    assert auditing.entries()[0].last_audit == refresh.audit

    # Saved and loaded through the public API; the loaded cache serves the same prior without the LLM.
    cache.save(tmp_path / "skills")
    loaded = skill_cache()
    loaded.load(tmp_path / "skills")
    assert [e.prior.to_payload() for e in loaded.entries()] == [e.prior.to_payload() for e in cache.entries()]
    again = look(loaded, "torso low, moving a bit faster", 0.95)
    assert again.kind == "similar" and loaded.backend.n_calls == 0
    np.testing.assert_allclose(again.log_prior, similar.log_prior)


def test_a_save_of_another_prior_kind_is_refused(tmp_path: Path) -> None:
    cache = skill_cache()
    look(cache, "torso low, moving slowly", 1.0)
    cache.save(tmp_path / "skills")
    categorical = PriorCache(CacheConfig(), HashEncoder(), FakeBackend())
    with pytest.raises(CacheFormatError, match="'skill'"):
        categorical.load(tmp_path / "skills")
    assert len(categorical) == 0
