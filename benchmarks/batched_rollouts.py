"""Batched rollouts: environment steps/s of DQN-Prior on BabyAI with N environments in lockstep (one
LLM call per lockstep step, priorcache/agents/vector.py) against one environment at a time, uncached
(cache mode "none") and cached ("static"), side by side in one run; plus the embedded backend
scoring the eight environments' first prompts in one call against eight calls; plus a held-out
evaluation (``evaluate``) of the eight games one at a time against all at once.

Every configuration plays the same episodes: one per game seed 0..N-1 of ``make_env("babyai",
game_seed=g)``, reset with seed g, cut at ``--horizon`` steps (Gymnasium's TimeLimit) so a run takes
minutes. num_envs=1 plays them one after another, num_envs=N all at once. Each configuration starts
from a fresh agent and cache, an empty encoder memo and an empty F9 prefix cache, so none inherits
another's warm state. Prints a table and writes benchmarks/results/batched_rollouts.json (atomically).

    python benchmarks/batched_rollouts.py                 # 8 environments, horizon 12
    python benchmarks/batched_rollouts.py --threads 1     # torch on one thread (see bench_scoring.py)
    python benchmarks/batched_rollouts.py --evaluation-only --out benchmarks/results/batched_evaluation.json
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium.wrappers import TimeLimit

from priorcache import CacheConfig, DQNConfig, DQNPriorAgent, MiniLMEncoder, PriorCache, make_backend, make_env
from priorcache.agents.vector import run_episodes_batched
from priorcache.experiments.evaluation import evaluate
from priorcache.io import atomic_write_json
from priorcache.prior.prompts import prompt_builder

RESULTS = Path(__file__).resolve().parent / "results" / "batched_rollouts.json"


def rollouts(mode: str, num_envs: int, games: int, horizon: int, encoder: Any, backend: Any) -> dict[str, Any]:
    """Env steps/s of a fresh DQN-Prior playing one episode on each of ``games`` games, ``num_envs`` at a time."""
    encoder.clear_memo()
    backend.clear_prefix_cache()
    cache = PriorCache(CacheConfig(mode=mode), encoder, backend)
    agent = DQNPriorAgent(DQNConfig(), encoder, cache, prompt_builder("babyai"), seed=0)
    envs = [TimeLimit(make_env("babyai", game_seed=g), max_episode_steps=horizon) for g in range(games)]
    steps = 0
    start = time.perf_counter()
    for first in range(0, games, num_envs):
        chunk = list(range(first, min(games, first + num_envs)))
        outcomes = run_episodes_batched(agent, [envs[g] for g in chunk], chunk)
        steps += sum(o.steps for o in outcomes)
    wall = time.perf_counter() - start
    stats = cache.stats()
    return {
        "mode": mode,
        "num_envs": num_envs,
        "env_steps": steps,
        "wall_s": wall,
        "steps_per_s": steps / wall,
        "llm_queries": stats["llm_calls"] + stats["partial_calls"],
        "llm_time_s": stats["llm_time_s"] + stats["partial_llm_time_s"],
        "hit_rate": stats["hit_rate"],
    }


def evaluation(num_envs: int, games: int, horizon: int, encoder: Any, backend: Any) -> dict[str, Any]:
    """Env steps/s of a held-out evaluation (greedy, uncached, a fresh agent) of ``games`` games,
    ``num_envs`` at a time (``evaluate(num_envs=...)``: ``predict_batch``, one LLM call per step)."""
    encoder.clear_memo()
    backend.clear_prefix_cache()
    cache = PriorCache(CacheConfig(mode="none"), encoder, backend)
    agent = DQNPriorAgent(DQNConfig(), encoder, cache, prompt_builder("babyai"), seed=0)
    envs = [(g, TimeLimit(make_env("babyai", game_seed=g), max_episode_steps=horizon)) for g in range(games)]
    start = time.perf_counter()
    found = evaluate(agent, envs, seed=0, after_episodes=0, train_steps=0, train_llm_queries=0, num_envs=num_envs)
    wall = time.perf_counter() - start
    steps = sum(e.steps for e in found)
    return {
        "num_envs": num_envs,
        "env_steps": steps,
        "wall_s": wall,
        "steps_per_s": steps / wall,
        "llm_queries": sum(e.llm_queries for e in found),
        "successes": sum(e.success for e in found),
    }


def scoring(games: int, backend: Any, reps: int) -> dict[str, Any]:
    """The first prompt of each game scored in one backend call vs one call per prompt (interleaved)."""
    build = prompt_builder("babyai")
    prompts, candidates = [], []
    for g in range(games):
        _, info = make_env("babyai", game_seed=g).reset(seed=g)
        prompts.append(build(info["objective"], info["state_text"]))
        candidates.append(info["admissible_actions"])
    backend.score(prompts, candidates)  # prefixes into the F9 cache: both ways then reuse them
    single_times, batch_times, diffs = [], [], []
    for _ in range(reps):
        t = time.perf_counter()
        single = [backend.score([p], [c]).scores[0] for p, c in zip(prompts, candidates)]
        single_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        batched = backend.score(prompts, candidates).scores
        batch_times.append(time.perf_counter() - t)
        diffs.append(max(float(np.abs(a - b).max()) for a, b in zip(single, batched)))
    return {
        "prompts": games,
        "state_tokens": [backend.count_tokens(p.state) for p in prompts],
        "one_call_per_prompt_s": float(np.median(single_times)),
        "one_call_s": float(np.median(batch_times)),
        "speedup": float(np.median(single_times) / np.median(batch_times)),
        "max_abs_score_difference": max(diffs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--horizon", type=int, default=12, help="steps per episode at most")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of the scoring comparison")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--evaluation-only", action="store_true", help="only the held-out evaluation, 1 vs --num-envs at a time"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    encoder, backend = MiniLMEncoder(), make_backend("embedded")
    evals = [evaluation(n, args.num_envs, args.horizon, encoder, backend) for n in (1, args.num_envs)]
    for r in evals:
        print(f"evaluation  num_envs={r['num_envs']}  {r['env_steps']} steps: {r['steps_per_s']:.2f} steps/s")
    eval_speedup = evals[1]["steps_per_s"] / evals[0]["steps_per_s"]
    print(f"evaluation  {args.num_envs} games at a time vs 1: {eval_speedup:.2f}× steps/s")
    if args.evaluation_only:
        atomic_write_json(
            args.out,
            {
                "env": "babyai",
                "horizon": args.horizon,
                "torch_threads": torch.get_num_threads(),
                "load_average_at_end": os.getloadavg(),
                "evaluation": evals,
                "evaluation_speedup": eval_speedup,
            },
        )
        print(f"wrote {args.out}")
        return
    score = scoring(args.num_envs, backend, args.reps)
    print(
        f"scoring {score['prompts']} prompts: {score['one_call_per_prompt_s']:.2f} s in one call each, "
        f"{score['one_call_s']:.2f} s in one call ({score['speedup']:.2f}×), "
        f"max |Δℓ| {score['max_abs_score_difference']:.1e}"
    )
    runs = []
    for mode in ("none", "static"):
        for num_envs in (1, args.num_envs):
            runs.append(rollouts(mode, num_envs, args.num_envs, args.horizon, encoder, backend))
            r = runs[-1]
            print(
                f"{mode:>6}  num_envs={num_envs}  {r['env_steps']} steps in {r['wall_s']:.1f} s: "
                f"{r['steps_per_s']:.2f} steps/s  ({r['llm_queries']} LLM queries, hit rate {r['hit_rate']:.2f})"
            )
    speedups = {}
    for mode in ("none", "static"):
        one, many = (next(r for r in runs if r["mode"] == mode and r["num_envs"] == n) for n in (1, args.num_envs))
        speedups[mode] = many["steps_per_s"] / one["steps_per_s"]
        print(f"{mode:>6}  {args.num_envs} envs vs 1: {speedups[mode]:.2f}× steps/s")
    atomic_write_json(
        args.out,
        {
            "env": "babyai",
            "num_envs": args.num_envs,
            "horizon": args.horizon,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
            "machine": platform.platform(),
            "scoring": score,
            "rollouts": runs,
            "steps_per_s_speedup": speedups,
            "evaluation": evals,
            "evaluation_speedup": eval_speedup,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
