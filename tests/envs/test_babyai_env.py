"""BabyAIEnv on real minigrid levels: text view, actions, fixed instances, BabyAIBot oracle.

Level generation and the bot take milliseconds, so nothing here is marked slow. The contract every
environment keeps (info keys, step guards, truncation, spaces, seeding, constructor checks,
registry shorthand) is tested in test_contract.py.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from priorcache.envs.babyai_env import (
    ACTIONS,
    ADMISSIBLE_ACTIONS,
    LEVELS,
    BabyAIEnv,
    babyai_levels,
    describe_view,
    relative_position,
    resolve_level,
)
from priorcache.envs.registry import ENVIRONMENTS, make_env
from priorcache.errors import ConfigError, UnknownEnvironmentError

FEATURED = ("GoToLocal", "PickupLoc", "PutNextLocal", "GoTo")


def _layout(env: BabyAIEnv) -> tuple:
    """Everything that makes a level instance: grid, agent pose, mission."""
    engine = env._engine
    return (
        engine.grid.encode().tobytes(),
        tuple(int(v) for v in engine.agent_pos),
        int(engine.agent_dir),
        env.mission,
    )


def _play(env: BabyAIEnv, actions) -> tuple[list[str], list[tuple]]:
    _, info = env.reset()
    texts, steps = [info["state_text"]], []
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        texts.append(info["state_text"])
        steps.append((obs, reward, terminated, truncated, info))
    return texts, steps


# --------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("level", FEATURED)
@pytest.mark.parametrize("game_seed", [0, 1, 2, 3, 4])
def test_babyai_bot_walkthrough_wins(level: str, game_seed: int) -> None:
    env = BabyAIEnv(level, game_seed=game_seed, max_episode_steps=500)
    try:
        walkthrough = env.walkthrough
        assert walkthrough and all(a in ADMISSIBLE_ACTIONS for a in walkthrough)
        assert env.oracle_actions() == list(walkthrough)  # deterministic
        obs, info = env.reset(seed=123)
        assert obs.startswith(f"Your mission: {env.mission}. ")
        assert info["objective"] == env.mission and env.mission not in info["state_text"]
        assert not info["won"] and not info["lost"] and info["score"] == 0.0
        for i, action in enumerate(walkthrough):
            assert info["admissible_actions"] == list(ADMISSIBLE_ACTIONS)
            obs, reward, terminated, truncated, info = env.step(action)
            assert terminated == (i == len(walkthrough) - 1), f"ended at step {i}"
            assert not truncated and info["objective"] == env.mission
        assert info["won"] and not info["lost"]
        budget = max(env.level_max_steps, env.max_episode_steps)
        assert reward == pytest.approx(1 - 0.9 * len(walkthrough) / budget)
        assert info["score"] == reward and info["max_score"] == 1.0
        assert info["state_text"].endswith("The mission is complete.")
        with pytest.raises(ConfigError, match="reset"):
            env.step("turn left")
    finally:
        env.close()


def test_featured_level_budgets_and_default_episode_length() -> None:
    budgets = {"GoToLocal": 64, "PickupLoc": 64, "PutNextLocal": 128, "GoTo": 576}
    for level, budget in budgets.items():
        env = BabyAIEnv(level)
        assert env.level_max_steps == budget and env.max_episode_steps == budget
        env.close()


def test_oracle_failure_is_reported() -> None:
    # minigrid documents that its bot cannot solve KeyInBox (the key is hidden in a box).
    env = BabyAIEnv("KeyInBox", game_seed=0)
    try:
        with pytest.raises(UnknownEnvironmentError, match="BabyAIBot cannot solve"):
            env.oracle_actions()
    finally:
        env.close()


# --------------------------------------------------------------------------- fixed instances


def test_same_game_seed_is_the_same_instance_every_episode() -> None:
    a, b = BabyAIEnv("PutNextLocal", game_seed=7), BabyAIEnv("PutNextLocal", game_seed=7)
    try:
        assert a.reset()[0] == b.reset(seed=99)[0]
        assert _layout(a) == _layout(b)
        first = _play(a, a.walkthrough)[0]
        # moving objects around in one episode does not leak into the next
        assert _play(a, a.walkthrough)[0] == first
        assert _play(b, a.walkthrough)[0] == first
        assert _layout(a) == _layout(b)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("level", FEATURED)
def test_different_game_seeds_are_different_instances(level: str) -> None:
    layouts = set()
    for seed in range(6):
        env = BabyAIEnv(level, game_seed=seed)
        env.reset()
        layouts.add(_layout(env))
        env.close()
    assert len(layouts) == 6


def test_generation_chatter_stays_off_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    # minigrid prints "Sampling rejected: ..." while generating these instances.
    for seed in range(5):
        env = BabyAIEnv("GoTo", game_seed=seed)
        env.reset()
        env.oracle_actions()
        env.close()
    assert capsys.readouterr().out == ""


# --------------------------------------------------------------------------- actions and feedback


def test_invalid_actions_get_feedback_and_cost_a_step() -> None:
    env = BabyAIEnv("GoToLocal", game_seed=0, max_episode_steps=5)
    try:
        _, info = env.reset()
        start = info["state_text"]
        for action in ["xyzzy", "", "go north", "done", "pick up\ndrop"]:
            obs, reward, terminated, truncated, info = env.step(action)
            assert obs.startswith("Nothing happens") and obs.endswith(start)
            assert reward == 0.0 and not terminated
            assert info["state_text"] == start and not info["won"]
        assert truncated  # five invalid actions used up the five steps
        with pytest.raises(ConfigError, match="reset"):
            env.step("turn left")
        env.reset()
        # case, spacing and minigrid's own action names are accepted
        assert env.step("  Turn   LEFT ")[0].startswith("You turn left.")
        assert env.step("right")[0].startswith("You turn right.")
    finally:
        env.close()


def test_blocked_moves_and_useless_actions_are_explained() -> None:
    # PickupLoc succeeds only on a pick-up, so walking around cannot end the episode.
    env = BabyAIEnv("PickupLoc", game_seed=0)
    engine = env._engine
    try:
        env.reset()
        for x in range(1, 7):  # an empty room
            for y in range(1, 7):
                engine.grid.set(x, y, None)
        obs = env.step("pick up")[0]
        assert obs.startswith("There is nothing in front of you to pick up.")
        assert env.step("drop")[0].startswith("You carry nothing to drop.")
        assert env.step("toggle")[0].startswith("Nothing happens")
        # walk until a wall stops the agent; the view stops changing
        for _ in range(10):
            obs, _, terminated, _, info = env.step("go forward")
            assert not terminated
            if obs.startswith("You cannot go forward"):
                break
        assert obs.startswith("You cannot go forward: the wall is in the way.")
        assert "a wall 1 step forward" in info["state_text"]
        assert env.step("go forward")[4]["state_text"] == info["state_text"]
        assert env.step("pick up")[0].startswith("You cannot pick up the wall.")
    finally:
        env.close()


def test_pick_up_and_drop_change_what_is_carried() -> None:
    from minigrid.core.world_object import Ball

    env = BabyAIEnv("PickupLoc", game_seed=0)
    try:
        texts, steps = _play(env, env.walkthrough)  # ends with "pick up"
        assert texts[0].endswith("You carry nothing.")
        obs, _, terminated, _, info = steps[-1]
        assert terminated and info["won"] and obs.startswith("You pick up the ")
        carried = obs.split(".")[0][len("You pick up the ") :]
        assert f"You carry a {carried}." in info["state_text"]

        env.reset()
        for action in env.walkthrough[:-1]:
            env.step(action)
        env._engine.instrs.desc.obj_set = []  # keep the episode going past the pickup
        env.step("pick up")
        obs, _, _, _, info = env.step("drop")
        assert obs.startswith(f"You drop the {carried}.")
        assert info["state_text"].endswith("You carry nothing.")
        assert f"a {carried} 1 step forward" in info["state_text"]
        assert env.step("pick up")[0].startswith(f"You pick up the {carried}.")
        env._engine.grid.set(*env._engine.front_pos, Ball("blue"))
        obs, _, _, _, info = env.step("pick up")
        assert obs.startswith(f"You already carry the {carried}; drop it first.")
        assert "a blue ball 1 step forward" in info["state_text"]
        obs = env.step("drop")[0]
        assert obs.startswith(f"You cannot drop the {carried} here: the blue ball is in front")
    finally:
        env.close()


def test_doors_open_close_and_unlock() -> None:
    # UnlockLocal: fetch the key, then toggle the locked door; given by its full gymnasium id.
    env = BabyAIEnv("BabyAI-UnlockLocal-v0", game_seed=0)
    try:
        assert env.level == "UnlockLocal"
        texts, steps = _play(env, env.walkthrough)
        assert any("locked" in t and "door" in t for t in texts)
        obs, _, terminated, _, info = steps[-1]
        assert terminated and info["won"]
        assert obs.startswith("You unlock the ") and "door" in obs
        color = obs.split()[3]
        assert f"an open {color} door 1 step forward" in info["state_text"]
    finally:
        env.close()

    env = BabyAIEnv("GoTo", game_seed=0, max_episode_steps=300)
    try:
        texts, steps = _play(env, env.walkthrough)
        opened = [i for i, s in enumerate(steps) if s[0].startswith("You open the ")]
        assert opened, "the bot opens at least one closed door in this maze"
        i = opened[0]
        color = steps[i][0].split()[3]
        assert f"a closed {color} door 1 step forward" in texts[i]
        assert f"an open {color} door 1 step forward" in texts[i + 1]
        # toggling again closes it, and the view text goes back to what it was
        env.reset()
        for action in env.walkthrough[: i + 1]:
            env.step(action)
        obs, _, _, _, info = env.step("toggle")
        assert obs.startswith(f"You close the {color} door.")
        assert info["state_text"] == texts[i]
    finally:
        env.close()


def test_strict_level_failure_is_a_loss() -> None:
    # PickupDistDebug is strict: picking up a wrong object fails the mission.
    rng = random.Random(0)
    for seed in range(10):
        env = BabyAIEnv("PickupDistDebug", game_seed=seed)
        try:
            for _ in range(20):
                _, info = env.reset()
                done = False
                while not done:
                    _, reward, terminated, truncated, info = env.step(rng.choice(info["admissible_actions"]))
                    done = terminated or truncated
                if info["lost"]:
                    assert terminated and reward == 0.0 and not info["won"]
                    assert info["state_text"].endswith("The mission has failed.")
                    return
        finally:
            env.close()
    pytest.fail("no strict failure found")


def test_minigrid_budget_never_cuts_a_longer_episode() -> None:
    env = BabyAIEnv("GoToLocal", game_seed=0, max_episode_steps=100)
    try:
        assert env.level_max_steps == 64
        env.reset()
        for _ in range(70):
            _, reward, terminated, truncated, _ = env.step("wait")
            assert not terminated and not truncated
        for action in env.walkthrough:
            _, reward, terminated, truncated, info = env.step(action)
        assert terminated and info["won"]
        assert reward == pytest.approx(1 - 0.9 * (70 + len(env.walkthrough)) / 100)
    finally:
        env.close()


# --------------------------------------------------------------------------- state text


def test_state_text_is_markov_and_deterministic() -> None:
    env = BabyAIEnv("GoToLocal", game_seed=3)
    try:
        _, info = env.reset()
        start = info["state_text"]
        assert "\n" not in start and "  " not in start
        assert start.startswith("Target: the red key, 3 steps forward and 2 steps right. You face ")
        assert "You carry nothing." in start
        texts = [env.step("turn left")[4]["state_text"] for _ in range(4)]
        assert texts[-1] == start and len(set(texts)) == 4  # four headings, back to the start
        assert env.step("turn right")[4]["state_text"] == texts[2]
        assert env.step("turn left")[4]["state_text"] == start
        assert env.step("xyzzy")[4]["state_text"] == start  # no step count, no feedback
        # a fresh env object renders the same text for the same state
        other = BabyAIEnv("GoToLocal", game_seed=3)
        assert other.reset()[1]["state_text"] == start
        other.close()
    finally:
        env.close()


def test_relative_positions_and_occlusion_on_the_real_grid() -> None:
    from minigrid.core.world_object import Door, Key, Wall

    env = BabyAIEnv("GoToLocal", game_seed=0)
    engine = env._engine
    try:
        env.reset()
        for x in range(1, 7):
            for y in range(1, 7):
                engine.grid.set(x, y, None)
        engine.agent_pos, engine.agent_dir = (3, 4), 3  # facing north
        engine.grid.set(2, 2, Key("red"))
        assert env._state_text() == (
            "Target: the green ball, not in view. "  # the mission's ball was cleared away with the rest
            "You face north. You see a wall 4 steps forward, a wall 3 steps left, "
            "a red key 2 steps forward and 1 step left. You carry nothing."
        )
        engine.agent_dir = 0  # east: the key is now 2 steps left and 1 back (out of view)
        assert "red key" not in env._state_text()
        engine.agent_dir = 2  # west: 1 step forward and 2 steps right
        assert "a red key 1 step forward and 2 steps right" in env._state_text()

        engine.agent_dir = 3
        for x in range(1, 7):  # a wall row with a closed door hides the key behind it
            engine.grid.set(x, 3, Wall())
        door = Door("blue", is_open=False)
        engine.grid.set(3, 3, door)
        assert env._state_text() == (
            "Target: the green ball, not in view. "
            "You face north. You see a wall 3 steps left, a closed blue door 1 step forward. You carry nothing."
        )
        door.is_open = True  # an open door lets the agent see through it
        text = env._state_text()
        assert "an open blue door 1 step forward" in text
        assert "a red key 2 steps forward and 1 step left" in text
        assert "a wall 4 steps forward" in text
        door.is_open, door.is_locked = False, True
        assert "a locked blue door 1 step forward" in env._state_text()
    finally:
        env.close()


def test_target_line_tells_where_the_missions_object_is_only_when_seen() -> None:
    from minigrid.core.world_object import Ball, Wall

    env = BabyAIEnv("GoToLocal", game_seed=0)
    engine = env._engine
    try:
        env.reset()
        assert engine.instrs.desc.color == "green" and engine.instrs.desc.type == "ball"
        (target,) = engine.instrs.desc.obj_set
        for x in range(1, 7):
            for y in range(1, 7):
                engine.grid.set(x, y, None)
        engine.agent_pos, engine.agent_dir = (3, 5), 3  # facing north
        engine.grid.set(4, 3, target)
        target.cur_pos = (4, 3)
        engine.grid.set(2, 2, Ball("red"))  # a distractor is listed in the view, never as the target
        text = env._state_text()
        assert text.startswith("Target: the green ball, 2 steps forward and 1 step right. You face north.")
        assert "a red ball 3 steps forward and 1 step left" in text
        engine.agent_dir = 1  # south: behind the agent, out of view
        assert env._state_text().startswith("Target: the green ball, not in view. You face south.")
        engine.agent_dir = 3
        for x in range(1, 7):  # a wall between the agent and the ball hides it
            engine.grid.set(x, 4, Wall())
        assert env._state_text().startswith("Target: the green ball, not in view.")
        for x in range(1, 7):
            engine.grid.set(x, 4, None)
        engine.grid.set(4, 3, None)  # picked up: carried
        engine.carrying, target.cur_pos = target, (-1, -1)
        assert env._state_text().startswith("Target: the green ball, carried. ")
    finally:
        env.close()


def test_describe_view_on_a_hand_made_observation() -> None:
    from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX

    def cell(kind: str, color: str = "red", state: int = 0) -> tuple[int, int, int]:
        return OBJECT_TO_IDX[kind], COLOR_TO_IDX[color], state

    image = np.zeros((7, 7, 3), dtype=np.uint8)  # all unseen
    image[:, 4:] = cell("empty")
    image[3, 4] = cell("wall", "grey")  # 2 steps forward
    image[0, 6] = cell("wall", "grey")  # 3 steps left
    image[5, 6] = cell("ball", "green")  # 2 steps right
    image[6, 6] = cell("wall", "grey")  # 3 steps right
    image[2, 5] = cell("door", "yellow", 2)  # 1 forward, 1 left
    image[4, 5] = cell("box", "purple")  # 1 forward, 1 right
    image[1, 1] = cell("wall")  # unseen cells are never described, walls off-axis neither
    image[3, 6] = cell("key", "blue")  # the agent's cell: what it carries
    text = describe_view(image, direction=1)
    assert text == (
        "You face south. You see a wall 2 steps forward, a wall 3 steps left, "
        "a wall 3 steps right, a locked yellow door 1 step forward and 1 step left, "
        "a purple box 1 step forward and 1 step right, a green ball 2 steps right. "
        "You carry a blue key."
    )
    empty = np.zeros((7, 7, 3), dtype=np.uint8)
    empty[3, 6] = cell("empty")
    assert describe_view(empty) == "You see only empty floor. You carry nothing."
    assert relative_position(1, 0) == "1 step forward"
    assert relative_position(3, -2) == "3 steps forward and 2 steps left"
    with pytest.raises(ConfigError, match="7x7"):
        describe_view(np.zeros((5, 5, 3)))


# --------------------------------------------------------------------------- API and errors


def test_the_six_actions_are_always_admissible() -> None:
    env = BabyAIEnv("PickupLoc", game_seed=2)
    try:
        _, info = env.reset()
        assert info["admissible_actions"] == sorted(ACTIONS) == list(ADMISSIBLE_ACTIONS)
        assert info["level"] == "PickupLoc"
        assert all(env.action_space.contains(a) for a in ADMISSIBLE_ACTIONS)
        for action in ADMISSIBLE_ACTIONS:
            assert env.step(action)[4]["admissible_actions"] == list(ADMISSIBLE_ACTIONS)
    finally:
        env.close()


def test_level_names() -> None:
    levels = babyai_levels()
    assert set(LEVELS) <= set(levels) and len(levels) >= 90
    assert resolve_level("GoToLocal") == ("GoToLocal", "BabyAI-GoToLocal-v0")
    assert resolve_level("BabyAI-GoToLocal-v0") == ("GoToLocal", "BabyAI-GoToLocal-v0")
    assert resolve_level("gotolocal") == ("GoToLocal", "BabyAI-GoToLocal-v0")
    assert resolve_level("GoToObjS6") == ("GoToObjS6", "BabyAI-GoToObjS6-v1")  # only a v1
    env = BabyAIEnv("GoToSeq", game_seed=1)
    assert env.env_id == "BabyAI-GoToSeq-v0" and env.mission
    env.close()
    for bad in ["GoToNowhere", "BabyAI-GoToLocal-v9", "MiniGrid-Empty-5x5-v0", ""]:
        with pytest.raises(UnknownEnvironmentError, match="GoToLocal"):
            BabyAIEnv(bad)
    with pytest.raises(UnknownEnvironmentError):
        BabyAIEnv(3)  # type: ignore[arg-type]


def test_registry_lists_the_featured_levels() -> None:
    assert set(ENVIRONMENTS["babyai"].variants) == set(FEATURED) == set(LEVELS)
    # the shorthand also takes levels that are not featured, and the full gymnasium id
    env = make_env("babyai:BabyAI-UnlockLocal-v0", game_seed=4)
    try:
        assert isinstance(env, BabyAIEnv) and env.level == "UnlockLocal" and env.game_seed == 4
    finally:
        env.close()
