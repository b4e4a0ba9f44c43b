"""TextWorldEnv, tested on real generated TextWorld games.

Games are generated once per test session into a pytest temp folder (never the user's cache).
Tests that play real games are marked ``slow`` (the project's marker for real environments);
the settings tests run without generating anything. The contract every environment keeps
(info keys, step guards, truncation, spaces, seeding, constructor checks, registry shorthand)
is tested in test_contract.py.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from priorcache.envs import textworld_env as tw_env
from priorcache.envs.registry import ENVIRONMENTS
from priorcache.envs.textworld_env import (
    CHALLENGES,
    DEFAULT_SETTINGS,
    TextWorldEnv,
    default_games_dir,
    describe_state,
    ensure_game,
    resolve_settings,
)
from priorcache.errors import ConfigError, UnknownEnvironmentError

OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}


@pytest.fixture(scope="session")
def games_dir(textworld_games_dir: Path) -> Path:
    return textworld_games_dir


@pytest.fixture(scope="session")
def generated(games_dir: Path) -> dict[str, Path]:
    """Generate the default game of every challenge once; map challenge -> game folder."""
    return {ch: ensure_game(ch, None, 0, games_dir).folder for ch in CHALLENGES}


def _make(challenge: str, games_dir: Path, **kwargs) -> TextWorldEnv:
    return TextWorldEnv(challenge=challenge, game_seed=0, games_dir=games_dir, **kwargs)


# --------------------------------------------------------------------------- playing real games


@pytest.mark.slow
@pytest.mark.parametrize("challenge", list(CHALLENGES))
def test_walkthrough_wins_with_per_step_rewards_and_distinct_states(
    challenge: str, games_dir: Path, generated: dict[str, Path]
) -> None:
    env = _make(challenge, games_dir, max_episode_steps=100)
    try:
        obs, info = env.reset(seed=0)
        assert isinstance(obs, str) and obs
        assert env.observation_space.contains(obs)
        assert info["score"] == 0 and not info["won"] and not info["lost"]
        assert info["max_score"] == env.max_score > 0
        assert info["objective"]
        assert len(env.walkthrough) >= 1
        texts = [info["state_text"]]
        rewards = []
        terminated = truncated = False
        for i, command in enumerate(env.walkthrough):
            assert not terminated, f"game ended before walkthrough step {i}"
            assert command in info["admissible_actions"]
            assert info["admissible_actions"] == sorted(info["admissible_actions"])
            obs, reward, terminated, truncated, info = env.step(command)
            rewards.append(reward)
            texts.append(info["state_text"])
        assert terminated and not truncated
        assert info["won"] and not info["lost"]
        assert sum(rewards) == info["score"] == info["max_score"]
        assert all(r >= 0 for r in rewards)
        # Every state the walkthrough visits is a different game state, so a different text.
        assert len(set(texts)) == len(texts), texts
        with pytest.raises(ConfigError, match="reset"):
            env.step("look")
    finally:
        env.close()


@pytest.mark.slow
def test_reward_is_the_score_difference_not_the_running_total(games_dir: Path, generated: dict[str, Path]) -> None:
    # tw-simple with dense rewards scores on most walkthrough steps, so a cumulative reward
    # would show up as a step reward above 1.
    env = _make("tw-simple", games_dir)
    try:
        _, info = env.reset()
        scores, rewards = [info["score"]], []
        for command in env.walkthrough:
            _, reward, _, _, info = env.step(command)
            scores.append(info["score"])
            rewards.append(reward)
        assert rewards == [float(b - a) for a, b in zip(scores, scores[1:])]
        assert max(scores) >= 3 and max(rewards) == 1.0
    finally:
        env.close()


@pytest.mark.slow
def test_loss_terminates(games_dir: Path, generated: dict[str, Path]) -> None:
    # In Treasure Hunter taking the wrong object loses; a seeded random admissible walk finds one.
    env = _make("tw-treasure_hunter", games_dir, max_episode_steps=30)
    rng = random.Random(0)
    try:
        for _ in range(40):
            _, info = env.reset()
            terminated = truncated = False
            while not (terminated or truncated):
                action = rng.choice(info["admissible_actions"])
                before = info["state_text"]
                _, reward, terminated, truncated, info = env.step(action)
            if info["lost"]:
                assert terminated and not truncated and not info["won"]
                assert reward == 0.0
                # after a loss the interpreter stops answering; the text still marks the outcome
                assert info["state_text"] != before and "you lost" in info["state_text"]
                return
        pytest.fail("no loss found in 40 random episodes")
    finally:
        env.close()


@pytest.mark.slow
def test_nonsense_and_inadmissible_actions_give_game_feedback(games_dir: Path, generated: dict[str, Path]) -> None:
    env = _make("tw-cooking", games_dir)
    try:
        _, info = env.reset()
        start_text = info["state_text"]
        for action in ["xyzzy plugh", "eat the moon", "take 🪙", "go   nowhere", "look\ninventory"]:
            assert action not in info["admissible_actions"]
            obs, reward, terminated, truncated, info = env.step(action)
            assert isinstance(obs, str) and obs.strip(), action
            assert reward == 0.0 and not terminated and not truncated
            assert info["state_text"] == start_text, action
        assert "not a verb" in env.step("xyzzy")[0]
        # interpreter meta commands would leave the game waiting for yes/no or write files
        for meta in ["quit", "restart", "save", "script"]:
            obs, reward, terminated, _, info = env.step(meta)
            assert "disabled" in obs and not terminated and info["state_text"] == start_text
        # ... and the game still plays normally afterwards
        _, _, _, _, info = env.step(env.walkthrough[0])
        assert info["state_text"] != start_text
        with pytest.raises(ConfigError, match="empty"):
            env.step("   ")
    finally:
        env.close()


@pytest.mark.slow
def test_state_text_is_markov(games_dir: Path, generated: dict[str, Path]) -> None:
    env = _make("tw-coin_collector", games_dir)
    try:
        _, info = env.reset()
        start = info["state_text"]
        assert "You are carrying" in start and "-=" in start
        assert "\n" not in start and "  " not in start
        # actions that do not change the state change the feedback, not the text
        for action in ["look", "inventory", "xyzzy"]:
            obs, _, _, _, info = env.step(action)
            assert info["state_text"] == start
        assert "recognise" in obs and "recognise" not in info["state_text"]
        # a move and its reverse come back to the same text
        move = next(a for a in info["admissible_actions"] if a.startswith("go "))
        _, _, _, _, moved = env.step(move)
        assert moved["state_text"] != start
        back = "go " + OPPOSITE[move.split()[1]]
        assert back in moved["admissible_actions"]
        _, _, _, _, info = env.step(back)
        assert info["state_text"] == start
        # a new episode replays to the same texts
        first = [env.reset()[1]["state_text"]] + [env.step(a)[4]["state_text"] for a in env.walkthrough]
        second = [env.reset()[1]["state_text"]] + [env.step(a)[4]["state_text"] for a in env.walkthrough]
        assert first == second
    finally:
        env.close()


@pytest.mark.slow
def test_state_text_separates_locked_from_closed(games_dir: Path, generated: dict[str, Path]) -> None:
    # tw-simple starts behind a locked door; the game prints it as "a closed ... door" whether
    # locked or not, so φ(s) must say which, or unlocking would not change the state text.
    import textworld

    env = _make("tw-simple", games_dir)
    facts_env = tw_env._start(env.game_path, textworld.EnvInfos(facts=True))
    try:
        _, info = env.reset()
        state = facts_env.reset()
        seen: dict[frozenset[str], str] = {}
        for command in (None, *env.walkthrough):
            if command is not None:
                info = env.step(command)[4]
                state = facts_env.step(command)[0]
            facts = frozenset(str(f) for f in state["facts"])
            seen[facts] = info["state_text"]
        # different world states along the walkthrough <-> different texts
        assert len(set(seen.values())) == len(seen)
        assert any("is locked." in text for text in seen.values())
        unlock = next(c for c in env.walkthrough if c.startswith("unlock"))
        door = unlock.split(" with ")[0][len("unlock ") :]
        env.reset()
        before = env.step("look")[4]["state_text"]
        for command in env.walkthrough[: env.walkthrough.index(unlock) + 1]:
            info = env.step(command)[4]
        assert f"The {door} is locked." not in info["state_text"]
        assert f"The {door} is locked." in before
    finally:
        facts_env.close()
        env.close()


# --------------------------------------------------------------------------- the on-disk game cache


@pytest.mark.slow
def test_second_env_reuses_the_generated_game(
    games_dir: Path, generated: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = generated["tw-treasure_hunter"]
    game_file = folder / "game.z8"
    mtime = game_file.stat().st_mtime_ns

    def must_not_generate(*args, **kwargs):
        raise AssertionError("game was generated again")

    monkeypatch.setattr(tw_env, "_generate_game", must_not_generate)
    # explicit defaults name the same game as no settings at all
    env = _make("tw-treasure_hunter", games_dir, settings=dict(DEFAULT_SETTINGS["tw-treasure_hunter"]))
    try:
        assert env.game_path == game_file
        assert game_file.stat().st_mtime_ns == mtime
        env.reset()
    finally:
        env.close()
    # a different seed is a different game, so it would have to be generated
    with pytest.raises(AssertionError, match="generated again"):
        TextWorldEnv("tw-treasure_hunter", game_seed=1, games_dir=games_dir)


@pytest.mark.slow
def test_interrupted_generation_leaves_nothing_that_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tw_env._winning_walkthrough

    def crash_after_compiling(game_path: Path, game):
        assert game_path.is_file()  # the game file exists in the temp folder at this point
        raise KeyboardInterrupt("simulated crash mid-generation")

    monkeypatch.setattr(tw_env, "_winning_walkthrough", crash_after_compiling)
    with pytest.raises(KeyboardInterrupt):
        TextWorldEnv("tw-treasure_hunter", games_dir=tmp_path)
    # only the build lock's file stays (io.build_once holds folder_lock, whose file is kept)
    assert [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []

    monkeypatch.setattr(tw_env, "_winning_walkthrough", real)
    env = TextWorldEnv("tw-treasure_hunter", games_dir=tmp_path)
    env.close()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [env.game_path.parent.name]
    assert not env.game_path.parent.name.startswith(".")


@pytest.mark.slow
def test_incomplete_folder_at_the_final_path_is_regenerated(tmp_path: Path) -> None:
    files = ensure_game("tw-treasure_hunter", None, 0, tmp_path)
    (files.folder / "meta.json").unlink()  # e.g. damaged by hand
    again = ensure_game("tw-treasure_hunter", None, 0, tmp_path)
    assert again.folder == files.folder and (again.folder / "meta.json").is_file()
    assert again.walkthrough == files.walkthrough
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [files.folder.name]


def test_default_games_dir_follows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRIORCACHE_CACHE_DIR", str(tmp_path / "pc"))
    assert default_games_dir() == tmp_path / "pc" / "textworld_games"
    monkeypatch.delenv("PRIORCACHE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_games_dir() == tmp_path / "xdg" / "priorcache" / "textworld_games"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_games_dir() == Path.home() / ".cache" / "priorcache" / "textworld_games"


# --------------------------------------------------------------------------- settings and errors


def test_describe_state_normalises_whitespace_and_orders_locks() -> None:
    text = describe_state("-= Hall =-\n\nA  hall.\n", "You are carrying nothing.\n", ["b box", "a door"])
    assert text == ("-= Hall =- A hall. You are carrying nothing. The a door is locked. The b box is locked.")
    assert describe_state("x", "y", outcome="won") == "x y The game is over: you won."


def test_unknown_challenge_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(UnknownEnvironmentError, match="tw-cooking") as err:
        TextWorldEnv("tw-nope", games_dir=tmp_path)
    assert "tw-nope" in str(err.value)


def test_unknown_setting_is_named_with_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(UnknownEnvironmentError, match="'levle'") as err:
        TextWorldEnv("tw-coin_collector", settings={"levle": 3}, games_dir=tmp_path)
    assert "level" in str(err.value).split("valid settings:")[1]
    with pytest.raises(UnknownEnvironmentError, match="'rewards'.*dense"):
        resolve_settings("tw-simple", {"rewards": "lots"})
    with pytest.raises(UnknownEnvironmentError, match="'recipe'.*int"):
        resolve_settings("tw-cooking", {"recipe": "2"})
    with pytest.raises(UnknownEnvironmentError, match="'open'.*bool"):
        resolve_settings("tw-cooking", {"open": 1})
    assert list(tmp_path.iterdir()) == []


def test_settings_merge_over_defaults() -> None:
    merged = resolve_settings("tw-cooking", {"recipe": 2, "take": 2})
    assert merged["recipe"] == 2 and merged["take"] == 2 and merged["cook"] is True
    assert resolve_settings("tw-simple") == {"rewards": "dense", "goal": "detailed", "test": False}
    # numpy integers are integers; they come back as plain ints, which the game key's JSON needs
    recipe = resolve_settings("tw-cooking", {"recipe": np.int64(2)})["recipe"]
    assert recipe == 2 and type(recipe) is int


@pytest.mark.slow
def test_settings_rejected_by_textworld_are_reported(tmp_path: Path) -> None:
    with pytest.raises(UnknownEnvironmentError, match="level"):
        TextWorldEnv("tw-treasure_hunter", settings={"level": 99}, games_dir=tmp_path)
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]


# --------------------------------------------------------------------------- registry


def test_registry_lists_the_challenges() -> None:
    info = ENVIRONMENTS["textworld"]
    assert "textworld" in info.requires
    assert set(info.variants) == set(CHALLENGES)
