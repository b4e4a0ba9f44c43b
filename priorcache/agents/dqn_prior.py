"""DQN-Prior (SPEC §6): a DQN over text actions that acts by the posterior F1 around an LLM prior.

Q(s, a) is a small MLP on [e(s), e(a), e(s)·e(a)], with e(·) the sentence encoder the prior
cache already uses (so a state is encoded once per step, and repeats are memoised).
Behaviour: a ~ π(a|s) ∝ p(a|s)·exp(Q(s,a)/α) (F1), α from the hit-rate schedule (F2).
Target: r + γ·max_{a' ∈ C(s')} Q_target(s', a'), C(s') the prior's top-k support.

The same class runs the two baselines of the issue:
- plain DQN (``use_prior=False``): uniform prior, so F1 is Boltzmann exploration over Q and
  C(s') is the top-k admissible actions by Q; it never calls the LLM;
- direct LLM (``learn=False``): argmax of the prior, no Q, no learning.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from priorcache.cache.encoder import Encoder
from priorcache.cache.prior_cache import PriorCache, PriorLookup
from priorcache.errors import ConfigError
from priorcache.posterior import PosteriorSampler, TemperatureSchedule
from priorcache.prior.action_prior import check_candidates
from priorcache.prior.base import Prompt


@dataclass
class DQNPriorConfig:
    use_prior: bool = True
    learn: bool = True
    gamma: float = 0.9
    learning_rate: float = 1e-3
    batch_size: int = 32
    buffer_size: int = 5_000
    learning_starts: int = 32
    target_tau: float = 0.05
    grad_clip: float = 10.0
    hidden_size: int = 128
    support_top_k: int = 5
    alpha_0: float = 1.0
    alpha_min: float = 0.25
    hit_rate_ema: float = 0.95

    def __post_init__(self) -> None:
        if not self.use_prior and not self.learn:
            raise ConfigError("an agent with neither prior nor learning has nothing to act on")
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"gamma must be in [0, 1], got {self.gamma}")
        if not 0 < self.alpha_min <= self.alpha_0:
            raise ConfigError(f"need 0 < alpha_min ≤ alpha_0, got alpha_min={self.alpha_min}, alpha_0={self.alpha_0}")
        for name in ("batch_size", "buffer_size", "support_top_k", "hidden_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}")


@dataclass
class Decision:
    """One decision: the action, what it cost, and the prior lookup behind it (SPEC §2: recorded
    every step). ``lookup`` is None for plain DQN, which has no prior."""

    action: str
    decision_time_s: float
    alpha: float
    lookup: Optional[PriorLookup] = None
    # LLM cost of a decision made without the prior cache (the ReAct baseline): cost field -> value.
    llm_cost: Optional[dict[str, float]] = None

    @property
    def kind(self) -> str:  # "uncached" | "miss" | "exact" | "similar" | "refresh" | "no-prior"
        return self.lookup.kind if self.lookup is not None else "no-prior"

    @property
    def hit(self) -> bool:
        return self.lookup is not None and self.lookup.hit

    def cost(self, name: str) -> float:
        """A cost field (llm_calls, partial_calls, llm_time_s, prompt_tokens, …); 0 without a lookup."""
        if self.lookup is not None:
            return getattr(self.lookup, name)
        return (self.llm_cost or {}).get(name, 0)


class QNetwork(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3 * dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([state, action, state * action], dim=-1)).squeeze(-1)


@dataclass
class _Pending:
    """A transition whose next-state support C(s') is known only at the next decision."""

    state: np.ndarray
    action: np.ndarray
    reward: float = 0.0
    done: bool = False
    hit: bool = False  # the action was drawn around a cached prior (the adaptive cache compares TD errors)


class ReplayBuffer:
    def __init__(self, size: int, dim: int, support: int) -> None:
        self.states = np.zeros((size, dim), np.float32)
        self.actions = np.zeros((size, dim), np.float32)
        self.rewards = np.zeros(size, np.float32)
        self.dones = np.zeros(size, np.float32)
        self.hits = np.zeros(size, bool)
        self.next_states = np.zeros((size, dim), np.float32)
        self.next_support = np.zeros((size, support, dim), np.float32)
        self.next_mask = np.zeros((size, support), bool)
        self.size, self.pos, self.full = size, 0, False

    def __len__(self) -> int:
        return self.size if self.full else self.pos

    def add(self, p: _Pending, next_state: np.ndarray, support: np.ndarray) -> None:
        i = self.pos
        self.states[i], self.actions[i], self.rewards[i], self.dones[i] = p.state, p.action, p.reward, p.done
        self.hits[i] = p.hit
        self.next_states[i] = next_state
        self.next_support[i] = 0.0
        self.next_mask[i] = False
        self.next_support[i, : len(support)] = support
        self.next_mask[i, : len(support)] = True
        self.pos = (i + 1) % self.size
        self.full = self.full or self.pos == 0

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        idx = rng.integers(0, len(self), size=n)
        return {
            k: torch.as_tensor(getattr(self, k)[idx])
            for k in ("states", "actions", "rewards", "dones", "hits", "next_states", "next_support", "next_mask")
        }


class DQNPriorAgent:
    """Acts with F1 over an LLM prior served by ``prior_cache`` (None for plain DQN)."""

    def __init__(
        self,
        config: DQNPriorConfig,
        encoder: Encoder,
        prior_cache: Optional[PriorCache],
        prompt_builder: Callable[[str, str], Prompt],
        seed: int = 0,
    ) -> None:
        if config.use_prior and prior_cache is None:
            raise ConfigError("DQN-Prior needs a prior cache (mode 'none' for the uncached reference)")
        self.config = config
        self.encoder = encoder
        self.prior_cache = prior_cache if config.use_prior else None
        self.prompt_builder = prompt_builder
        self.rng = np.random.default_rng(seed)
        self.sampler = PosteriorSampler(
            TemperatureSchedule(config.alpha_0, config.alpha_min, config.hit_rate_ema), self.rng
        )
        dim = encoder.dim
        with torch.random.fork_rng(devices=[]):  # seeded weights without touching torch's global RNG
            torch.manual_seed(seed)
            self.q = QNetwork(dim, config.hidden_size)
        self.q_target = QNetwork(dim, config.hidden_size)
        self.q_target.load_state_dict(self.q.state_dict())
        self.optimizer = torch.optim.Adam(self.q.parameters(), lr=config.learning_rate)
        self.buffer = ReplayBuffer(config.buffer_size, dim, config.support_top_k)
        self._pending: Optional[_Pending] = None
        self._objective = ""
        self.step_count = 0
        self.train_time_s = 0.0

    # --- acting -----------------------------------------------------------------------------
    def begin_episode(self, objective: str) -> None:
        self._objective = objective
        self._pending = None

    def _q_values(self, state_vec: np.ndarray, action_vecs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            s = torch.as_tensor(state_vec).expand(len(action_vecs), -1)
            return self.q(s, torch.as_tensor(action_vecs)).numpy().astype(np.float64)

    def act(self, state_text: str, candidates: list[str]) -> Decision:
        """Choose an action for the state; completes the previous transition with C(s)."""
        start = time.perf_counter()
        candidates = check_candidates(candidates)
        state_vec = self.encoder.encode([state_text])[0]
        action_vecs = self.encoder.encode(candidates)
        q_values = self._q_values(state_vec, action_vecs) if self.config.learn else np.zeros(len(candidates))
        alpha = self.sampler.schedule.alpha

        lookup: Optional[PriorLookup] = None
        if self.prior_cache is not None:
            prompt = self.prompt_builder(self._objective, state_text)
            lookup = self.prior_cache.lookup(
                state_text, prompt, candidates, q_values=q_values, alpha=alpha, embedding=state_vec,
                step=self.step_count,
            )
            log_prior = lookup.log_prior
            self.sampler.schedule.update(lookup.hit)
        else:
            log_prior = np.full(len(candidates), -np.log(len(candidates)))

        if self.config.learn:
            index, _ = self.sampler.sample(log_prior, q_values)
        else:
            index = int(np.argmax(log_prior))

        # C(s): the prior's top-k support (by Q for plain DQN, whose prior is flat).
        ranking = log_prior if self.prior_cache is not None else q_values
        support = action_vecs[np.argsort(-ranking, kind="stable")[: self.config.support_top_k]]
        self._complete_pending(state_vec, support)
        self._pending = _Pending(state_vec, action_vecs[index], hit=lookup is not None and lookup.hit)
        self.step_count += 1
        decision_time = time.perf_counter() - start

        return Decision(candidates[index], decision_time, alpha, lookup)

    # --- learning ---------------------------------------------------------------------------
    def observe(self, reward: float, terminated: bool, truncated: bool, next_state_text: str,
                next_candidates: list[str]) -> None:
        """Record the outcome of the last action and take one gradient step."""
        if self._pending is None:
            raise RuntimeError("observe() called before act()")
        self._pending.reward = float(reward)
        self._pending.done = bool(terminated)
        if self.prior_cache is not None and self.prior_cache.learns_from_outcomes:
            self.prior_cache.observe_reward(float(reward))
        if terminated or truncated:
            # No next decision will complete this transition. Terminal: no bootstrap. Truncated:
            # bootstrap from the top-k next actions by Q rather than pay an LLM call for C(s').
            next_vec = self.encoder.encode([next_state_text])[0]
            support = np.zeros((0, self.encoder.dim), np.float32)
            if truncated and not terminated and next_candidates:
                vecs = self.encoder.encode(next_candidates)
                q = self._q_values(next_vec, vecs)
                support = vecs[np.argsort(-q, kind="stable")[: self.config.support_top_k]]
            self._complete_pending(next_vec, support)
        if self.config.learn:
            self._train_step()

    def _complete_pending(self, next_state: np.ndarray, support: np.ndarray) -> None:
        if self._pending is not None and self.config.learn:
            self.buffer.add(self._pending, next_state, support)
        self._pending = None

    def _train_step(self) -> None:
        cfg = self.config
        if len(self.buffer) < cfg.learning_starts:
            return
        start = time.perf_counter()
        batch = self.buffer.sample(cfg.batch_size, self.rng)
        with torch.no_grad():
            b, k, d = batch["next_support"].shape
            next_s = batch["next_states"].unsqueeze(1).expand(b, k, d)
            q_next = self.q_target(next_s.reshape(-1, d), batch["next_support"].reshape(-1, d)).view(b, k)
            q_next = q_next.masked_fill(~batch["next_mask"], -torch.inf).max(dim=1).values
            q_next = torch.where(batch["next_mask"].any(dim=1), q_next, torch.zeros_like(q_next))
            target = batch["rewards"] + cfg.gamma * (1.0 - batch["dones"]) * q_next
        q_pred = self.q(batch["states"], batch["actions"])
        loss = nn.functional.smooth_l1_loss(q_pred, target)
        self.optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.q.parameters(), cfg.grad_clip)
        self.optimizer.step()
        if self.prior_cache is not None and self.prior_cache.learns_from_outcomes:
            td = (q_pred.detach() - target).abs()
            hits = batch["hits"]
            self.prior_cache.observe_td(True, float(td[hits].sum()), int(hits.sum()))
            self.prior_cache.observe_td(False, float(td[~hits].sum()), int((~hits).sum()))
        with torch.no_grad():
            for p, tp in zip(self.q.parameters(), self.q_target.parameters()):
                tp.mul_(1.0 - cfg.target_tau).add_(p, alpha=cfg.target_tau)
        self.train_time_s += time.perf_counter() - start
