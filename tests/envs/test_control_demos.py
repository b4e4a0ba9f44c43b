"""Demonstrations of the control tasks: MetaWorld's scripted experts, and the Stable-Baselines3 SAC demonstrator.

The scripted experts are cheap and run in the fast set; the SAC demonstrator trains for real with a
tiny budget in the slow set, and its saved demonstrations are reused by the next call. Bad input
and damaged saved files are refused before anything trains.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from priorcache.envs.control_demos import ControlDemos, demos_path, record_control_demos
from priorcache.envs.registry import game_seeds, make_split_env
from priorcache.errors import ConfigError, UnknownEnvironmentError


def _check_shapes(demos: ControlDemos, shots: int) -> None:
    n = len(demos.rewards)
    assert n > 0 and demos.observations.shape[0] == demos.actions.shape[0] == len(demos.skills) == n
    assert demos.observations.dtype == np.float32 and demos.actions.dtype == np.float32
    assert np.all(np.abs(demos.actions) <= 1.0)
    assert sorted(set(demos.episode.tolist())) == list(range(shots))
    assert np.all(np.diff(demos.episode) >= 0)  # episode after episode
    assert len(demos.game_seeds) == len(demos.episode_returns) == len(demos.episode_success) == shots
    for index, ret in enumerate(demos.episode_returns):
        assert ret == pytest.approx(float(demos.rewards[demos.episode == index].sum()))


@pytest.mark.parametrize("task", ["push-v3", "pick-place-v3"])
def test_scripted_demonstrations_succeed_on_training_instances(task: str) -> None:
    name = f"metaworld:{task}"
    demos = record_control_demos(name, shots=2)
    _check_shapes(demos, 2)
    assert demos.game_seeds == tuple(game_seeds(name, "train", 2))
    assert all(demos.episode_success) and "scripted expert" in demos.demonstrator and demos.path is None
    env = make_split_env(name, "train", demos.game_seeds[0])
    try:
        # Every skill has demonstration steps (the episodes go on a little after the success, so
        # holding the puck at the goal is demonstrated too).
        assert set(demos.skills) == set(env.skills)
        first = [s for s, e in zip(demos.skills, demos.episode) if e == 0]
        # The segmentation follows the expert's phases: approach, lower, grasp, carry, hold.
        phases = [s for i, s in enumerate(first) if i == 0 or s != first[i - 1]]
        assert phases[0] == "move the gripper above the puck" and phases[-1] == "hold the puck at the goal"
        assert [env.skills.index(p) for p in phases] == sorted(env.skills.index(p) for p in phases)
        # Replaying the recorded actions on the same instance reproduces the episode and its success.
        obs, _ = env.reset(seed=0)
        np.testing.assert_allclose(obs, demos.observations[0])
        success = False
        for action in demos.actions[demos.episode == 0]:
            obs, _, _, _, info = env.step(action)
            success = success or info["success"]
        assert success
    finally:
        env.close()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"env_name": "metaworld:push-v3", "shots": 0}, ConfigError, "shots"),
        ({"env_name": "metaworld:push-v3", "shots": True}, ConfigError, "shots"),
        ({"env_name": "metaworld:push-v3", "shots": "5"}, ConfigError, "shots"),
        ({"env_name": "metaworld:push-v3", "shots": 1, "seed": -1}, ConfigError, "seed"),
        ({"env_name": "metaworld:push-v3", "shots": 1, "budget": 100}, ConfigError, "scripted expert"),
        ({"env_name": "babyai", "shots": 1}, ConfigError, "text environment"),
        ({"env_name": "chess", "shots": 1}, ConfigError, "no control demonstrator"),
        ({"env_name": "mujoco", "shots": 1}, ConfigError, "mujoco:halfcheetah"),
        ({"env_name": "mujoco:hopper", "shots": 1}, UnknownEnvironmentError, "walker2d"),
        ({"env_name": "mujoco:ant", "shots": 1, "budget": 0}, ConfigError, "budget"),
    ],
)
def test_bad_input_is_refused_before_anything_trains(kwargs, error, match, tmp_path: Path) -> None:
    with pytest.raises(error, match=match):
        record_control_demos(**kwargs, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_or_foreign_saved_file_is_refused(tmp_path: Path) -> None:
    path = demos_path("mujoco:walker2d", 0, 50, 20, cache_dir=tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a zip file")
    with pytest.raises(ConfigError, match="damaged") as err:
        record_control_demos("mujoco:walker2d", 1, budget=50, max_episode_steps=20, cache_dir=tmp_path)
    assert str(path) in str(err.value) and "delete" in str(err.value)
    # A well-formed file whose key is another environment's.
    meta = {"format": "priorcache-control-demos", "version": 1, "env": "mujoco:ant", "seed": 0, "budget": 50}
    with path.open("wb") as f:
        np.savez(
            f,
            observations=np.zeros((2, 17), np.float32),
            actions=np.zeros((2, 6), np.float32),
            skills=np.asarray(["a", "b"]),
            episode=np.zeros(2, np.int64),
            rewards=np.zeros(2),
            meta=np.asarray(json.dumps({**meta, "max_episode_steps": 20})),
        )
    with pytest.raises(ConfigError, match="mujoco:ant"):
        record_control_demos("mujoco:walker2d", 1, budget=50, max_episode_steps=20, cache_dir=tmp_path)


@pytest.mark.slow
def test_the_sac_demonstrator_trains_once_and_its_demonstrations_are_reused(tmp_path: Path) -> None:
    settings = {"budget": 300, "max_episode_steps": 40, "cache_dir": tmp_path}
    demos = record_control_demos("mujoco:halfcheetah", 2, seed=1, **settings)
    _check_shapes(demos, 2)
    assert "Stable-Baselines3 SAC demonstrator" in demos.demonstrator and "300 steps" in demos.demonstrator
    assert demos.path == demos_path("mujoco:halfcheetah", 1, 300, 40, tmp_path) and demos.path.is_file()
    assert demos.game_seeds == tuple(game_seeds("mujoco:halfcheetah", "train", 2))
    assert not any(demos.episode_success) and len(demos.rewards) == 2 * 40  # HalfCheetah never terminates
    with np.load(demos.path, allow_pickle=False) as saved:
        meta = json.loads(str(saved["meta"]))
        assert len(saved["rewards"]) >= 2 * 40  # the saved pool holds more episodes than asked for
    assert meta["budget"] == 300 and meta["train_episode_returns"] and meta["train_wall_time_s"] > 0
    stamp = os.stat(demos.path).st_mtime_ns
    again = record_control_demos("mujoco:halfcheetah", 1, seed=1, **settings)
    assert os.stat(demos.path).st_mtime_ns == stamp  # read back, not trained again
    np.testing.assert_array_equal(again.observations, demos.observations[demos.episode == 0])
    np.testing.assert_array_equal(again.actions, demos.actions[demos.episode == 0])
    assert again.skills == [s for s, e in zip(demos.skills, demos.episode) if e == 0]
    assert list(tmp_path.iterdir()) == [demos.path]  # no temp file left behind
