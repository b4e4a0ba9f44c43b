"""Environment step throughput: steps/s of every text environment under a random admissible policy.

No LLM and no agent: this is the floor every agent's step time sits on. Each environment and variant
in the registry is built with ``game_seed`` 0 (generated and cached on first use; construction time
is reported, so a first run includes generation). Results: printed and written to
benchmarks/results/envs.json.

    python benchmarks/bench_envs.py --steps 2000 --seed 0
    python benchmarks/bench_envs.py --env babyai --env webshop
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

from priorcache.envs.registry import ENVIRONMENTS, make_env
from priorcache.io import atomic_write_json


def bench_env(name: str, steps: int, seed: int, max_episode_steps: int) -> dict[str, Any]:
    """Play ``steps`` random admissible actions (resetting on episode end); time steps and resets."""
    start = time.perf_counter()
    env = make_env(name, max_episode_steps=max_episode_steps)
    construct_s = time.perf_counter() - start
    rng = random.Random(seed)
    step_times: list[float] = []
    reset_times: list[float] = []
    candidates: list[int] = []
    episodes = wins = 0
    try:
        t = time.perf_counter()
        _, info = env.reset(seed=seed)
        reset_times.append(time.perf_counter() - t)
        while len(step_times) < steps:
            candidates.append(len(info["admissible_actions"]))
            action = rng.choice(info["admissible_actions"])
            t = time.perf_counter()
            _, _, terminated, truncated, info = env.step(action)
            step_times.append(time.perf_counter() - t)
            if terminated or truncated:
                episodes += 1
                wins += int(info["won"])
                t = time.perf_counter()
                _, info = env.reset()
                reset_times.append(time.perf_counter() - t)
        total = sum(step_times) + sum(reset_times)
        return {
            "env": name,
            "source": getattr(env, "source", None),
            "construct_s": round(construct_s, 3),
            "steps": len(step_times),
            "episodes": episodes,
            "random_policy_win_rate": round(wins / episodes, 3) if episodes else None,
            "admissible_actions_mean": round(statistics.mean(candidates), 1),
            "steps_per_s": round(len(step_times) / sum(step_times), 1),
            "steps_per_s_including_resets": round(len(step_times) / total, 1),
            "step_ms_p50": round(1e3 * statistics.median(step_times), 3),
            "step_ms_p95": round(1e3 * statistics.quantiles(step_times, n=20)[18], 3),
            "reset_ms_p50": round(1e3 * statistics.median(reset_times), 3),
        }
    finally:
        env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000, help="timed steps per environment")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random policy")
    parser.add_argument("--max-episode-steps", type=int, default=50)
    parser.add_argument(
        "--env",
        action="append",
        default=None,
        help="environment family (repeatable; default: all of them, every variant)",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "envs.json")
    args = parser.parse_args()

    names = [
        f"{family}:{variant}" if variant else family
        for family in (args.env or sorted(name for name, info in ENVIRONMENTS.items() if info.kind == "text"))
        for variant in (ENVIRONMENTS[family].variants or (None,))
    ]
    results = []
    for name in names:
        r = bench_env(name, args.steps, args.seed, args.max_episode_steps)
        results.append(r)
        print(
            f"{name:<40} {r['steps_per_s']:>8.1f} steps/s ({r['steps_per_s_including_resets']:.1f} with resets), "
            f"step p50 {r['step_ms_p50']:.2f} ms p95 {r['step_ms_p95']:.2f} ms, reset {r['reset_ms_p50']:.1f} ms, "
            f"{r['admissible_actions_mean']} actions, random wins {r['random_policy_win_rate']}",
            flush=True,
        )
    atomic_write_json(
        args.out,
        {
            "benchmark": "env_steps_per_second",
            "policy": "uniform random over admissible actions",
            "steps_per_env": args.steps,
            "seed": args.seed,
            "max_episode_steps": args.max_episode_steps,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "results": results,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
