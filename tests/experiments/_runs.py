"""Hand-built run folders shaped like the runner's (config.json, metrics.jsonl, evals.jsonl, summary.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from priorcache.experiments.metrics import EpisodeRecord, summarise, summarise_held_out


def audit(step: int, similarity: float, epsilon: float, kl: float) -> dict[str, Any]:
    """One served audit_records entry (a refresh of a similar hit, r = 0.05)."""
    return {
        "step": step,
        "kind": "exact" if similarity == 1.0 else "similar",
        "served": True,
        "similarity": similarity,
        "epsilon": epsilon,
        "kl": kl,
        "kl_bound": 2 * epsilon,
        "refresh_rate": 0.05,
        "weight": 20.0,
    }


def write_run(
    folder: Path,
    *,
    env: str = "babyai",
    env_kwargs: dict[str, Any] | None = None,
    agent: str = "dqn-prior",
    mode: str = "static",
    seeds: tuple[int, ...] = (0,),
    episodes: int = 2,
    train_games: int = 2,
    eval_games: int = 2,
    queries_per_episode: int = 4,
    label: str | None = None,
    actions: tuple[str, ...] = ("go forward", "turn left"),
    partial: bool = False,
    with_audits: bool = False,
) -> Path:
    """A finished run (``partial``: one cut off after its episodes, summary marked partial)."""
    folder.mkdir(parents=True)
    config = {
        "env": env,
        "env_kwargs": env_kwargs or {},
        "agent": agent,
        "cache": {"mode": mode, "similarity_threshold": 0.9, "refresh_rate": 0.05, "capacity": 64},
        "episodes": episodes,
        "seeds": list(seeds),
        "train_games": train_games,
        "eval_games": eval_games,
        "max_episode_steps": None,
        "eval_policy": "greedy",
        "label": label,
        "out": str(folder),
    }
    records, evals = [], []
    for seed in seeds:
        for episode in range(episodes):
            r = EpisodeRecord(seed=seed, episode=episode, game_seed=episode % train_games)
            r.success = episode % 2 == 1
            r.episode_return = float(r.success)
            r.steps = len(actions)
            r.actions = list(actions)
            r.llm_calls = queries_per_episode
            r.lookups = len(actions) if mode != "none" else 0
            r.hits = r.lookups // 2
            r.decision_times_ms = [1.0] * len(actions)
            if with_audits:
                r.audit_records = [audit(1, 1.0, 0.1, 0.01), audit(2, 0.95, 0.3, 0.2)]
                r.audit_epsilons = [a["epsilon"] for a in r.audit_records]
                r.audit_kls = [a["kl"] for a in r.audit_records]
            records.append(r.to_json())
        evals += [
            {
                "seed": seed,
                "after_episodes": episodes,
                "train_steps": episodes * len(actions),
                "train_llm_queries": episodes * queries_per_episode,
                "game_seed": 1_000_000 + game,
                "success": game == 0,
                "episode_return": float(game == 0),
                "steps": 3,
                "llm_queries": 1,
                "wall_time_s": 0.1,
            }
            for game in range(eval_games)
        ]
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "evals.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    summary: dict[str, Any] = {"held_out": summarise_held_out(evals), **summarise(records)}
    if partial:
        summary["partial"] = True
    else:
        summary.update({"env": env, "env_kwargs": env_kwargs or {}, "agent": agent, "cache_mode": mode})
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder
