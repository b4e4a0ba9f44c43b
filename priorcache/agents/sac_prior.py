"""SAC-Prior (docs/design.md §4; anchor: SPiRL's KL-regularised SAC, Pertsch et al. 2020): continuous control
with LLM-chosen skills. The algorithm in one file, to be read top to bottom (networks: ``sac_networks``,
bookkeeping: ``sac_state``, saving: ``sac_saving``).

Hybrid action space. A task has a small vocabulary of skills z (``env.skills``); a skill, once chosen,
is held for H steps, so the LLM is asked at skill decisions only.

- **High level** (F1 over skills): z ~ π(z|s) ∝ p_LLM(z|s)·exp(Q(s,z)/α_z), with p_LLM(z|s) served by a
  prior source (a :class:`~priorcache.cache.prior_cache.PriorCache` in any mode; mode ``none`` is the
  uncached reference; no source: the uniform p(z)) and Q(s,z) = E_{a∼π(·|s,z)} Q(s,a) estimated with
  ``q_samples`` draws. α_z follows the cache's hit rate (F2), as DQN-Prior's does.
- **Low level**: a tanh-Gaussian actor π(a|s,z) (the skill a one-hot input) minimising
  E_{s, z, a∼π}[α·(log π(a|s,z) − log N_z(a|s)) − min_i Q_i(s,a)], with N_z the skill's Gaussian action
  prior (:mod:`priorcache.prior.skill_prior`), evaluated at the current s. Every state of a batch is
  trained under *every* skill (the vocabulary is small): the high level compares Q(s,z) across all
  skills, so each skill's policy must be trained at all states, not only where it was chosen.
- **Critics**: twin Q(s,a), target networks with soft updates; target
  r + γ·(1 − done)·(min_i Q'_i(s',a') − α·KL̂(π‖N_z')(s')), a' ~ π(·|s',z'), z' the skill in force
  at s', KL̂ = log π(a'|s',z') − log N_z'(a'|s') (a one-sample estimate: the KL of a tanh-Gaussian to
  a Gaussian has no closed form). A truncated episode bootstraps with the skill it was holding. Q sees
  neither the held skill nor its steps left (the design's Q(s,a)); the hierarchy enters through z'.
- **α** (SPiRL's automatic α, log-parameterised): loss −log α·(KL̂ − δ_KL), so α rises while the mean
  KL is above the target δ_KL = ``target_kl_per_dim``·d and falls below it.

With the flat prior (:meth:`SkillGaussians.uniform`, log N_z = −d·log 2) the actor loss is SAC's
α·log π − Q plus the constant α·d·log 2, the critic target is SAC's shifted by a constant, and the
default δ_KL = d·(1 + log 2) is SAC's default target entropy −d (KL(π‖U) = d·log 2 − H(π)):
this agent with ``prior_source=None`` and flat Gaussians is SAC (with skills as an extra input).

Warm-up: for the first ``learning_starts`` steps the action is a draw from the held skill's N_z(·|s)
(uniform for the flat prior, which is SAC's random warm-up). With ``actor_on_prior`` the actor is a
residual on the skill prior's mean and std (:class:`~priorcache.agents.sac_networks.Actor`), so it starts
where the prior is, as SPiRL starts its policy at the prior.

SB3-style API: ``learn(total_timesteps)``
(the episode in progress goes on across calls, as SB3's ``learn(n, reset_num_timesteps=False)``),
``predict(obs, state, deterministic)`` (``state`` holds the current skill and its steps left, as
SB3's recurrent policies hold theirs), ``save``/``load`` (safetensors + JSON, no pickle; the episode
in progress is saved with its actions and replayed on load).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.nn import functional as F

from priorcache.agents.base import episode_seed
from priorcache.agents.control_buffer import ControlReplayBuffer
from priorcache.agents.sac_networks import Actor, TwinQ
from priorcache.agents.sac_state import EpisodeInProgress, QSpread, SACPriorCounters, SkillDecision, SkillState
from priorcache.agents.saving import read_arrays, write_arrays
from priorcache.errors import ConfigError
from priorcache.posterior import PosteriorSampler, TemperatureSchedule
from priorcache.prior.base import Prompt
from priorcache.prior.skill_prior import SkillGaussians, check_vocabulary, skill_prompt
from priorcache.torch_threads import torch_threads

NAME = "sac-prior"


class SkillPriorSource(Protocol):
    """What serves p(z|s): ``PriorCache.lookup`` fits (the result needs ``prior.log_prob(skills)``,
    ``hit``, ``llm_calls``, ``partial_calls`` and ``llm_time_s``)."""

    def lookup(
        self,
        state_text: str,
        prompt: Prompt,
        candidates: list[str],
        q_values: np.ndarray | None = None,
        alpha: float = 1.0,
        embedding: np.ndarray | None = None,
        step: int | None = None,
    ) -> Any: ...


# --- configuration (d3rlpy style: the config creates the algorithm) ------------------------------------
@dataclass
class SACPriorConfig:
    skill_horizon: int = 10  # H: steps a skill is held
    gamma: float = 0.99
    tau: float = 0.005  # soft target update rate
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    init_alpha: float = 1.0
    target_kl_per_dim: float = 1.0 + math.log(2.0)  # δ_KL / d; flat prior: SAC's target entropy −d
    batch_size: int = 256
    buffer_size: int = 100_000
    learning_starts: int = 1_000
    updates_per_step: int = 1
    # Q on the prior's scale (our design, docs/design.md §4), so that a large reward scale does not drown
    # the prior: F1 over skills takes Q / max(1, running RMS of Q(s,z) − mean_z Q(s,z)), and the actor
    # loss's Q term is divided by the batch's mean |Q| (TD3+BC's normalisation). False: raw Q, as SAC's.
    prior_scale_q: bool = False
    q_spread_ema: float = 0.99  # β of the running mean square of that spread (bias-corrected)
    # Gradient steps over which Q's weight in F1 over skills rises linearly from 0 to 1 (0: full weight at
    # once): a young critic's Q then cannot re-pick the skills of a prior that is only just decided (§4).
    skill_q_warmup: int = 0
    # π's pre-tanh mean atanh(0.97·μ_z(s)) and log-std log σ_z, each plus the network's output, which starts
    # at zero: a residual on the skill prior, whose Gaussian the untrained actor follows (our design, §4).
    actor_on_prior: bool = False
    hidden_size: int = 256
    q_samples: int = 4  # draws per skill for Q(s,z)
    skill_alpha_0: float = 1.0  # F2 for the high level's α_z
    skill_alpha_min: float = 0.25
    hit_rate_ema: float = 0.95
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    # Torch threads while learning (restored afterwards). The networks are small: on 2 busy cores a
    # second thread made a gradient step 20× slower (33 ms against 1.6 ms), so one is the default.
    torch_threads: int | None = 1

    def __post_init__(self) -> None:
        if self.torch_threads is not None and (not isinstance(self.torch_threads, int) or self.torch_threads < 1):
            raise ConfigError(f"torch_threads must be None or an integer ≥ 1, got {self.torch_threads!r}")
        for name in ("skill_horizon", "batch_size", "buffer_size", "updates_per_step", "hidden_size", "q_samples"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be an integer ≥ 1, got {getattr(self, name)!r}")
        if not isinstance(self.skill_q_warmup, int) or self.skill_q_warmup < 0:
            raise ConfigError(f"skill_q_warmup must be an integer ≥ 0, got {self.skill_q_warmup!r}")
        if not isinstance(self.learning_starts, int) or self.learning_starts < 0:
            raise ConfigError(f"learning_starts must be an integer ≥ 0, got {self.learning_starts!r}")
        if not (0.0 <= self.gamma <= 1.0 and 0.0 < self.tau <= 1.0):
            raise ConfigError(f"need gamma in [0, 1] and tau in (0, 1], got {self.gamma}, {self.tau}")
        positive = ("actor_lr", "critic_lr", "alpha_lr", "init_alpha")
        if not all(math.isfinite(getattr(self, n)) and getattr(self, n) > 0 for n in positive):
            raise ConfigError(f"{', '.join(positive)} must be finite and > 0")
        if not math.isfinite(self.target_kl_per_dim) or self.log_std_min >= self.log_std_max:
            raise ConfigError("target_kl_per_dim must be finite and log_std_min < log_std_max")
        if not 0.0 < self.q_spread_ema < 1.0:
            raise ConfigError(f"q_spread_ema must be in (0, 1), got {self.q_spread_ema!r}")
        if not 0 < self.skill_alpha_min <= self.skill_alpha_0:
            raise ConfigError(
                f"need 0 < skill_alpha_min ≤ skill_alpha_0, got {self.skill_alpha_min}, {self.skill_alpha_0}"
            )

    def create(
        self,
        env: Any,
        *,
        prior_source: SkillPriorSource | None = None,
        gaussians: SkillGaussians | None = None,
        prompt_builder: Callable[[str, str], Prompt] | None = None,
        embedder: Callable[[np.ndarray, str], np.ndarray] | None = None,
        seed: int = 0,
    ) -> SACPrior:
        return SACPrior(self, env, prior_source, gaussians, prompt_builder, embedder, seed)


# --- the agent -----------------------------------------------------------------------------------------
class SACPrior:
    """SAC-Prior on a ControlEnv-shaped ``env`` (observation/action Box spaces, actions in [−1, 1]^d,
    ``objective``, ``skills``, ``describe(obs)``, ``info["state_text"]``)."""

    def __init__(
        self,
        config: SACPriorConfig,
        env: Any,
        prior_source: SkillPriorSource | None = None,
        gaussians: SkillGaussians | None = None,
        prompt_builder: Callable[[str, str], Prompt] | None = None,
        embedder: Callable[[np.ndarray, str], np.ndarray] | None = None,
        seed: int = 0,
    ) -> None:
        if not isinstance(config, SACPriorConfig):
            raise ConfigError(f"config must be a SACPriorConfig, got {type(config).__name__}")
        self.config, self.env, self.seed = config, env, seed
        self.skills = check_vocabulary(getattr(env, "skills", ()))
        self.objective = str(getattr(env, "objective", ""))
        obs_space, act_space = env.observation_space, env.action_space
        if len(obs_space.shape) != 1 or len(act_space.shape) != 1:
            raise ConfigError(f"SAC-Prior needs vector observations and actions, got {obs_space} and {act_space}")
        if not (np.all(act_space.low == -1.0) and np.all(act_space.high == 1.0)):
            raise ConfigError(f"SAC-Prior needs the action box [-1, 1]^d, got {act_space}")
        self.obs_dim, self.act_dim = int(obs_space.shape[0]), int(act_space.shape[0])
        self.gaussians = self._check_gaussians(gaussians, prior_source)
        self.prior_source = prior_source
        self.prompt_builder = prompt_builder or functools.partial(skill_prompt, skills=self.skills)
        self.embedder = embedder
        self.target_kl = config.target_kl_per_dim * self.act_dim

        self.rng = np.random.default_rng(seed)  # warm-up actions, skill draws, replay sampling
        self._predict_rng = np.random.default_rng([seed, 1])
        self.torch_rng = torch.Generator().manual_seed(seed)  # the actor's noise in learning
        self.sampler = PosteriorSampler(
            TemperatureSchedule(config.skill_alpha_0, config.skill_alpha_min, config.hit_rate_ema), self.rng
        )
        n, h = len(self.skills), config.hidden_size
        with torch.random.fork_rng(devices=[]):  # seeded weights without touching torch's global RNG
            torch.manual_seed(seed)
            base = None
            if config.actor_on_prior and not self.gaussians.flat:
                base = self.gaussians.mean_std_torch
            self.actor = Actor(self.obs_dim, n, self.act_dim, h, (config.log_std_min, config.log_std_max), base)
            self.critic = TwinQ(self.obs_dim, self.act_dim, h)
        self.critic_target = TwinQ(self.obs_dim, self.act_dim, h)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(config.init_alpha), requires_grad=True)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=config.alpha_lr)
        self.buffer = ControlReplayBuffer(config.buffer_size, self.obs_dim, self.act_dim)
        self.counters = SACPriorCounters()
        self.episode_log: list[dict[str, Any]] = []
        self.episode_in_progress: EpisodeInProgress | None = None
        self.last_losses: dict[str, float] = {}
        self._td = torch.zeros(0)  # |TD| of the last critic batch (reported to an adaptive cache)
        self.q_spread = QSpread(config.q_spread_ema)

    def _check_gaussians(self, gaussians: SkillGaussians | None, source: Any) -> SkillGaussians:
        """The agent's N_z: the given ones, else the source's (a skill-prior cache), else the flat prior.
        A source whose served priors carry other Gaussians would disagree with the losses: refused."""
        served = getattr(getattr(source, "prior_config", None), "gaussians", None)
        if gaussians is None:
            gaussians = (
                served if served is not None else SkillGaussians.uniform(self.skills, self.obs_dim, self.act_dim)
            )
        if not isinstance(gaussians, SkillGaussians):
            raise ConfigError(f"gaussians must be SkillGaussians, got {type(gaussians).__name__}")
        if served is not None and served != gaussians:
            raise ConfigError("the prior source serves other skill Gaussians than the agent's own")
        if gaussians.skills != self.skills:
            raise ConfigError(
                f"the skill Gaussians are for skills {list(gaussians.skills)}, the env's are {list(self.skills)}"
            )
        if (gaussians.obs_dim, gaussians.act_dim) != (self.obs_dim, self.act_dim):
            raise ConfigError(
                f"the skill Gaussians are for obs/action dims {gaussians.obs_dim}/{gaussians.act_dim}, "
                f"the env's are {self.obs_dim}/{self.act_dim}"
            )
        return gaussians

    @property
    def alpha(self) -> float:
        return float(self.log_alpha.detach().exp())

    # --- the high level: F1 over skills -----------------------------------------------------------
    def skill_q_values(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Q(s,z) = E_{a∼π(·|s,z)} min_i Q_i(s,a) for every skill, from ``q_samples`` draws each
        (``deterministic``: at the actor's mean action, the action ``predict`` would take)."""
        n, k = len(self.skills), 1 if deterministic else self.config.q_samples
        with torch.no_grad():
            s = torch.as_tensor(obs, dtype=torch.float32).expand(n * k, -1)
            z = torch.arange(n).repeat_interleave(k)
            if deterministic:
                a = torch.tanh(self.actor(s, z)[0])
            else:
                a, _ = self.actor.sample(s, z, torch.randn(n * k, self.act_dim, generator=self.torch_rng))
            q = torch.min(*self.critic(s, a)).view(n, k).mean(dim=1)
        return q.numpy().astype(np.float64)

    def f1_q(self, q: np.ndarray, observe: bool) -> np.ndarray:
        """Q(s,z) as F1 over skills takes it: divided by max(1, RMS spread) with ``prior_scale_q``
        (``observe``: a training decision, whose spread updates the running mean square first), and
        weighted by min(1, gradient steps / ``skill_q_warmup``) when that is set."""
        if self.config.prior_scale_q:
            if observe:
                self.q_spread.observe(q)
            q = q / self.q_spread.scale
        if self.config.skill_q_warmup:
            q = q * min(1.0, self.counters.gradient_steps / self.config.skill_q_warmup)
        return q

    def _skill_prior(self, obs: np.ndarray, state_text: str, q: np.ndarray, alpha: float) -> tuple[np.ndarray, Any]:
        """log p(z|s) over the vocabulary and the lookup behind it (uniform and None without a source)."""
        if self.prior_source is None:
            return np.full(len(self.skills), -math.log(len(self.skills))), None
        embedding = self.embedder(obs, state_text) if self.embedder is not None else None
        lookup = self.prior_source.lookup(
            state_text,
            self.prompt_builder(self.objective, state_text),
            list(self.skills),
            q_values=q,
            alpha=alpha,
            embedding=embedding,
            step=self.counters.skill_decisions,
        )
        return lookup.prior.log_prob(self.skills), lookup

    def _decide_skill(self, obs: np.ndarray, state_text: str) -> SkillDecision:
        """A skill decision while learning: the prior (an LLM query unless the cache serves it), F2's
        update, then z ~ π(z|s) ∝ p(z|s)·exp(Q(s,z)/α_z)."""
        start = time.perf_counter()
        q = self.f1_q(self.skill_q_values(obs), observe=True)
        log_prior, lookup = self._skill_prior(obs, state_text, q, self.sampler.schedule.alpha)
        c = self.counters
        c.skill_decisions += 1
        hit = lookup is not None and bool(lookup.hit)
        if lookup is not None:
            self.sampler.schedule.update(hit)  # F2, before the draw, as DQN-Prior
            c.llm_queries += int(lookup.llm_calls)
            c.partial_queries += int(lookup.partial_calls)
            c.cache_hits += int(hit)
            c.llm_time_s += float(lookup.llm_time_s)
        skill, _ = self.sampler.sample(log_prior, q)
        c.decision_time_s += time.perf_counter() - start
        return SkillDecision(skill, hit, lookup)

    # --- the losses (methods, so the tests can evaluate them on fixed batches) ---------------------------
    def critic_loss(self, batch: dict[str, torch.Tensor], noise: torch.Tensor | None = None) -> torch.Tensor:
        """½-free MSE of both heads to r + γ(1−done)(min Q'(s',a') − α·KL̂(π‖N_z')(s'))."""
        with torch.no_grad():
            s2, z2 = batch["next_obs"], batch["next_skills"]
            if noise is None:
                noise = torch.randn(len(s2), self.act_dim, generator=self.torch_rng)
            a2, log_pi2 = self.actor.sample(s2, z2, noise)
            kl2 = log_pi2 - self.gaussians.log_density_torch(s2, a2, z2)
            q_next = torch.min(*self.critic_target(s2, a2)) - self.log_alpha.exp() * kl2
            target = batch["rewards"] + self.config.gamma * (1.0 - batch["dones"]) * q_next
        q1, q2 = self.critic(batch["obs"], batch["actions"])
        self._td = (q1.detach() - target).abs()
        return F.mse_loss(q1, target) + F.mse_loss(q2, target)

    def actor_loss(self, obs: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(E[α·(log π(a|s,z) − log N_z(a|s)) − min_i Q_i(s,a)], KL̂ per sample) over every state of
        ``obs`` (B, obs_dim) under every skill: B·Z samples, state-major (``noise``: (B·Z, d)). With
        ``prior_scale_q`` the Q term is divided by max(1, the batch's mean |Q|)."""
        n = len(self.skills)
        s = obs.repeat_interleave(n, dim=0)
        z = torch.arange(n).repeat(len(obs))
        if noise is None:
            noise = torch.randn(len(s), self.act_dim, generator=self.torch_rng)
        a, log_pi = self.actor.sample(s, z, noise)
        kl = log_pi - self.gaussians.log_density_torch(s, a, z)
        q = torch.min(*self.critic(s, a))
        if self.config.prior_scale_q:  # Q in units of its mean magnitude: the KL term keeps its weight
            q = q / q.abs().mean().detach().clamp_min(1.0)
        return (self.log_alpha.exp().detach() * kl - q).mean(), kl

    def alpha_loss(self, kl: torch.Tensor) -> torch.Tensor:
        """SPiRL's automatic α: −log α·(mean KL̂ − δ_KL); α rises while the KL is above the target."""
        return -(self.log_alpha * (kl.detach().mean() - self.target_kl))

    def _update(self) -> None:
        start = time.perf_counter()
        batch = self.buffer.sample(self.config.batch_size, self.rng)
        critic_loss = self.critic_loss(batch)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        self.critic.requires_grad_(False)  # the actor's gradient must not reach the critics
        actor_loss, kl = self.actor_loss(batch["obs"])
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        self.critic.requires_grad_(True)
        alpha_loss = self.alpha_loss(kl)
        self.alpha_opt.zero_grad()
        alpha_loss.backward()
        self.alpha_opt.step()
        with torch.no_grad():
            for p, tp in zip(self.critic.parameters(), self.critic_target.parameters()):
                tp.lerp_(p, self.config.tau)
        source = self.prior_source
        if source is not None and getattr(source, "learns_from_outcomes", False):
            hits = batch["hits"]
            source.observe_td(True, float(self._td[hits].sum()), int(hits.sum()))
            source.observe_td(False, float(self._td[~hits].sum()), int((~hits).sum()))
        self.counters.gradient_steps += 1
        self.counters.train_time_s += time.perf_counter() - start
        self.last_losses = {
            "critic": float(critic_loss.detach()),
            "actor": float(actor_loss.detach()),
            "kl": float(kl.detach().mean()),
            "alpha": self.alpha,
        }

    # --- learning --------------------------------------------------------------------------------------
    def learn(self, total_timesteps: int, progress_bar: bool = False, new_episode: bool = False) -> SACPrior:
        """Run ``total_timesteps`` environment steps, learning as it goes (one gradient step per env
        step by default, after ``learning_starts``). The episode in progress when the previous call
        ended goes on (as SB3's ``learn(n, reset_num_timesteps=False)``), so learning in chunks plays
        the episodes one long call plays; ``new_episode`` abandons it and starts a new one. Between
        calls ``env`` must stay as the last call left it (evaluate on another instance). Episodes are
        reset with seeds (seed, episodes finished), so a run with the same seed replays exactly."""
        if not isinstance(total_timesteps, int) or total_timesteps < 1:
            raise ConfigError(f"total_timesteps must be an integer ≥ 1, got {total_timesteps!r}")
        if new_episode:
            self.episode_in_progress = None
        with torch_threads(self.config.torch_threads):
            self._learn(total_timesteps, progress_bar)
        return self

    def _learn(self, total_timesteps: int, progress_bar: bool) -> None:
        from tqdm.auto import tqdm

        cfg, c, g = self.config, self.counters, self.gaussians
        bar = tqdm(total=total_timesteps, desc=NAME, unit="step", disable=not progress_bar)
        for _ in range(total_timesteps):
            # Begun here rather than when the last one ends, so a call never ends on a fresh reset.
            ep = self.episode_in_progress = self.episode_in_progress or self._begin_episode()
            obs, z = ep.obs, ep.decision.skill
            if c.env_steps < cfg.learning_starts:
                action = g.sample(obs, z, self.rng).astype(np.float32)
            else:
                action = self._actor_action(obs, z, torch.randn(1, self.act_dim, generator=self.torch_rng))
            next_obs, reward, terminated, truncated, info = self.env.step(action)
            next_obs = np.asarray(next_obs, np.float32)
            ep.actions.append(np.array(action, np.float32))
            c.env_steps += 1
            ep.steps_left -= 1
            ep.episode_return += float(reward)
            ep.length += 1
            ep.success = ep.success or bool(info.get("success", False))
            if self.prior_source is not None and getattr(self.prior_source, "learns_from_outcomes", False):
                self.prior_source.observe_reward(float(reward))
            done = terminated or truncated
            hit = ep.decision.hit
            if not done and ep.steps_left == 0:  # the next skill is decided at s', so the target knows z'
                ep.decision, ep.steps_left = self._decide_skill(next_obs, info["state_text"]), cfg.skill_horizon
            self.buffer.add(obs, action, float(reward), bool(terminated), z, hit, next_obs, ep.decision.skill)
            if c.env_steps >= cfg.learning_starts and len(self.buffer) >= cfg.batch_size:
                for _ in range(cfg.updates_per_step):
                    self._update()
            ep.obs = next_obs
            bar.update(1)
            if done:
                c.episodes += 1
                totals = {"env_steps": c.env_steps, "llm_queries": c.llm_queries, "partial_queries": c.partial_queries}
                record = {"return": ep.episode_return, "length": ep.length, "success": ep.success}
                self.episode_log.append({**record, **totals, "alpha": self.alpha})
                bar.set_postfix(ret=f"{ep.episode_return:.1f}", alpha=f"{self.alpha:.3g}", llm=c.llm_queries)
                self.episode_in_progress = None
        bar.close()

    def _begin_episode(self) -> EpisodeInProgress:
        reset_seed = episode_seed(self.seed, self.counters.episodes)
        obs, info = self.env.reset(seed=reset_seed)
        obs = np.asarray(obs, np.float32)
        return EpisodeInProgress(
            reset_seed, obs, self._decide_skill(obs, info["state_text"]), self.config.skill_horizon
        )

    def _actor_action(self, obs: np.ndarray, skill: int, noise: torch.Tensor | None) -> np.ndarray:
        """a ~ π(·|s,z) with standard-normal ``noise`` (1, d); tanh of the mean when ``noise`` is None."""
        with torch.no_grad():
            s = torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0)
            z = torch.tensor([skill])
            if noise is None:
                return torch.tanh(self.actor(s, z)[0])[0].numpy()
            return self.actor.sample(s, z, noise)[0][0].numpy()

    # --- acting without learning ----------------------------------------------------------------------
    def predict(
        self,
        obs: np.ndarray,
        state: SkillState | None = None,
        deterministic: bool = True,
        state_text: str | None = None,
    ) -> tuple[np.ndarray, SkillState]:
        """The action for one observation and the skill state to pass back with the next one.

        With ``state`` None (an episode's first step) or a skill at its last held step, a new skill
        is decided (the mode of F1, argmax log p(z|s) + Q(s,z)/α_z, or a draw when not
        ``deterministic``): a lookup of the prior source, counted by the source (a cache) but not in
        the agent's training counters. The action is tanh of the actor's mean, or a draw. Draws come
        from predict's own generator: nothing learning uses changes."""
        obs = np.asarray(obs, np.float32)
        if obs.shape != (self.obs_dim,):
            raise ConfigError(f"predict takes one observation of shape ({self.obs_dim},), got {obs.shape}")
        with torch_threads(self.config.torch_threads):
            return self._predict(obs, state, deterministic, state_text)

    def _predict(
        self, obs: np.ndarray, state: SkillState | None, deterministic: bool, state_text: str | None
    ) -> tuple[np.ndarray, SkillState]:
        if state is None or state.steps_left <= 0:
            text = self.env.describe(obs) if state_text is None else state_text
            q = self.f1_q(self.skill_q_values(obs, deterministic=True), observe=False)
            alpha = self.sampler.schedule.alpha
            log_prior, _ = self._skill_prior(obs, text, q, alpha)
            logits = log_prior + q / alpha
            if deterministic:
                skill = int(np.argmax(logits))
            else:
                probs = np.exp(logits - logits.max())
                skill = int(self._predict_rng.choice(len(probs), p=probs / probs.sum()))
            state = SkillState(skill, self.config.skill_horizon)
        if not 0 <= state.skill < len(self.skills):
            raise ConfigError(f"skill index {state.skill} outside the vocabulary of {len(self.skills)}")
        noise = None if deterministic else torch.as_tensor(self._predict_rng.standard_normal((1, self.act_dim)))
        action = self._actor_action(obs, state.skill, None if noise is None else noise.float())
        return action.astype(np.float32), SkillState(state.skill, state.steps_left - 1)

    # --- persistence ---------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Networks, optimisers' moments, α, the RNGs, counters, F2's hit rate and the skill Gaussians
        into folder ``path`` (weights.safetensors + agent.json; :mod:`priorcache.agents.sac_saving`), and
        the episode in progress (its actions, skill, steps left, return so far: ``load`` replays it).
        The replay buffer is saved apart: ``save_replay_buffer``."""
        from priorcache.agents.sac_saving import save_agent

        save_agent(self, Path(path))

    @classmethod
    def load(
        cls,
        path: str | Path,
        env: Any,
        prior_source: SkillPriorSource | None = None,
        prompt_builder: Callable[[str, str], Prompt] | None = None,
        embedder: Callable[[np.ndarray, str], np.ndarray] | None = None,
        replay_episode: bool = True,
    ) -> SACPrior:
        """The agent ``save`` wrote, on ``env`` with the given prior source; ConfigError when the folder is
        damaged or ``env``'s observation/action dimensions, skills or objective differ from the saved one's.

        An episode in progress at the save is replayed on ``env`` (reset with its seed, its actions
        stepped again, its last observation checked: ConfigError when the env does not reproduce it),
        so ``learn`` goes on with it as the saved agent would; ``replay_episode=False`` drops it and
        leaves ``env`` untouched (``learn`` starts a new episode)."""
        from priorcache.agents.sac_saving import load_agent

        return load_agent(cls, Path(path), env, prior_source, prompt_builder, embedder, replay_episode)

    def save_replay_buffer(self, path: str | Path) -> None:
        """The replay buffer's transitions into the file ``path`` (safetensors, atomic)."""
        arrays, position = self.buffer.to_arrays()
        write_arrays(Path(path), arrays, position)

    def load_replay_buffer(self, path: str | Path) -> None:
        arrays, position = read_arrays(Path(path))
        try:
            self.buffer.load_arrays(arrays, position.get("pos"), position.get("full"))
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
