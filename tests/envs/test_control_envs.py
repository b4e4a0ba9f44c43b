"""The continuous-control environments (``ControlEnv``: MuJoCo locomotion and MetaWorld MT1).

Every task is built for real through ``make_env``: it resets and steps, its info carries
``state_text`` and ``success``, its describer reads exactly the observation dimensions it claims
(each claimed one changes the text when moved across a bin edge, no other one ever does), its text is
short and binned, its skill rule answers with a member of its vocabulary, and its held-out instances
differ from its training instances. MuJoCo steps are cheap and a MetaWorld task builds in well under
a second, so everything here is in the fast set.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pytest

from priorcache.envs.control import ControlEnv, bin_word, direction_words
from priorcache.envs.registry import ENVIRONMENTS, game_seeds, make_env, make_split_env
from priorcache.errors import ConfigError, UnknownEnvironmentError

TASKS = [
    f"{family}:{variant}"
    for family, info in sorted(ENVIRONMENTS.items())
    if info.kind == "control"
    for variant in info.variants
]
#: Perturbations tried on one dimension: both signs, from 1 mm-ish to far outside any bin.
DELTAS = np.concatenate([-np.logspace(-3, 1.3, 40), np.logspace(-3, 1.3, 40)])


@pytest.fixture
def env(request: pytest.FixtureRequest) -> Iterator[ControlEnv]:
    built = make_env(request.param, game_seed=0)
    yield built
    built.close()


def _states(env: ControlEnv, n: int = 120, seed: int = 0) -> np.ndarray:
    """Observations of real episodes: random actions, and MetaWorld's expert (which reaches, grasps, carries)."""
    rng = np.random.default_rng(seed)
    expert = getattr(env, "scripted_action", None)
    states = []
    obs, _ = env.reset(seed=seed)
    while len(states) < n:
        states.append(obs)
        use_expert = expert is not None and len(states) % 3 != 0
        action = expert(obs) if use_expert else rng.uniform(-1, 1, env.action_space.shape)
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset()
    return np.asarray(states)


def test_the_registry_lists_the_control_tasks() -> None:
    assert TASKS == [
        "metaworld:reach-v3",
        "metaworld:push-v3",
        "metaworld:pick-place-v3",
        "mujoco:halfcheetah",
        "mujoco:walker2d",
        "mujoco:ant",
    ]
    for family in ("mujoco", "metaworld"):
        info = ENVIRONMENTS[family]
        assert info.kind == "control" and info.variant_kwarg == "task" and info.eval_split.held_out


@pytest.mark.parametrize("env", TASKS, indirect=True)
def test_resets_and_steps_for_real(env: ControlEnv) -> None:
    assert env.observation_space.dtype == np.float32 and env.action_space.dtype == np.float32
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    assert env.objective and 4 <= len(env.skills) <= 6 and len(set(env.skills)) == len(env.skills)
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == env.observation_space.shape
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert isinstance(info["success"], bool)
        text = info["state_text"]
        assert isinstance(text, str) and text and "\n" not in text and "  " not in text
        assert text == env.describe(obs)
        action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        assert env.skill_label(obs, action) in env.skills
        new, reward, terminated, truncated, info = env.step(action)
        assert new.dtype == np.float32 and new.shape == obs.shape and isinstance(reward, float)
        assert not np.array_equal(new, obs)  # the simulator moved
        obs = new
        if terminated or truncated:
            break
    if env.display_name == "MuJoCo":
        assert info["success"] is False  # locomotion has no success flag


@pytest.mark.parametrize("env", ["mujoco:halfcheetah", "metaworld:reach-v3"], indirect=True)
def test_episode_guards_and_actions(env: ControlEnv) -> None:
    action = np.zeros(env.action_space.shape, dtype=np.float32)
    with pytest.raises(ConfigError, match="call reset"):
        env.step(action)
    short = make_env(f"{env.display_name.lower()}:{env.task}", max_episode_steps=3)
    try:
        short.reset(seed=0)
        flags = [short.step(action)[3] for _ in range(3)]
        assert flags == [False, False, True]
        with pytest.raises(ConfigError, match="episode is over"):
            short.step(action)
    finally:
        short.close()
    env.reset(seed=0)
    for bad in (np.zeros(env.action_space.shape[0] + 1), np.full(env.action_space.shape, np.nan), "left"):
        with pytest.raises(ConfigError):
            env.step(bad)
    env.step(np.full(env.action_space.shape, 7.0))  # out of range is clipped, as Gymnasium's Box is
    with pytest.raises(ConfigError, match="shape"):
        env.describe(np.zeros(3))
    env.close()
    env.close()
    with pytest.raises(ConfigError, match="closed"):
        env.reset()


@pytest.mark.parametrize("env", TASKS, indirect=True)
def test_describer_reads_exactly_the_dimensions_it_claims(env: ControlEnv) -> None:
    states = _states(env)
    texts = [env.describe(s) for s in states]
    assert max(len(t.split()) for t in texts) < 60
    # Binned: nearby states share text, so real states fall into far fewer texts than there are states.
    assert len(set(texts)) < len(states) / 2
    claimed = set(env.described_dims)
    assert claimed
    for dim in range(states.shape[1]):
        changed = False
        for state, text in zip(states[:: 1 if dim in claimed else 12], texts[:: 1 if dim in claimed else 12]):
            for delta in DELTAS:
                moved = state.copy()
                moved[dim] += delta
                if env.describe(moved) != text:
                    changed = True
                    break
            if changed:
                break
        assert changed == (dim in claimed), f"dimension {dim}: claimed {dim in claimed}, changes the text {changed}"


@pytest.mark.parametrize("env", TASKS, indirect=True)
def test_skill_labels_are_vocabulary_members_and_cover_it(env: ControlEnv) -> None:
    states = _states(env, n=300, seed=1)
    rng = np.random.default_rng(1)
    expert = getattr(env, "scripted_action", None)
    labels = set()
    for obs in states:
        action = expert(obs) if expert is not None else rng.uniform(-1, 1, env.action_space.shape)
        labels.add(env.skill_label(obs, action))
    assert labels <= set(env.skills)
    # Locomotion phases come from the torques' signs, so random torques meet all four; MetaWorld's
    # expert passes through at least approach, the goal phase and one in between.
    assert len(labels) >= (4 if expert is None else 2)
    with pytest.raises(ConfigError, match="shape"):
        env.skill_label(states[0], np.zeros(env.action_space.shape[0] + 2))


@pytest.mark.parametrize("task", TASKS)
def test_held_out_instances_differ_from_training_instances(task: str) -> None:
    def first_obs(split: str, index: int = 0) -> np.ndarray:
        built = make_split_env(task, split, game_seeds(task, split, index + 1)[index])
        try:
            return built.reset(seed=0)[0]
        finally:
            built.close()

    train, held_out = first_obs("train"), first_obs("eval")
    assert not np.allclose(train, held_out)
    assert np.array_equal(train, first_obs("train"))  # an instance is the same every time it is built
    if task.startswith("metaworld"):
        # The goal (and, with an object, its start) is what differs.
        assert not np.allclose(train[36:39], held_out[36:39])
        assert not np.allclose(train[36:39], first_obs("train", 1)[36:39])


def test_a_locomotion_instance_is_its_initial_state_stream() -> None:
    first, second = make_env("mujoco:walker2d", game_seed=5), make_env("mujoco:walker2d", game_seed=6)
    try:
        a0, b0 = first.reset(seed=3)[0], second.reset(seed=3)[0]
        assert not np.allclose(a0, b0)  # same reset seed, other instance: another start
        assert np.array_equal(first.reset(seed=3)[0], a0)  # same instance and reset seed: same start
        assert not np.allclose(first.reset(seed=4)[0], a0)
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("metaworld:push-v2", "-v3"),
        ("metaworld:door-open-v3", "no describer"),
        ("metaworld:kick-the-ball", "pick-place-v3"),
        ("mujoco:hopper", "halfcheetah"),
    ],
)
def test_unknown_tasks_are_refused_with_the_choices(name: str, expected: str) -> None:
    with pytest.raises(UnknownEnvironmentError) as err:
        make_env(name)
    message = str(err.value)
    assert expected in message and name.partition(":")[2] in message
    for variant in ENVIRONMENTS[name.partition(":")[0]].variants:
        assert variant in message


@pytest.mark.parametrize("family", ["mujoco", "metaworld"])
@pytest.mark.parametrize(("keyword", "value"), [("game_seed", -1), ("game_seed", 1.5), ("max_episode_steps", 0)])
def test_bad_constructor_arguments(family: str, keyword: str, value: object) -> None:
    with pytest.raises(ConfigError, match=keyword):
        make_env(f"{family}:{ENVIRONMENTS[family].variants[0]}", **{keyword: value})


def test_binning_helpers() -> None:
    assert [bin_word(v, (0.0, 1.0), ("low", "mid", "high")) for v in (-1, 0, 0.5, 1, 2)] == [
        "low",
        "mid",
        "mid",
        "high",
        "high",
    ]
    with pytest.raises(ValueError):
        bin_word(0.0, (0.0,), ("one",))
    sides = ("to the right of", "to the left of", "ahead of", "behind")
    assert direction_words(np.array([0.1, 0.02, -0.05]), sides, 0.015) == "to the right of and below"
    assert direction_words(np.array([0.0, -0.1, 0.0]), sides, 0.015) == "behind"
    assert direction_words(np.zeros(3), sides, 0.015) == ""


def test_mujoco_warnings_go_to_the_log_not_to_a_file(tmp_path, monkeypatch, caplog) -> None:
    import mujoco

    make_env("mujoco:halfcheetah").close()  # building any task routes MuJoCo's warnings
    monkeypatch.chdir(tmp_path)
    model = mujoco.MjModel.from_xml_string(
        '<mujoco><worldbody><body><freejoint/><geom size=".1"/></body></worldbody></mujoco>'
    )
    data = mujoco.MjData(model)
    data.qpos[0] = np.nan
    with caplog.at_level(logging.WARNING, logger="priorcache.mujoco"):
        mujoco.mj_step(model, data)
    assert any("Nan, Inf or huge value" in r.getMessage() for r in caplog.records)
    assert list(tmp_path.iterdir()) == []  # no MUJOCO_LOG.TXT
