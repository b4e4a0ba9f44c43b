"""DQN-Prior (docs/design.md §4) and the direct-LLM baseline: agents that act on the LLM prior p(a|s) served by
the prior cache.

- :class:`DQNPriorAgent`: plain DQN (:mod:`priorcache.agents.dqn`) whose prior hook asks the cache,
  so it acts by F1 around the LLM prior, α from the hit-rate schedule (F2), and bootstraps over the
  prior's top-k support C(s'). It reports rewards and TD errors to a cache that learns from them.
- :class:`DirectLLMAgent`: the argmax of the prior; no Q, no learning.

The prompt is built from the episode's objective and the state text by ``prompt_builder``; the
cache gets the state's embedding with every lookup, so a state is encoded once per step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from priorcache.agents.base import Agent, Decision
from priorcache.agents.dqn import DQNAgent, DQNConfig, DQNConfigMixin
from priorcache.cache.batch import LookupRequest
from priorcache.errors import ConfigError
from priorcache.posterior import TemperatureSchedule
from priorcache.prior.action_prior import check_candidates
from priorcache.prior.base import Prompt

if TYPE_CHECKING:
    from priorcache.cache.encoder import Encoder
    from priorcache.cache.prior_cache import PriorCache, PriorLookup

PromptBuilder = Callable[[str, str], Prompt]  # (objective, state_text) -> Prompt


class DQNPriorAgent(DQNAgent):
    """Acts with F1 over the LLM prior served by ``prior_cache`` (mode ``none``: the uncached reference).

    ``predict`` takes the prior for the current episode's objective through the cache; that lookup is
    an ordinary one (it may call the LLM and counts in the cache's statistics), while the agent's own
    training state (buffer, RNG, temperature, step count) is left alone."""

    name = "dqn-prior"
    components = ("encoder", "prior_cache", "prompt_builder")
    uses_prior = True

    def __init__(
        self, config: DQNConfig, encoder: Encoder, prior_cache: PriorCache, prompt_builder: PromptBuilder, seed: int = 0
    ) -> None:
        if prior_cache is None:
            raise ConfigError("DQN-Prior needs a prior cache (mode 'none' for the uncached reference)")
        super().__init__(config, encoder, seed)
        self.prior_cache = prior_cache
        self.prompt_builder = prompt_builder

    def _prior(
        self,
        state_text: str,
        candidates: list[str],
        q_values: np.ndarray,
        alpha: float,
        state_vec: np.ndarray,
        acting: bool,
    ) -> tuple[np.ndarray, PriorLookup | None]:
        prompt = self.prompt_builder(self._objective, state_text)
        lookup = self.prior_cache.lookup(
            state_text, prompt, candidates, q_values=q_values, alpha=alpha, embedding=state_vec, step=self.step_count
        )
        if acting:
            self.sampler.schedule.update(lookup.hit)  # F2, before the draw: the draw uses the new α
        return lookup.log_prior, lookup

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
        """The priors of a batch from ONE ``lookup_batch`` (one LLM call for all its misses)."""
        requests = [
            LookupRequest(s, self.prompt_builder(o, s), c, q_values=q, alpha=alpha, embedding=v, step=t)
            for s, c, q, v, o, t in zip(states, candidates, q_values, state_vecs, objectives, steps)
        ]
        return [(lookup.log_prior, lookup) for lookup in self.prior_cache.lookup_batch(requests)]

    def _support(self, candidates: list[str], q_values: np.ndarray, lookup: PriorLookup | None) -> list[int]:
        position = {a: i for i, a in enumerate(candidates)}
        return [position[a] for a in lookup.prior.support(self.config.support_top_k)]  # the prior's top-k

    def _on_reward(self, reward: float) -> None:
        if self.prior_cache.learns_from_outcomes:
            self.prior_cache.observe_reward(reward)

    def _on_td(self, td: torch.Tensor, hits: torch.Tensor) -> None:
        if self.prior_cache.learns_from_outcomes:
            self.prior_cache.observe_td(True, float(td[hits].sum()), int(hits.sum()))
            self.prior_cache.observe_td(False, float(td[~hits].sum()), int((~hits).sum()))


class DirectLLMAgent(DQNConfigMixin, Agent):
    """The direct-LLM baseline: the argmax of the prior, no Q-network, no learning.

    It takes the DQN agents' config (and uses its F2 settings: the α it hands the cache's lookups
    follows the hit rate as DQN-Prior's does), so its runs record the same settings as theirs."""

    name = "direct-llm"
    config_class = DQNConfig
    components = ("encoder", "prior_cache", "prompt_builder")
    uses_prior = True
    deterministic = True
    episode_fields = ("_objective", "_acted")

    def __init__(
        self, config: DQNConfig, encoder: Encoder, prior_cache: PriorCache, prompt_builder: PromptBuilder, seed: int = 0
    ) -> None:
        if prior_cache is None:
            raise ConfigError("the direct-LLM baseline needs a prior cache (mode 'none' for the uncached reference)")
        self.config = config
        self.encoder = encoder
        self.prior_cache = prior_cache
        self.prompt_builder = prompt_builder
        self.seed = seed
        self.schedule = TemperatureSchedule(config.alpha_0, config.alpha_min, config.hit_rate_ema)
        self._predict_rng = np.random.default_rng([seed, 1])
        self._objective = ""
        self._acted = False
        self.step_count = 0
        self.train_time_s = 0.0  # never learns

    def begin_episode(self, objective: str) -> None:
        self._objective = objective
        self._acted = False

    def _lookup(self, state_text: str, candidates: list[str], acting: bool) -> tuple[PriorLookup, float]:
        state_vec = self.encoder.encode([state_text])[0]
        alpha = self.schedule.alpha
        # Q ≡ 0: the posterior the cache may audit is the prior itself.
        lookup = self.prior_cache.lookup(
            state_text,
            self.prompt_builder(self._objective, state_text),
            candidates,
            q_values=np.zeros(len(candidates)),
            alpha=alpha,
            embedding=state_vec,
            step=self.step_count,
        )
        if acting:
            self.schedule.update(lookup.hit)
        return lookup, alpha

    def act(self, state_text: str, candidates: list[str]) -> Decision:
        start = time.perf_counter()
        candidates = check_candidates(candidates)
        lookup, alpha = self._lookup(state_text, candidates, acting=True)
        self.step_count += 1
        self._acted = True
        return Decision(candidates[int(np.argmax(lookup.log_prior))], time.perf_counter() - start, alpha, lookup)

    def act_batch(
        self, states: Sequence[str], candidates: Sequence[list[str]], slots: Sequence[int] | None = None
    ) -> list[Decision]:
        """``act`` for several environments: states encoded in ONE encoder call, priors from ONE
        ``lookup_batch`` (one LLM call), then per slot in order F2's update and the argmax. With the
        cache in mode "none" each decision is exactly ``act``'s (the argmax of a fresh prior does
        not depend on α or on the other slots). A decision's time is an even share of the batch's."""
        start = time.perf_counter()
        slots = self._slot_list(slots, len(states))
        if not slots:
            return []
        cands = [check_candidates(c) for c in candidates]
        lookups, alpha = self._lookup_batch(states, cands, slots, [self.step_count + i for i in range(len(states))])
        decisions = []
        for slot, c, lookup in zip(slots, cands, lookups):
            self.schedule.update(lookup.hit)
            with self._episode_slot(slot):
                self._acted = True
            self.step_count += 1
            decisions.append(Decision(c[int(np.argmax(lookup.log_prior))], 0.0, alpha, lookup))
        share = (time.perf_counter() - start) / len(decisions)
        for decision in decisions:
            decision.decision_time_s = share
        return decisions

    def _lookup_batch(
        self, states: Sequence[str], cands: list[list[str]], slots: list[int], steps: list[int]
    ) -> tuple[list[PriorLookup], float]:
        """The priors of a batch (each state under its slot's objective) from ONE ``lookup_batch``."""
        vecs = self.encoder.encode(list(states))
        objectives = []
        for slot in slots:
            with self._episode_slot(slot):
                objectives.append(self._objective)
        alpha = self.schedule.alpha
        requests = [
            LookupRequest(s, self.prompt_builder(o, s), c, q_values=np.zeros(len(c)), alpha=alpha, embedding=v, step=t)
            for s, c, o, v, t in zip(states, cands, objectives, vecs, steps)
        ]
        return self.prior_cache.lookup_batch(requests), alpha

    def predict_batch(
        self,
        states: Sequence[str],
        candidates: Sequence[list[str]],
        deterministic: bool = True,
        slots: Sequence[int] | None = None,
    ) -> list[Decision]:
        """``predict`` for several environments, the priors from ONE ``lookup_batch``; the
        temperature and step count stay as they were. A decision's time is an even share of the batch's."""
        start = time.perf_counter()
        slots = self._slot_list(slots, len(states))
        if not slots:
            return []
        cands = [check_candidates(c) for c in candidates]
        lookups, alpha = self._lookup_batch(states, cands, slots, [self.step_count] * len(states))
        decisions = [
            Decision(c[self._choose(lookup.log_prior, deterministic)], 0.0, alpha, lookup)
            for c, lookup in zip(cands, lookups)
        ]
        share = (time.perf_counter() - start) / len(decisions)
        for decision in decisions:
            decision.decision_time_s = share
        return decisions

    def _choose(self, log_prior: np.ndarray, deterministic: bool) -> int:
        """The prior's argmax, or a draw from it on predict's own generator."""
        if deterministic:
            return int(np.argmax(log_prior))
        probs = np.exp(log_prior - np.max(log_prior))
        return int(self._predict_rng.choice(probs.size, p=probs / probs.sum()))

    def predict(self, state_text: str, candidates: list[str], deterministic: bool = True) -> str:
        """The prior's argmax (``deterministic=False``: a draw from the prior on an RNG of its own).
        The cache lookup is an ordinary one; the agent's temperature and step count stay as they were."""
        candidates = check_candidates(candidates)
        lookup, _ = self._lookup(state_text, candidates, acting=False)
        return candidates[self._choose(lookup.log_prior, deterministic)]

    def observe(
        self, reward: float, terminated: bool, truncated: bool, next_state_text: str, next_candidates: list[str]
    ) -> None:
        """Nothing to learn; the reward goes to a cache that learns from outcomes."""
        if not self._acted:
            raise RuntimeError("observe() called before act()")
        if self.prior_cache.learns_from_outcomes:
            self.prior_cache.observe_reward(float(reward))
        if terminated or truncated:
            self._acted = False

    def _state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        state = {"step_count": self.step_count, "hit_rate": self.schedule.hit_rate}
        return {**state, "predict_rng": self._predict_rng.bit_generator.state}, {}

    def _restore(self, state: dict[str, Any], tensors: dict[str, Any]) -> None:
        hit_rate, step_count = state.get("hit_rate"), state.get("step_count")
        if (
            tensors
            or not isinstance(hit_rate, (int, float))
            or not 0.0 <= hit_rate <= 1.0
            or not isinstance(step_count, int)
            or step_count < 0
        ):
            raise ConfigError(f"bad direct-LLM state {state!r:.120} (with {len(tensors)} tensors)")
        if "predict_rng" in state:  # saves from before it was kept lack it
            try:
                self._predict_rng.bit_generator.state = state["predict_rng"]
            except (TypeError, ValueError, KeyError) as e:
                raise ConfigError(f"bad direct-LLM predict_rng state: {e}") from None
        self.schedule.hit_rate = float(hit_rate)
        self.step_count = step_count
