"""Held-out evaluation (docs/design.md §1, "Train / evaluate protocol"): the agent's greedy policy on
evaluation games, with no learning.

Every evaluation episode is played with ``Agent.predict``: ``greedy`` (the default) takes the
posterior's mode for DQN-Prior, the prior's argmax for the direct LLM; ``sample`` draws from the
agent's policy (F1) on the agent's evaluation RNG, which is what a memoryless policy needs in games
where the greedy one walks in circles (a coin-collector maze). Neither the agent's weights, replay
buffer, training RNG nor temperature change. An agent that asks the prior cache asks a *copy* of it, made for this
evaluation and dropped after it: the cache serves the evaluation as it would serve a deployed agent
(hits, misses that call the LLM, refreshes), but nothing an evaluation game taught it reaches
training, and the LLM queries the evaluation made are counted apart from training's.

With ``num_envs`` > 1 (the run's ``--num-envs``) the games are played that many at a time in
lockstep by ``Agent.predict_batch``: one batched lookup, so one LLM call, per step for all of them.
Every lookup of a step is then planned against the cache copy as it was before that step, and
sampled draws interleave across games, so a batched evaluation is another draw of the same
evaluation, not the sequential one's replay (in cache mode "none", greedy, they are equal).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

    from priorcache.agents.base import Agent
    from priorcache.cache.prior_cache import PriorCache

#: The ``env.reset`` seed of every evaluation episode: an evaluation game is the same task each time.
EVAL_RESET_SEED = 0


@dataclass
class EvalEpisode:
    """One line of evals.jsonl: a greedy episode on one held-out game after ``after_episodes`` training episodes."""

    seed: int
    after_episodes: int
    train_steps: int  # environment steps of training so far (this seed)
    train_llm_queries: int  # LLM queries of training so far (this seed)
    game_seed: int
    success: bool
    episode_return: float
    steps: int
    llm_queries: int | None  # queries this evaluation episode made (None: the agent asks no cache)
    wall_time_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def _evaluation_cache(agent: Agent) -> Iterator[PriorCache | None]:
    """Swap the agent's prior cache for a copy for the duration of an evaluation."""
    cache: PriorCache | None = getattr(agent, "prior_cache", None)
    if cache is None:
        yield None
        return
    fork = getattr(cache, "evaluation_copy", None)  # a shared cache copies itself where it lives
    if fork is not None:
        copy = fork()
    else:
        copy = type(cache)(cache.config, cache.encoder, cache.backend, cache.prior_config, cache.prior_kind)
        copy.load_state_dict(cache.state_dict())
    agent.prior_cache = copy
    try:
        yield copy
    finally:
        agent.prior_cache = cache
        if fork is not None:
            copy.release()


def _queries(cache: PriorCache | None) -> int | None:
    if cache is None:
        return None
    stats = cache.stats()
    return int(stats["llm_calls"] + stats["partial_calls"])


EVAL_POLICIES = ("greedy", "sample")


def play_policy(
    agent: Agent, env: Any, reset_seed: int = EVAL_RESET_SEED, policy: str = "greedy"
) -> tuple[bool, float, int]:
    """One episode of ``env`` by ``agent.predict`` (no learning): (won, return, steps)."""
    _, info = env.reset(seed=reset_seed)
    agent.begin_episode(info["objective"])
    total, steps = 0.0, 0
    while True:
        action = agent.predict(info["state_text"], info["admissible_actions"], deterministic=policy == "greedy")
        _, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        steps += 1
        if terminated or truncated:
            return bool(info.get("won", False)), total, steps


@dataclass
class _Played:
    won: bool = False
    episode_return: float = 0.0
    steps: int = 0
    llm_queries: int = 0
    wall_time_s: float = 0.0


def play_policy_batched(agent: Agent, envs: Sequence[Any], policy: str = "greedy") -> list[_Played]:
    """One episode on each of ``envs`` (distinct objects) by ``agent.predict_batch`` in lockstep, no
    learning: one batched prior lookup (one LLM call) per step for the environments still playing.
    An episode's LLM queries are those of its own decisions; its wall time is an even share of each
    lockstep step it took part in."""
    played = [_Played() for _ in envs]
    infos = [env.reset(seed=EVAL_RESET_SEED)[1] for env in envs]
    agent.begin_episodes([info["objective"] for info in infos])
    active = list(range(len(envs)))
    while active:
        start = time.perf_counter()
        decisions = agent.predict_batch(
            [infos[i]["state_text"] for i in active],
            [infos[i]["admissible_actions"] for i in active],
            deterministic=policy == "greedy",
            slots=active,
        )
        still = []
        for i, decision in zip(active, decisions):
            _, reward, terminated, truncated, infos[i] = envs[i].step(decision.action)
            record = played[i]
            record.episode_return += float(reward)
            record.steps += 1
            record.llm_queries += int(decision.cost("llm_calls") + decision.cost("partial_calls"))
            if terminated or truncated:
                record.won = bool(infos[i].get("won", False))
            else:
                still.append(i)
        share = (time.perf_counter() - start) / len(active)
        for i in active:
            played[i].wall_time_s += share
        active = still
    return played


def evaluate(
    agent: Agent,
    games: Sequence[tuple[int, Any]],
    *,
    seed: int,
    after_episodes: int,
    train_steps: int,
    train_llm_queries: int,
    policy: str = "greedy",
    num_envs: int = 1,
) -> list[EvalEpisode]:
    """One episode by ``policy`` on each ``(game_seed, env)`` of ``games`` (held-out games), on a copy
    of the agent's prior cache; the agent's training state is left as it was. ``num_envs`` > 1:
    that many games at a time in lockstep (:func:`play_policy_batched`)."""
    with _evaluation_cache(agent) as cache:
        if num_envs > 1:
            played = [
                p
                for lo in range(0, len(games), num_envs)
                for p in play_policy_batched(agent, [env for _, env in games[lo : lo + num_envs]], policy)
            ]
        else:
            played = [_play_one(agent, env, cache, policy) for _, env in games]
    return [
        EvalEpisode(
            seed=seed,
            after_episodes=after_episodes,
            train_steps=train_steps,
            train_llm_queries=train_llm_queries,
            game_seed=game_seed,
            success=p.won,
            episode_return=p.episode_return,
            steps=p.steps,
            llm_queries=None if cache is None else p.llm_queries,
            wall_time_s=p.wall_time_s,
        )
        for (game_seed, _), p in zip(games, played)
    ]


def _play_one(agent: Agent, env: Any, cache: PriorCache | None, policy: str) -> _Played:
    """One episode by :func:`play_policy`; its LLM queries from the cache's counters."""
    start = time.perf_counter()
    before = _queries(cache)
    won, total, steps = play_policy(agent, env, policy=policy)
    queries = 0 if cache is None else _queries(cache) - before
    return _Played(won, total, steps, queries, time.perf_counter() - start)
