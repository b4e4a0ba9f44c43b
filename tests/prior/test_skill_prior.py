"""The skill prior kind: the per-skill Gaussians' fit, densities and KL against closed forms and SciPy,
p(z|s) by F3, the payload, the prompt, and the refusals of bad demonstrations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from priorcache.errors import ConfigError
from priorcache.prior.action_prior import PriorConfig
from priorcache.prior.skill_prior import (
    SkillGaussians,
    SkillPrior,
    SkillPriorConfig,
    fit_skill_gaussians,
    gaussian_kl,
    gaussian_log_density,
    skill_prompt,
)

SKILLS = ("reach toward the puck", "push the puck forward", "hold still")


def linear_demos(n: int = 600, seed: int = 0, noise: float = 0.05):
    """Demonstrations from a known linear-Gaussian model per skill (obs_dim 3, act_dim 2)."""
    rng = np.random.default_rng(seed)
    obs = rng.normal([1.0, -2.0, 0.5], [0.5, 2.0, 0.1], size=(n, 3))
    truth = {
        SKILLS[0]: (np.array([[0.2, 0.0, 0.5], [0.0, -0.1, 0.0]]), np.array([-0.3, -0.3])),
        SKILLS[1]: (np.array([[-0.1, 0.05, 0.0], [0.3, 0.0, 1.0]]), np.array([0.0, -0.7])),
        SKILLS[2]: (np.zeros((2, 3)), np.array([0.0, 0.0])),
    }
    labels = [SKILLS[i % 3] for i in range(n)]
    actions = np.array([truth[z][0] @ o + truth[z][1] for o, z in zip(obs, labels)])
    actions = actions + rng.normal(0.0, noise, actions.shape)
    assert np.abs(actions).max() < 1.0
    return obs, actions, labels, truth


def test_the_fit_recovers_a_linear_gaussian_model() -> None:
    obs, actions, labels, truth = linear_demos(n=3000, noise=0.05)
    g = fit_skill_gaussians(obs, actions, labels, SKILLS, obs_dim=3, act_dim=2, ridge=1e-3, min_std=0.01)
    test = np.random.default_rng(1).normal([1.0, -2.0, 0.5], [0.5, 2.0, 0.1], size=(50, 3))
    for k, z in enumerate(SKILLS):
        expected = test @ truth[z][0].T + truth[z][1]
        np.testing.assert_allclose(g.mean(test, np.full(50, k)), expected, atol=0.03)
        np.testing.assert_allclose(g.std[k], [0.05, 0.05], rtol=0.08)
    assert g.steps == (1000, 1000, 1000) and all(g.fitted)


def test_leave_one_out_std_is_wider_than_the_in_sample_residual_with_few_steps() -> None:
    obs, actions, labels, _ = linear_demos(n=36, noise=0.1)
    g = fit_skill_gaussians(obs, actions, labels, SKILLS, ridge=1e-3, min_std=1e-3, min_steps=5)
    for k, z in enumerate(SKILLS):
        rows = np.array(labels) == z
        in_sample = np.sqrt(np.mean((actions[rows] - g.mean(obs[rows], np.full(rows.sum(), k))) ** 2, axis=0))
        assert np.all(g.std[k] > in_sample)


def test_log_density_agrees_with_scipy_and_torch() -> None:
    obs, actions, labels, _ = linear_demos()
    g = fit_skill_gaussians(obs, actions, labels, SKILLS)
    rng = np.random.default_rng(2)
    s, a, z = obs[:20], rng.uniform(-1, 1, (20, 2)), rng.integers(0, 3, 20)
    expected = [
        stats.multivariate_normal(g.mean(s[i], z[i]), np.diag(g.std[z[i]] ** 2)).logpdf(a[i]) for i in range(20)
    ]
    np.testing.assert_allclose(g.log_density(s, a, z), expected, rtol=1e-10)
    a_t = torch.tensor(a, dtype=torch.float32, requires_grad=True)
    log_t = g.log_density_torch(torch.tensor(s, dtype=torch.float32), a_t, torch.tensor(z))
    np.testing.assert_allclose(log_t.detach().numpy(), expected, rtol=1e-4)
    log_t.sum().backward()  # d/da log N = −(a − μ)/σ²
    np.testing.assert_allclose(a_t.grad.numpy(), -(a - g.mean(s, z)) / g.std[z] ** 2, rtol=1e-3, atol=1e-3)


def test_the_mean_is_clipped_to_the_action_box() -> None:
    obs, actions, labels, _ = linear_demos()
    g = fit_skill_gaussians(obs, actions, labels, SKILLS)
    far = np.array([[1.0, 400.0, 0.5]])  # far outside the demonstrations
    assert np.all(np.abs(g.mean(far, np.array([1]))) <= 1.0)
    assert np.abs(g.mean(far, np.array([1]))).max() == 1.0


def test_gaussian_kl_matches_quadrature_and_monte_carlo() -> None:
    mp, sp, mq, sq = 0.3, 0.2, -0.1, 0.5
    quad, _ = integrate.quad(
        lambda x: stats.norm.pdf(x, mp, sp) * (stats.norm.logpdf(x, mp, sp) - stats.norm.logpdf(x, mq, sq)), -5, 5
    )
    assert gaussian_kl([mp], [sp], [mq], [sq]) == pytest.approx(quad, rel=1e-8)
    # Two dimensions add up; Monte Carlo agrees within its error.
    rng = np.random.default_rng(0)
    m_p, s_p, m_q, s_q = np.array([0.3, -0.5]), np.array([0.2, 0.1]), np.array([0.0, 0.0]), np.array([0.5, 0.3])
    x = rng.normal(m_p, s_p, size=(200_000, 2))
    mc = np.mean(gaussian_log_density(m_p, s_p, x) - gaussian_log_density(m_q, s_q, x))
    assert gaussian_kl(m_p, s_p, m_q, s_q) == pytest.approx(mc, abs=0.01)
    assert gaussian_kl(m_p, s_p, m_p, s_p) == 0.0


def test_flat_prior_is_uniform_on_the_box() -> None:
    g = SkillGaussians.uniform(SKILLS, obs_dim=3, act_dim=2)
    inside = g.log_density(np.zeros((2, 3)), np.array([[0.5, -1.0], [0.0, 0.0]]), np.array([0, 2]))
    np.testing.assert_allclose(inside, [-2 * math.log(2)] * 2)
    assert g.log_density(np.zeros(3), np.array([1.5, 0.0]), 1) == -np.inf
    out = g.log_density_torch(torch.zeros(4, 3), torch.rand(4, 2) * 2 - 1, torch.tensor([0, 1, 2, 0]))
    np.testing.assert_allclose(out.numpy(), -2 * math.log(2), rtol=1e-6)
    draws = np.array([g.sample(np.zeros(3), 0, np.random.default_rng(i)) for i in range(2000)])
    assert np.abs(draws).max() <= 1.0 and abs(draws.mean()) < 0.05


def prior_config(**fit) -> SkillPriorConfig:
    obs, actions, labels, _ = linear_demos()
    return SkillPriorConfig(fit_skill_gaussians(obs, actions, labels, SKILLS, **fit), PriorConfig(temperature=0.7))


def test_skill_probabilities_are_f3_over_the_skill_scores() -> None:
    config = prior_config()
    scores = np.array([-1.0, -0.4, -2.5])
    prior = SkillPrior.from_scores(SKILLS, scores, config)
    softmax = np.exp(scores / 0.7) / np.exp(scores / 0.7).sum()
    np.testing.assert_allclose(np.exp(prior.log_prob(SKILLS)), 0.95 * softmax + 0.05 / 3)
    np.testing.assert_allclose(prior.log_prob(SKILLS[::-1]), prior.log_prob(SKILLS)[::-1])


def test_mixture_density_is_the_prior_weighted_sum_of_the_gaussians() -> None:
    config = prior_config()
    prior = SkillPrior.from_scores(SKILLS, np.array([-1.0, -0.4, -2.5]), config)
    g, s, a = config.gaussians, np.array([1.2, -1.0, 0.45]), np.array([0.1, -0.2])
    expected = sum(
        math.exp(prior.log_prob([z])[0]) * stats.multivariate_normal(g.mean(s, k), np.diag(g.std[k] ** 2)).pdf(a)
        for k, z in enumerate(SKILLS)
    )
    assert prior.action_log_density(s, a) == pytest.approx(math.log(expected), rel=1e-10)
    skill, action = prior.sample_action(s, np.random.default_rng(0))
    assert skill in SKILLS and action.shape == (2,) and np.abs(action).max() <= 1.0


def test_the_payload_holds_the_scores_only_and_loads_under_refitted_gaussians() -> None:
    five_shot, refit = prior_config(), prior_config(ridge=10.0)
    prior = SkillPrior.from_scores(SKILLS, np.array([-1.0, -0.4, -2.5]), five_shot)
    payload = json.loads(json.dumps(prior.to_payload(), allow_nan=False))
    assert set(payload) == {"scores"} and set(payload["scores"]) == set(SKILLS)
    back = SkillPrior.from_payload(payload, refit)
    np.testing.assert_allclose(back.log_prob(SKILLS), prior.log_prob(SKILLS))
    assert back.gaussians is refit.gaussians  # evaluated at the current state with the current fit
    other = SkillPriorConfig(SkillGaussians.uniform(("a", "b", "c"), 3, 2))
    with pytest.raises(ConfigError, match="exactly the vocabulary"):
        SkillPrior.from_payload(payload, other)
    with pytest.raises(ConfigError, match="non-finite"):
        SkillPrior.from_payload({"scores": {z: float("nan") for z in SKILLS}}, five_shot)
    with pytest.raises(ConfigError, match="serves exactly its vocabulary"):
        prior.restrict(list(SKILLS[:2]))
    assert prior.restrict(list(SKILLS[::-1])) is prior


def test_gaussians_round_trip_through_json_exactly() -> None:
    g = prior_config().gaussians
    back = SkillGaussians.from_dict(json.loads(json.dumps(g.to_dict())))
    assert back == g and back is not g
    damaged = {**g.to_dict(), "std": [[0.1, -0.2]] * 3}
    with pytest.raises(ConfigError, match="std"):
        SkillGaussians.from_dict(damaged)
    with pytest.raises(ConfigError, match="keys"):
        SkillGaussians.from_dict({"skills": list(SKILLS)})


def test_a_skill_with_too_few_steps_gets_the_documented_fallback() -> None:
    obs, actions, labels, _ = linear_demos(n=300)
    keep = [i for i, z in enumerate(labels) if z != SKILLS[1]][:150] + [
        i for i, z in enumerate(labels) if z == SKILLS[1]
    ][:4]
    labels = [labels[i] for i in keep]
    vocab = (*SKILLS, "wave the gripper")  # never demonstrated
    g = fit_skill_gaussians(obs[keep], actions[keep], labels, vocab, min_steps=10)
    assert g.steps == (75, 4, 75, 0) and g.fitted == (True, False, True, False)
    rows = np.array(labels) == SKILLS[1]
    np.testing.assert_allclose(g.mean(obs[:5], np.full(5, 1)), np.tile(actions[keep][rows].mean(0), (5, 1)))
    np.testing.assert_allclose(g.mean(obs[:5], np.full(5, 3)), 0.0)
    np.testing.assert_allclose(g.std[[1, 3]], 1.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: {**d, "vocabulary": []}, "vocabulary is empty"),
        (lambda d: {**d, "vocabulary": [SKILLS[0], SKILLS[0], SKILLS[1]]}, "duplicates"),
        (lambda d: {**d, "act_dim": 3}, "actions have dimension 2, the environment's 3"),
        (lambda d: {**d, "obs_dim": 4}, "observations have dimension 3, the environment's 4"),
        (lambda d: {**d, "actions": np.where(np.arange(600)[:, None] == 7, np.nan, d["actions"])}, "non-finite"),
        (lambda d: {**d, "observations": d["observations"] * np.inf}, "non-finite"),
        (lambda d: {**d, "actions": d["actions"] * 5}, r"lie in \[-1, 1\]"),
        (lambda d: {**d, "skills": ["fly"] * 600}, "not in the vocabulary"),
        (lambda d: {**d, "skills": d["skills"][:-1]}, "need one each"),
        (lambda d: {**d, "observations": d["observations"][:0], "actions": d["actions"][:0], "skills": []}, "no demo"),
        (lambda d: {**d, "min_steps": 1000}, "no skill has 1000"),
        (lambda d: {**d, "min_std": 0.0}, "min_std"),
    ],
)
def test_bad_demonstrations_are_refused(change, message) -> None:
    obs, actions, labels, _ = linear_demos()
    args = {"observations": obs, "actions": actions, "skills": labels, "vocabulary": list(SKILLS)}
    args.update(obs_dim=3, act_dim=2)
    with pytest.raises(ConfigError, match=message):
        fit_skill_gaussians(**change(args))


def test_skill_prompt_keeps_the_objective_in_the_prefix_and_the_state_in_the_state_part() -> None:
    a = skill_prompt("Push the puck to the goal.", "gripper  far above the puck", SKILLS)
    b = skill_prompt("Push the puck to the goal.", "gripper touching the puck", SKILLS)
    assert a.prefix == b.prefix and "Push the puck to the goal." in a.prefix
    assert all(z in a.prefix for z in SKILLS)
    assert a.state == "State: gripper far above the puck\nSkill:" and a.state.endswith("Skill:")
    shots = skill_prompt("Push.", "x", SKILLS, examples=[("gripper high", SKILLS[0])])
    assert f"State: gripper high\nSkill: {SKILLS[0]}" in shots.prefix
