"""The run folder: a killed run resumes from its checkpoint to the very run an uninterrupted one
gives, and ``--out`` problems are refused before any work (real shop games, fake LLM and encoder)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from priorcache.cache.prior_cache import CacheConfig
from priorcache.errors import ConfigError
from priorcache.experiments import runner
from priorcache.experiments.run_folder import CHECKPOINT, plan_run_folder, read_progress
from priorcache.experiments.runner import RunConfig, run_experiment
from priorcache.io import folder_lock
from tests.cache._fakes import FakeBackend, HashEncoder


def _config(out: Path, **changes) -> RunConfig:
    settings = dict(
        env="webshop",
        agent="dqn-prior",
        cache=CacheConfig(mode="static", refresh_rate=0.3),
        episodes=4,
        seeds=[0, 1],
        max_episode_steps=5,
        train_games=2,
        eval_games=2,
        eval_every=2,
        eval_policy="sample",
        out=out,
    )
    return RunConfig(**{**settings, **changes})


def _run(config: RunConfig, **kwargs) -> dict:
    return run_experiment(config, backend=FakeBackend(), encoder=HashEncoder(dim=32), progress=False, **kwargs)


def _lines(path: Path) -> list[dict]:
    """A run's JSON lines without what depends on the clock, and without the cache's entry ids:
    labels that count on across a run's seeds when each seed starts from the same cache."""
    timed = ("time", "wall", "latency", "_ms")
    lines = []
    for line in path.read_text().splitlines():
        record = {k: v for k, v in json.loads(line).items() if not any(t in k for t in timed)}
        if "audit_records" in record:
            record["audit_records"] = [{k: v for k, v in a.items() if k != "entry_id"} for a in record["audit_records"]]
        lines.append(record)
    return lines


class _Killed(BaseException):
    """What a kill does to the run: it stops between two steps, whatever it was doing."""


def _kill_after(monkeypatch, batches: int) -> None:
    real = runner._run_episodes
    calls = {"n": 0}

    def run_then_die(*args, **kwargs):
        if calls["n"] == batches:
            raise _Killed
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "_run_episodes", run_then_die)


#: The adaptive cache with windows of 4 lookups: its meta-optimiser updates mid-episode, so a resume
#: must restore its moments, pair and open window, not θ alone.
ADAPTIVE = CacheConfig(mode="adaptive", refresh_rate=0.2, meta={"update_every": 4})


@pytest.mark.parametrize(
    ("killed_after", "cache"),
    [(1, None), (3, None), (4, None), (6, None), (3, ADAPTIVE), (6, ADAPTIVE)],
)
def test_a_killed_run_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch, killed_after, cache):
    settings = {"cache": cache} if cache is not None else {}
    monkeypatch.setattr(runner, "CHECKPOINT_COST_RATIO", 0)  # checkpoint after every episode
    whole = _run(_config(tmp_path / "whole", **settings))

    _kill_after(monkeypatch, killed_after)
    with pytest.raises(_Killed):
        _run(_config(tmp_path / "killed", **settings))
    progress, _ = read_progress(tmp_path / "killed")
    assert progress.seed_index * 4 + progress.episodes_done == killed_after
    monkeypatch.undo()
    monkeypatch.setattr(runner, "CHECKPOINT_COST_RATIO", 0)
    resumed = _run(_config(tmp_path / "killed", **settings), resume=True)

    for name in ("metrics.jsonl", "evals.jsonl"):
        assert _lines(tmp_path / "killed" / name) == _lines(tmp_path / "whole" / name)
    counts = ("lookups", "exact_hits", "similar_hits", "misses", "refreshes", "llm_calls", "audits", "size")
    assert {k: resumed["cache_stats"][k] for k in counts} == {k: whole["cache_stats"][k] for k in counts}
    assert resumed["held_out"] == whole["held_out"]
    if cache is not None:
        assert whole["cache_stats"]["meta_updates"] > 0
        assert resumed["cache_stats"]["params"] == whole["cache_stats"]["params"]
    assert not (tmp_path / "killed" / CHECKPOINT).exists()


def test_a_resumed_run_writes_each_tensorboard_point_once(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def points(out: Path, seed: int) -> list[tuple[int, float]]:
        events = EventAccumulator(str(out / "tensorboard" / f"seed{seed}"))
        events.Reload()
        return [(e.step, e.value) for e in events.Scalars("train/llm_queries")]

    monkeypatch.setattr(runner, "CHECKPOINT_COST_RATIO", 0)
    _run(_config(tmp_path / "whole", tensorboard=True))
    real = runner.write_checkpoint
    calls = {"n": 0}

    def checkpoint_then_die_later(*args, **kwargs):  # the third checkpoint is never written...
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "write_checkpoint", checkpoint_then_die_later)
    with pytest.raises(_Killed):  # ...so the episode before it is logged, then played again on resume
        _run(_config(tmp_path / "killed", tensorboard=True))
    monkeypatch.setattr(runner, "write_checkpoint", real)
    _run(_config(tmp_path / "killed", tensorboard=True), resume=True)
    for seed in (0, 1):
        assert points(tmp_path / "killed", seed) == points(tmp_path / "whole", seed)


def test_every_seed_starts_from_the_cache_the_run_found(tmp_path):
    """Seeds are independent replicas: seed 1 plays the same episodes, with the same LLM calls,
    after seed 0 as alone (a cache shared across seeds would start it warm), and each seed's
    cache is saved apart."""
    _run(_config(tmp_path / "both"))
    _run(_config(tmp_path / "alone", seeds=[1]))
    after = [r for r in _lines(tmp_path / "both" / "metrics.jsonl") if r["seed"] == 1]
    assert after and after == _lines(tmp_path / "alone" / "metrics.jsonl")
    assert after[0]["llm_calls"] > 0
    assert sorted(p.name for p in (tmp_path / "both" / "cache").iterdir() if p.is_dir()) == ["seed0", "seed1"]


def test_resuming_a_finished_run_does_no_work(tmp_path):
    first = _run(_config(tmp_path / "run", seeds=[0], episodes=2))
    backend = FakeBackend()
    again = run_experiment(
        _config(tmp_path / "run", seeds=[0], episodes=2), backend=backend, encoder=HashEncoder(dim=32), resume=True
    )
    assert again == json.loads((tmp_path / "run" / "summary.json").read_text())
    assert again["held_out"] == first["held_out"] and backend.n_calls == 0


def _plan(out: Path, config: RunConfig | None = None, **flags):
    config = config or _config(out)
    return plan_run_folder(out, config.to_json(), config.cache_path, **{"resume": False, "overwrite": False, **flags})


def test_out_holding_other_files_is_refused_before_any_work(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("keep me")
    backend = FakeBackend()
    for flags in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(ConfigError, match="not a priorcache run.*thesis.tex"):
            run_experiment(_config(out), backend=backend, encoder=HashEncoder(dim=32), progress=False, **flags)
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"] and backend.n_calls == 0


def test_a_run_of_another_configuration_is_replaced_only_with_overwrite(tmp_path):
    out = tmp_path / "run"
    _run(_config(out, seeds=[0], episodes=2))
    other = _config(out, seeds=[0], episodes=3)
    with pytest.raises(ConfigError, match="another configuration.*episodes.*--overwrite"):
        _run(other)
    with pytest.raises(ConfigError, match="another configuration.*episodes"):
        _run(other, resume=True)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # untouched
    _run(other, overwrite=True)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    assert _plan(out, other).state == "replace"  # the same configuration again: rerun in place


def test_output_path_problems_are_found_before_the_first_episode(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        _plan(tmp_path / "afile")
    with pytest.raises(ConfigError, match="is a file"):
        _plan(tmp_path / "afile" / "run")
    with pytest.raises(ConfigError, match="overlap"):
        _plan(tmp_path / "x", _config(tmp_path / "x", cache_path=tmp_path / "x"))
    with pytest.raises(ConfigError, match="overlap"):
        _plan(tmp_path / "x", _config(tmp_path / "x", cache_path=tmp_path / "x" / "cache"))
    with pytest.raises(ConfigError, match="give one of them"):
        _plan(tmp_path / "x", resume=True, overwrite=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_is_refused_before_any_work(tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="cannot write into"):
            _plan(locked / "run")
        with pytest.raises(ConfigError, match="--cache-path.*cannot write into"):
            _plan(tmp_path / "run", _config(tmp_path / "run", cache_path=locked / "cache"))
    finally:
        locked.chmod(0o700)


def test_a_second_run_on_a_busy_out_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with folder_lock(out / CHECKPOINT) as held:  # what the first run holds while it runs
        assert held
        with pytest.raises(ConfigError, match="another priorcache process is running"):
            _run(_config(out, seeds=[0], episodes=1))
    assert not (out / "metrics.jsonl").exists()
    _run(_config(out, seeds=[0], episodes=1))  # free again
    assert (out / "summary.json").exists()


def test_files_and_folders_get_the_users_permissions(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "CHECKPOINT_COST_RATIO", 0)
    old = os.umask(0o022)
    try:
        _kill_after(monkeypatch, 1)
        with pytest.raises(_Killed):
            _run(_config(tmp_path / "run"))
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").rglob("*") if not p.name.startswith(".")}
    assert modes["summary.json"] == modes["progress.json"] == 0o644
    assert modes[CHECKPOINT] == modes["agent"] == 0o755
