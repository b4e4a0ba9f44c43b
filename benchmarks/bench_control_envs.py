"""Step throughput of the continuous-control environments (MuJoCo locomotion, MetaWorld MT1).

Each task is built through ``make_env`` (construction timed) and plays uniform random actions in
[-1, 1]^d, resetting on episode end; every step includes the describer's text (``info["state_text"]``),
as an agent's step does. No agent and no LLM: this is the floor the continuous agents sit on.
Results: printed and written to benchmarks/results/control_envs.json.

    python benchmarks/bench_control_envs.py --steps 3000 --seed 0
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from priorcache.envs.registry import ENVIRONMENTS, make_env
from priorcache.io import atomic_write_json


def bench_task(name: str, steps: int, seed: int) -> dict[str, Any]:
    """Play ``steps`` random actions on ``name``; time construction, steps and resets."""
    start = time.perf_counter()
    env = make_env(name)
    construct_s = time.perf_counter() - start
    rng = np.random.default_rng(seed)
    step_times: list[float] = []
    reset_times: list[float] = []
    words: list[int] = []
    try:
        t = time.perf_counter()
        _, info = env.reset(seed=seed)
        reset_times.append(time.perf_counter() - t)
        while len(step_times) < steps:
            action = rng.uniform(-1.0, 1.0, env.action_space.shape).astype(np.float32)
            t = time.perf_counter()
            _, _, terminated, truncated, info = env.step(action)
            step_times.append(time.perf_counter() - t)
            words.append(len(info["state_text"].split()))
            if terminated or truncated:
                t = time.perf_counter()
                _, info = env.reset()
                reset_times.append(time.perf_counter() - t)
        return {
            "env": name,
            "construct_s": round(construct_s, 3),
            "steps": len(step_times),
            "episodes_started": len(reset_times),
            "steps_per_s": round(len(step_times) / sum(step_times), 1),
            "step_ms_p50": round(1e3 * statistics.median(step_times), 3),
            "reset_ms_p50": round(1e3 * statistics.median(reset_times), 3),
            "state_text_words_max": max(words),
        }
    finally:
        env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000, help="timed steps per task")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random actions")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "control_envs.json")
    args = parser.parse_args()
    names = [
        f"{family}:{variant}"
        for family, info in sorted(ENVIRONMENTS.items())
        if info.kind == "control"
        for variant in info.variants
    ]
    results = []
    for name in names:
        r = bench_task(name, args.steps, args.seed)
        results.append(r)
        print(
            f"{name:<24} {r['steps_per_s']:>8.1f} steps/s, step p50 {r['step_ms_p50']:.3f} ms, "
            f"reset {r['reset_ms_p50']:.1f} ms, built in {r['construct_s']:.2f} s, "
            f"state text <= {r['state_text_words_max']} words",
            flush=True,
        )
    atomic_write_json(
        args.out,
        {
            "benchmark": "control_env_steps_per_second",
            "policy": "uniform random actions in [-1, 1]^d",
            "steps_per_env": args.steps,
            "seed": args.seed,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "results": results,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
