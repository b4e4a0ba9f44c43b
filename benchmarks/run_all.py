"""Run every benchmark in turn (results in benchmarks/results/*.json). Used by `make bench`.

Run on an otherwise idle machine: each benchmark reports medians, but two cores shared with
another job still skew latencies.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHMARKS = [
    ["bench_lookup.py"],
    ["bench_scoring.py", "--reps", "30"],
    ["bench_envs.py"],
    ["bench_textworld_cache.py", "--seeds", "0,1,2", "--episodes", "10"],
    ["batched_rollouts.py"],
    ["cache_load.py"],
    ["shared_cache_workers.py"],
]


def main() -> None:
    for args in BENCHMARKS:
        print(f"\n=== {' '.join(args)}", flush=True)
        subprocess.run([sys.executable, str(HERE / args[0]), *args[1:]], check=True)


if __name__ == "__main__":
    main()
