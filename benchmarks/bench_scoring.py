"""Scoring speed of the embedded LLM backend (F3, F9, docs/design.md §2).

(1) Ten candidate actions on a ~90-token text-game prompt, scored the F3 way (context run once,
    its KV cache reused by all ten continuations; the episode prefix's KV kept across calls per
    F9) against the naive way (the ten full prompt+action rows in one padded forward, no KV
    reuse). Also shown: the same without the F9 prefix cache, and with the padded candidate
    layout instead of the packed one (see priorcache/prior/transformers_backend.py).
(2) F9 alone on a ~300-token prompt whose first ~200 tokens are the episode-constant prefix:
    the same F3 scoring with the prefix's KV cache kept across calls vs. the prefix run every call.

Prints a table and writes benchmarks/results/scoring.json (atomically).

    python benchmarks/bench_scoring.py --reps 30
    python benchmarks/bench_scoring.py --reps 30 --threads 1   # see the note on threads below

Torch's default of one thread per core degrades badly when another process keeps a core busy
(the threads wait on each other at every op); ``--threads`` sets torch's thread count for this
process so that both conditions can be measured.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Runnable from a checkout without `pip install -e .`: the repository root holds the package.
from priorcache.io import atomic_write_json
from priorcache.prior.base import Prompt, ScoreResult
from priorcache.prior.embedded import EmbeddedBackend
from priorcache.prior.prompts import text_game_prompt
from priorcache.prior.transformers_backend import TransformersBackend

RESULTS = Path(__file__).resolve().parent / "results" / "scoring.json"

ACTIONS = [
    "take old key from chest drawer",
    "open antique trunk",
    "close chest drawer",
    "examine chest drawer",
    "examine old key",
    "examine wooden door",
    "examine king-size bed",
    "go east",
    "inventory",
    "look",
]

SHORT_OBJECTIVE = "Open the chest drawer, take the old key, unlock the wooden door and go east."
SHORT_STATE = (
    "-= Bedroom =- You are in a bedroom. You can make out a chest drawer. The chest drawer contains an "
    "old key. You can see a king-size bed. A wooden door leads east. You are carrying nothing."
)

LONG_OBJECTIVE = (
    "You are now playing an exciting session of TextWorld! First of all, open the chest drawer within "
    "the bedroom. After that, retrieve the old key from the chest drawer. Once you have picked up the "
    "old key, make absolutely sure that the wooden door is unlocked. Then, assure that the wooden door "
    "is open. Then, take a trip east. And then, ensure that the refrigerator within the kitchen is open. "
    "And then, pick up the lettuce from the refrigerator. After that, place the lettuce on the stove in "
    "the kitchen. Once that is done, take the red apple from the counter, put it into the fruit bowl on "
    "the dining table, and then go back to the bedroom, close the chest drawer and lie down on the "
    "king-size bed. Finally, open the antique trunk, examine what it holds and take the silver coin "
    "from it. That's it!"
)
LONG_STATE = (
    "-= Bedroom =- Well how about that, you are in a place we're calling a bedroom. You can make out a "
    "chest drawer. The chest drawer contains an old key. You can see an antique trunk. You can see a "
    "king-size bed. The king-size bed is typical. But oh no! there's nothing on this piece of junk. "
    "There is a closed wooden door leading east. You are carrying nothing. The wooden door is locked."
)


def _time_interleaved(
    calls: dict[str, Callable[[], ScoreResult]], reps: int
) -> dict[str, tuple[list[float], ScoreResult]]:
    """Wall times in ms of ``reps`` calls of each case after one warm-up call each (which also
    fills the F9 cache). The cases take turns within every rep, in rotating order, so load from
    other processes on a shared machine falls on all of them alike and their ratios stay fair."""
    last = {name: call() for name, call in calls.items()}
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            start = time.perf_counter()
            last[name] = calls[name]()
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: (times[name], last[name]) for name in names}


def _stats(times: list[float]) -> dict[str, float]:
    return {
        "median_ms": statistics.median(times),
        "p95_ms": float(np.percentile(times, 95)),
        "min_ms": min(times),
        "reps": len(times),
    }


def _tokens(backend: EmbeddedBackend, prompt: Prompt) -> dict[str, int]:
    return {
        "prefix": backend.count_tokens(prompt.prefix),
        "state": backend.count_tokens(prompt.state),
        "total": backend.count_tokens(prompt.prefix) + backend.count_tokens(prompt.state),
    }


def run(reps: int) -> dict[str, Any]:
    load_start = time.perf_counter()
    backend = EmbeddedBackend()
    load_s = time.perf_counter() - load_start

    short = text_game_prompt(SHORT_OBJECTIVE, SHORT_STATE)
    padded_backend = TransformersBackend(backend.model_path, pack_candidates=False)
    one = _time_interleaved(
        {
            "fast": lambda: backend.score([short], [ACTIONS]),
            "no_f9": lambda: backend.score([short], [ACTIONS], reuse_prefix=False),
            "padded": lambda: padded_backend.score([short], [ACTIONS]),
            "naive": lambda: backend.score_naive([short], [ACTIONS]),
        },
        reps,
    )
    (fast, fast_result), (naive, naive_result) = one["fast"], one["naive"]
    (no_f9, no_f9_result), (padded, padded_result) = one["no_f9"], one["padded"]
    max_diff = float(np.abs(fast_result.scores[0] - naive_result.scores[0]).max())

    long = text_game_prompt(LONG_OBJECTIVE, LONG_STATE)
    two = _time_interleaved(
        {
            "reused": lambda: backend.score([long], [ACTIONS]),
            "fresh": lambda: backend.score([long], [ACTIONS], reuse_prefix=False),
        },
        reps,
    )
    (reused, reused_result), (fresh, fresh_result) = two["reused"], two["fresh"]

    return {
        "model": "SmolLM2-135M-Instruct (embedded, float32)",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "load_s": load_s,
        "scoring_10_actions": {
            "prompt_tokens": _tokens(backend, short),
            "actions": len(ACTIONS),
            "continuation_tokens": fast_result.continuation_tokens,
            "kv_reuse": _stats(fast) | {"prompt_tokens_run": fast_result.prompt_tokens},
            "naive_rows": _stats(naive) | {"prompt_tokens_run": naive_result.prompt_tokens},
            "kv_reuse_without_prefix_cache": _stats(no_f9) | {"prompt_tokens_run": no_f9_result.prompt_tokens},
            "padded_layout": _stats(padded) | {"prompt_tokens_run": padded_result.prompt_tokens},
            "speedup_x": statistics.median(naive) / statistics.median(fast),
            "max_abs_score_diff": max_diff,
        },
        "prefix_reuse_f9": {
            "prompt_tokens": _tokens(backend, long),
            "actions": len(ACTIONS),
            "with_prefix_cache": _stats(reused) | {"prompt_tokens_run": reused_result.prompt_tokens},
            "without_prefix_cache": _stats(fresh) | {"prompt_tokens_run": fresh_result.prompt_tokens},
            "speedup_x": statistics.median(fresh) / statistics.median(reused),
        },
    }


def _print_table(result: dict[str, Any]) -> None:
    a, b = result["scoring_10_actions"], result["prefix_reuse_f9"]
    rows = [
        ("(1) F3 KV reuse + F9 prefix", a["prompt_tokens"]["total"], a["kv_reuse"]),
        ("(1) F3 KV reuse, no F9", a["prompt_tokens"]["total"], a["kv_reuse_without_prefix_cache"]),
        ("(1) F3+F9, padded layout", a["prompt_tokens"]["total"], a["padded_layout"]),
        ("(1) naive: 10 full rows", a["prompt_tokens"]["total"], a["naive_rows"]),
        ("(2) F9 prefix KV kept", b["prompt_tokens"]["total"], b["with_prefix_cache"]),
        ("(2) prefix run every call", b["prompt_tokens"]["total"], b["without_prefix_cache"]),
    ]
    print(f"embedded backend, torch threads {result['torch_threads']}, load {result['load_s']:.2f} s")
    print(f"{'case':<30} {'prompt tok':>10} {'tok run':>8} {'median ms':>10} {'p95 ms':>8} {'reps':>5}")
    for label, tokens, s in rows:
        run, median, p95 = s["prompt_tokens_run"], s["median_ms"], s["p95_ms"]
        print(f"{label:<30} {tokens:>10} {run:>8} {median:>10.1f} {p95:>8.1f} {s['reps']:>5}")
    print(f"(1) naive / KV reuse: {a['speedup_x']:.2f}x   (max |Δscore| {a['max_abs_score_diff']:.2e})")
    print(
        f"(2) without / with prefix cache: {b['speedup_x']:.2f}x   "
        f"(prefix {b['prompt_tokens']['prefix']} of {b['prompt_tokens']['total']} prompt tokens)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=30, help="timed calls per case (after one warm-up), ≥ 20 advised")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.reps < 1:
        parser.error("--reps must be ≥ 1")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be ≥ 1")
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    result = run(args.reps)
    result["loadavg_before_after"] = [load_before, os.getloadavg() if hasattr(os, "getloadavg") else None]
    result["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _print_table(result)
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
