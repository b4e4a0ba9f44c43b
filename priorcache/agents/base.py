"""The agent interface every agent implements, and the one episode loop they all share.

Modelled on Stable-Baselines3 (``learn`` / ``predict`` / ``save`` / ``load``) over text actions:

- ``begin_episode(objective)``, then per step ``act(state_text, candidates) -> Decision`` (the
  behaviour policy: it records what learning needs) and ``observe(reward, terminated, truncated,
  next_state_text, next_candidates)`` (learning happens here);
- ``run_episode(env, reset_seed)`` plays one episode of a Gymnasium environment whose ``info``
  carries ``state_text``, ``admissible_actions``, ``objective`` and ``won``: the only episode loop
  in the package (``priorcache.experiments.runner`` calls it); ``learn(env, episodes)`` runs several;
- ``predict(state_text, candidates)`` is the greedy action, without learning and without touching
  what training uses (replay buffer, pending transition, RNG streams, temperature, step count);
- ``save(path)`` / ``Agent.load(path, **components)``: config and state as JSON, tensors as
  safetensors (no pickle; :mod:`priorcache.agents.saving`). Components that are not the agent's
  own (encoder, prior cache, LLM backend, prompt builder) are passed to ``load``, never saved.

Constructors share keyword names: ``cls(config=..., seed=..., **components)``, with ``components``
the names in ``cls.components``, so the runner and ``load`` build any agent the same way.
"""

from __future__ import annotations

import copy
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from priorcache.agents.saving import read_agent, write_agent
from priorcache.errors import ConfigError

if TYPE_CHECKING:
    from priorcache.cache.prior_cache import PriorLookup

A = TypeVar("A", bound="Agent")

#: Everything an agent may be built with besides its config and seed.
COMPONENT_NAMES = ("encoder", "prior_cache", "backend", "prompt_builder")


@dataclass
class Decision:
    """One decision: the action, what it cost, and the prior lookup behind it (recorded every
    step). ``lookup`` is None for agents without a cached prior (plain DQN, ReAct)."""

    action: str
    decision_time_s: float
    alpha: float
    lookup: PriorLookup | None = None
    # LLM cost of a decision made without the prior cache (the ReAct baseline): cost field -> value.
    llm_cost: dict[str, float] | None = None

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


@dataclass
class EpisodeOutcome:
    """What one episode came to (the per-step decisions go to ``run_episode``'s ``on_step``)."""

    episode_return: float = 0.0
    steps: int = 0
    success: bool = False
    train_time_s: float = 0.0  # time spent in gradient steps during the episode
    wall_time_s: float = 0.0  # reset to the last step, everything included


StepCallback = Callable[[Decision, float], None]  # (decision, reward), after ``observe``


#: Episodes per run seed that get distinct reset seeds (runs are refused more).
EPISODES_PER_SEED = 100_003


def episode_seed(seed: int, episode: int) -> int:
    """The ``env.reset`` seed of episode ``episode`` of run seed ``seed`` (distinct for every pair
    the experiments use: fewer than ``EPISODES_PER_SEED`` episodes per seed)."""
    return seed * EPISODES_PER_SEED + episode


class Agent(ABC):
    """Base of every agent. Subclasses set the class attributes and implement the abstract methods;
    a learning agent's state beyond its config goes through ``_state`` / ``_restore``."""

    name: ClassVar[str]  # the registry name, e.g. "dqn-prior"
    config_class: ClassVar[type]  # the config dataclass
    components: ClassVar[tuple[str, ...]]  # of COMPONENT_NAMES, what the constructor takes
    uses_prior: ClassVar[bool] = False  # asks the prior cache (so the LLM) for p(a|s)
    learns: ClassVar[bool] = False
    deterministic: ClassVar[bool] = False  # replays the same episode on a fixed game (greedy, no learning)

    config: Any
    seed: int
    train_time_s: float

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unknown = sorted(set(getattr(cls, "components", ())) - set(COMPONENT_NAMES))
        if unknown:  # the runner and load() only know how to hand over these
            raise TypeError(f"{cls.__name__}.components names unknown components {unknown}; known: {COMPONENT_NAMES}")

    # --- configuration ------------------------------------------------------------------------
    @classmethod
    def make_config(cls, **settings: Any) -> Any:
        """The agent's config from run-wide settings (e.g. ``alpha_0``, ``alpha_min``): it takes
        those its config class has and leaves the rest at their defaults."""
        names = {f.name for f in fields(cls.config_class)}
        return cls.config_class(**{k: v for k, v in settings.items() if k in names})

    @classmethod
    def config_to_json(cls, config: Any) -> dict[str, Any]:
        """The config as written into a run's config.json (``agent_config``)."""
        return asdict(config)

    @classmethod
    def config_from_json(cls, data: Any) -> Any:
        """Inverse of :meth:`config_to_json`; ConfigError for anything the config class refuses."""
        if not isinstance(data, dict):
            raise ConfigError(f"the saved config must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in fields(cls.config_class)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"the saved config has keys {cls.config_class.__name__} does not know: {unknown}")
        return cls.config_class(**data)

    # --- acting and learning ------------------------------------------------------------------
    @abstractmethod
    def begin_episode(self, objective: str) -> None:
        """Start an episode with this objective (it goes into the prompts)."""

    @abstractmethod
    def act(self, state_text: str, candidates: list[str]) -> Decision:
        """The behaviour policy's action for the state; records what learning needs."""

    def act_demonstrated(self, state_text: str, candidates: list[str], action: str) -> Decision:
        """``act``, but the step's action is a demonstrator's (``action``): a learning agent records
        the step as its own experience and learns from it at ``observe``, as DQfD keeps demonstrations
        in its replay buffer. Only agents with ``learns`` take demonstrations."""
        raise ConfigError(f"the {self.name} agent does not learn, so it takes no demonstrations")

    @abstractmethod
    def observe(
        self, reward: float, terminated: bool, truncated: bool, next_state_text: str, next_candidates: list[str]
    ) -> None:
        """The outcome of the last ``act``; a learning agent learns here."""

    @abstractmethod
    def predict(self, state_text: str, candidates: list[str], deterministic: bool = True) -> str:
        """The greedy action (``deterministic=False``: a draw from the policy on an RNG of its own),
        with no learning and no change to anything training uses."""

    def run_episode(
        self,
        env: Any,
        reset_seed: int | None = None,
        on_step: StepCallback | None = None,
        demonstrator: Callable[[], str] | None = None,
    ) -> EpisodeOutcome:
        """Play one episode of ``env`` from ``env.reset(seed=reset_seed)``, learning as the agent does.
        ``demonstrator``: the actions are its instead (e.g. ``env.oracle_action``), and the agent
        learns from them (:meth:`act_demonstrated`)."""
        start = time.perf_counter()
        train_before = self.train_time_s
        outcome = EpisodeOutcome()
        _, info = env.reset(seed=reset_seed)
        self.begin_episode(info["objective"])
        while True:
            if demonstrator is None:
                decision = self.act(info["state_text"], info["admissible_actions"])
            else:
                decision = self.act_demonstrated(info["state_text"], info["admissible_actions"], demonstrator())
            _, reward, terminated, truncated, info = env.step(decision.action)
            self.observe(reward, terminated, truncated, info["state_text"], info["admissible_actions"])
            outcome.steps += 1
            outcome.episode_return += float(reward)
            if on_step is not None:
                on_step(decision, float(reward))
            if terminated or truncated:
                outcome.success = bool(info.get("won", False))
                break
        outcome.train_time_s = self.train_time_s - train_before
        outcome.wall_time_s = time.perf_counter() - start
        return outcome

    def learn(
        self: A,
        env: Any,
        episodes: int,
        seed: int = 0,
        on_step: StepCallback | None = None,
        on_episode: Callable[[int, EpisodeOutcome], None] | None = None,
    ) -> A:
        """Run ``episodes`` episodes of ``env``, reset with :func:`episode_seed` (``seed``, 0…), as a
        run of the experiment runner does for one seed. Returns the agent."""
        if episodes < 1:
            raise ConfigError(f"episodes must be ≥ 1, got {episodes}")
        for episode in range(episodes):
            outcome = self.run_episode(env, episode_seed(seed, episode), on_step=on_step)
            if on_episode is not None:
                on_episode(episode, outcome)
        return self

    # --- persistence --------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """What a save holds beyond the config and seed: (JSON-able state, name → torch tensor)."""
        return {}, {}

    def _restore(self, state: dict[str, Any], tensors: dict[str, Any]) -> None:
        """Inverse of :meth:`_state`, on a freshly built agent; ConfigError when it does not fit."""
        if state or tensors:
            raise ConfigError(f"a {self.name} agent saves no state, but the folder holds some")

    def save(self, path: str | Path) -> None:
        """Write config, seed and state into folder ``path`` (created; a previous save is replaced)."""
        state, tensors = self._state()
        write_agent(
            Path(path),
            {"agent": self.name, "config": self.config_to_json(self.config), "seed": self.seed, "state": state},
            tensors,
        )

    @classmethod
    def load(cls: type[A], path: str | Path, **components: Any) -> A:
        """An agent saved by :meth:`save`, rebuilt with ``components`` (see ``cls.components``).
        ConfigError when the folder is damaged, foreign, another agent's or from other components."""
        path = Path(path)
        missing = [c for c in cls.components if c not in components]
        unknown = sorted(set(components) - set(cls.components))
        if missing or unknown:
            raise ConfigError(
                f"{cls.__name__}.load takes the components {list(cls.components)}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unknown {unknown}" if unknown else "")
            )
        saved, tensors = read_agent(path)
        if saved["agent"] != cls.name:
            raise ConfigError(f"{path} holds a saved {saved['agent']!r} agent, not {cls.name!r}")
        try:
            config = cls.config_from_json(saved["config"])
        except (ConfigError, TypeError) as e:
            raise ConfigError(f"{path}: damaged agent config: {e}") from None
        agent = cls(config=config, seed=saved["seed"], **components)
        try:
            agent._restore(saved["state"], tensors)
        except ConfigError as e:
            raise ConfigError(f"{path} does not fit a {cls.name} agent built from these components: {e}") from None
        return agent

    # --- several environments in lockstep (priorcache.agents.vector) ---------------------------
    #: The attributes that hold one episode's state (objective, pending transition, history, …).
    #: ``begin_episodes`` keeps one copy of them per environment slot, and the batch methods swap a
    #: slot's copy in around that slot's work, so N episodes run interleaved in one agent, each with
    #: its own objective, while everything else (networks, replay buffer, RNG, temperature, step
    #: count) is shared.
    episode_fields: ClassVar[tuple[str, ...]] = ()

    def begin_episodes(self, objectives: Sequence[str]) -> None:
        """Start one episode per environment slot 0..N-1 (``objectives[i]`` for slot i), as
        ``begin_episode`` does for one."""
        slots = []
        for objective in objectives:
            self.begin_episode(objective)
            slots.append({name: copy.copy(getattr(self, name)) for name in self.episode_fields})
        self._episode_slots = slots

    @contextmanager
    def _episode_slot(self, slot: int) -> Iterator[None]:
        """The agent with slot ``slot``'s episode state swapped in, and out again afterwards."""
        slots: list[dict[str, Any]] | None = getattr(self, "_episode_slots", None)
        if slots is None or not 0 <= slot < len(slots):
            raise RuntimeError(f"no episode in slot {slot}: call begin_episodes() first")
        own = {name: getattr(self, name) for name in self.episode_fields}
        for name, value in slots[slot].items():
            setattr(self, name, value)
        try:
            yield
        finally:
            for name in self.episode_fields:
                slots[slot][name] = getattr(self, name)
                setattr(self, name, own[name])

    @staticmethod
    def _slot_list(slots: Sequence[int] | None, n: int) -> list[int]:
        if slots is None:
            return list(range(n))
        slots = list(slots)
        if len(slots) != n or len(set(slots)) != n:
            raise ConfigError(f"need {n} distinct slots, one per state, got {slots}")
        return slots

    def act_batch(
        self, states: Sequence[str], candidates: Sequence[list[str]], slots: Sequence[int] | None = None
    ) -> list[Decision]:
        """``act`` for several environments at once: ``states[i]`` is the state of the episode in slot
        ``slots[i]`` (default: slot i). This default calls ``act`` slot by slot, in order, each in its
        own episode; agents that can share work across the batch (one LLM call) override it."""
        decisions = []
        for slot, state, cands in zip(self._slot_list(slots, len(states)), states, candidates):
            with self._episode_slot(slot):
                decisions.append(self.act(state, cands))
        return decisions

    def predict_batch(
        self,
        states: Sequence[str],
        candidates: Sequence[list[str]],
        deterministic: bool = True,
        slots: Sequence[int] | None = None,
    ) -> list[Decision]:
        """``predict`` for several environments at once (``states[i]`` in slot ``slots[i]``'s episode),
        as decisions: the action and, for agents with a prior cache, the lookup behind it (what it
        cost). Nothing is learnt. This default calls ``predict`` slot by slot; agents that can share
        work across the batch (one LLM call) override it."""
        decisions = []
        for slot, state, cands in zip(self._slot_list(slots, len(states)), states, candidates):
            start = time.perf_counter()
            with self._episode_slot(slot):
                action = self.predict(state, cands, deterministic)
            decisions.append(Decision(action, time.perf_counter() - start, float("nan")))
        return decisions

    def observe_batch(
        self,
        rewards: Sequence[float],
        terminated: Sequence[bool],
        truncated: Sequence[bool],
        next_states: Sequence[str],
        next_candidates: Sequence[list[str]],
        slots: Sequence[int] | None = None,
    ) -> None:
        """``observe`` for the slots of the last ``act_batch``, slot by slot in order, each in its own
        episode: a learning agent learns per environment step (DQN: one gradient step each), so
        learning per step of experience is the same at any number of environments."""
        for i, slot in enumerate(self._slot_list(slots, len(rewards))):
            with self._episode_slot(slot):
                self.observe(rewards[i], terminated[i], truncated[i], next_states[i], next_candidates[i])
