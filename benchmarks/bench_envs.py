"""Environment step throughput: steps/s of each TextWorld challenge under a random admissible policy.

No LLM and no agent: this is the floor every agent's step time sits on. Games are the default
game of each challenge (generated once into the cache if missing; generation time is reported
from the game's metadata). Results: printed and written to benchmarks/results/envs.json.

    python benchmarks/bench_envs.py --steps 2000 --seed 0
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

import textworld

from priorcache.envs.registry import ENVIRONMENTS, make_env
from priorcache.io import atomic_write_json


def bench_challenge(
    challenge: str, steps: int, seed: int, games_dir: Path | None, max_episode_steps: int
) -> dict[str, Any]:
    """Play ``steps`` random admissible actions (resetting on episode end); time steps and resets."""
    start = time.perf_counter()
    env = make_env(f"textworld:{challenge}", games_dir=games_dir, max_episode_steps=max_episode_steps)
    construct_s = time.perf_counter() - start
    rng = random.Random(seed)
    step_times: list[float] = []
    reset_times: list[float] = []
    episodes = wins = 0
    try:
        t = time.perf_counter()
        _, info = env.reset(seed=seed)
        reset_times.append(time.perf_counter() - t)
        while len(step_times) < steps:
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
            "challenge": challenge,
            "settings": env.settings,
            "walkthrough_length": len(env.walkthrough),
            "generation_s": env.game_meta.get("generation_seconds"),
            "construct_s": round(construct_s, 3),
            "steps": len(step_times),
            "episodes": episodes,
            "random_policy_win_rate": round(wins / episodes, 3) if episodes else None,
            "steps_per_s": round(len(step_times) / sum(step_times), 1),
            "steps_per_s_including_resets": round(len(step_times) / total, 1),
            "step_ms_p50": round(1e3 * statistics.median(step_times), 3),
            "step_ms_p95": round(1e3 * statistics.quantiles(step_times, n=20)[18], 3),
            "reset_ms_p50": round(1e3 * statistics.median(reset_times), 3),
        }
    finally:
        env.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=2000, help="timed steps per challenge")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random policy")
    parser.add_argument("--max-episode-steps", type=int, default=50)
    parser.add_argument("--games-dir", type=Path, default=None, help="default: the user cache")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "envs.json"
    )
    args = parser.parse_args()

    results = []
    for challenge in ENVIRONMENTS["textworld"].variants:
        r = bench_challenge(challenge, args.steps, args.seed, args.games_dir, args.max_episode_steps)
        results.append(r)
        print(
            f"{challenge:<20} {r['steps_per_s']:>7.1f} steps/s "
            f"({r['steps_per_s_including_resets']:.1f} with resets), step p50 {r['step_ms_p50']:.2f} ms "
            f"p95 {r['step_ms_p95']:.2f} ms, reset {r['reset_ms_p50']:.1f} ms, "
            f"walkthrough {r['walkthrough_length']}, random wins {r['random_policy_win_rate']}"
        )
    atomic_write_json(
        args.out,
        {
            "benchmark": "env_steps_per_second",
            "policy": "uniform random over admissible actions",
            "steps_per_challenge": args.steps,
            "seed": args.seed,
            "max_episode_steps": args.max_episode_steps,
            "textworld": textworld.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "results": results,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
