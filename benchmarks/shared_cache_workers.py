"""DQN-Prior with Ray rollout workers: one shared prior cache against one cache per worker.

Runs ``priorcache run`` (``run_experiment``) on one text environment with the embedded LLM, the same
protocol every time (seeds, training episodes per seed, training and held-out games, step limit), so
every configuration plays the same total environment steps' worth of episodes:

- ``process``: today's one-process run (no ``--workers``), the reference;
- ``shared-N``: ``--workers N``, the N workers asking ONE prior cache (a Ray actor);
- ``isolated-N``: ``--workers N --cache-sharing isolated``, each worker its own cache.

Reported per configuration: training LLM queries (full + partial), environment steps, steps/s over
the run's training and evaluation (model loads excluded: ``elapsed_s`` starts after the actors are up),
held-out success (mean and 95 % CI over seeds), and per worker what it played and asked; and, per N,
the isolated caches' queries over the shared cache's. Writes
``benchmarks/results/shared_cache_workers.json`` (atomically); the runs go to ``--runs`` (a temp folder).

    python benchmarks/shared_cache_workers.py                     # coin-collector mazes, workers 1, 2, 4
    python benchmarks/shared_cache_workers.py --env babyai --episodes 8 --max-steps 8 --eval-policy greedy \
        --out benchmarks/results/shared_cache_workers_babyai.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from priorcache.experiments.runner import RunConfig, run_experiment
from priorcache.io import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results" / "shared_cache_workers.json"


def one_run(name: str, args: argparse.Namespace, runs: Path, **scale: Any) -> dict[str, Any]:
    config = RunConfig(
        env=args.env,
        episodes=args.episodes,
        seeds=[int(s) for s in args.seeds.split(",")],
        train_games=args.train_games,
        eval_games=args.eval_games,
        max_episode_steps=args.max_steps,
        eval_policy=args.eval_policy,
        out=runs / name,
        **scale,
    )
    start = time.perf_counter()
    summary = run_experiment(config, progress=False, overwrite=True)
    total = time.perf_counter() - start
    workers = summary.get("workers")
    # The run's own clock (training + evaluation) for runs with workers; a one-process run's is its
    # episodes' and evaluations' wall time (its model loads are outside both as well).
    held_out = summary["held_out"]
    elapsed = workers["elapsed_s"] if workers else summary["wall_time_s"] + evaluation_wall_time(runs / name)
    row = {
        "name": name,
        "workers": scale.get("workers"),
        "cache_sharing": scale.get("cache_sharing", "shared" if scale else None),
        "llm_queries": summary["llm_queries"],
        "steps": summary["steps"],
        "episodes": summary["episodes"],
        "elapsed_s": elapsed,
        "total_s": total,
        "steps_per_s": summary["steps"] / elapsed if elapsed else None,
        "held_out_success": held_out["success"]["mean"],
        "held_out_ci95": held_out["success"]["ci95"],
        "held_out_per_seed": held_out["success"]["values"],
        "training_success": summary.get("success_rate"),
        "hit_rate": summary["cache_stats"]["hit_rate"] if not workers else None,
        "per_worker": workers["per_worker"] if workers else None,
        "per_shard": workers.get("per_shard") if workers else None,
        "command": command(args, scale),
    }
    print(
        f"{name:12s} queries {row['llm_queries']:5d}  steps {row['steps']:5d}  {row['steps_per_s']:.2f} steps/s  "
        f"held-out {row['held_out_success']}",
        flush=True,
    )
    return row


def evaluation_wall_time(run: Path) -> float:
    """The held-out episodes' wall time of a run (evals.jsonl)."""
    lines = (run / "evals.jsonl").read_text().splitlines()
    return sum(json.loads(line)["wall_time_s"] for line in lines if line.strip())


def command(args: argparse.Namespace, scale: dict[str, Any]) -> str:
    line = (
        f"priorcache run {args.env} --episodes {args.episodes} --seeds {args.seeds} --train-games {args.train_games} "
        f"--eval-games {args.eval_games} --eval-policy {args.eval_policy}"
    )
    if args.max_steps is not None:
        line += f" --max-steps {args.max_steps}"
    if scale:
        line += f" --workers {scale['workers']}"
        if scale.get("cache_sharing", "shared") != "shared":
            line += f" --cache-sharing {scale['cache_sharing']}"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="textworld:tw-coin_collector")
    parser.add_argument("--episodes", type=int, default=10, help="training episodes per seed")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--train-games", type=int, default=5)
    parser.add_argument("--eval-games", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=None, help="episode step limit (default: the environment's)")
    parser.add_argument("--eval-policy", default="sample", help="greedy or sample (a greedy policy circles in mazes)")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--no-process", action="store_true", help="skip the one-process reference run")
    parser.add_argument("--runs", type=Path, default=None, help="where the runs go (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    runs = args.runs or Path(tempfile.mkdtemp(prefix="shared-cache-workers-"))
    rows = []
    if not args.no_process:
        rows.append(one_run("process", args, runs))
    for n in [int(w) for w in args.workers.split(",")]:
        rows.append(one_run(f"shared-{n}", args, runs, workers=n))
        if n > 1:  # one worker: its own cache is the shared one
            rows.append(one_run(f"isolated-{n}", args, runs, workers=n, cache_sharing="isolated"))
    by_name = {r["name"]: r for r in rows}
    ratios = {
        n: by_name[f"isolated-{n}"]["llm_queries"] / by_name[f"shared-{n}"]["llm_queries"]
        for n in [int(w) for w in args.workers.split(",")]
        if f"isolated-{n}" in by_name and by_name[f"shared-{n}"]["llm_queries"]
    }
    result = {
        "benchmark": "shared_cache_workers",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "settings": vars(args) | {"out": str(args.out), "runs": str(runs)},
        "rows": rows,
        "isolated_over_shared_queries": ratios,
    }
    atomic_write_json(args.out, result)
    print(f"isolated / shared LLM queries: {ratios}")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
