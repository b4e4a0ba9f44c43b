"""The results table and plots from saved run folders (synthetic runs with known numbers)."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from priorcache.errors import ConfigError
from priorcache.experiments.metrics import EpisodeRecord, summarise
from priorcache.experiments.report import aggregate, cache_param_trajectories, find_runs, read_run, write_report


def make_run(
    folder,
    env,
    agent,
    mode,
    seeds,
    episodes,
    success,
    queries_per_episode,
    decision_ms,
    finished=True,
    source=None,
    extra=None,
    held_out=None,
):
    """A synthetic run; ``held_out``: the held-out success after training (None: no evals.jsonl).
    Its evaluations: before training (success 0) and after it, on two held-out games."""
    records = []
    for seed in seeds:
        for episode in range(episodes):
            r = EpisodeRecord(seed=seed, episode=episode)
            r.success = success
            r.episode_return = float(episode) + (1.0 if success else 0.0)
            r.steps = 4
            r.llm_calls = queries_per_episode
            r.lookups = 4 if agent != "dqn" else 0
            r.hits = 2 if mode == "static" else 0
            r.decision_times_ms = [decision_ms] * 4
            # extra(seed, episode): fields of a newer record format (cache_params, meta_updates, ...)
            records.append({**r.to_json(), **(extra(seed, episode) if extra else {})})
    folder.mkdir(parents=True)
    config = {"env": env, "env_kwargs": {}, "agent": agent, "cache": {"mode": mode}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if held_out is not None:
        evals = [
            {
                "seed": seed,
                "after_episodes": after,
                "train_steps": 4 * after,
                "train_llm_queries": queries_per_episode * after,
                "game_seed": 1_000_000 + game,
                "success": bool(after and held_out),
                "episode_return": float(bool(after and held_out)),
                "steps": 4,
                "llm_queries": 1,
                "wall_time_s": 0.1,
            }
            for seed in seeds
            for after in (0, episodes)
            for game in range(2)
        ]
        (folder / "evals.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    summary = {**summarise(records), "env_source": source}
    if not finished:
        summary["partial"] = True
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def bench_dir(tmp_path):
    runs = tmp_path / "runs"
    for seed in (0, 1):  # one run per seed, as `bench text` writes them
        make_run(
            runs / "babyai/uncached" / f"seed{seed}",
            "babyai",
            "dqn-prior",
            "none",
            [seed],
            3,
            success=True,
            queries_per_episode=10,
            decision_ms=400.0,
            held_out=True,
        )
        make_run(
            runs / "babyai/static" / f"seed{seed}",
            "babyai",
            "dqn-prior",
            "static",
            [seed],
            3,
            success=True,
            queries_per_episode=2,
            decision_ms=2.0,
            held_out=True,
        )
    make_run(
        runs / "babyai/direct" / "seed0",
        "babyai",
        "direct-llm",
        "none",
        [0, 1],
        1,
        success=False,
        queries_per_episode=10,
        decision_ms=390.0,
    )
    make_run(
        runs / "babyai/dqn" / "seed0",
        "babyai",
        "dqn",
        "none",
        [0, 1],
        3,
        success=False,
        queries_per_episode=0,
        decision_ms=1.0,
    )
    make_run(
        runs / "alfworld/static" / "seed0",
        "alfworld",
        "dqn-prior",
        "static",
        [0],
        2,
        success=True,
        queries_per_episode=3,
        decision_ms=5.0,
        source="generated",
    )
    make_run(
        runs / "alfworld/uncached" / "seed0",
        "alfworld",
        "dqn-prior",
        "none",
        [0],
        2,
        success=True,
        queries_per_episode=3,
        decision_ms=5.0,
        finished=False,
        source="generated",
    )
    return tmp_path


def test_rows_compare_each_method_with_the_uncached_reference(bench_dir):
    rows = {(r["env"], r["method"]): r for r in aggregate(find_runs(bench_dir))}
    static = rows[("babyai", "dqn-prior-static")]
    assert static["seeds"] == [0, 1] and static["episodes"] == 6
    assert static["query_reduction_x"] == pytest.approx(5.0)
    assert static["latency_p50_ratio_x"] == pytest.approx(200.0)
    assert static["success_retention"] == pytest.approx(1.0)
    assert static["hit_rate"] == pytest.approx(0.5)
    # Per-episode comparison: the one-episode-per-seed baseline asks as often per episode.
    direct = rows[("babyai", "direct-llm")]
    assert direct["query_reduction_x"] == pytest.approx(1.0) and direct["success_retention"] == 0.0
    assert direct["hit_rate"] is None  # no cache, no hit rate
    assert math.isinf(rows[("babyai", "dqn")]["query_reduction_x"])
    # The unfinished uncached ALFWorld run is left out, so ALFWorld has no reference.
    assert ("alfworld", "dqn-prior-uncached") not in rows
    assert rows[("alfworld", "dqn-prior-static")]["query_reduction_x"] is None
    assert rows[("babyai", "dqn-prior-static")]["learning_curve"]["return"] == [1.0, 2.0, 3.0]


def test_report_files(bench_dir, tmp_path):
    out = tmp_path / "report"
    result = write_report(bench_dir, out)
    md = (out / "results.md").read_text()
    assert "| babyai | dqn-prior-static | 1.000 ± 0.000 | 1.000 ± 0.000 |" in md  # held-out, training
    assert "| alfworld (generated) | dqn-prior-static | n/a |" in md  # no evaluations recorded
    assert "5.00×" in md and "alfworld (generated)" in md
    assert "unfinished" in md and "alfworld/uncached" in md
    table = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert {row["method"] for row in table} == {"dqn-prior-uncached", "dqn-prior-static", "direct-llm", "dqn"}
    assert json.loads((out / "results.json").read_text())["rows"][0]["env"] == "alfworld"
    for name in ("success_vs_queries.png", "learning_curves.png", "held_out_curves.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(result["files"]) == 6
    assert not (out / "cache_params.png").exists()  # no run recorded cache parameters


def test_two_runs_of_one_seed_are_refused(bench_dir):
    make_run(
        bench_dir / "runs/babyai/static-again/seed0",
        "babyai",
        "dqn-prior",
        "static",
        [0],
        1,
        success=True,
        queries_per_episode=1,
        decision_ms=1.0,
    )
    with pytest.raises(ConfigError, match="seed 0"):
        aggregate(find_runs(bench_dir))


def test_bad_folders_are_named(tmp_path):
    with pytest.raises(ConfigError, match="not a folder"):
        write_report(tmp_path / "missing")
    with pytest.raises(ConfigError, match="no run folders"):
        write_report(tmp_path)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text("{")
    (tmp_path / "r" / "metrics.jsonl").write_text("")
    with pytest.raises(ConfigError, match="damaged"):
        find_runs(tmp_path)


def test_cache_params_plot(bench_dir, tmp_path):
    def params(k, delta, r):
        return {"capacity": k, "similarity_threshold": delta, "refresh_rate": r}

    def adaptive(seed, episode):  # 4 steps per episode; one meta update in the middle of each
        update = {
            "step": 4 * episode + 2,
            **params(64 * 2**episode, 0.9 - 0.01 * episode, 0.05),
            "query_rate": 0.5,
            "expected_kl": 0.01,
            "return_rate": 0.1,
            "objective": 0.3,
            "new_key": 1,
        }
        return {"cache_params": params(64 * 2**episode, 0.9 - 0.01 * episode, 0.05), "meta_updates": [update]}

    def static(seed, episode):
        return {"cache_params": params(64, 0.92, 0.05), "meta_updates": []}

    make_run(
        bench_dir / "runs/babyai/adaptive/seed0",
        "babyai",
        "dqn-prior",
        "adaptive",
        [0, 1],
        3,
        success=True,
        queries_per_episode=2,
        decision_ms=2.0,
        extra=adaptive,
    )
    make_run(
        bench_dir / "runs/babyai/static-new/seed5",
        "babyai",
        "dqn-prior",
        "static",
        [5],
        2,
        success=True,
        queries_per_episode=2,
        decision_ms=2.0,
        extra=static,
    )
    make_run(
        bench_dir / "runs/babyai/uncached-new/seed5",
        "babyai",
        "dqn-prior",
        "none",
        [5],
        2,
        success=True,
        queries_per_episode=2,
        decision_ms=2.0,
        extra=lambda seed, episode: {"cache_params": None, "meta_updates": []},
    )

    curves = cache_param_trajectories(read_run(bench_dir / "runs/babyai/adaptive/seed0"))
    assert sorted(curves) == [0, 1]
    assert curves[0]["step"] == [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]  # update, episode end, ...
    assert curves[0]["capacity"] == [64.0, 64.0, 128.0, 128.0, 256.0, 256.0]
    assert curves[0]["similarity_threshold"] == pytest.approx([0.9, 0.9, 0.89, 0.89, 0.88, 0.88])
    assert cache_param_trajectories(read_run(bench_dir / "runs/babyai/uncached-new/seed5")) == {}
    assert cache_param_trajectories(read_run(bench_dir / "runs/babyai/uncached/seed0")) == {}  # an old run

    out = tmp_path / "report"
    result = write_report(bench_dir, out)
    assert (out / "cache_params.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out / "cache_params.png" in result["files"] and len(result["files"]) == 7
