"""Cached vs. uncached DQN-Prior on TextWorld, side by side in one process (the paper's targets, docs/design.md).

Runs the same seeds twice — cache ``static`` (default parameters) and cache ``none`` — sharing the
loaded LLM and encoder, then reports LLM-query reduction ×, decision-latency p50 ratio and
success-rate retention, with per-seed values. Results:
benchmarks/results/textworld_cache_CHALLENGE_seedsS.json (S: the seeds, joined by "-").

    python benchmarks/bench_textworld_cache.py --seeds 0,1,2 --episodes 10
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from priorcache.cache.config import CacheConfig
from priorcache.cache.encoder import MiniLMEncoder
from priorcache.experiments.metrics import compare
from priorcache.experiments.runner import RunConfig, run_experiment
from priorcache.io import atomic_write_json
from priorcache.prior.registry import make_backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--challenge", default="tw-simple")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--max-steps", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None, help="default runs/bench-textworld-cache-CHALLENGE")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    tag = f"{args.challenge}_seeds{'-'.join(map(str, seeds))}"
    out = args.out or Path(f"runs/bench-textworld-cache-{tag}")

    backend, encoder = make_backend("embedded"), MiniLMEncoder()
    summaries = {}
    for mode in ("static", "none"):
        config = RunConfig(
            env="textworld",
            env_kwargs={"challenge": args.challenge},
            agent="dqn-prior",
            cache=CacheConfig(mode=mode),
            episodes=args.episodes,
            seeds=seeds,
            max_episode_steps=args.max_steps,
            out=out / mode,
        )
        summaries[mode] = run_experiment(config, backend=backend, encoder=encoder)
    result = {
        "challenge": args.challenge,
        "seeds": seeds,
        "episodes_per_seed": args.episodes,
        "comparison": compare(summaries["static"], summaries["none"]),
        "static": summaries["static"],
        "none": summaries["none"],
    }
    atomic_write_json(Path(__file__).parent / "results" / f"textworld_cache_{tag}.json", result)
    c = result["comparison"]
    for mode, s in summaries.items():
        print(
            f"{mode:>7}: success {s['success_rate']['mean']:.3f} ± {s['success_rate']['ci95']:.3f} "
            f"(per seed {s['success_rate']['values']}), LLM queries {s['llm_queries']}, "
            f"hit rate {s['hit_rate']:.3f}, decision p50 {s['decision_latency_ms']['p50']:.1f} ms"
        )
    print(json.dumps(c, indent=2))
    targets = {"query_reduction_x": 3.0, "latency_p50_ratio_x": 4.0, "success_retention": 0.96}
    missed = [k for k, v in targets.items() if not c[k] >= v]
    print("targets met" if not missed else f"targets missed: {missed}", file=sys.stderr)


if __name__ == "__main__":
    main()
