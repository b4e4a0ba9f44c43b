"""SAC-Prior (priorcache/agents/sac_prior.py) on a ControlEnv-shaped Pendulum: the tanh-Gaussian's density
and its KL to a skill Gaussian against quadrature, the losses against SAC's and their closed forms, α
tuning, skill decisions and LLM counters through a PriorCache, save/load, and bad input. The slow test
learns Pendulum with the real embedded LLM and MiniLM behind a static cache."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from scipy import integrate, stats

from priorcache.agents.sac_networks import squashed_gaussian
from priorcache.agents.sac_prior import SACPrior, SACPriorConfig
from priorcache.agents.sac_state import QSpread, SkillState
from priorcache.cache.config import CacheConfig
from priorcache.cache.prior_cache import PriorCache
from priorcache.errors import ConfigError
from priorcache.prior.skill_prior import SkillGaussians, SkillPrior, SkillPriorConfig, fit_skill_gaussians
from tests.agents._pendulum_control import SKILLS, PendulumControl, record_demos
from tests.cache._fakes import FakeBackend, HashEncoder

TINY = SACPriorConfig(hidden_size=32, batch_size=32, learning_starts=50, buffer_size=2_000, skill_horizon=5)


@pytest.fixture(scope="module")
def gaussians() -> SkillGaussians:
    env = PendulumControl()
    demos = record_demos(env, episodes=3)
    return fit_skill_gaussians(demos.observations, demos.actions, demos.skills, SKILLS, obs_dim=3, act_dim=1)


def skill_cache(gaussians: SkillGaussians, mode: str = "static", backend: FakeBackend | None = None) -> PriorCache:
    return PriorCache(
        CacheConfig(mode=mode, similarity_threshold=0.95, refresh_rate=0.0),
        HashEncoder(),
        backend or FakeBackend(),
        prior_config=SkillPriorConfig(gaussians),
        prior_kind=SkillPrior,
    )


def batch_of(agent: SACPrior, n: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    theta = rng.uniform(-math.pi, math.pi, n)
    obs = np.stack([np.cos(theta), np.sin(theta), rng.uniform(-8, 8, n)], 1).astype(np.float32)
    return {
        "obs": torch.tensor(obs),
        "actions": torch.tensor(rng.uniform(-1, 1, (n, 1)), dtype=torch.float32),
        "rewards": torch.tensor(rng.normal(-5, 2, n), dtype=torch.float32),
        "dones": torch.tensor(rng.random(n) < 0.2, dtype=torch.float32),
        "skills": torch.tensor(rng.integers(0, 3, n)),
        "hits": torch.tensor(rng.random(n) < 0.5),
        "next_obs": torch.tensor(obs[::-1].copy()),
        "next_skills": torch.tensor(rng.integers(0, 3, n)),
    }


# --- the policy's distribution and its KL to a skill Gaussian --------------------------------------------
def test_squashed_gaussian_density_is_the_change_of_variables() -> None:
    mean, log_std = torch.tensor([[0.3, -1.2]]), torch.tensor([[-0.5, 0.4]])
    noise = torch.tensor([[0.7, -1.1]])
    a, log_pi = squashed_gaussian(mean, log_std, noise)
    u = (mean + log_std.exp() * noise).numpy()[0]
    expected = sum(
        stats.norm.logpdf(np.arctanh(a.numpy()[0][i]), mean[0, i].item(), math.exp(log_std[0, i].item()))
        - math.log(1 - a.numpy()[0][i] ** 2)
        for i in range(2)
    )
    np.testing.assert_allclose(np.tanh(u), a.numpy()[0], rtol=1e-6)
    assert log_pi.item() == pytest.approx(expected, rel=1e-4)


def test_the_kl_estimate_of_a_tanh_gaussian_to_a_gaussian_matches_quadrature() -> None:
    mu, sigma, prior_mean, prior_std = 0.4, 0.5, 0.2, 0.3
    pi = lambda a: stats.norm.pdf(np.arctanh(a), mu, sigma) / (1 - a * a)  # noqa: E731
    exact, _ = integrate.quad(lambda a: pi(a) * (math.log(pi(a)) - stats.norm.logpdf(a, prior_mean, prior_std)), -1, 1)
    n = 200_000
    noise = torch.randn(n, 1, generator=torch.Generator().manual_seed(0))
    a, log_pi = squashed_gaussian(torch.full((n, 1), mu), torch.full((n, 1), math.log(sigma)), noise)
    g = SkillGaussians(("z",), np.zeros((1, 1, 1)), np.array([[prior_mean]]), np.array([[prior_std]]), [0.0], [1.0])
    kl_hat = log_pi - g.log_density_torch(torch.zeros(n, 1), a, torch.zeros(n, dtype=torch.long))
    assert kl_hat.mean().item() == pytest.approx(exact, abs=4 * kl_hat.std().item() / math.sqrt(n))


# --- the losses ---------------------------------------------------------------------------------------
def test_under_the_flat_prior_the_actor_loss_is_sacs(gaussians: SkillGaussians) -> None:
    agent = TINY.create(PendulumControl(), seed=3)  # no Gaussians given and no source: the flat prior
    assert agent.gaussians.flat
    batch = batch_of(agent)
    noise = torch.randn(len(batch["obs"]) * 3, 1, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        agent.log_alpha.fill_(math.log(0.37))
    loss, _ = agent.actor_loss(batch["obs"], noise)
    grads = torch.autograd.grad(loss, list(agent.actor.parameters()))
    # SAC's actor loss E[α·log π(a|s) − min Q(s,a)], written out here on the same samples.
    s, z = batch["obs"].repeat_interleave(3, 0), torch.arange(3).repeat(len(batch["obs"]))
    a, log_pi = agent.actor.sample(s, z, noise)
    sac = (0.37 * log_pi - torch.min(*agent.critic(s, a))).mean()
    assert loss.item() == pytest.approx(sac.item() + 0.37 * math.log(2.0), rel=1e-6)  # + α·d·log 2, a constant
    for g_ours, g_sac in zip(grads, torch.autograd.grad(sac, list(agent.actor.parameters()))):
        torch.testing.assert_close(g_ours, g_sac)


def test_under_the_flat_prior_the_critic_target_is_sacs_shifted_by_a_constant() -> None:
    agent = TINY.create(PendulumControl(), seed=4)
    batch = batch_of(agent)
    noise = torch.randn(16, 1, generator=torch.Generator().manual_seed(2))
    loss = agent.critic_loss(batch, noise)
    a2, log_pi2 = agent.actor.sample(batch["next_obs"], batch["next_skills"], noise)
    alpha, gamma = agent.alpha, TINY.gamma
    with torch.no_grad():
        q_next = torch.min(*agent.critic_target(batch["next_obs"], a2)) - alpha * log_pi2  # SAC's soft value
        target = batch["rewards"] + gamma * (1 - batch["dones"]) * (q_next - alpha * math.log(2.0))
        q1, q2 = agent.critic(batch["obs"], batch["actions"])
    expected = torch.nn.functional.mse_loss(q1, target) + torch.nn.functional.mse_loss(q2, target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_the_actor_loss_uses_the_skill_gaussian_at_the_current_state(gaussians: SkillGaussians) -> None:
    agent = TINY.create(PendulumControl(), gaussians=gaussians, seed=5)
    batch = batch_of(agent, n=8)
    noise = torch.randn(24, 1, generator=torch.Generator().manual_seed(3))
    loss, kl = agent.actor_loss(batch["obs"], noise)
    s, z = batch["obs"].repeat_interleave(3, 0), torch.arange(3).repeat(8)
    a, log_pi = agent.actor.sample(s, z, noise)
    log_n = [
        stats.norm.logpdf(a[i, 0].item(), gaussians.mean(s[i].numpy(), int(z[i]))[0], gaussians.std[int(z[i]), 0])
        for i in range(24)
    ]
    np.testing.assert_allclose(kl.detach().numpy(), log_pi.detach().numpy() - np.array(log_n), rtol=1e-4, atol=1e-4)
    q = torch.min(*agent.critic(s, a)).detach().numpy()
    expected = np.mean(agent.alpha * (log_pi.detach().numpy() - np.array(log_n)) - q)
    assert loss.item() == pytest.approx(expected, rel=1e-4)


def test_on_the_priors_scale_the_actor_loss_divides_q_by_its_mean_magnitude(gaussians: SkillGaussians) -> None:
    config = SACPriorConfig(**{**TINY.__dict__, "prior_scale_q": True})
    agent = config.create(PendulumControl(), gaussians=gaussians, seed=5)
    with torch.no_grad():  # Q ≈ 500 everywhere: the raw Q term would dwarf α·KL
        agent.critic.q1[-1].bias.fill_(500.0)
        agent.critic.q2[-1].bias.fill_(500.0)
    obs = batch_of(agent, n=8)["obs"]
    noise = torch.randn(24, 1, generator=torch.Generator().manual_seed(3))
    loss, kl = agent.actor_loss(obs, noise)
    a, _ = agent.actor.sample(obs.repeat_interleave(3, 0), torch.arange(3).repeat(8), noise)
    q = torch.min(*agent.critic(obs.repeat_interleave(3, 0), a)).detach()
    expected = (agent.alpha * kl.detach() - q / q.abs().mean()).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and q.abs().mean() > 400


@pytest.mark.parametrize(("target_per_dim", "direction"), [(-50.0, 1), (500.0, -1)])
def test_alpha_moves_towards_the_target_kl(gaussians: SkillGaussians, target_per_dim: float, direction: int) -> None:
    """KL above the target raises α, below it lowers α (the KL of this prior stays within 0…100 nats)."""
    config = SACPriorConfig(**{**TINY.__dict__, "target_kl_per_dim": target_per_dim, "alpha_lr": 0.01})
    agent = config.create(PendulumControl(), gaussians=gaussians, seed=6)
    _, kl = agent.actor_loss(batch_of(agent)["obs"])
    grad = torch.autograd.grad(agent.alpha_loss(kl), agent.log_alpha)[0]
    assert np.sign(-grad.item()) == direction  # a descent step moves log α by −lr·grad
    before = agent.alpha
    agent.learn(120)  # 70 gradient steps after learning_starts
    assert agent.counters.gradient_steps == 71
    assert (agent.alpha - before) * direction > 0


def test_a_residual_actor_starts_at_the_prior_everywhere(gaussians: SkillGaussians) -> None:
    """With ``actor_on_prior`` the untrained actor's mean action is 0.97·μ_z(s) at any state and its
    pre-tanh std σ_z (the residual starts at zero), so its KL to N_z is far below a plain actor's;
    learning moves it off; under the flat prior it is the plain actor, so the SAC equivalence holds."""
    config = SACPriorConfig(**{**TINY.__dict__, "actor_on_prior": True})
    agent = config.create(PendulumControl(), gaussians=gaussians, seed=7)
    obs = batch_of(agent, n=32)["obs"]
    s, z = obs.repeat_interleave(3, 0), torch.arange(3).repeat(32)
    with torch.no_grad():
        mean = torch.tanh(agent.actor(s, z)[0]).numpy()
    np.testing.assert_allclose(mean, 0.97 * gaussians.mean(s.numpy(), z.numpy()), atol=1e-5)
    with torch.no_grad():
        log_std = agent.actor(s, z)[1].numpy()
    np.testing.assert_allclose(log_std, np.log(gaussians.std[z.numpy()]), atol=1e-5)
    plain = TINY.create(PendulumControl(), gaussians=gaussians, seed=7)
    with torch.no_grad():
        assert not np.allclose(torch.tanh(plain.actor(s, z)[0]).numpy(), mean, atol=1e-2)
        kl_residual = agent.actor_loss(obs)[1].mean().item()
        kl_plain = plain.actor_loss(obs)[1].mean().item()
    assert 10 * kl_residual < kl_plain
    flat = config.create(PendulumControl(), gaussians=SkillGaussians.uniform(SKILLS, 3, 1), seed=7)
    assert flat.actor.base is None
    for p, q in zip(flat.actor.parameters(), TINY.create(PendulumControl(), seed=7).actor.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    agent.learn(120)
    with torch.no_grad():
        moved = torch.tanh(agent.actor(s, z)[0]).numpy()
    assert np.abs(moved - mean).max() > 1e-3


# --- skill decisions, the LLM through the cache, counters --------------------------------------------------
def test_skills_are_held_and_the_llm_is_asked_at_skill_decisions_only(gaussians: SkillGaussians) -> None:
    backend = FakeBackend()
    cache = skill_cache(gaussians, backend=backend)
    env = PendulumControl(max_episode_steps=40)
    agent = TINY.create(env, prior_source=cache, seed=0).learn(100)
    c = agent.counters
    # 40-step episodes, H = 5: 8 decisions an episode (the first at reset), and the third episode's first.
    assert (c.env_steps, c.episodes, c.skill_decisions) == (100, 2, 8 + 8 + 5)
    stats_ = cache.stats()
    assert stats_["lookups"] == c.skill_decisions and backend.n_calls == c.llm_queries == stats_["llm_calls"]
    assert c.llm_queries + c.cache_hits == c.skill_decisions and c.partial_queries == 0
    assert 0 < c.llm_queries < c.skill_decisions  # the binned state texts repeat
    prompts = {p.prefix for p, _ in backend.calls}
    assert len(prompts) == 1 and env.objective in prompts.pop()
    assert all(cands == list(SKILLS) for _, cands in backend.calls)
    held = agent.buffer.skills[: len(agent.buffer)]
    for start in range(0, 100, 5):  # a skill is held for 5 steps, episodes are 40 long
        assert len(set(held[start : start + 5])) == 1


def test_the_uncached_reference_asks_at_every_decision(gaussians: SkillGaussians) -> None:
    agent = TINY.create(PendulumControl(max_episode_steps=40), prior_source=skill_cache(gaussians, "none"))
    agent.learn(80)
    # two 40-step episodes of 8 decisions each (H = 5); the call ends with the second, none begins
    assert agent.counters.llm_queries == agent.counters.skill_decisions == 16 and agent.counters.cache_hits == 0


def test_a_learned_state_abstraction_keys_the_cache_and_an_adaptive_cache_hears_rewards(
    gaussians: SkillGaussians,
) -> None:
    """The learned state abstraction (priorcache/envs/state_abstraction.py) keys the cache through the
    agent's ``embedder`` (its ``encode`` of a text would raise, so every lookup came with an embedding);
    in adaptive mode the cache gets the rewards and TD errors it learns from."""
    from priorcache.envs.infonce import AbstractionConfig
    from priorcache.envs.state_abstraction import semi_supervised

    env = PendulumControl(max_episode_steps=40)
    demos = record_demos(env, episodes=3)
    abstraction = semi_supervised(
        demos.observations,
        demos.episode,
        env.describe,
        env_name="test:pendulum",
        config=AbstractionConfig(epochs=3, n_labelled=100, progress=False),
    ).abstraction
    cache = PriorCache(
        CacheConfig(mode="adaptive", refresh_rate=0.05),
        abstraction,
        FakeBackend(),
        prior_config=SkillPriorConfig(gaussians),
        prior_kind=SkillPrior,
    )
    agent = TINY.create(env, prior_source=cache, embedder=lambda obs, text: abstraction.embed(obs)[0], seed=0)
    agent.learn(300)
    assert cache.stats()["lookups"] == agent.counters.skill_decisions and len(cache) > 0
    assert len(cache.meta_log()) >= 1  # a meta-optimiser window closed on the agent's lookups and rewards


def test_a_strong_prior_decides_the_skill_when_q_is_flat(gaussians: SkillGaussians) -> None:
    favourite = SKILLS[1]
    backend = FakeBackend(lambda prompt, skill: 0.0 if skill == favourite else -30.0)
    agent = TINY.create(PendulumControl(), prior_source=skill_cache(gaussians, backend=backend), seed=1)
    with torch.no_grad():  # Q ≡ 0: F1 over skills is the prior itself
        for p in agent.critic.parameters():
            p.zero_()
    obs, _ = agent.env.reset(seed=0)
    action, state = agent.predict(obs)
    assert state == SkillState(1, TINY.skill_horizon - 1) and action.shape == (1,)
    calls = backend.n_calls
    for _ in range(TINY.skill_horizon - 1):
        action, state = agent.predict(obs, state)
    assert state.steps_left == 0 and backend.n_calls == calls  # held: no lookup
    _, state = agent.predict(obs, state)
    assert state == SkillState(1, TINY.skill_horizon - 1)  # a new decision, served by the cache (same state)
    assert agent.prior_source.stats()["lookups"] == 2 and backend.n_calls == calls


def test_q_spread_is_the_bias_corrected_running_rms_and_never_magnifies() -> None:
    spread = QSpread(beta=0.9)
    assert spread.scale == 1.0  # nothing observed: Q as it is
    spread.observe(np.array([0.0, 0.1, 0.2]))  # spread below 1: Q is not magnified
    assert spread.scale == 1.0
    qs = [np.array([0.0, 300.0, 0.0]), np.array([10.0, -50.0, 40.0])]
    for q in qs:
        spread.observe(q)
    squares = [float(np.mean((q - q.mean()) ** 2)) for q in [np.array([0.0, 0.1, 0.2]), *qs]]
    m = sum(0.1 * 0.9 ** (2 - i) * v for i, v in enumerate(squares)) / (1 - 0.9**3)
    assert spread.scale == pytest.approx(math.sqrt(m))


@pytest.mark.parametrize(("normalise", "chosen"), [(False, 2), (True, 1)])
def test_on_the_priors_scale_a_large_q_no_longer_drowns_the_prior(
    gaussians: SkillGaussians, normalise: bool, chosen: int
) -> None:
    """Q(s,z) = (0, 0, 300) at α_z = 1: raw, it outweighs any prior; divided by its spread (√20000 ≈ 141)
    it adds 2.1 nats to skill 2, less than the prior's preference for skill 1 (F3's floor ε = 0.05 caps
    it at log(0.95·3/0.05 + 1) ≈ 4.1 nats), which then decides F1, in learning's draws and predict's mode."""
    backend = FakeBackend(lambda prompt, skill: 0.0 if skill == SKILLS[1] else -30.0)
    settings = {"prior_scale_q": normalise, "skill_alpha_0": 1.0, "skill_alpha_min": 1.0}
    config = SACPriorConfig(**{**TINY.__dict__, **settings})
    agent = config.create(PendulumControl(), prior_source=skill_cache(gaussians, backend=backend), seed=3)
    agent.skill_q_values = lambda obs, deterministic=False: np.array([0.0, 0.0, 300.0])  # type: ignore[method-assign]
    obs, info = agent.env.reset(seed=0)
    draws = [agent._decide_skill(obs, info["state_text"]).skill for _ in range(50)]
    assert np.mean(np.array(draws) == chosen) > 0.75  # normalised: 0.967 / (0.967 + 0.017 + 0.017·e^2.1) ≈ 0.86
    assert agent.predict(obs)[1].skill == chosen
    assert agent.q_spread.count == (50 if normalise else 0)  # predict does not move the running spread


def test_skill_q_warmup_weighs_q_in_f1_by_the_critics_age(gaussians: SkillGaussians) -> None:
    """With ``skill_q_warmup`` N, F1 takes Q·min(1, gradient steps / N): no say before learning, full say
    after N steps; the same Q in F1's mode then moves from the prior's skill to Q's."""
    backend = FakeBackend(lambda prompt, skill: 0.0 if skill == SKILLS[1] else -1.0)
    config = SACPriorConfig(**{**TINY.__dict__, "skill_q_warmup": 100, "skill_alpha_0": 1.0, "skill_alpha_min": 1.0})
    agent = config.create(PendulumControl(), prior_source=skill_cache(gaussians, backend=backend), seed=3)
    q = np.array([0.0, 0.0, 3.0])
    agent.skill_q_values = lambda obs, deterministic=False: q  # type: ignore[method-assign]
    obs, _ = agent.env.reset(seed=0)
    for steps, weight, mode in [(0, 0.0, 1), (25, 0.25, 1), (100, 1.0, 2), (400, 1.0, 2)]:
        agent.counters.gradient_steps = steps
        np.testing.assert_allclose(agent.f1_q(q, observe=False), weight * q)
        assert agent.predict(obs)[1].skill == mode
    with pytest.raises(ConfigError, match="skill_q_warmup"):
        SACPriorConfig(skill_q_warmup=-1)


# --- episodes across learn calls -----------------------------------------------------------------------
def _facts(agent: SACPrior) -> dict:
    """What learning did, less its timings."""
    c = agent.counters
    return {
        "counts": (c.env_steps, c.episodes, c.skill_decisions, c.llm_queries, c.cache_hits, c.gradient_steps),
        "episodes": agent.episode_log,
        "buffer": [agent.buffer.obs[: len(agent.buffer)].tolist(), agent.buffer.skills[: len(agent.buffer)].tolist()],
        "weights": [p.tolist() for p in agent.actor.parameters()],
    }


def test_an_episode_goes_on_across_learn_calls(gaussians: SkillGaussians) -> None:
    """Learning in two calls plays the episodes one call plays: the episode in progress at the end of
    the first goes on in the second (its steps add up to one 40-step episode, none is cut)."""

    def make() -> SACPrior:
        return TINY.create(PendulumControl(max_episode_steps=40), prior_source=skill_cache(gaussians), seed=3)

    whole, chunked, restarted = make().learn(100), make().learn(60), make().learn(60)
    ep = chunked.episode_in_progress
    assert ep is not None and (ep.length, len(ep.actions)) == (20, 20) and len(chunked.episode_log) == 1
    chunked.learn(40)
    assert [(e["length"], e["env_steps"]) for e in chunked.episode_log] == [(40, 40), (40, 80)]
    assert chunked.episode_in_progress is not None and chunked.episode_in_progress.length == 20
    assert _facts(chunked) == _facts(whole)
    # new_episode abandons the episode in progress: the next one runs 40 steps from step 60
    restarted.learn(40, new_episode=True)
    assert [(e["length"], e["env_steps"]) for e in restarted.episode_log] == [(40, 40), (40, 100)]


# --- persistence ---------------------------------------------------------------------------------------
def test_save_and_load_give_identical_predictions_and_training(tmp_path: Path, gaussians: SkillGaussians) -> None:
    env = PendulumControl(max_episode_steps=50)
    agent = TINY.create(env, prior_source=skill_cache(gaussians, "none"), seed=2).learn(120)
    agent.save(tmp_path / "agent")
    agent.save_replay_buffer(tmp_path / "buffer.safetensors")
    loaded = SACPrior.load(tmp_path / "agent", PendulumControl(max_episode_steps=50), skill_cache(gaussians, "none"))
    loaded.load_replay_buffer(tmp_path / "buffer.safetensors")
    assert loaded.gaussians == gaussians and loaded.counters == agent.counters and loaded.alpha == agent.alpha
    probe = PendulumControl()  # not the training env: its episode in progress goes on at the next learn()
    obs = [probe.reset(seed=s)[0] for s in range(5)]
    for deterministic in (True, False):
        ours = [agent.predict(o, deterministic=deterministic) for o in obs]
        theirs = [loaded.predict(o, deterministic=deterministic) for o in obs]
        for (a1, s1), (a2, s2) in zip(ours, theirs):
            np.testing.assert_array_equal(a1, a2)
            assert s1 == s2
    # Both train on identically: same RNG streams, optimiser moments, buffer and counters, and the
    # episode in progress at the save (20 of 50 steps) replayed on the fresh env and going on.
    assert loaded.episode_in_progress is not None and loaded.episode_in_progress.length == 20
    agent.learn(60)
    loaded.learn(60)
    assert agent.episode_log == loaded.episode_log and agent.counters.env_steps == 180
    assert [e["length"] for e in loaded.episode_log] == [50, 50, 50]
    for p, q in zip(agent.actor.parameters(), loaded.actor.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


class OtherStarts(PendulumControl):
    """Resets to other initial states than the seed asks for."""

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        return super().reset(seed=None if seed is None else seed + 1, options=options)


def test_an_episode_in_progress_that_does_not_replay_is_refused_or_dropped(tmp_path: Path) -> None:
    agent = TINY.create(PendulumControl(max_episode_steps=50), seed=4).learn(30)
    agent.save(tmp_path / "agent")
    with pytest.raises(ConfigError, match="ended it at step 10 of 30.*replay_episode=False"):
        SACPrior.load(tmp_path / "agent", PendulumControl(max_episode_steps=10))
    with pytest.raises(ConfigError, match="did not reach its saved observation"):
        SACPrior.load(tmp_path / "agent", OtherStarts(max_episode_steps=50))
    dropped = SACPrior.load(tmp_path / "agent", PendulumControl(max_episode_steps=50), replay_episode=False)
    assert dropped.episode_in_progress is None and dropped.learn(50).episode_log[0]["length"] == 50


class OtherSkills(PendulumControl):
    skills = ("spin", "stop")


class Cartpole3(PendulumControl):
    """Another observation dimension (4)."""

    def __init__(self) -> None:
        super().__init__()
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)


def test_load_refuses_another_environment_and_damaged_files(tmp_path: Path) -> None:
    TINY.create(PendulumControl()).save(tmp_path / "agent")
    with pytest.raises(ConfigError, match="skill Gaussians are for skills"):
        SACPrior.load(tmp_path / "agent", OtherSkills())
    with pytest.raises(ConfigError, match="obs/action dims 3/1"):
        SACPrior.load(tmp_path / "agent", Cartpole3())
    changed = PendulumControl()
    changed.objective = "Keep the pendulum hanging down."
    with pytest.raises(ConfigError, match="was saved for the env"):
        SACPrior.load(tmp_path / "agent", changed)
    weights = tmp_path / "agent" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ConfigError, match="damaged"):
        SACPrior.load(tmp_path / "agent", PendulumControl())
    with pytest.raises(ConfigError, match="no saved agent"):
        SACPrior.load(tmp_path / "nowhere", PendulumControl())


def test_a_residual_actor_saved_under_another_residual_is_refused(tmp_path: Path, gaussians: SkillGaussians) -> None:
    """A residual actor's save says which residual its weights were trained under; one without that word
    (saved before the std joined the residual) or with another is refused, a plain actor's never asked."""
    config = SACPriorConfig(**{**TINY.__dict__, "actor_on_prior": True})
    config.create(PendulumControl(), gaussians=gaussians).save(tmp_path / "agent")
    SACPrior.load(tmp_path / "agent", PendulumControl())  # its own kind loads
    doc_path = tmp_path / "agent" / "agent.json"
    doc = json.loads(doc_path.read_text())
    for saved, words in ((None, "before its std joined the residual"), ("mean", "saved as 'mean'")):
        doc["state"]["actor_residual"] = saved
        doc_path.write_text(json.dumps(doc))
        with pytest.raises(ConfigError, match=f"{words}.*train it again"):
            SACPrior.load(tmp_path / "agent", PendulumControl())
    TINY.create(PendulumControl(), gaussians=gaussians).save(tmp_path / "plain")
    assert not SACPrior.load(tmp_path / "plain", PendulumControl()).config.actor_on_prior


# --- bad input -------------------------------------------------------------------------------------------
class WideActions(PendulumControl):
    def __init__(self) -> None:
        super().__init__()
        self.action_space = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)


def test_bad_input_is_refused(gaussians: SkillGaussians) -> None:
    env = PendulumControl()
    with pytest.raises(ConfigError, match="skill_horizon"):
        SACPriorConfig(skill_horizon=0)
    with pytest.raises(ConfigError, match="gamma"):
        SACPriorConfig(gamma=1.5)
    with pytest.raises(ConfigError, match="torch_threads"):
        SACPriorConfig(torch_threads=0)
    with pytest.raises(ConfigError, match="q_spread_ema"):
        SACPriorConfig(q_spread_ema=1.0)
    with pytest.raises(ConfigError, match=r"action box \[-1, 1\]"):
        TINY.create(WideActions())
    with pytest.raises(ConfigError, match="skill vocabulary has duplicates"):
        TINY.create(type("Dup", (PendulumControl,), {"skills": ("a", "a")})())
    with pytest.raises(ConfigError, match="skill vocabulary is empty"):
        TINY.create(type("Empty", (PendulumControl,), {"skills": ()})())
    other = SkillGaussians.uniform(SKILLS, 3, 1)
    with pytest.raises(ConfigError, match="serves other skill Gaussians"):
        TINY.create(env, prior_source=skill_cache(gaussians), gaussians=other)
    agent = TINY.create(env, gaussians=gaussians)
    with pytest.raises(ConfigError, match="one observation of shape"):
        agent.predict(np.zeros((2, 3)))
    with pytest.raises(ConfigError, match="total_timesteps"):
        agent.learn(0)


# --- slow: learning, with the real embedded LLM and MiniLM behind a static cache -----------------------------
@pytest.mark.slow
def test_sac_prior_learns_pendulum_with_the_real_llm_behind_a_static_cache() -> None:
    from priorcache.cache.encoder import MiniLMEncoder
    from priorcache.prior.embedded import EmbeddedBackend

    env = PendulumControl()
    demos = record_demos(env, episodes=5)
    fitted = fit_skill_gaussians(demos.observations, demos.actions, demos.skills, SKILLS, obs_dim=3, act_dim=1)
    cache = PriorCache(CacheConfig(mode="static"), MiniLMEncoder(), EmbeddedBackend(), SkillPriorConfig(fitted),
                       SkillPrior)  # fmt: skip
    config = SACPriorConfig(hidden_size=128, batch_size=128, learning_starts=1_000, skill_horizon=10)
    agent = config.create(env, prior_source=cache, seed=0).learn(5_000)

    returns = [e["return"] for e in agent.episode_log]
    assert len(returns) == 25
    assert np.mean(returns[-5:]) > np.mean(returns[:5]) + 300, returns
    c, stats_ = agent.counters, cache.stats()
    # 25 episodes of 20 decisions; a learn call that ends with an episode starts no new one
    assert c.skill_decisions == 25 * 20 and stats_["lookups"] == c.skill_decisions
    assert c.llm_queries == stats_["llm_calls"] and c.llm_queries * 4 < c.skill_decisions  # ≥ 4× fewer than uncached
    audits = cache.audit_log()
    assert audits and all(a["kl"] <= a["kl_bound"] + 1e-9 for a in audits)  # F5 on the skill priors
    # The learnt greedy policy on reset seeds it never trained on.
    evaluation = []
    for seed in range(10_000, 10_003):
        obs, _ = env.reset(seed=seed)
        state, total, done = None, 0.0, False
        while not done:
            action, state = agent.predict(obs, state)
            obs, reward, terminated, truncated, _ = env.step(action)
            total, done = total + reward, terminated or truncated
        evaluation.append(total)
    assert np.mean(evaluation) > np.mean(returns[:5]) + 300, evaluation


@pytest.mark.slow
def test_sac_prior_on_metaworld_reach_with_the_real_llm(tmp_path: Path) -> None:
    """A real task end to end: MetaWorld's scripted demonstrations fit the skill Gaussians (skills the
    demonstrations never use fall back), the embedded LLM chooses skills through a static cache, and a
    saved agent acts the same on a fresh environment."""
    from priorcache.cache.encoder import MiniLMEncoder
    from priorcache.envs.control_demos import record_control_demos
    from priorcache.envs.registry import make_env
    from priorcache.prior.embedded import EmbeddedBackend

    env = make_env("metaworld:reach-v3", max_episode_steps=150)
    demos = record_control_demos("metaworld:reach-v3", 5, cache_dir=tmp_path / "demos", progress=False)
    fitted = fit_skill_gaussians(demos.observations, demos.actions, demos.skills, env.skills, obs_dim=39, act_dim=4)
    counts = [demos.skills.count(z) for z in env.skills]
    assert list(fitted.steps) == counts and list(fitted.fitted) == [n >= 10 for n in counts] and any(fitted.fitted)
    encoder, backend = MiniLMEncoder(), EmbeddedBackend()
    cache = PriorCache(CacheConfig(mode="static"), encoder, backend, SkillPriorConfig(fitted), SkillPrior)
    config = SACPriorConfig(hidden_size=64, batch_size=64, learning_starts=300, skill_horizon=10)
    agent = config.create(env, prior_source=cache, seed=0).learn(600)

    c = agent.counters
    assert (c.episodes, c.skill_decisions) == (4, 4 * 15) and c.gradient_steps == 301
    assert c.llm_queries == cache.stats()["llm_calls"] and 0 < c.llm_queries < c.skill_decisions
    assert all(isinstance(e["success"], bool) for e in agent.episode_log)
    assert all(a["kl"] <= a["kl_bound"] + 1e-9 for a in cache.audit_log())

    agent.save(tmp_path / "agent")
    fresh_cache = PriorCache(CacheConfig(mode="static"), encoder, backend, SkillPriorConfig(fitted), SkillPrior)
    loaded = SACPrior.load(tmp_path / "agent", make_env("metaworld:reach-v3", max_episode_steps=150), fresh_cache)
    obs, info = env.reset(seed=123)
    state_a = state_b = None
    for _ in range(12):  # across a skill decision
        a1, state_a = agent.predict(obs, state_a, state_text=info["state_text"])
        a2, state_b = loaded.predict(obs, state_b, state_text=info["state_text"])
        np.testing.assert_array_equal(a1, a2)
        assert state_a == state_b
        obs, _, _, _, info = env.step(a1)
    with pytest.raises(ConfigError, match="skill Gaussians are for"):
        SACPrior.load(tmp_path / "agent", make_env("metaworld:push-v3"))
