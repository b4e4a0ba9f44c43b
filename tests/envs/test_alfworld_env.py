"""ALFWorldEnv on the real ALFWorld engine, with generated and (stand-in) official games.

Games are generated and certified once per test session into a pytest temp folder (never the
user's cache). No mocks of the engine: the planner expert plans, the engine plays. Tests that
need the engine are marked ``slow``; generator invariants, φ(s) formatting and argument errors run
without it. The contract every environment keeps (info keys, step guards, truncation, spaces,
seeding, game_seed/max_episode_steps checks, registry shorthand) is tested in test_contract.py.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from priorcache.envs import alfworld_engine as engine
from priorcache.envs import alfworld_games as games
from priorcache.envs import alfworld_gen as gen
from priorcache.envs import alfworld_pddl as pddl
from priorcache.envs.alfworld_env import (
    SPLITS,
    TASK_TYPES,
    ALFWorldEnv,
    describe_state,
)
from priorcache.envs.alfworld_games import ensure_game
from priorcache.envs.registry import ENVIRONMENTS, make_env
from priorcache.errors import ConfigError, UnknownEnvironmentError

SEEDS = (0, 1)


@pytest.fixture(scope="session")
def games_dir(alfworld_games_dir: Path) -> Path:
    return alfworld_games_dir


@pytest.fixture(scope="session")
def generated(games_dir: Path) -> dict[tuple[str, int], games.GameFiles]:
    """Certified games of every task type for SEEDS (about 1 s each)."""
    return {(t, s): ensure_game(t, s, "train", games_dir) for t in TASK_TYPES for s in SEEDS}


def _make(task_type: str | None, games_dir: Path, **kwargs) -> ALFWorldEnv:
    kwargs.setdefault("game_seed", 0)
    return ALFWorldEnv(task_type, source="generated", games_dir=games_dir, **kwargs)


def _check_info(info: dict, env: ALFWorldEnv) -> None:
    actions = info["admissible_actions"]
    assert actions and actions == sorted(set(actions)) and all(a.strip() == a and a for a in actions)
    assert "help" not in actions
    text = info["state_text"]
    assert text and "\n" not in text and "  " not in text
    assert info["objective"] == env.objective and info["objective"].startswith("Your task is to: ")
    assert info["source"] == env.source and info["task_type"] == env.task_type
    assert info["max_score"] == 1.0 and info["lost"] is False


# --------------------------------------------------------------------------- playing real games


@pytest.mark.slow
@pytest.mark.parametrize("task_type", list(TASK_TYPES))
def test_walkthrough_wins_every_task_type(task_type: str, games_dir: Path, generated) -> None:
    env = _make(task_type, games_dir, max_episode_steps=50)
    try:
        assert env.source == "generated"
        obs, info = env.reset(seed=0)
        assert "-= Welcome to TextWorld, ALFRED! =-" in obs and env.objective in obs
        assert env.observation_space.contains(obs)
        assert info["score"] == 0.0 and not info["won"]
        _check_info(info, env)
        assert len(env.walkthrough) >= 2
        rewards = []
        terminated = truncated = False
        for i, command in enumerate(env.walkthrough):
            assert not terminated, f"won before walkthrough step {i}"
            assert command in info["admissible_actions"]
            obs, reward, terminated, truncated, info = env.step(command)
            rewards.append(reward)
            _check_info(info, env)
        assert terminated and not truncated and info["won"]
        assert rewards == [0.0] * (len(rewards) - 1) + [1.0] and info["score"] == 1.0
        with pytest.raises(ConfigError, match="reset"):
            env.step("look")
    finally:
        env.close()


@pytest.mark.slow
def test_generated_games_are_certified_over_seeds(generated) -> None:
    """Every (task type, seed) gives a game whose recorded plan wins when replayed afresh.

    ``ensure_game`` only keeps a game once the planner's plan has won it; this replays the plans
    of seeds other than 0 once more in a new engine (seed 0 is played by the walkthrough test).
    """
    problems = set()
    for (task_type, seed), files in generated.items():
        data = json.loads(files.game_path.read_text(encoding="utf-8"))
        assert data["solvable"] is True and data["walkthrough"] == list(files.walkthrough)
        assert files.meta["source"] == "generated" and files.meta["task_type"] == task_type
        assert 6 <= files.meta["receptacles"] <= 10 and 8 <= files.meta["objects"] <= 15
        if seed != 0:
            assert engine.plays_to_win(files.game_path, files.walkthrough), (task_type, seed)
        problems.add(data["pddl_problem"])
    assert len(problems) == len(generated)  # different seeds, different problems


@pytest.mark.slow
def test_same_seed_same_instance_and_seed_picks_task_type(games_dir: Path, generated) -> None:
    a = _make("pick_cool_then_place", games_dir, game_seed=1)
    b = _make("pick_cool_then_place", games_dir, game_seed=1)
    c = _make("pick_cool_then_place", games_dir, game_seed=0)
    # task_type None: drawn from the seed (seed 1 -> the second type); ALFRED's names are aliases
    d = _make(None, games_dir, game_seed=1)
    e = _make("pick_cool_then_place_in_recep", games_dir, game_seed=1)
    try:
        assert a.game_path == b.game_path == e.game_path and a.walkthrough == b.walkthrough
        first = [env.reset()[1]["state_text"] for env in (a, b)]
        assert first[0] == first[1] and a.objective == b.objective
        assert c.game_path != a.game_path
        assert d.task_type == list(TASK_TYPES)[1] == "pick_clean_then_place"
        assert d.game_path == generated[("pick_clean_then_place", 1)].game_path
        # a new episode replays to the same texts
        runs = []
        for _ in range(2):
            texts = [a.reset()[1]["state_text"]]
            texts += [a.step(cmd)[4]["state_text"] for cmd in a.walkthrough]
            runs.append(texts)
        assert runs[0] == runs[1]
    finally:
        for env in (a, b, c, d, e):
            env.close()


@pytest.mark.slow
def test_bad_actions_get_engine_feedback_and_cost_a_step(games_dir: Path, generated) -> None:
    env = _make("pick_heat_then_place", games_dir, max_episode_steps=8)
    try:
        _, info = env.reset()
        start = info["state_text"]
        for action in ["xyzzy", "", "take the moon from the sky", "go to narnia 1", "heat me"]:
            obs, reward, terminated, truncated, info = env.step(action)
            assert obs == "Nothing happens." and reward == 0.0 and not terminated and not truncated
            assert info["state_text"] == start
        obs, *_ = env.step("help")  # answered by the engine, though not listed
        assert "Available commands" in obs
        # commands are matched after case and whitespace normalisation
        first = env.walkthrough[0]
        obs, _, _, _, info = env.step("  " + first.upper().replace(" ", "   ") + "\n")
        assert obs.startswith("You arrive at") and info["state_text"] != start
        _, _, terminated, truncated, _ = env.step("xyzzy")
        assert truncated and not terminated  # 8 steps used
    finally:
        env.close()


@pytest.mark.slow
def test_state_text_is_markov(games_dir: Path, generated) -> None:
    env = _make("pick_heat_then_place", games_dir)
    try:
        _, info = env.reset()
        assert info["state_text"].startswith(
            "You are in the middle of a room. Looking quickly around you, you see a cabinet 1, "
        )
        assert info["state_text"].endswith(". You are not carrying anything.")
        go = [a for a in info["admissible_actions"] if a.startswith("go to ")]
        _, _, _, _, at_first = env.step(go[0])
        target = go[0][len("go to ") :]
        assert at_first["state_text"].startswith(f"You are at {target}.")
        # looking, examining and bad commands change the feedback, not the state text
        for action in ["look", "inventory", f"examine {target}", "xyzzy"]:
            obs, _, _, _, info = env.step(action)
            assert info["state_text"] == at_first["state_text"], action
        assert "Nothing happens" not in info["state_text"]
        # leaving and coming back gives the same text
        env.step(go[1])
        _, _, _, _, info = env.step(go[0])
        assert info["state_text"] == at_first["state_text"]
        # opening and closing an openable receptacle: text changes, then comes back
        _, info = env.reset()
        microwave = next(a for a in info["admissible_actions"] if a.startswith("go to microwave"))
        _, _, _, _, closed = env.step(microwave)
        name = microwave[len("go to ") :]
        assert f"The {name} is closed." in closed["state_text"]
        _, _, _, _, opened = env.step(f"open {name}")
        assert f"The {name} is open. In it, you see" in opened["state_text"]
        _, _, _, _, again = env.step(f"close {name}")
        assert again["state_text"] == closed["state_text"]
        # along the walkthrough: the carried object shows up, then turns hot
        env.reset()
        texts = [env.step(cmd)[4]["state_text"] for cmd in env.walkthrough]
        heat = next(i for i, c in enumerate(env.walkthrough) if c.startswith("heat "))
        assert "You are carrying: a " in texts[heat - 1] and " hot " not in texts[heat - 1]
        assert "You are carrying: a hot " in texts[heat]
        assert texts[-1].endswith("You are not carrying anything.") and " hot " in texts[-1]
        assert len(set(texts)) == len(texts)
    finally:
        env.close()


@pytest.mark.slow
def test_lamp_state_shows_in_state_text(games_dir: Path, generated) -> None:
    env = _make("look_at_obj_in_light", games_dir)
    try:
        env.reset()
        *_, info = env.step(env.walkthrough[0])
        for command in env.walkthrough[1:-1]:
            info = env.step(command)[4]
        use = env.walkthrough[-1]
        assert use.startswith("use desklamp") and "(turned on)" not in info["state_text"]
        assert "You are carrying: a " in info["state_text"]
        *_, terminated, _, info = env.step(use)
        assert terminated and info["won"] and "desklamp 1 (turned on)" in info["state_text"]
    finally:
        env.close()


@pytest.mark.slow
def test_random_admissible_play_is_fast_and_never_crashes(games_dir: Path, generated) -> None:
    import time

    rng = random.Random(0)
    env = _make("pick_two_obj_and_place", games_dir, max_episode_steps=40)
    try:
        steps, start = 0, time.perf_counter()
        for _ in range(2):
            _, info = env.reset()
            done = False
            while not done:
                action = rng.choice(info["admissible_actions"])
                _, reward, terminated, truncated, info = env.step(action)
                _check_info(info, env)
                assert reward == (1.0 if terminated else 0.0)
                done = terminated or truncated
                steps += 1
        rate = steps / (time.perf_counter() - start)
        assert rate >= 5, f"{rate:.1f} steps/s"  # ~30/s on an idle core; loose for shared CI
    finally:
        env.close()


@pytest.mark.slow
def test_nothing_reaches_stdout(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    env = ALFWorldEnv("pick_clean_then_place", game_seed=7, source="generated", games_dir=tmp_path)
    try:
        _, info = env.reset()
        for command in env.walkthrough:
            env.step(command)
        env.reset()
        env.step("help")
    finally:
        env.close()
    out, _ = capfd.readouterr()
    assert out == ""


# --------------------------------------------------------------------------- official games


def _fake_official_tree(root: Path, generated) -> Path:
    """An ALFWorld data folder laid out like the official one, holding generated games.

    The official files cannot be downloaded here; the loader only needs their layout and format
    (the same JSON game files). One game is marked unsolvable and one sits in a skipped
    (movable-receptacle) folder.
    """
    split = root / "json_2.1.1" / "train"
    for i, seed in enumerate(SEEDS):
        files = generated[("pick_heat_then_place", seed)]
        trial = split / f"pick_heat_then_place_in_recep-Thing{i}-None-CounterTop-{i}" / "trial_T0"
        trial.mkdir(parents=True)
        shutil.copy(files.game_path, trial / "game.tw-pddl")
        shutil.copy(files.folder / "traj_data.json", trial / "traj_data.json")
    bad = split / "pick_heat_then_place_in_recep-Bad-None-CounterTop-9" / "trial_T0"
    bad.mkdir(parents=True)
    data = json.loads(generated[("pick_heat_then_place", 0)].game_path.read_text())
    (bad / "game.tw-pddl").write_text(json.dumps({**data, "solvable": False}))
    movable = split / "pick_and_place_with_movable_recep-Apple-Bowl-Fridge-1" / "trial_T0"
    movable.mkdir(parents=True)
    shutil.copy(generated[("pick_and_place", 0)].game_path, movable / "game.tw-pddl")
    return root


@pytest.mark.slow
def test_official_games_are_used_and_labelled(
    tmp_path: Path, games_dir: Path, generated, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = _fake_official_tree(tmp_path / "alfworld_data", generated)
    monkeypatch.setenv("ALFWORLD_DATA", str(data_dir))
    cache = tmp_path / "cache"
    env = ALFWorldEnv("pick_heat_then_place", game_seed=0, games_dir=cache)  # source="auto"
    try:
        assert env.source == "official:train"
        assert env.game_path.is_relative_to(data_dir) and "Bad" not in str(env.game_path)
        _, info = env.reset()
        assert info["source"] == "official:train"
        for command in env.walkthrough:  # planned and certified on first use, then cached
            info = env.step(command)[4]
        assert info["won"]
        assert len(list((cache / "official").glob("*.json"))) == 1
    finally:
        env.close()
    # the seeds pick the solvable games, in a fixed order
    paths = {games.official_game("pick_heat_then_place", s, "train") for s in range(6)}
    assert len(paths) == len(SEEDS) and all("Bad" not in str(p) for p in paths)
    # one more game is listed (unsolvable, passing its turn on): the choice is periodic
    period = len(SEEDS) + 1
    assert all(
        games.official_game("pick_heat_then_place", s, "train")
        == games.official_game("pick_heat_then_place", s + period, "train")
        for s in range(period)
    )
    # no official game of a task type, or no such split
    with pytest.raises(ConfigError, match="no official pick_and_place games"):
        ALFWorldEnv("pick_and_place", games_dir=cache)
    with pytest.raises(ConfigError, match="valid_seen"):
        ALFWorldEnv("pick_heat_then_place", split="valid_seen", source="official", games_dir=cache)
    # asked for, generated games are still available and labelled as such
    gen_env = _make("pick_heat_then_place", games_dir)
    try:
        assert gen_env.source == "generated" and gen_env.reset()[1]["source"] == "generated"
    finally:
        gen_env.close()


def test_official_source_without_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="json_2.1.1.*internet"):
        ALFWorldEnv("pick_and_place", source="official", data_dir=tmp_path, games_dir=tmp_path)
    assert games.has_official_games("train", tmp_path) is False


# --------------------------------------------------------------------------- the on-disk cache


@pytest.mark.slow
def test_second_env_reuses_the_certified_game(games_dir: Path, generated, monkeypatch: pytest.MonkeyPatch) -> None:
    files = generated[("pick_and_place", 0)]
    mtime = files.game_path.stat().st_mtime_ns

    def must_not_generate(*args, **kwargs):
        raise AssertionError("game was generated again")

    monkeypatch.setattr(games, "_generate_game", must_not_generate)
    env = _make("pick_and_place", games_dir)
    env.close()
    assert env.game_path == files.game_path and files.game_path.stat().st_mtime_ns == mtime
    with pytest.raises(AssertionError, match="generated again"):
        _make("pick_and_place", games_dir, game_seed=99)
    with pytest.raises(AssertionError, match="generated again"):
        _make("pick_and_place", games_dir, split="valid_unseen")


@pytest.mark.slow
def test_interrupted_generation_leaves_nothing_that_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(game_path: Path):
        assert game_path.is_file()  # the game file exists in the temp folder at this point
        raise KeyboardInterrupt("simulated crash mid-certification")

    monkeypatch.setattr(games, "expert_plan", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_game("pick_and_place", 0, "train", tmp_path)
    # only the build lock's file stays (io.build_once holds folder_lock, whose file is kept)
    assert [p.name for p in (tmp_path / "generated").iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.slow
def test_rejected_attempts_are_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = engine.expert_plan
    calls = []

    def fail_first(game_path: Path):
        calls.append(game_path)
        if len(calls) == 1:
            return []  # as if the planner found no plan
        return real(game_path)

    monkeypatch.setattr(games, "expert_plan", fail_first)
    files = ensure_game("pick_and_place", 0, "train", tmp_path)
    assert files.meta["attempt"] == 1 and "no plan" in files.meta["rejected"][0]
    assert engine.plays_to_win(files.game_path, files.walkthrough)


# --------------------------------------------------------------------------- generator (no engine)


@pytest.mark.parametrize("split", SPLITS)
def test_generator_invariants(split: str) -> None:
    import alfworld.gen.constants as constants

    can_contain = constants.VAL_RECEPTACLE_OBJECTS
    for task_type in TASK_TYPES:
        for seed in range(8):
            scene = gen.sample_scene(task_type, seed, 0, split)
            assert scene == gen.sample_scene(task_type, seed, 0, split)  # deterministic
            assert 6 <= len(scene.receptacles) <= 10 and 8 <= len(scene.objects) <= 15
            assert len(set(scene.receptacles.values())) == len(scene.receptacles)
            assert scene.agent_location not in scene.receptacles.values()
            number = int(scene.floorplan[len("FloorPlan") :])
            unseen = split == "valid_unseen"
            assert number in (constants.TEST_SCENE_NUMBERS if unseen else constants.TRAIN_SCENE_NUMBERS)
            classes = {gen.class_of(r) for r in scene.receptacles}
            for oid, rid in scene.objects.items():
                cls = gen.class_of(oid)
                assert cls == "DeskLamp" or cls in can_contain[gen.class_of(rid)]
            targets = [o for o in scene.objects if gen.class_of(o) == scene.object_target]
            assert len(targets) >= (2 if task_type == "pick_two_obj_and_place" else 1)
            if scene.parent_target:
                assert scene.parent_target in classes
                assert all(gen.class_of(scene.objects[o]) != scene.parent_target for o in targets)
            appliance = {
                "pick_clean_then_place": "SinkBasin",
                "pick_heat_then_place": "Microwave",
                "pick_cool_then_place": "Fridge",
            }.get(task_type)
            if appliance:
                assert appliance in classes and scene.parent_target != appliance
            if task_type == "look_at_obj_in_light":
                assert scene.toggle_target == "DeskLamp" and scene.parent_target is None
            verbs = {"put", "clean", "heat", "cool", "find", "look", "examine"}
            assert scene.task_sentence.split()[0] in verbs
            problem = pddl.pddl_problem(scene)
            assert problem.count("(") == problem.count(")") and "#" not in problem
    assert gen.sample_scene("pick_and_place", 0) != gen.sample_scene("pick_and_place", 1)
    with pytest.raises(ValueError, match="pick_and_place"):
        gen.sample_scene("pick_and_toss", 0)


def test_describe_state_formats_like_the_engine() -> None:
    def fact(name: str, *args: str) -> SimpleNamespace:
        return SimpleNamespace(name=name, arguments=[SimpleNamespace(name=a) for a in args])

    base = [
        fact("atlocation", "agent1 ", "loc 3"),
        fact("receptacleatlocation", "fridge 1", "loc 3"),
        fact("receptacleatlocation", "countertop 1", "loc 4"),
        fact("openable", "fridge 1"),
        fact("inreceptacle", "egg 1", "fridge 1"),
        fact("inreceptacle", "apple 10", "fridge 1"),
        fact("inreceptacle", "apple 2", "fridge 1"),
        fact("inreceptacle", "bread 1", "countertop 1"),
        fact("iscool", "apple 2"),
        fact("not_opened", "fridge 1"),
    ]
    assert describe_state(base) == ("You are at fridge 1. The fridge 1 is closed. You are not carrying anything.")
    opened = base + [
        fact("opened", "fridge 1"),
        fact("holds", "agent1 ", "mug 1"),
        fact("ishot", "mug 1"),
        fact("isclean", "mug 1"),
    ]
    assert describe_state(opened) == (
        "You are at fridge 1. The fridge 1 is open. In it, you see a cool apple 2, a apple 10, "
        "and a egg 1. You are carrying: a hot clean mug 1."
    )
    assert describe_state(list(reversed(opened))) == describe_state(opened)  # order-free
    nowhere = [fact("atlocation", "agent1 ", "loc 9")] + base[1:]
    assert describe_state(nowhere) == (
        "You are in the middle of a room. Looking quickly around you, you see a countertop 1, "
        "and a fridge 1. You are not carrying anything."
    )


def test_bad_constructor_arguments(tmp_path: Path) -> None:
    with pytest.raises(UnknownEnvironmentError, match="pick_two_obj_and_place") as err:
        ALFWorldEnv("pick_and_toss", games_dir=tmp_path)
    assert "pick_and_toss" in str(err.value)
    with pytest.raises(ConfigError, match="valid_unseen"):
        ALFWorldEnv("pick_and_place", split="test", games_dir=tmp_path)
    with pytest.raises(ConfigError, match="generated"):
        ALFWorldEnv("pick_and_place", source="internet", games_dir=tmp_path)
    with pytest.raises(ConfigError, match="data_dir"):
        ALFWorldEnv("pick_and_place", data_dir=3, games_dir=tmp_path)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- registry


def test_registry_lists_the_six_task_types() -> None:
    assert set(ENVIRONMENTS["alfworld"].variants) == set(TASK_TYPES)


@pytest.mark.slow
def test_registry_shorthand_takes_alfred_names(games_dir: Path, generated) -> None:
    # ALFRED's own task names work in the shorthand too, and name the same certified game
    env = make_env("alfworld:pick_cool_then_place_in_recep", games_dir=games_dir, source="generated")
    try:
        assert isinstance(env, ALFWorldEnv) and env.task_type == "pick_cool_then_place"
        assert env.game_path == generated[("pick_cool_then_place", 0)].game_path
    finally:
        env.close()
