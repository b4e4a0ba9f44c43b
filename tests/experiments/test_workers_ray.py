"""Rollout workers on a real local Ray cluster (slow set): a 2-worker run writes the files a
one-process run writes, a worker killed with SIGKILL mid-run leaves the run going on the other, and
bad input (no workers, a cluster that does not answer) is refused with a clear error, writing nothing.

Real BabyAI games, the real encoder and the embedded LLM (inside the cache's actor); short episodes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from priorcache.experiments.runner import RunConfig, run_experiment
from priorcache.experiments.summaries import load_summary

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module (starting one costs seconds): small, no dashboard."""
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 1024**2)
    yield
    ray.shutdown()


def _config(out: Path, **overrides) -> RunConfig:
    settings = dict(
        env="babyai",
        episodes=4,
        train_games=2,
        eval_games=2,
        eval_every=2,
        max_episode_steps=6,
        workers=2,
        out=out,
    )
    return RunConfig(**{**settings, **overrides})


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_two_workers_write_the_run_files(cluster, tmp_path):
    summary = run_experiment(_config(tmp_path / "run"), progress=False)
    out = tmp_path / "run"
    files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))  # not the folder locks
    assert files == ["cache", "config.json", "evals.jsonl", "metrics.jsonl", "summary.json"]
    assert load_summary(out) == summary and "partial" not in summary
    metrics = _lines(out / "metrics.jsonl")
    assert [m["episode"] for m in metrics] == [0, 1, 2, 3]  # in episode order, whichever worker played it
    assert [m["game_seed"] for m in metrics][:2] != [None, None]
    evals = _lines(out / "evals.jsonl")
    assert sorted({e["after_episodes"] for e in evals}) == [0, 2, 4] and len(evals) == 6
    workers = summary["workers"]
    assert workers["count"] == workers["alive"] == 2
    per_worker = workers["per_worker"]
    assert len({w["pid"] for w in per_worker}) == 2 and all(w["pid"] != os.getpid() for w in per_worker)
    assert sum(w["episodes"] for w in per_worker) == 4
    assert sum(w["steps"] for w in per_worker) == sum(m["steps"] for m in metrics) == summary["steps"]
    # every training lookup went to the shared cache (evaluations ask a copy of it)
    assert sum(w["lookups"] for w in per_worker) == summary["cache_stats"]["lookups"]
    assert sum(w["llm_queries"] for w in per_worker) == summary["llm_queries"]
    assert summary["cache_stats"]["size"] > 0 and all(w["wall_time_s"] > 0 for w in per_worker)
    config = json.loads((out / "config.json").read_text())
    assert (config["workers"], config["cache_shards"]) == (2, 1)
    assert ray.is_initialized()  # the test's cluster is left as it was, its actors ended
    assert not [a for a in ray.util.list_named_actors() if a.startswith("priorcache-")]


def test_a_killed_worker_leaves_the_run_going(cluster, tmp_path):
    """SIGKILL of one worker's process mid-run: its episode is played again by the other, the run
    ends with every episode, and the shared cache kept every lookup the dead worker finished."""
    out = tmp_path / "run"
    config = _config(out, episodes=6, eval_every=0, eval_games=1)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(summary=run_experiment(config, progress=False)))
    thread.start()
    # The wait ends on the run's progress (its first round written) or its end; the deadline only
    # guards against a hung run, so it is far past what a loaded 2-core machine needs.
    deadline = time.monotonic() + 900
    victim = None
    while victim is None and time.monotonic() < deadline and thread.is_alive():
        names = [a for a in ray.util.list_named_actors() if a.startswith("priorcache-rollout-") and a.endswith("-1")]
        lines = (out / "metrics.jsonl").read_text().count("\n") if (out / "metrics.jsonl").exists() else 0
        if names and lines >= 2:  # the first round is done: the run is under way
            victim = ray.get(ray.get_actor(names[0]).ready.remote())
        else:
            time.sleep(0.2)
    assert victim is not None, "the run did not get under way"
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive() and "summary" in result
    summary = result["summary"]
    metrics = _lines(out / "metrics.jsonl")
    assert [m["episode"] for m in metrics] == list(range(6))
    workers = summary["workers"]
    dead = [w for w in workers["per_worker"] if not w["alive"]]
    assert workers["alive"] == 1 and [w["pid"] for w in dead] == [victim]
    assert sum(w["episodes"] for w in workers["per_worker"]) == 6
    # The cache counts every lookup that reached it: the finished episodes' and those the dead
    # worker made in its last, unfinished episode (at most one episode's steps).
    finished = sum(w["lookups"] for w in workers["per_worker"])
    assert 0 <= summary["cache_stats"]["lookups"] - finished <= config.max_episode_steps
    assert (out / "cache" / "seed0").is_dir() and not (out / "checkpoint").exists()


def _cli(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "priorcache.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
    return done, time.monotonic() - start


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    base = ["run", "babyai", "--episodes", "2", "--quiet"]
    done, _ = _cli(*base, "--workers", "0", "--out", str(tmp_path / "zero"))
    assert done.returncode == 2 and "--workers must be an integer in [1, 256]" in done.stderr + done.stdout
    assert not (tmp_path / "zero").exists()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done, took = _cli(*base, "--workers", "2", "--ray-address", f"127.0.0.1:{port}", "--out", str(tmp_path / "far"))
    text = done.stderr + done.stdout
    assert done.returncode == 2 and f"--ray-address 127.0.0.1:{port} does not answer" in text, text
    assert not (tmp_path / "far").exists() and took < 60


def test_a_listener_that_is_no_ray_cluster_is_refused_in_bounded_time():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        code = (
            f"from priorcache.experiments.workers import connect_ray\nconnect_ray('127.0.0.1:{port}', 2, timeout_s=5)\n"
        )
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode != 0 and "accepts connections but is no Ray cluster answering in 5 s" in done.stderr
    assert time.monotonic() - start < 60
