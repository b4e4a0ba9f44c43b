"""Cache lookup cost: nearest-neighbour search over 384-d unit keys, and MiniLM encoding.

For each index kind (numpy, faiss, hnsw, auto) and size (1k, 10k, 100k entries) a fresh worker
process builds the index with ``make_index(kind, 384, capacity=n)`` from uniform random unit keys
and times single-query ``search(q, k=1)`` calls, encoding excluded. Where ``auto`` resolves to a kind
already measured at that size it builds the very same index, so its row repeats that one
(marked ``same_as``) instead of a second multi-minute build. Queries are stored keys plus
noise at cosine ~0.9 (the cache-hit regime). Reported: p50/p95 latency, recall@1 against brute
force on those queries and on unrelated random queries (whose best cosine is ~0.2, a miss at any
threshold), build time, and memory. p50 and p95 are medians over 5 rounds of the queries, a second
apart, so that a burst of load from other jobs on the shared cores does not decide them. The
targets (p50 <= 0.2 ms at 1k and <= 2 ms at 100k entries, memory <= 2x the raw keys) are checked
for ``auto``, the kind the cache uses.

Memory is the growth of the worker's resident set (VmRSS from /proc/self/status) across building
the index, the keys already resident before; it counts everything the index holds (vectors,
graph links, id maps, allocator slack), compared with the raw key matrix n·384·4 bytes. Each
configuration runs in its own process so freed memory of one cannot hide the next one's, with
MALLOC_MMAP_THRESHOLD_ fixed so that large blocks are always fresh mappings.

Encoding: MiniLM per new sentence, one per call and 64 per call (batch_size 32), plus a memo hit,
each with torch's default thread count and with one thread (each in its own process).

    python benchmarks/bench_lookup.py [--sizes 1000,10000,100000] [--kinds numpy,faiss,hnsw,auto]

Results: a table on stdout and benchmarks/results/lookup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# Runnable from a checkout without installing the package.
from priorcache.cache.index import resolve_index_kind  # noqa: E402
from priorcache.io import atomic_write_json  # noqa: E402

DIM = 384
TARGET_P50_MS = {1_000: 0.2, 100_000: 2.0}
TARGET_MEMORY_RATIO = 2.0
RESULTS = Path(__file__).resolve().parent / "results" / "lookup.json"
ROUNDS = 5


def _rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def run_worker(kind: str, n: int, n_queries: int, seed: int) -> dict[str, Any]:
    """Build one index and measure it; runs in its own process (see the module docstring)."""
    from priorcache.cache.index import make_index

    rng = np.random.default_rng(seed)
    keys = _unit(rng.standard_normal((n, DIM)))
    picked = rng.integers(0, n, n_queries)
    # |noise| = 0.48 puts the query at cosine 1/sqrt(1 + 0.48²) ≈ 0.90 from its key.
    near = _unit(keys[picked] + 0.48 * _unit(rng.standard_normal((n_queries, DIM))))
    unrelated = _unit(rng.standard_normal((min(n_queries, 200), DIM)))

    # A tiny throw-away index first, so that loading faiss/hnswlib is not counted as index memory.
    make_index(kind, DIM, capacity=4).add(np.arange(4), keys[:4])
    rss_before = _rss_bytes()
    t0 = time.perf_counter()
    index = make_index(kind, DIM, capacity=n)
    for start in range(0, n, 1000):
        stop = min(n, start + 1000)
        index.add(np.arange(start, stop), keys[start:stop])
    build_s = time.perf_counter() - t0
    rss_delta = _rss_bytes() - rss_before

    for q in near[:20]:  # warm caches and lazy allocations
        index.search(q, 1)
    # Other processes share the 2 cores: several rounds, a second apart, and the median round.
    rounds: list[list[float]] = []
    found = []
    for r in range(ROUNDS):
        if r:
            time.sleep(1.0)
        times = []
        for q in near:
            t = time.perf_counter()
            ids, _ = index.search(q, 1)
            times.append(time.perf_counter() - t)
            if r == 0:
                found.append(ids[0])
        rounds.append(times)
    found_unrelated = [index.search(q, 1)[0][0] for q in unrelated]
    # Ground truth last: its large temporaries would otherwise be reused by the index and hide memory.
    truth_near = np.argmax(near @ keys.T, axis=1)
    truth_unrelated = np.argmax(unrelated @ keys.T, axis=1)
    round_ms = [np.asarray(times) * 1e3 for times in rounds]
    raw = n * DIM * 4
    return {
        "kind": kind,
        "index_class": type(index).__name__,
        "entries": n,
        "queries": n_queries,
        "rounds": ROUNDS,
        "p50_ms": float(np.median([np.percentile(t, 50) for t in round_ms])),
        "p95_ms": float(np.median([np.percentile(t, 95) for t in round_ms])),
        "p50_ms_per_round": [float(np.percentile(t, 50)) for t in round_ms],
        "recall_at_1_near": float(np.mean(np.asarray(found) == truth_near)),
        "recall_at_1_unrelated": float(np.mean(np.asarray(found_unrelated) == truth_unrelated)),
        "build_s": build_s,
        "rss_delta_bytes": int(rss_delta),
        "raw_key_bytes": raw,
        "memory_ratio": rss_delta / raw,
    }


def bench_encoder(repeats: int, torch_threads: int) -> dict[str, Any]:
    """Time MiniLM; ``torch_threads`` 0 keeps torch's default. Runs in its own process."""
    import torch

    from priorcache.cache.encoder import MiniLMEncoder

    if torch_threads > 0:
        torch.set_num_threads(torch_threads)

    rooms = ["kitchen", "pantry", "cellar", "attic", "garden", "bedroom", "study", "hallway"]
    things = ["red key", "wooden chest", "apple", "lamp", "old book", "knife", "carrot", "coin"]
    places = ["table", "shelf", "floor", "counter", "bed", "desk"]
    sentences = [
        f"You are in the {rooms[i % 8]}. There is a {things[(i // 8) % 8]} on the "
        f"{places[(i // 64) % 6]}. Exits lead north and east. Step {i}."
        for i in range((repeats + 1) * 64)
    ]
    t0 = time.perf_counter()
    encoder = MiniLMEncoder(batch_size=32)
    load_s = time.perf_counter() - t0
    # Every sentence below is new to the memo, so these time the model, not the memo.
    encoder.encode(["warm-up sentence number one", "and a second one"])
    single = []
    for s in sentences[: repeats * 4]:
        t = time.perf_counter()
        encoder.encode([s])
        single.append(time.perf_counter() - t)
    batched = []
    for r in range(1, repeats + 1):
        chunk = sentences[r * 64 : (r + 1) * 64]
        t = time.perf_counter()
        encoder.encode(chunk)
        batched.append((time.perf_counter() - t) / len(chunk))
    hits = []
    for _ in range(200):
        t = time.perf_counter()
        encoder.encode([sentences[0]])
        hits.append(time.perf_counter() - t)
    return {
        "model": encoder.name,
        "torch_threads": torch.get_num_threads(),
        "load_s": load_s,
        "single_ms_per_sentence": {
            "p50": float(np.median(single) * 1e3),
            "p95": float(np.percentile(single, 95) * 1e3),
            "n": len(single),
        },
        "batched_ms_per_sentence": {
            "p50": float(np.median(batched) * 1e3),
            "calls": len(batched),
            "texts_per_call": 64,
            "batch_size": 32,
        },
        "memo_hit_ms": {"p50": float(np.median(hits) * 1e3)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--kinds", default="numpy,faiss,hnsw,auto")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encode-repeats", type=int, default=8, help="batches of 64 sentences for encoding")
    parser.add_argument("--no-encode", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--encode-worker", type=int, metavar="TORCH_THREADS", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(run_worker(args.worker[0], int(args.worker[1]), args.queries, args.seed)))
        return
    if args.encode_worker is not None:
        print(json.dumps(bench_encoder(args.encode_repeats, args.encode_worker)))
        return

    load_start = list(os.getloadavg())
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = args.kinds.split(",")
    rows = []

    def worker(*extra: str) -> dict[str, Any]:
        cmd = [
            sys.executable,
            __file__,
            *extra,
            "--queries",
            str(args.queries),
            "--seed",
            str(args.seed),
            "--encode-repeats",
            str(args.encode_repeats),
        ]
        # A fixed mmap threshold makes glibc map every large block fresh and unmap it on free, so
        # an index cannot silently reuse heap left over from the key generation (RSS would miss it).
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if done.returncode != 0:
            sys.exit(f"worker {extra} failed:\n{done.stderr}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    for n in sizes:
        measured: dict[str, dict[str, Any]] = {}
        for kind in kinds:
            concrete = resolve_index_kind(kind, n)
            if kind == "auto" and concrete in measured:
                # "auto" builds exactly that class with the same settings: report its row, not a rebuild.
                row = dict(measured[concrete], kind="auto", same_as=concrete)
            else:
                row = worker("--worker", kind, str(n))
                measured.setdefault(concrete, row)
            rows.append(row)
            print(
                f"{kind:>6} ({row['index_class']:>10}) {n:>7,}: p50 {row['p50_ms']:7.3f} ms  "
                f"p95 {row['p95_ms']:7.3f} ms  recall@1 near {row['recall_at_1_near']:.3f} "
                f"unrelated {row['recall_at_1_unrelated']:.3f}  memory {row['memory_ratio']:.2f}x raw  "
                f"build {row['build_s']:.1f} s" + (f"  (= the {row['same_as']} row)" if "same_as" in row else ""),
                flush=True,
            )

    # torch's default (one thread per core) and one thread: with another busy process on the
    # same cores, spinning OpenMP threads can make the default many times slower.
    encode = [] if args.no_encode else [worker("--encode-worker", str(t)) for t in (0, 1)]
    # The targets are for what the cache uses by default ("auto"); the other rows are for comparison.
    checks = []
    for row in (r for r in rows if r["kind"] == "auto"):
        target = TARGET_P50_MS.get(row["entries"])
        if target is not None:
            checks.append(
                {
                    "what": f"{row['kind']} p50 at {row['entries']}",
                    "value": row["p50_ms"],
                    "target": target,
                    "met": row["p50_ms"] <= target,
                }
            )
        checks.append(
            {
                "what": f"{row['kind']} memory at {row['entries']}",
                "value": row["memory_ratio"],
                "target": TARGET_MEMORY_RATIO,
                "met": row["memory_ratio"] <= TARGET_MEMORY_RATIO,
            }
        )
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            # Other jobs share the cores; the load explains run-to-run differences.
            "loadavg_start": load_start,
            "loadavg_end": list(os.getloadavg()),
        },
        "settings": {
            "dim": DIM,
            "queries": args.queries,
            "seed": args.seed,
            "k": 1,
            "keys": "uniform random unit vectors",
            "queries_near_cosine": 0.9,
            "memory": "VmRSS growth across building the index, in a fresh process per row",
        },
        "lookup": rows,
        "encode": encode,
        "targets": checks,
    }
    atomic_write_json(args.out, result)

    print()
    print(
        f"{'kind':>6} {'class':>10} {'entries':>8} {'p50 ms':>8} {'p95 ms':>8} {'recall@1':>8} "
        f"{'mem x raw':>9} {'build s':>8}"
    )
    for row in rows:
        print(
            f"{row['kind']:>6} {row['index_class']:>10} {row['entries']:>8,} {row['p50_ms']:>8.3f} "
            f"{row['p95_ms']:>8.3f} {row['recall_at_1_near']:>8.3f} {row['memory_ratio']:>9.2f} "
            f"{row['build_s']:>8.1f}"
        )
    print()
    for e in encode:
        print(
            f"MiniLM ({e['model']}, torch threads {e['torch_threads']}): load {e['load_s']:.1f} s, single "
            f"{e['single_ms_per_sentence']['p50']:.1f} ms/sentence (p95 "
            f"{e['single_ms_per_sentence']['p95']:.1f}), batched "
            f"{e['batched_ms_per_sentence']['p50']:.2f} ms/sentence, memo hit "
            f"{e['memo_hit_ms']['p50'] * 1e3:.1f} µs"
        )
    missed = [c["what"] for c in checks if not c["met"]]
    print(f"\nload average {load_start[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    print("targets (auto) met" if not missed else f"targets (auto) missed: {missed}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
