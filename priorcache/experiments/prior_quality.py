"""How good the LLM prior is on held-out oracle steps, before any RL (the first measure of F8 adaptation).

On each of the first ``games`` evaluation games the environment's oracle plays an episode; at every
step the backend scores all admissible actions (F3, with the family's prompt) and the oracle
action's rank is recorded. Reported beside it, the best state-independent guesses learnt from the
oracle steps of training games: always the most frequent training action, and the candidate whose
first word is the most frequent training verb. Steps whose oracle action never occurred in training
are counted apart ("unseen"), since held-out games that only repeat trained actions re-test training.

``examples`` (state, action) pairs go into the prompt prefix (in-context few-shot, F8 (a)); 0-shot
is no examples.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from priorcache.envs.registry import game_seeds, make_split_env, require_text_env
from priorcache.errors import ConfigError
from priorcache.prior.base import LLMBackend
from priorcache.prior.prompts import prompt_builder


@dataclass(frozen=True)
class OracleStep:
    """One step of an oracle episode: what the agent would see, and what the oracle did."""

    game_seed: int
    objective: str
    state_text: str
    candidates: tuple[str, ...]
    action: str


def oracle_steps(
    env_name: str, split: str, games: int, max_steps: int | None = None, progress: bool = False, **env_kwargs: Any
) -> list[OracleStep]:
    """The oracle's steps on the first ``games`` games of ``split`` (each episode must end in a win)."""
    require_text_env(env_name, "prior quality (oracle actions among admissible commands)")
    steps: list[OracleStep] = []
    if max_steps is not None:
        env_kwargs["max_episode_steps"] = max_steps
    for seed in tqdm(game_seeds(env_name, split, games), desc=f"{env_name} {split} oracle", disable=not progress):
        env = make_split_env(env_name, split, seed, **env_kwargs)
        try:
            _, info = env.reset(seed=0)
            while True:
                action = env.oracle_action()
                steps.append(
                    OracleStep(seed, info["objective"], info["state_text"], tuple(info["admissible_actions"]), action)
                )
                _, _, terminated, truncated, info = env.step(action)
                if terminated or truncated:
                    break
            if not info.get("won", False):
                raise ConfigError(
                    f"the {env_name} oracle did not win {split} game {seed}: it cannot serve as a "
                    "reference for prior quality"
                )
        finally:
            env.close()
    return steps


def off_path_steps(
    env_name: str,
    demos: Sequence[OracleStep],
    split: str = "train",
    detours: int = 1,
    depth: int = 2,
    seed: int = 0,
    max_steps: int | None = None,
    progress: bool = False,
    **env_kwargs: Any,
) -> list[OracleStep]:
    """States off the demonstrated path of ``demos`` (oracle episodes on games of ``split``), each
    labelled with the environment's reactive ``oracle_action()`` there (DAgger-style).

    From every demonstrated state, ``detours`` times: replay the demonstration up to that state, take
    1..``depth`` random admissible actions (the first never the oracle's), and record each state
    reached with the oracle's action there. A detour stops early when the episode ends or the
    oracle has no action; states already recorded (same objective and state text, on or off the
    path) are kept once. Deterministic in ``seed``. No evaluation game is touched: the games are
    those of ``demos``, the only ones the oracle is asked about."""
    if detours < 0 or depth < 1:
        raise ConfigError(f"detours must be ≥ 0 and depth ≥ 1, got {detours} and {depth}")
    if max_steps is not None:
        env_kwargs["max_episode_steps"] = max_steps
    by_game: dict[int, list[OracleStep]] = {}
    for step in demos:
        by_game.setdefault(step.game_seed, []).append(step)
    seen = {(s.objective, s.state_text) for s in demos}
    out: list[OracleStep] = []
    for game_seed, path in tqdm(by_game.items(), desc=f"{env_name} off-path states", disable=not progress):
        rng = np.random.default_rng([seed, game_seed])
        env = make_split_env(env_name, split, game_seed, **env_kwargs)
        try:
            for t, start in enumerate(path):
                for _ in range(detours):
                    env.reset(seed=0)
                    for step in path[:t]:
                        env.step(step.action)
                    info = {"admissible_actions": list(start.candidates)}
                    oracle = start.action
                    for k in range(int(rng.integers(1, depth + 1))):
                        choices = [a for a in info["admissible_actions"] if k > 0 or a != oracle]
                        if not choices:
                            break
                        _, _, terminated, truncated, info = env.step(choices[int(rng.integers(len(choices)))])
                        if terminated or truncated:
                            break
                        try:
                            oracle = env.oracle_action()
                        except ConfigError:  # the expert has no way to win from here
                            break
                        key = (info["objective"], info["state_text"])
                        if key not in seen and oracle in info["admissible_actions"]:
                            seen.add(key)
                            out.append(
                                OracleStep(
                                    game_seed,
                                    info["objective"],
                                    info["state_text"],
                                    tuple(info["admissible_actions"]),
                                    oracle,
                                )
                            )
        finally:
            env.close()
    return out


def _verb(action: str) -> str:
    return action.split(" ", 1)[0].split("[", 1)[0].lower()


@dataclass
class Ranking:
    """Top-1 accuracy, mean rank (1 = first) and mean reciprocal rank over a set of steps."""

    steps: int
    top1: float | None
    mean_rank: float | None
    mrr: float | None

    @classmethod
    def of(cls, ranks: Sequence[int]) -> Ranking:
        if not ranks:
            return cls(0, None, None, None)
        r = np.asarray(ranks, dtype=np.float64)
        return cls(len(ranks), float(np.mean(r == 1)), float(r.mean()), float(np.mean(1.0 / r)))


def measure_prior_quality(
    env_name: str,
    backend: LLMBackend,
    train: Sequence[OracleStep],
    held_out: Sequence[OracleStep],
    examples: Sequence[tuple[str, str]] = (),
    progress: bool = False,
) -> dict[str, Any]:
    """Rank of the oracle action under the prior on ``held_out`` steps, and the guesses learnt on ``train``."""
    if not held_out:
        raise ConfigError("no held-out oracle steps to measure the prior on")
    build = prompt_builder(env_name, examples)
    trained_actions = Counter(s.action for s in train)
    trained_verbs = Counter(_verb(s.action) for s in train)
    ranks, unseen_ranks, guess_hits, verb_hits = [], [], [], []
    for step in tqdm(held_out, desc=f"{env_name} prior", disable=not progress):
        scores = np.asarray(backend.score([build(step.objective, step.state_text)], [list(step.candidates)]).scores[0])
        # Rank with ties broken against the oracle: a prior that cannot tell actions apart earns no credit.
        rank = int(np.sum(scores >= scores[step.candidates.index(step.action)]))
        ranks.append(rank)
        if step.action not in trained_actions:
            unseen_ranks.append(rank)
        # The guesses pick, among the candidates, the most frequent training action / verb (first listed on ties).
        guess = max(step.candidates, key=lambda a: (trained_actions[a], -step.candidates.index(a)))
        verb_guess = max(step.candidates, key=lambda a: (trained_verbs[_verb(a)], -step.candidates.index(a)))
        guess_hits.append(guess == step.action)
        verb_hits.append(verb_guess == step.action)
    return {
        "env": env_name,
        "shots_examples": len(examples),
        "held_out_games": len({s.game_seed for s in held_out}),
        "train_steps": len(train),
        "prior": vars(Ranking.of(ranks)),
        "prior_on_unseen_actions": vars(Ranking.of(unseen_ranks)),
        "unseen_action_share": len(unseen_ranks) / len(held_out),
        "guess_most_frequent_action_top1": float(np.mean(guess_hits)),
        "guess_most_frequent_verb_top1": float(np.mean(verb_hits)),
        "uniform_top1": float(np.mean([1.0 / len(s.candidates) for s in held_out])),
    }


def few_shot_examples(train: Sequence[OracleStep], shots: int, max_examples: int) -> list[tuple[str, str]]:
    """(state, action) pairs of the first ``shots`` training games, thinned evenly to ``max_examples``
    so the prompt prefix stays short (F9 keeps it cheap, but not free, and the context is finite)."""
    if shots < 0 or max_examples < 0:
        raise ConfigError(f"shots and max_examples must be ≥ 0, got {shots} and {max_examples}")
    games = sorted({s.game_seed for s in train})
    if shots > len(games):
        raise ConfigError(f"{shots} shots asked, but only {len(games)} training games were played")
    chosen = set(games[:shots])
    pairs = [(s.state_text, s.action) for s in train if s.game_seed in chosen]
    if len(pairs) <= max_examples:
        return pairs
    keep = np.linspace(0, len(pairs) - 1, max_examples).round().astype(int)
    return [pairs[i] for i in keep]
