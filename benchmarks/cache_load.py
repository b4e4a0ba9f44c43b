"""Load generator for the shared prior cache (docs/design.md §10): recorded lookups replayed by 1 → 64
simulated rollout workers against one cache actor, then against the cache split over K actors.

1. **Record** real lookups: BabyAI games (``--games``, game seeds 0…) played by a random policy for
   up to ``--horizon`` steps; each step's lookup is what a DQN-Prior worker sends: the prompt built by
   ``prompt_builder("babyai")`` (prefix = instructions + the game's goal), the state text, the
   admissible actions and the state's MiniLM embedding (the worker encodes; shards never do).
2. **Replay** them through :class:`priorcache.cache.shared_cache.SharedCacheClient`: W simulated
   workers, each a thread in one of ``--procs`` load-generator processes (Ray actors; 64 worker
   processes would not fit this machine's memory), each replaying the recorded stream from its own
   offset, one lookup per call (one environment per worker: a step's lookups in one call) in a
   closed loop for ``--duration`` s after a common start. The cache shards are the run's
   ``CacheShard`` actors (static mode, 16 threads each, partitioned by prompt prefix) with a *fake
   LLM backend* (deterministic hashed scores, ``--llm-ms`` of sleep per call, 0 by default): this
   benchmark measures the cache and its transport, not the LLM, whose cost the other benchmarks
   measure. Every configuration starts from an empty cache.

Reported per (shards, workers): sustained lookups/s, p50/p99 latency of a lookup call as the worker
sees it, hit rate, the cache's own time per lookup inside the shard; where one actor saturates (no
larger worker count gets 25 % more lookups/s, while latency keeps growing) and the sharded figure
beyond it. The generators share the machine's cores with the
shards, so on a small machine the shards cannot be given more CPU by splitting: read the sharded
figures as what partitioning buys where the cores exist, measured here on what there is.

    python benchmarks/cache_load.py                       # writes benchmarks/results/cache_load.json
    python benchmarks/cache_load.py --workers 1,8,64 --shards 1,4 --duration 3
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from priorcache.cache.batch import LookupRequest
from priorcache.cache.encoder import MINILM_NAME
from priorcache.cache.prior_cache import CacheConfig
from priorcache.cache.shared_cache import CacheShard, CacheSpec, SharedCacheClient, shard_of
from priorcache.io import atomic_write_json
from priorcache.prior.base import ScoreResult

RESULTS = Path(__file__).resolve().parent / "results" / "cache_load.json"


class FakeLLM:
    """Deterministic F3 scores from a digest of (state part, action), after ``latency_s`` of sleep."""

    name = "fake-llm"

    def __init__(self, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s

    def score(self, prompts: Any, candidates: Any, length_normalise: bool = True) -> ScoreResult:
        start = time.perf_counter()
        if self.latency_s:
            time.sleep(self.latency_s)
        scores = []
        for prompt, actions in zip(prompts, candidates):
            digests = [hashlib.blake2b((prompt.state + "\x00" + a).encode(), digest_size=4).digest() for a in actions]
            scores.append(np.array([-5.0 * int.from_bytes(d, "little") / 2**32 for d in digests]))
        return ScoreResult(scores, time.perf_counter() - start, prompt_tokens=0, continuation_tokens=0)


class FakeLLMFactory:
    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s

    def __call__(self) -> tuple[FakeLLM, dict[str, Any]]:
        return FakeLLM(self.latency_s), {}


def record_lookups(games: int, horizon: int, seed: int = 0) -> list[LookupRequest]:
    """The lookups a worker would send playing ``games`` BabyAI games at random (module docstring)."""
    from priorcache import MiniLMEncoder, make_env
    from priorcache.prior.prompts import prompt_builder

    build = prompt_builder("babyai")
    rng = np.random.default_rng(seed)
    found: list[tuple[str, Any, list[str]]] = []
    for game in range(games):
        env = make_env("babyai", game_seed=game)
        _, info = env.reset(seed=game)
        for _ in range(horizon):
            actions = list(info["admissible_actions"])
            found.append((info["state_text"], build(info["objective"], info["state_text"]), actions))
            _, _, terminated, truncated, info = env.step(actions[int(rng.integers(len(actions)))])
            if terminated or truncated:
                break
        env.close()
    vectors = MiniLMEncoder().encode([state for state, _, _ in found])
    return [LookupRequest(s, p, a, embedding=v) for (s, p, a), v in zip(found, vectors)]


class LoadGenerator:
    """One load-generator process: runs simulated workers as threads, each with its own client."""

    def __init__(self, config: CacheConfig) -> None:
        self.config = config

    def run(
        self,
        shards: list[Any],
        streams: list[list[LookupRequest]],
        warm: list[LookupRequest],
        start_at: float,
        duration: float,
        batch: int,
    ) -> list[dict[str, Any]]:
        """Each stream replayed by a thread from ``start_at`` for ``duration`` s, after one call with
        the ``warm`` lookups (prefixes of their own, one per shard) so that no first-call cost
        (imports, connections) lands in the window."""
        import ray

        results: list[dict[str, Any]] = [{} for _ in streams]

        def worker(i: int) -> None:
            client = SharedCacheClient(shards, None, self.config, get=ray.get, learns_from_outcomes=False)
            client.lookup_batch(warm)
            stream, n, at, hits, queries = streams[i], 0, 0, 0, 0
            latencies = []
            while time.time() < start_at:
                time.sleep(0.001)
            end = start_at + duration
            while True:
                requests = [stream[(at + k) % len(stream)] for k in range(batch)]
                t0 = time.perf_counter()
                answers = client.lookup_batch(requests)
                latency = time.perf_counter() - t0
                if time.time() > end:  # the call straddled the window's end: not counted
                    break
                latencies.append(latency * 1e3)
                n += batch
                at += batch
                hits += sum(a.hit for a in answers)
                queries += sum(a.llm_calls + a.partial_calls for a in answers)
            results[i] = {"lookups": n, "hits": hits, "llm_queries": queries, "latencies_ms": latencies}

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(streams))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results


def measure(
    recorded: list[LookupRequest],
    shards: list[Any],
    empty: dict[str, Any],
    generators: list[Any],
    workers: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One configuration: the ``shards`` emptied, ``workers`` simulated workers spread over the generators."""
    import ray

    config = CacheConfig(mode="static")
    ray.get([s.load_state_dict.remote(empty) for s in shards])  # every configuration from an empty cache
    procs = len(generators)
    stride = max(1, len(recorded) // max(1, workers))
    streams = [
        recorded[(w * stride) % len(recorded) :] + recorded[: (w * stride) % len(recorded)] for w in range(workers)
    ]
    warm = warm_up_lookups(recorded[0], len(shards))
    refs = [ray.put(streams[g::procs]) for g in range(procs)]
    client = SharedCacheClient(shards, None, config, get=ray.get, learns_from_outcomes=False)
    before = client.stats()
    start_at = time.time() + 3.0  # everyone starts together, after the calls below have arrived
    parts = ray.get(
        [g.run.remote(shards, ref, warm, start_at, args.duration, args.batch) for g, ref in zip(generators, refs)]
    )
    after, per_shard = client.stats(), client.shard_stats()
    served = after["lookups"] - before["lookups"]
    done = [r for part in parts for r in part]
    latencies = np.array([x for r in done for x in r["latencies_ms"]])
    lookups = sum(r["lookups"] for r in done)
    return {
        "shards": len(shards),
        "workers": workers,
        "lookups": lookups,
        "lookups_per_s": lookups / args.duration,
        "p50_ms": float(np.percentile(latencies, 50)) if latencies.size else None,
        "p99_ms": float(np.percentile(latencies, 99)) if latencies.size else None,
        "hit_rate": sum(r["hits"] for r in done) / lookups if lookups else None,
        "llm_queries": sum(r["llm_queries"] for r in done),
        "shard_size": [s["size"] for s in per_shard],
        # the cache's own work per lookup inside the shards (warm-up calls included); the rest of a
        # call's latency is Ray's transport and the queue in front of the shard
        "cache_ms_per_lookup": 1e3 * (after["lookup_time_s"] - before["lookup_time_s"]) / served if served else None,
    }


def warm_up_lookups(template: LookupRequest, shards: int) -> list[LookupRequest]:
    """One lookup per shard under prompt prefixes no recorded lookup has (so they touch no recorded entry)."""
    found: dict[int, LookupRequest] = {}
    i = 0
    while len(found) < shards:
        prefix = f"warm-up prefix {i}\n"
        found.setdefault(shard_of(prefix, shards), replace(template, prompt=replace(template.prompt, prefix=prefix)))
        i += 1
    return list(found.values())


def saturation(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Where one actor saturates: the fewest workers from which no larger count gets 25 % more
    lookups/s (latency then grows with the queue, by Little's law about workers / throughput)."""
    ordered = sorted(rows, key=lambda r: r["workers"])
    for i, row in enumerate(ordered[:-1]):
        if max(r["lookups_per_s"] for r in ordered[i + 1 :]) < 1.25 * row["lookups_per_s"]:
            return {"workers": row["workers"], "lookups_per_s": row["lookups_per_s"], "p99_ms": row["p99_ms"]}
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--games", type=int, default=40)
    parser.add_argument("--horizon", type=int, default=20)
    parser.add_argument("--workers", default="1,2,4,8,16,32,64")
    parser.add_argument("--shards", default="1,2,4")
    parser.add_argument("--procs", type=int, default=4, help="load-generator processes (threads inside)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds each configuration is measured")
    parser.add_argument("--batch", type=int, default=1, help="lookups per call (environments per worker)")
    parser.add_argument("--llm-ms", type=float, default=0.0, help="fake LLM latency per call")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import ray

    t0 = time.perf_counter()
    recorded = record_lookups(args.games, args.horizon)
    record_s = time.perf_counter() - t0
    prefixes = {r.prompt.prefix for r in recorded}
    print(
        f"recorded {len(recorded)} lookups ({len({r.state_text for r in recorded})} states, {len(prefixes)} prefixes)"
    )
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    rows = []
    worker_counts = [int(w) for w in args.workers.split(",")]
    config = CacheConfig(mode="static")
    spec = CacheSpec(config, MINILM_NAME, int(recorded[0].embedding.size), FakeLLMFactory(args.llm_ms / 1e3))
    generators = [ray.remote(LoadGenerator).options(num_cpus=0).remote(config) for _ in range(args.procs)]
    for shards in [int(s) for s in args.shards.split(",")]:
        actors = [ray.remote(CacheShard).options(num_cpus=0, max_concurrency=16).remote(spec) for _ in range(shards)]
        ray.get([a.ready.remote() for a in actors])
        empty = ray.get(actors[0].state_dict.remote())
        for workers in worker_counts:
            row = measure(recorded, actors, empty, generators, workers, args)
            rows.append(row)
            p50, p99 = (f"{row[k]:7.2f}" if row[k] is not None else "    n/a" for k in ("p50_ms", "p99_ms"))
            print(
                f"shards {shards:2d} workers {workers:3d}: {row['lookups_per_s']:8.0f} lookups/s  "
                f"p50 {p50} ms  p99 {p99} ms  hit rate {row['hit_rate'] or 0:.2f}",
                flush=True,
            )
        for actor in actors:
            ray.kill(actor)
    ray.shutdown()
    one = [r for r in rows if r["shards"] == 1]
    sharded = [r for r in rows if r["shards"] > 1 and r["workers"] == max(worker_counts)]
    result = {
        "benchmark": "cache_load",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "settings": vars(args) | {"out": str(args.out)},
        "recorded": {
            "lookups": len(recorded),
            "states": len({r.state_text for r in recorded}),
            "prefixes": len(prefixes),
            "prefixes_per_shard": {
                k: np.bincount([shard_of(p, k) for p in prefixes], minlength=k).tolist()
                for k in {r["shards"] for r in rows}
            },
            "record_s": record_s,
        },
        "rows": rows,
        "single_actor_saturates": saturation(one),
        "sharded_at_most_workers": sharded,
    }
    atomic_write_json(args.out, result)
    print(f"saturation of one actor: {result['single_actor_saturates']}")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
