"""Plain DQN over text actions (the ``dqn`` baseline), and the base class of DQN-Prior.

Q(s, g, a) is a small MLP on [e(s), e(g), e(a), e(s)·e(a), e(g)·e(a)], with e(·) the sentence
encoder (the one the prior cache uses, so a state is encoded once per step and repeats are
memoised) and g the episode's objective. The objective is part of Q's input because most state
texts do not name it (BabyAI's view, ALFWorld's room, the shop's result pages): without it, Q
cannot tell "go to the red ball" from "go to the green key" in the same room, and cannot carry
anything over to held-out games with other goals. ``goal_conditioned=False`` drops it (the
ablation; Q on [e(s), e(a), e(s)·e(a)]).
Behaviour: a ~ π(a|s) ∝ p(a|s)·exp(Q(s,a)/α) (F1). Plain DQN's prior is uniform, so F1 is
Boltzmann exploration over Q at α_0, and it never calls the LLM. Target:
r + γ·max_{a' ∈ C(s')} Q_target(s', a'), C(s') the top-k next actions by the prior (by Q here).

Subclasses change the prior through three hooks: ``_prior`` (p(a|s) and its lookup), and
``_on_reward`` / ``_on_td`` (outcome feedback to whatever serves the prior).

One generator, ``self.rng``, feeds both the posterior draws and the replay sampling, in the order
the steps make them; torch's weight init is seeded inside ``torch.random.fork_rng`` so it leaves
torch's global RNG alone. Runs with the same seed therefore take the same actions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from priorcache.agents.base import Agent, Decision
from priorcache.agents.buffers import ReplayBuffer, Transition
from priorcache.agents.saving import read_arrays, write_arrays
from priorcache.errors import ConfigError
from priorcache.posterior import PosteriorSampler, TemperatureSchedule
from priorcache.prior.action_prior import check_candidates

if TYPE_CHECKING:
    from priorcache.cache.encoder import Encoder
    from priorcache.cache.prior_cache import PriorLookup


@dataclass
class DQNConfig:
    """Settings of the DQN agents. ``alpha_0``, ``alpha_min``, ``hit_rate_ema``: F2's temperature
    (plain DQN, with no cache hits, stays at α_0; the direct-LLM baseline uses only these)."""

    gamma: float = 0.9
    learning_rate: float = 1e-3
    batch_size: int = 32
    buffer_size: int = 5_000
    learning_starts: int = 32
    target_tau: float = 0.05
    grad_clip: float = 10.0
    hidden_size: int = 128
    goal_conditioned: bool = True  # the episode's objective is part of Q's input
    support_top_k: int = 5
    alpha_0: float = 1.0
    alpha_min: float = 0.25
    hit_rate_ema: float = 0.95

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"gamma must be in [0, 1], got {self.gamma}")
        if not 0 < self.alpha_min <= self.alpha_0:
            raise ConfigError(f"need 0 < alpha_min ≤ alpha_0, got alpha_min={self.alpha_min}, alpha_0={self.alpha_0}")
        for name in ("batch_size", "buffer_size", "support_top_k", "hidden_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}")


class QNetwork(nn.Module):
    """Q from state features (e(s), or [e(s), e(g)] when goal-conditioned) and e(a)."""

    def __init__(self, dim: int, hidden: int, goal_conditioned: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.goal_conditioned = goal_conditioned
        inputs = 5 * dim if goal_conditioned else 3 * dim
        self.net = nn.Sequential(
            nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        if self.goal_conditioned:
            s, g = state[..., : self.dim], state[..., self.dim :]
            x = torch.cat([s, g, action, s * action, g * action], dim=-1)
        else:
            x = torch.cat([state, action, state * action], dim=-1)
        return self.net(x).squeeze(-1)


class DQNConfigMixin:
    """config.json's ``agent_config`` of the DQN family: the config plus ``use_prior`` and ``learn``,
    the agent's traits (recorded so that runs of the three DQN-family agents stay comparable)."""

    uses_prior: bool
    learns: bool

    @classmethod
    def config_to_json(cls, config: Any) -> dict[str, Any]:
        return {"use_prior": cls.uses_prior, "learn": cls.learns, **asdict(config)}

    @classmethod
    def config_from_json(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            traits = {"use_prior": cls.uses_prior, "learn": cls.learns}
            for key, want in traits.items():
                if key in data and data.pop(key) != want:
                    raise ConfigError(f"the saved config has {key}={not want}, which a {cls.__name__} is not")
            data.setdefault("goal_conditioned", False)  # saved before Q read the objective
        return super().config_from_json(data)  # type: ignore[misc]


class DQNAgent(DQNConfigMixin, Agent):
    """Plain DQN: Boltzmann exploration over Q (F1 with a uniform prior); never calls the LLM."""

    name = "dqn"
    config_class = DQNConfig
    components = ("encoder",)
    learns = True
    episode_fields = ("_objective", "_pending", "_goal_vec")

    def __init__(self, config: DQNConfig, encoder: Encoder, seed: int = 0) -> None:
        self.config = config
        self.encoder = encoder
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.sampler = PosteriorSampler(
            TemperatureSchedule(config.alpha_0, config.alpha_min, config.hit_rate_ema), self.rng
        )
        # predict(deterministic=False) draws from its own stream, never from the training one.
        self._predict_rng = np.random.default_rng([seed, 1])
        dim = encoder.dim
        goal = config.goal_conditioned
        with torch.random.fork_rng(devices=[]):  # seeded weights without touching torch's global RNG
            torch.manual_seed(seed)
            self.q = QNetwork(dim, config.hidden_size, goal)
        self.q_target = QNetwork(dim, config.hidden_size, goal)
        self.q_target.load_state_dict(self.q.state_dict())
        self.optimizer = torch.optim.Adam(self.q.parameters(), lr=config.learning_rate)
        # Stored states are Q's state features: [e(s), e(g)] when goal-conditioned.
        self.buffer = ReplayBuffer(config.buffer_size, dim, config.support_top_k, state_dim=2 * dim if goal else dim)
        self._pending: Transition | None = None
        self._objective = ""
        self._goal_vec = np.zeros(dim, np.float32)
        self.step_count = 0
        self.train_time_s = 0.0

    # --- the prior hooks (plain DQN: uniform prior, no feedback) -----------------------------
    def _prior(
        self,
        state_text: str,
        candidates: list[str],
        q_values: np.ndarray,
        alpha: float,
        state_vec: np.ndarray,
        acting: bool,
    ) -> tuple[np.ndarray, PriorLookup | None]:
        """log p(a|s) over ``candidates`` and the lookup behind it. ``acting``: a step of the
        behaviour policy (which may update F2's temperature), not a ``predict``."""
        return np.full(len(candidates), -np.log(len(candidates))), None

    def _support(self, candidates: list[str], q_values: np.ndarray, lookup: PriorLookup | None) -> list[int]:
        """C(s), the candidates value targets bootstrap over (by index): the top-k by Q, as the
        uniform prior ranks nothing."""
        return np.argsort(-q_values, kind="stable")[: self.config.support_top_k].tolist()

    def _on_reward(self, reward: float) -> None:
        """A reward, as it arrives."""

    def _on_td(self, td: torch.Tensor, hits: torch.Tensor) -> None:
        """The absolute TD errors of a training batch and which of its actions were cache hits."""

    # --- acting -------------------------------------------------------------------------------
    def begin_episode(self, objective: str) -> None:
        self._objective = objective
        self._pending = None
        if self.config.goal_conditioned:
            self._goal_vec = self.encoder.encode([objective])[0]

    def _features(self, state_vec: np.ndarray) -> np.ndarray:
        """Q's state features of e(s) in the current episode: [e(s), e(g)] when goal-conditioned."""
        if self.config.goal_conditioned:
            return np.concatenate([state_vec, self._goal_vec]).astype(np.float32)
        return state_vec

    def _q_values(self, features: np.ndarray, action_vecs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            s = torch.as_tensor(features).expand(len(action_vecs), -1)
            return self.q(s, torch.as_tensor(action_vecs)).numpy().astype(np.float64)

    def q_values(self, state_text: str, candidates: list[str]) -> np.ndarray:
        """Q(s, g, a) for every candidate (float64) under the current episode's objective, with no side effect."""
        candidates = check_candidates(candidates)
        return self._q_values(self._features(self.encoder.encode([state_text])[0]), self.encoder.encode(candidates))

    def act(self, state_text: str, candidates: list[str]) -> Decision:
        """Draw an action from F1; completes the previous transition with C(s)."""
        return self._act(state_text, candidates)

    def act_demonstrated(self, state_text: str, candidates: list[str], action: str) -> Decision:
        """Take the demonstrator's ``action``: the prior is looked up and C(s) completed as in ``act``,
        and the transition goes into the replay buffer like the agent's own."""
        return self._act(state_text, candidates, demonstrated=action)

    def _act(self, state_text: str, candidates: list[str], demonstrated: str | None = None) -> Decision:
        start = time.perf_counter()
        candidates = check_candidates(candidates)
        if demonstrated is not None and demonstrated not in candidates:
            raise ConfigError(f"the demonstrated action {demonstrated!r} is not among the candidates {candidates}")
        state_vec = self.encoder.encode([state_text])[0]
        features = self._features(state_vec)
        action_vecs = self.encoder.encode(candidates)
        q_values = self._q_values(features, action_vecs)
        alpha = self.sampler.schedule.alpha  # the α the prior is looked up with; F2 may move it below
        log_prior, lookup = self._prior(state_text, candidates, q_values, alpha, state_vec, acting=True)
        if demonstrated is None:
            index, _ = self.sampler.sample(log_prior, q_values)
        else:
            index = candidates.index(demonstrated)
        support = action_vecs[self._support(candidates, q_values, lookup)]
        self._complete_pending(features, support)
        self._pending = Transition(features, action_vecs[index], hit=lookup is not None and lookup.hit)
        self.step_count += 1
        return Decision(candidates[index], time.perf_counter() - start, alpha, lookup)

    def _encode_batch(
        self, states: Sequence[str], candidates: Sequence[list[str]]
    ) -> tuple[list[list[str]], np.ndarray, list[np.ndarray]]:
        """(checked candidates, e(s) per state, e(a) per state's candidates) from ONE encoder call."""
        cands = [check_candidates(c) for c in candidates]
        vecs = self.encoder.encode(list(states) + [a for c in cands for a in c])
        bounds = np.cumsum([len(states)] + [len(c) for c in cands])
        return cands, vecs[: len(states)], [vecs[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]

    def act_batch(
        self, states: Sequence[str], candidates: Sequence[list[str]], slots: Sequence[int] | None = None
    ) -> list[Decision]:
        """``act`` for several environments: their states and candidates are encoded in ONE encoder
        call and their priors asked together (``_prior_batch``: one LLM call for DQN-Prior); then,
        slot by slot in order and in each slot's episode, what ``act`` does after its lookup: F2's
        update, the draw, the pending transition. So it equals ``act`` on each slot in order (the
        base class's loop), draw for draw, except that every lookup of the batch is made with the α
        of before the batch (α only enters the cache's audits) and is planned against the cache as
        it was then (``PriorCache.lookup_batch``). A decision's time is its own work plus an even
        share of the batch's shared work (encoding, lookups)."""
        start = time.perf_counter()
        slots = self._slot_list(slots, len(states))
        if not slots:
            return []
        cands, state_vecs, action_vecs = self._encode_batch(states, candidates)
        features, q_values, objectives = [], [], []
        for slot, state_vec, a_vecs in zip(slots, state_vecs, action_vecs):
            with self._episode_slot(slot):
                features.append(self._features(state_vec))
                q_values.append(self._q_values(features[-1], a_vecs))
                objectives.append(self._objective)
        alpha = self.sampler.schedule.alpha
        steps = [self.step_count + i for i in range(len(states))]
        priors = self._prior_batch(list(states), cands, q_values, alpha, state_vecs, objectives, steps)
        shared = (time.perf_counter() - start) / len(states)
        decisions = []
        for i, slot in enumerate(slots):
            own = time.perf_counter()
            log_prior, lookup = priors[i]
            if lookup is not None:
                self.sampler.schedule.update(lookup.hit)  # F2, before the draw, as in act
            with self._episode_slot(slot):
                index, _ = self.sampler.sample(log_prior, q_values[i])
                support = action_vecs[i][self._support(cands[i], q_values[i], lookup)]
                self._complete_pending(features[i], support)
                hit = lookup is not None and lookup.hit
                self._pending = Transition(features[i], action_vecs[i][index], hit=hit)
            self.step_count += 1
            decisions.append(Decision(cands[i][index], shared + time.perf_counter() - own, alpha, lookup))
        return decisions

    def _prior_batch(
        self,
        states: list[str],
        candidates: list[list[str]],
        q_values: list[np.ndarray],
        alpha: float,
        state_vecs: np.ndarray,
        objectives: list[str],
        steps: list[int],
    ) -> list[tuple[np.ndarray, PriorLookup | None]]:
        """``_prior`` for a batch of states (each under its episode's objective, at its step), with no
        F2 update (``act_batch`` makes it per slot). Plain DQN: the uniform prior."""
        return [(np.full(len(c), -np.log(len(c))), None) for c in candidates]

    def predict(self, state_text: str, candidates: list[str], deterministic: bool = True) -> str:
        """The posterior's mode, argmax log p(a|s) + Q(s,a)/α at the current α (plain DQN: argmax Q);
        ``deterministic=False``: a draw from F1 on a generator of its own. No learning, and the
        buffer, pending transition, training RNG, temperature and step count stay as they were."""
        candidates = check_candidates(candidates)
        state_vec = self.encoder.encode([state_text])[0]
        q_values = self._q_values(self._features(state_vec), self.encoder.encode(candidates))
        alpha = self.sampler.schedule.alpha
        log_prior, _ = self._prior(state_text, candidates, q_values, alpha, state_vec, acting=False)
        return candidates[self._predict_index(log_prior, q_values, alpha, deterministic)]

    def _predict_index(self, log_prior: np.ndarray, q_values: np.ndarray, alpha: float, deterministic: bool) -> int:
        """The posterior's mode at ``alpha``, or a draw from F1 on predict's own generator."""
        if deterministic:
            return int(np.argmax(log_prior + q_values / alpha))
        probs = self.sampler.distribution(log_prior, q_values)
        return int(self._predict_rng.choice(probs.size, p=probs / probs.sum()))

    def predict_batch(
        self,
        states: Sequence[str],
        candidates: Sequence[list[str]],
        deterministic: bool = True,
        slots: Sequence[int] | None = None,
    ) -> list[Decision]:
        """``predict`` for several environments: states and candidates encoded in ONE encoder call,
        priors asked together (``_prior_batch``: one LLM call for DQN-Prior, every lookup planned
        against the cache as it was before the batch), then per slot in order the mode or a draw on
        predict's own generator. Nothing training uses changes. A decision's time is an even share
        of the batch's."""
        start = time.perf_counter()
        slots = self._slot_list(slots, len(states))
        if not slots:
            return []
        cands, state_vecs, action_vecs = self._encode_batch(states, candidates)
        q_values, objectives = [], []
        for slot, state_vec, a_vecs in zip(slots, state_vecs, action_vecs):
            with self._episode_slot(slot):
                q_values.append(self._q_values(self._features(state_vec), a_vecs))
                objectives.append(self._objective)
        alpha = self.sampler.schedule.alpha
        steps = [self.step_count] * len(states)  # as predict: lookups at the current step
        priors = self._prior_batch(list(states), cands, q_values, alpha, state_vecs, objectives, steps)
        decisions = []
        for c, q, (log_prior, lookup) in zip(cands, q_values, priors):
            decisions.append(Decision(c[self._predict_index(log_prior, q, alpha, deterministic)], 0.0, alpha, lookup))
        share = (time.perf_counter() - start) / len(decisions)
        for decision in decisions:
            decision.decision_time_s = share
        return decisions

    # --- learning -----------------------------------------------------------------------------
    def observe(
        self, reward: float, terminated: bool, truncated: bool, next_state_text: str, next_candidates: list[str]
    ) -> None:
        """Record the outcome of the last action and take one gradient step."""
        if self._pending is None:
            raise RuntimeError("observe() called before act()")
        self._pending.reward = float(reward)
        self._pending.done = bool(terminated)
        self._on_reward(float(reward))
        if terminated or truncated:
            # No next decision will complete this transition. Terminal: no bootstrap. Truncated:
            # bootstrap from the top-k next actions by Q rather than pay an LLM call for C(s').
            next_vec = self._features(self.encoder.encode([next_state_text])[0])
            support = np.zeros((0, self.encoder.dim), np.float32)
            if truncated and not terminated and next_candidates:
                vecs = self.encoder.encode(next_candidates)
                q = self._q_values(next_vec, vecs)
                support = vecs[np.argsort(-q, kind="stable")[: self.config.support_top_k]]
            self._complete_pending(next_vec, support)
        self._train_step()

    def _complete_pending(self, next_state: np.ndarray, support: np.ndarray) -> None:
        if self._pending is not None:
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
            next_s = batch["next_states"].unsqueeze(1).expand(b, k, -1)
            q_next = self.q_target(next_s.reshape(b * k, -1), batch["next_support"].reshape(-1, d)).view(b, k)
            q_next = q_next.masked_fill(~batch["next_mask"], -torch.inf).max(dim=1).values
            q_next = torch.where(batch["next_mask"].any(dim=1), q_next, torch.zeros_like(q_next))
            target = batch["rewards"] + cfg.gamma * (1.0 - batch["dones"]) * q_next
        q_pred = self.q(batch["states"], batch["actions"])
        loss = nn.functional.smooth_l1_loss(q_pred, target)
        self.optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.q.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self._on_td((q_pred.detach() - target).abs(), batch["hits"])
        with torch.no_grad():
            for p, tp in zip(self.q.parameters(), self.q_target.parameters()):
                tp.mul_(1.0 - cfg.target_tau).add_(p, alpha=cfg.target_tau)
        self.train_time_s += time.perf_counter() - start

    # --- persistence --------------------------------------------------------------------------
    # Saved: both networks, Adam's moments, both RNGs, F2's hit rate and the step count.
    # Not saved (as in Stable-Baselines3's default): the replay buffer; a loaded agent acts exactly
    # as the saved one, and trains on from an empty buffer unless ``load_replay_buffer`` restores it.
    def _state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        tensors = {f"q.{k}": v for k, v in self.q.state_dict().items()}
        tensors.update({f"q_target.{k}": v for k, v in self.q_target.state_dict().items()})
        for i, slots in self.optimizer.state_dict()["state"].items():
            for slot, value in slots.items():
                tensors[f"optimizer.{i}.{slot}"] = torch.as_tensor(value)
        state = {
            "step_count": self.step_count,
            "hit_rate": self.sampler.schedule.hit_rate,
            "rng": self.rng.bit_generator.state,
            "predict_rng": self._predict_rng.bit_generator.state,
            "encoder": {"name": getattr(self.encoder, "name", None), "dim": int(self.encoder.dim)},
        }
        return state, tensors

    def _restore(self, state: dict[str, Any], tensors: dict[str, Any]) -> None:
        encoder = state.get("encoder")
        here = {"name": getattr(self.encoder, "name", None), "dim": int(self.encoder.dim)}
        if encoder != here:
            raise ConfigError(
                f"saved with encoder {encoder}, loaded with {here}: the Q-network would read other vectors"
            )
        groups: dict[str, dict[str, Any]] = {"q": {}, "q_target": {}, "optimizer": {}}
        for key, value in tensors.items():
            head, _, rest = key.partition(".")
            if head not in groups or not rest:
                raise ConfigError(f"unexpected tensor {key!r}")
            groups[head][rest] = value
        opt_state: dict[int, dict[str, Any]] = {}
        try:
            for key, value in groups["optimizer"].items():
                index, _, slot = key.partition(".")
                opt_state.setdefault(int(index), {})[slot] = value
            self.q.load_state_dict(groups["q"])
            self.q_target.load_state_dict(groups["q_target"])
            param_groups = self.optimizer.state_dict()["param_groups"]
            self.optimizer.load_state_dict({"state": opt_state, "param_groups": param_groups})
            self.rng.bit_generator.state = state["rng"]  # in place: the sampler shares this generator
            if "predict_rng" in state:  # saves from before it was kept lack it
                self._predict_rng.bit_generator.state = state["predict_rng"]
            hit_rate, step_count = float(state["hit_rate"]), state["step_count"]
        except (KeyError, RuntimeError, TypeError, ValueError) as e:
            raise ConfigError(f"the saved networks or state do not fit: {e}") from None
        if not (0.0 <= hit_rate <= 1.0) or not isinstance(step_count, int) or step_count < 0:
            raise ConfigError(f"bad hit_rate {hit_rate!r} or step_count {step_count!r}")
        self.sampler.schedule.hit_rate = hit_rate
        self.step_count = step_count

    def save_replay_buffer(self, path: str | Path) -> None:
        """Write the replay buffer's transitions to the file ``path`` (safetensors, atomic)."""
        arrays, position = self.buffer.to_arrays()
        write_arrays(Path(path), arrays, position)

    def load_replay_buffer(self, path: str | Path) -> None:
        """Restore the transitions :meth:`save_replay_buffer` wrote; ConfigError (buffer unchanged)
        when the file is damaged or from a buffer of another shape."""
        arrays, position = read_arrays(Path(path))
        try:
            self.buffer.load_arrays(arrays, position.get("pos"), position.get("full"))
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
