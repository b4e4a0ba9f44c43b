"""Batched rollouts: N environments stepped in lockstep by one agent, so that every step asks the
LLM once for all of them (``Agent.act_batch`` → ``PriorCache.lookup_batch`` → one backend call).

Gymnasium's vector conventions, without its wrappers: environment i is reset with
``reset(seed=reset_seeds[i])``, all are stepped with one action each per step, and each reports its
own ``terminated`` / ``truncated``. There is no autoreset: every environment plays exactly one
episode, and one that has finished drops out of the batch, so the episode count per environment
(and per reset seed) stays exact. (Gymnasium's ``SyncVectorEnv`` would also stack the text infos
into object arrays and start the next episode on its own.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from priorcache.agents.base import Agent, Decision, EpisodeOutcome
from priorcache.errors import ConfigError

VectorStepCallback = Callable[[int, Decision, float], None]  # (env index, decision, reward), after observe


def run_episodes_batched(
    agent: Agent,
    envs: Sequence[Any],
    reset_seeds: Sequence[int | None],
    on_step: VectorStepCallback | None = None,
) -> list[EpisodeOutcome]:
    """Play one episode on each of ``envs`` (distinct environment objects, reset with
    ``reset_seeds[i]``) in lockstep, learning as the agent does; the outcomes in ``envs`` order.

    Each step makes one ``act_batch`` over the environments still playing, steps each with its
    action, and hands the outcomes to ``observe_batch`` (a learning agent learns per environment
    step); ``on_step(i, decision, reward)`` follows for each of them, in index order. With one
    environment this is ``agent.run_episode(envs[0], reset_seeds[0])``.

    An outcome's ``wall_time_s`` runs from the resets to that environment's last step (so the
    episodes' wall times overlap), and its ``train_time_s`` is its share of the gradient steps'
    time: each batch step's training time split evenly among the environments it stepped."""
    envs, reset_seeds = list(envs), list(reset_seeds)
    if not envs or len(envs) != len(reset_seeds):
        raise ConfigError(
            f"need one reset seed per environment, got {len(envs)} environments and {len(reset_seeds)} seeds"
        )
    if len({id(env) for env in envs}) != len(envs):
        raise ConfigError("the environments must be distinct objects: each one plays its own episode")
    start = time.perf_counter()
    outcomes = [EpisodeOutcome() for _ in envs]
    infos = [env.reset(seed=seed)[1] for env, seed in zip(envs, reset_seeds)]
    agent.begin_episodes([info["objective"] for info in infos])
    active = list(range(len(envs)))
    while active:
        train_before = agent.train_time_s
        decisions = agent.act_batch(
            [infos[i]["state_text"] for i in active], [infos[i]["admissible_actions"] for i in active], slots=active
        )
        steps = [envs[i].step(d.action) for i, d in zip(active, decisions)]
        for i, (_, _, _, _, info) in zip(active, steps):
            infos[i] = info
        agent.observe_batch(
            [float(s[1]) for s in steps],
            [bool(s[2]) for s in steps],
            [bool(s[3]) for s in steps],
            [infos[i]["state_text"] for i in active],
            [infos[i]["admissible_actions"] for i in active],
            slots=active,
        )
        train_share = (agent.train_time_s - train_before) / len(active)
        still = []
        for i, decision, (_, reward, terminated, truncated, info) in zip(active, decisions, steps):
            outcome = outcomes[i]
            outcome.steps += 1
            outcome.episode_return += float(reward)
            outcome.train_time_s += train_share
            if on_step is not None:
                on_step(i, decision, float(reward))
            if terminated or truncated:
                outcome.success = bool(info.get("won", False))
                outcome.wall_time_s = time.perf_counter() - start
            else:
                still.append(i)
        active = still
    return outcomes
