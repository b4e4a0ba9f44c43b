"""``TextEnv.oracle_action()``: the expert's action in the current state, on every registered family.

Following the oracle from ``reset()`` wins each family's game; every family's oracle is reactive
(``oracle_kind``), so it also wins after a few random actions. TextWorld and ALFWorld start real
engines and generate games, so their cases are ``slow``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from priorcache.envs.base import TextEnv
from priorcache.envs.registry import ENVIRONMENTS, make_env
from priorcache.errors import ConfigError

#: Per family: the cheap variant, its constructor keywords, the fixture of its games folder, slow.
CASES: dict[str, tuple[str | None, dict[str, Any], str | None, bool]] = {
    "textworld": ("tw-coin_collector", {}, "textworld_games_dir", True),
    "alfworld": ("pick_and_place", {"source": "generated"}, "alfworld_games_dir", True),
    "babyai": ("GoToLocal", {}, None, False),
    "webshop": (None, {}, None, False),
}


def _params() -> list[Any]:
    return [
        pytest.param(name, id=name, marks=pytest.mark.slow if CASES[name][3] else ())
        for name in ENVIRONMENTS
        if name in CASES
    ]


@pytest.fixture
def make(request: pytest.FixtureRequest) -> Iterator[Any]:
    made: list[TextEnv] = []

    def build(family: str, game_seed: int = 0, **kwargs: Any) -> TextEnv:
        variant, extra, fixture, _ = CASES[family]
        kwargs = {**extra, **kwargs, "game_seed": game_seed}
        if fixture is not None:
            kwargs["games_dir"] = request.getfixturevalue(fixture)
        env = make_env(f"{family}:{variant}" if variant else family, **kwargs)
        made.append(env)
        return env

    yield build
    for env in made:
        env.close()


def _follow(env: TextEnv, info: dict[str, Any], limit: int = 200) -> dict[str, Any]:
    for _ in range(limit):
        action = env.oracle_action()
        assert action in info["admissible_actions"], (action, info["admissible_actions"])
        _, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break
    return info


def test_every_family_is_covered() -> None:
    # Text families only: control tasks have scripted or learned demonstrators (tests/envs/test_control_demos.py).
    assert {name for name, info in ENVIRONMENTS.items() if info.kind == "text"} <= set(CASES)


@pytest.mark.parametrize("family", _params())
def test_oracle_wins_from_reset(family: str, make: Any) -> None:
    for game_seed in (0, 1):
        env = make(family, game_seed)
        assert env.oracle_kind in ("reactive", "open-loop")
        _, info = env.reset()
        assert _follow(env, info)["won"], f"{family} game_seed={game_seed}"
        with pytest.raises(ConfigError, match="episode is over"):
            env.oracle_action()
        # A second episode of the same environment is won again (the oracle's state was reset).
        _, info = env.reset()
        assert _follow(env, info)["won"]


@pytest.mark.parametrize("family", _params())
def test_oracle_is_reactive(family: str, make: Any) -> None:
    env = make(family, 0)
    assert env.oracle_kind == "reactive"
    for trial in range(3):
        rng = random.Random(trial)
        _, info = env.reset()
        ended = False
        for _ in range(2 + trial):
            # Random actions, the oracle asked or not in between.
            if rng.random() < 0.5:
                env.oracle_action()
            _, _, terminated, truncated, info = env.step(rng.choice(info["admissible_actions"]))
            if terminated or truncated:
                ended = True
                break
        if ended:
            continue
        assert _follow(env, info)["won"], f"{family} trial {trial}"


def test_babyai_oracle_matches_the_walkthrough(make: Any) -> None:
    env = make("babyai", 3)
    _, info = env.reset()
    played = []
    while not info["won"]:
        played.append(env.oracle_action())
        assert env.oracle_action() == played[-1]  # asking twice does not move the bot on
        _, _, _, _, info = env.step(played[-1])
    assert tuple(played) == env.walkthrough


def test_babyai_oracle_after_nonsense_and_many_missed_steps(make: Any) -> None:
    env = make("babyai", 2)
    _, info = env.reset()
    for action in ("xyzzy", "turn left", "turn left", "go forward"):
        _, _, terminated, _, info = env.step(action)
    assert _follow(env, info)["won"]


def test_webshop_old_signature(make: Any) -> None:
    env = make("webshop", 0)
    _, info = env.reset()
    assert env.oracle_action(info) == env.oracle_action() == env.walkthrough[0]


class _NoOracle(TextEnv):
    def __init__(self) -> None:
        super().__init__(action_max_length=8)
        self.max_episode_steps = 3

    def _reset(self) -> tuple[str, dict[str, Any]]:
        return "", {}


def test_without_an_oracle_or_an_episode() -> None:
    env = _NoOracle()
    assert env.oracle_kind is None
    with pytest.raises(ConfigError, match="not started"):
        env.oracle_action()
    env.reset()
    with pytest.raises(ConfigError, match="_NoOracle has no oracle"):
        env.oracle_action()
    env.close()
    with pytest.raises(ConfigError, match="closed"):
        env.oracle_action()
