"""What a continuous-control run records (:mod:`priorcache.experiments.control_runner`): its training
episodes on the training task instances, the prior lookups of each, and the summary of a run.

- :class:`TrainingInstances` is the one environment both methods (Stable-Baselines3 SAC and
  SAC-Prior) learn on: the first ``train_games`` training instances of the task
  (``game_seeds(env, "train", n)``, built by ``make_split_env``, so never an evaluation instance),
  played in turn, episode ``k`` on instance ``k mod n`` with reset seed ``episode_seed(seed, k)``
  whatever seed the learner passes (SB3 resets without one after the first episode), so both methods
  meet the same instances and initial states in the same order. It records every episode as a
  :class:`ControlEpisode` (return, success, steps, the prior lookups and decision times made during
  it). Both learners run their episode in progress on across evaluations (SB3's
  ``learn(n, reset_num_timesteps=False)``, SAC-Prior's ``learn``); an episode the seed's budget ends
  (or a learner abandons) is recorded with ``cut`` true. A checkpoint keeps the episode in progress
  (:meth:`TrainingInstances.episode_state`); a resumed learner replays its actions on the instance
  (:meth:`TrainingInstances.replaying`), since a MuJoCo state cannot be saved simply.
- :class:`RecordingSource` stands between SAC-Prior and its :class:`~priorcache.cache.prior_cache.PriorCache`:
  it forwards every lookup, times it and adds it to the episode in progress.
- :func:`summarise_control` and :func:`summarise_control_held_out` build ``summary.json`` from the
  ``metrics.jsonl`` and ``evals.jsonl`` lines.

Success is MetaWorld's flag reached at any step of the episode (always false on locomotion).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import gymnasium
import numpy as np

from priorcache.agents.base import episode_seed
from priorcache.envs.registry import make_split_env
from priorcache.errors import ConfigError
from priorcache.experiments.metrics import mean_ci95, summarise_held_out


@dataclass
class ControlEpisode:
    """One line of a control run's metrics.jsonl (a training episode); evaluation episodes use it too
    while they are played."""

    seed: int
    episode: int
    game_seed: int
    episode_return: float = 0.0
    success: bool = False
    steps: int = 0
    cut: bool = False  # abandoned by the learner at the end of a training chunk, not ended by the task
    end_step: int = 0  # the seed's training environment steps when the episode ended
    lookups: int = 0  # skill decisions that asked the prior source
    hits: int = 0
    exact_hits: int = 0
    similar_hits: int = 0
    refreshes: int = 0
    llm_calls: int = 0
    partial_calls: int = 0
    llm_time_s: float = 0.0
    prompt_tokens: int = 0
    continuation_tokens: int = 0
    # Skill decisions (SAC-Prior: the prior lookup, cache and LLM included) or action choices (SB3 SAC), ms.
    decision_times_ms: list[float] = field(default_factory=list)
    audit_epsilons: list[float] = field(default_factory=list)
    audit_kls: list[float] = field(default_factory=list)
    audit_records: list[dict[str, Any]] = field(default_factory=list)
    train_time_s: float = 0.0  # gradient steps during the episode
    wall_time_s: float = 0.0

    def add_lookup(self, lookup: Any, elapsed_s: float) -> None:
        """Count one prior lookup (a ``PriorLookup``) that took ``elapsed_s``."""
        self.lookups += 1
        self.hits += bool(lookup.hit)
        self.exact_hits += lookup.kind == "exact"
        self.similar_hits += lookup.kind == "similar"
        self.refreshes += lookup.kind == "refresh"
        self.llm_calls += int(lookup.llm_calls)
        self.partial_calls += int(lookup.partial_calls)
        self.llm_time_s += float(lookup.llm_time_s)
        self.prompt_tokens += int(lookup.prompt_tokens)
        self.continuation_tokens += int(lookup.continuation_tokens)
        self.decision_times_ms.append(elapsed_s * 1e3)
        if lookup.audit is not None:
            self.audit_epsilons.append(float(lookup.audit.epsilon))
            self.audit_kls.append(float(lookup.audit.kl))
        if lookup.audit_record is not None:
            self.audit_records.append(dict(lookup.audit_record))

    @property
    def llm_queries(self) -> int:
        return self.llm_calls + self.partial_calls

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class RecordingSource:
    """A SAC-Prior prior source that forwards to ``cache`` and adds every lookup, timed, to the episode
    ``sink()`` returns (None: not recorded). Anything else (``prior_config``, ``learns_from_outcomes``,
    ``observe_reward``, ``observe_td``, ``stats``) is the cache's own."""

    def __init__(self, cache: Any, sink: Callable[[], ControlEpisode | None]) -> None:
        self.cache = cache
        self.sink = sink
        self.llm_queries = 0  # full + partial calls of every lookup through this source

    def lookup(
        self,
        state_text: str,
        prompt: Any,
        candidates: list[str],
        q_values: np.ndarray | None = None,
        alpha: float = 1.0,
        embedding: np.ndarray | None = None,
        step: int | None = None,
    ) -> Any:
        start = time.perf_counter()
        result = self.cache.lookup(
            state_text, prompt, candidates, q_values=q_values, alpha=alpha, embedding=embedding, step=step
        )
        elapsed = time.perf_counter() - start
        self.llm_queries += int(result.llm_calls) + int(result.partial_calls)
        record = self.sink()
        if record is not None:
            record.add_lookup(result, elapsed)
        return result

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes this class lacks: the cache answers them.
        return getattr(self.cache, name)


class TrainingInstances(gymnasium.Env):
    """The training task instances of a run as one environment (see the module docstring).

    ``on_step`` is called after every step (a progress bar); ``train_clock`` returns the learner's
    gradient time so far (each episode's ``train_time_s`` is its difference)."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        env_name: str,
        game_seeds: list[int],
        seed: int,
        env_kwargs: dict[str, Any] | None = None,
        on_step: Callable[[], None] | None = None,
        train_clock: Callable[[], float] | None = None,
    ) -> None:
        if not game_seeds:
            raise ValueError("TrainingInstances needs at least one training instance")
        self.env_name, self.game_seeds, self.seed = env_name, list(game_seeds), seed
        self.env_kwargs = dict(env_kwargs or {})
        self.on_step, self.train_clock = on_step, train_clock
        self._envs: dict[int, Any] = {}
        first = self._env(self.game_seeds[0])  # refuses bad settings now; the rest are built on first use
        self.observation_space, self.action_space = first.observation_space, first.action_space
        self.skills, self.objective = first.skills, first.objective
        self.total_steps = 0
        self.started = 0  # episodes started
        self.current: ControlEpisode | None = None
        self._finished: list[ControlEpisode] = []
        self._active: Any = None
        self._ended = True
        self._clock_start = (0.0, 0.0)
        self._replaying = False

    def _env(self, game_seed: int) -> Any:
        if game_seed not in self._envs:
            self._envs[game_seed] = make_split_env(self.env_name, "train", game_seed, **self.env_kwargs)
        return self._envs[game_seed]

    def describe(self, obs: np.ndarray) -> str:
        return (self._active or self._env(self.game_seeds[0])).describe(obs)

    def skill_label(self, obs: np.ndarray, action: np.ndarray) -> str:
        return (self._active or self._env(self.game_seeds[0])).skill_label(obs, action)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """The next training episode; ``seed`` is ignored (the episode's own reset seed is used)."""
        self.end_episode()
        k = self.started
        game = self.game_seeds[k % len(self.game_seeds)]
        self._active = self._env(game)
        obs, info = self._active.reset(seed=episode_seed(self.seed, k))
        self.started += 1
        self.current = ControlEpisode(seed=self.seed, episode=k, game_seed=game)
        self._ended = False
        self._clock_start = (time.perf_counter(), self.train_clock() if self.train_clock else 0.0)
        return obs, info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self._active.step(action)
        record = self.current
        assert record is not None  # the environment raised before a step without reset
        record.steps += 1
        record.episode_return += float(reward)
        record.success = record.success or bool(info.get("success", False))
        if not self._replaying:  # a replayed step was counted when it was first played
            self.total_steps += 1
        if terminated or truncated:
            self._finish(cut=False)
        if self.on_step is not None and not self._replaying:
            self.on_step()
        return obs, reward, terminated, truncated, info

    def _finish(self, cut: bool) -> None:
        record = self.current
        if record is None or self._ended:
            return
        record.cut = cut
        record.end_step = self.total_steps
        wall_start, train_start = self._clock_start
        record.wall_time_s = time.perf_counter() - wall_start
        record.train_time_s = (self.train_clock() - train_start) if self.train_clock else 0.0
        self._finished.append(record)
        self._ended = True

    def end_episode(self) -> None:
        """Record the episode in progress as cut (the learner moved on, or the seed's budget is spent);
        nothing when it ended or took no step (its lookups, if any, stay with it until it does)."""
        if self.current is not None and not self._ended and self.current.steps > 0:
            self._finish(cut=True)

    def episode_state(self) -> dict[str, Any] | None:
        """The episode in progress for a checkpoint (its record so far and the seconds it has run),
        None when none is."""
        if self.current is None or self._ended:
            return None
        wall_start, train_start = self._clock_start
        train_now = self.train_clock() if self.train_clock else 0.0
        return {
            "record": self.current.to_json(),
            "wall_s": time.perf_counter() - wall_start,
            "train_s": train_now - train_start,
        }

    @contextmanager
    def replaying(self, started: int, total_steps: int, state: dict[str, Any] | None) -> Iterator[None]:
        """Resume at ``started`` episodes (the one in progress included) and ``total_steps`` steps with
        the episode in progress ``state`` (:meth:`episode_state`'s; None: none was). Inside the block
        the learner replays that episode: reset, then its actions (steps not counted again); after
        it, the episode must stand where ``state`` says (ConfigError otherwise) and gets its record
        back, lookups and decision times included."""
        self.started = started - int(state is not None)
        self._replaying = True
        try:
            yield
        finally:
            self._replaying = False
        self.total_steps = total_steps
        in_progress = self.current is not None and not self._ended
        if state is None:
            if in_progress:
                raise ConfigError("the learner replayed an episode the checkpoint does not hold")
            return
        try:
            saved = ControlEpisode(**{f.name: state["record"][f.name] for f in fields(ControlEpisode)})
            clocks = float(state["wall_s"]), float(state["train_s"])
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"the checkpoint's training episode in progress is damaged: {e!r}") from None
        record = self.current

        def facts(r: ControlEpisode) -> tuple[Any, ...]:
            return r.episode, r.steps, r.episode_return, r.success

        if not (in_progress and record is not None and self.started == started and facts(record) == facts(saved)):
            raise ConfigError(
                f"the learner did not replay training episode {saved.episode} to its {saved.steps} steps and "
                f"return {saved.episode_return}: the checkpoint and the environment disagree"
            )
        self.current = saved
        train_now = self.train_clock() if self.train_clock else 0.0
        self._clock_start = (time.perf_counter() - clocks[0], train_now - clocks[1])

    def take_finished(self) -> list[ControlEpisode]:
        """The episodes finished (or cut) since the last call, in order."""
        out, self._finished = self._finished, []
        return out

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()


# --- summaries ---------------------------------------------------------------------------------------
def _total(records: list[dict[str, Any]], key: str) -> float:
    return sum(r[key] for r in records)


def summarise_control(records: list[dict[str, Any]], decision_unit: str) -> dict[str, Any]:
    """The training part of a control run's summary from its metrics.jsonl lines (all seeds): return
    and success of the episodes the task ended (cut ones are partial), every cost over all of them."""
    if not records:
        raise ValueError("no training episodes to summarise")
    seeds = sorted({r["seed"] for r in records})
    whole = [r for r in records if not r["cut"]]
    # A seed whose budget ended before any episode did (a 1000-step HalfCheetah episode, 500 steps)
    # is measured on its cut episodes, and named in ``returns_of_cut_episodes``.
    per_seed = {s: [r for r in whole if r["seed"] == s] or [r for r in records if r["seed"] == s] for s in seeds}
    only_cut = [s for s in seeds if all(r["cut"] for r in per_seed[s])]
    decision_ms = np.asarray([t for r in records for t in r["decision_times_ms"]], dtype=np.float64)
    eps = [e for r in records for e in r["audit_epsilons"]]
    kls = [k for r in records for k in r["audit_kls"]]
    steps, lookups = int(_total(records, "steps")), int(_total(records, "lookups"))
    full, partial = int(_total(records, "llm_calls")), int(_total(records, "partial_calls"))
    return {
        "episodes": len(records),
        "cut_episodes": len(records) - len(whole),
        "seeds": seeds,
        "success_rate": mean_ci95([float(np.mean([r["success"] for r in per_seed[s]])) for s in seeds]),
        "mean_return": mean_ci95([float(np.mean([r["episode_return"] for r in per_seed[s]])) for s in seeds]),
        "returns_of_cut_episodes": only_cut,
        "steps": steps,
        "llm_queries": full + partial,
        "llm_full_calls": full,
        "llm_partial_calls": partial,
        "llm_queries_per_step": (full + partial) / steps if steps else 0.0,
        "prompt_tokens": int(_total(records, "prompt_tokens")),
        "continuation_tokens": int(_total(records, "continuation_tokens")),
        "lookups": lookups,
        "hit_rate": _total(records, "hits") / lookups if lookups else 0.0,
        "exact_hits": int(_total(records, "exact_hits")),
        "similar_hits": int(_total(records, "similar_hits")),
        "refreshes": int(_total(records, "refreshes")),
        "decision_unit": decision_unit,
        "decisions": int(decision_ms.size),
        "decision_latency_ms": {
            "p50": float(np.percentile(decision_ms, 50)) if decision_ms.size else 0.0,
            "p95": float(np.percentile(decision_ms, 95)) if decision_ms.size else 0.0,
            "mean": float(decision_ms.mean()) if decision_ms.size else 0.0,
        },
        "llm_wall_time_s": _total(records, "llm_time_s"),
        "audits": len(eps),
        "audit_epsilon": {"mean": float(np.mean(eps)), "max": float(np.max(eps))} if eps else None,
        "audit_kl": {"mean": float(np.mean(kls)), "max": float(np.max(kls))} if kls else None,
        "audit_f5_violations": int(sum(k > 2 * e + 1e-9 for e, k in zip(eps, kls))),
        "train_time_s": _total(records, "train_time_s"),
    }


def summarise_control_held_out(evals: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The text runs' held-out summary (:func:`summarise_held_out`) at evaluation points counted in
    training steps, with the evaluations' wall time. None without evaluations."""
    summary = summarise_held_out(evals, point="after_steps")
    if summary is not None:
        summary["wall_time_s"] = sum(e["wall_time_s"] for e in evals)
    return summary
