"""Kill -9 a real run at random points, check what it left, resume it, and compare with the same run
uninterrupted (docs/design.md §1, "Checkpoints").

Runs ``priorcache run ARGS --out DIR/whole`` once, then ``priorcache run ARGS --out DIR/killed
--resume`` again and again, ``--kills`` times, each process killed with SIGKILL after its start-up
(``--startup``) plus a random share of the uninterrupted run's work, and finally once to the end.
After every kill it checks that the run folder reads (``summary.json``, the checkpoint's progress)
and that the checkpointed prior cache loads. At the end it compares the killed run's
``metrics.jsonl`` and ``evals.jsonl`` with the uninterrupted one's, costs aside (times, and prompt
tokens: the backend's F9 prefix cache does not survive the process). Writes
benchmarks/results/kill_and_resume.json.

    python benchmarks/kill_and_resume.py --kills 5
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from priorcache.cache.store import has_saved_cache, read_state
from priorcache.experiments.run_folder import CHECKPOINT, read_progress
from priorcache.io import atomic_write_json

DEFAULT_ARGS = (
    "webshop --episodes 8 --seeds 0,1 --train-games 4 --eval-games 3 --eval-every 4 --eval-policy sample --quiet"
)


def _run(args: list[str], out: Path, resume: bool) -> subprocess.Popen:
    cmd = [str(Path(sys.executable).parent / "priorcache"), "run", *args, "--out", str(out)] + (
        ["--resume"] if resume else []
    )
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


# What depends on the clock, and the prompt tokens the backend computed: its F9 prefix cache lives
# in the process, so the first episodes after a resume compute prefixes the killed process had.
COSTS = ("time", "wall", "latency", "_ms", "prompt_tokens")


def _timeless(path: Path) -> list[dict]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [{k: v for k, v in json.loads(x).items() if not any(t in k for t in COSTS)} for x in lines]


def _gap(x: object, y: object) -> float:
    """The largest relative difference between two JSON values of one shape (inf if they differ otherwise)."""
    if isinstance(x, float) and isinstance(y, (int, float)):
        return abs(x - y) / max(abs(x), abs(y), 1e-12)
    if isinstance(x, dict) and isinstance(y, dict) and x.keys() == y.keys():
        return max((_gap(x[k], y[k]) for k in x), default=0.0)
    if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        return max((_gap(a, b) for a, b in zip(x, y)), default=0.0)
    return 0.0 if x == y else float("inf")


def _differing_fields(a: Path, b: Path) -> list[str]:
    """The fields of ``a``'s lines that differ in ``b`` (costs included), for the record."""
    pairs = zip(*(map(json.loads, p.read_text().splitlines()) for p in (a, b)))
    return sorted({k for x, y in pairs for k in x if x[k] != y.get(k)})


def _inspect(out: Path) -> dict:
    """What a killed run left: every file must read, the checkpointed cache must load."""
    found: dict = {"files": sorted(p.name for p in out.iterdir()) if out.exists() else []}
    summary = out / "summary.json"
    if summary.exists():
        found["summary_reads"] = isinstance(json.loads(summary.read_text()), dict)
    found["metrics_lines"] = len(_timeless(out / "metrics.jsonl"))
    at = read_progress(out) if out.exists() else None
    if at is not None:
        progress, folder = at
        found["checkpoint"] = {"seed_index": progress.seed_index, "episodes_done": progress.episodes_done}
        if has_saved_cache(folder / "cache"):
            _, state = read_state(folder / "cache")
            found["checkpoint"]["cache_entries"] = len(state["entries"])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--args", default=DEFAULT_ARGS, help="the `priorcache run` arguments (without --out)")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random kill times")
    parser.add_argument("--startup", type=float, default=15.0, help="seconds a run takes to load its models")
    parser.add_argument("--out", type=Path, default=Path("runs/kill-and-resume"))
    parser.add_argument("--result", type=Path, default=Path("benchmarks/results/kill_and_resume.json"))
    args = parser.parse_args()
    run_args = shlex.split(args.args)
    shutil.rmtree(args.out, ignore_errors=True)
    rng = random.Random(args.seed)

    start = time.perf_counter()
    whole = _run(run_args, args.out / "whole", resume=False)
    if whole.wait() != 0:
        sys.exit(f"the uninterrupted run failed: {whole.stderr.read()}")
    whole_s = time.perf_counter() - start
    whole_summary = json.loads((args.out / "whole" / "summary.json").read_text())

    kills = []
    for _ in range(args.kills):
        # spread over the run: each process gets its start-up plus a random share of the work
        delay = args.startup + rng.uniform(0.0, (whole_s - args.startup) / args.kills)
        proc = _run(run_args, args.out / "killed", resume=True)
        try:
            proc.wait(timeout=delay)
            finished = True
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            finished = False
        kills.append({"after_s": round(delay, 1), "finished_before_kill": finished, **_inspect(args.out / "killed")})
        print(json.dumps(kills[-1]), flush=True)
    last = _run(run_args, args.out / "killed", resume=True)
    if last.wait() != 0:
        sys.exit(f"the resumed run failed: {last.stderr.read()}")

    killed = args.out / "killed"
    result = {
        "args": args.args,
        "uninterrupted_wall_s": round(whole_s, 1),
        "kills": kills,
        "episodes": {
            "uninterrupted": len(_timeless(args.out / "whole" / "metrics.jsonl")),
            "killed_and_resumed": len(_timeless(killed / "metrics.jsonl")),
        },
        "metrics_identical": _timeless(killed / "metrics.jsonl") == _timeless(args.out / "whole" / "metrics.jsonl"),
        # audits score a fresh prior, whose last bits depend on whether the prompt prefix's KV was cached
        "metrics_max_relative_gap": _gap(
            _timeless(killed / "metrics.jsonl"), _timeless(args.out / "whole" / "metrics.jsonl")
        ),
        "evals_identical": _timeless(killed / "evals.jsonl") == _timeless(args.out / "whole" / "evals.jsonl"),
        "metrics_fields_differing_with_costs": _differing_fields(
            args.out / "whole" / "metrics.jsonl", killed / "metrics.jsonl"
        ),
        "checkpoint_left": (killed / CHECKPOINT).exists(),
        "checkpoint_share_uninterrupted": whole_summary.get("checkpoint_share"),
        "checkpoint_time_s_uninterrupted": whole_summary.get("checkpoint_time_s"),
    }
    atomic_write_json(args.result, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
