"""The contract every registered environment keeps, tested once per family of the registry.

Each test runs for every family in ``ENVIRONMENTS``, built through ``make_env`` with the cheap
settings in ``CHEAP`` (a small game, the variant the family's own tests already build). TextWorld and
ALFWorld need their engines and generated games, so their cases are marked ``slow``; the argument
and registry checks fail before any engine starts, so they run for every family in the fast pass.
What only one family does (its rewards, its feedback, its state text) stays in its own test file.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import pytest

from priorcache.envs.base import TextEnv
from priorcache.envs.registry import ENVIRONMENTS, make_env
from priorcache.errors import ConfigError, UnknownEnvironmentError

#: What every info dict holds.
INFO_KEYS = frozenset({"state_text", "admissible_actions", "won", "lost", "objective", "score", "max_score"})
# No family knows this action: it costs a step and changes neither the state nor the score.
NONSENSE = "xyzzy"


class Cheap(NamedTuple):
    """How the contract tests build one family cheaply."""

    #: The variant built by ``make()`` (as "family:variant"); None for a family without variants.
    variant: str | None
    #: Further constructor keywords.
    kwargs: Mapping[str, Any]
    #: The session fixture with the folder its generated games go to (None: nothing on disk).
    games_dir_fixture: str | None
    #: Whether building it starts a real game engine (its engine tests are then slow).
    slow: bool


CHEAP: Mapping[str, Cheap] = MappingProxyType(
    {
        "textworld": Cheap("tw-coin_collector", MappingProxyType({}), "textworld_games_dir", slow=True),
        "alfworld": Cheap("pick_and_place", MappingProxyType({"source": "generated"}), "alfworld_games_dir", slow=True),
        "babyai": Cheap("GoToLocal", MappingProxyType({}), None, slow=False),
        "webshop": Cheap(None, MappingProxyType({}), None, slow=False),
    }
)


def _params(*, engine: bool, only_with_variants: bool = False) -> list[Any]:
    """The registry's families as test parameters; ``engine`` marks the engine families slow."""
    return [
        pytest.param(name, id=name, marks=pytest.mark.slow if engine and CHEAP[name].slow else ())
        for name, info in ENVIRONMENTS.items()
        if name in CHEAP and (info.variants or not only_with_variants)
    ]


FAMILIES = _params(engine=False)
ENGINES = _params(engine=True)
ENGINES_WITH_VARIANTS = _params(engine=True, only_with_variants=True)


def _entry_class(family: str) -> type:
    module, _, attribute = ENVIRONMENTS[family].entry_point.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _no_engine_kwargs(family: str, tmp_path: Path) -> dict[str, Any]:
    """Cheap keywords with games sent to ``tmp_path``, for calls that must fail before generating."""
    cheap = CHEAP[family]
    return {**cheap.kwargs, **({"games_dir": tmp_path} if cheap.games_dir_fixture else {})}


@pytest.fixture
def make(family: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., TextEnv]]:
    """``make(name=None, **overrides)``: the family's environment through ``make_env`` (by default
    ``"family:variant"`` with the cheap settings), closed when the test ends."""
    cheap = CHEAP[family]
    built: list[TextEnv] = []

    def build(name: str | None = None, **overrides: Any) -> TextEnv:
        if name is None:
            name = f"{family}:{cheap.variant}" if cheap.variant else family
        kwargs = {**cheap.kwargs, **overrides}
        if cheap.games_dir_fixture:
            kwargs.setdefault("games_dir", request.getfixturevalue(cheap.games_dir_fixture))
        env = make_env(name, **kwargs)
        built.append(env)
        return env

    yield build
    for env in built:
        env.close()


def _check_observation(env: TextEnv, obs: Any) -> None:
    assert isinstance(obs, str) and obs.strip()
    assert env.observation_space.contains(obs)


def _check_info(env: TextEnv, info: Any) -> None:
    assert isinstance(info, dict) and set(info) >= INFO_KEYS, sorted(info)
    text = info["state_text"]
    # One line, single spaces: equal states must give equal texts, whatever the engine printed.
    assert isinstance(text, str) and text and "\n" not in text and "  " not in text
    actions = info["admissible_actions"]
    assert isinstance(actions, list) and actions == sorted(set(actions))
    assert all(isinstance(a, str) and a and a == a.strip() for a in actions)
    assert isinstance(info["won"], bool) and isinstance(info["lost"], bool)
    assert not (info["won"] and info["lost"])
    assert isinstance(info["objective"], str) and info["objective"]
    assert info["max_score"] == env.max_score


# --------------------------------------------------------------------------- the registry


def test_contract_settings_cover_the_registry() -> None:
    # A new text family must say here how to build it cheaply, or it would escape every contract test
    # (control families keep their own contract: tests/envs/test_control_envs.py).
    assert set(CHEAP) == {name for name, info in ENVIRONMENTS.items() if info.kind == "text"}


@pytest.mark.parametrize("family", FAMILIES)
def test_registry_facts_are_consistent(family: str) -> None:
    info, cheap = ENVIRONMENTS[family], CHEAP[family]
    assert info.description and info.requires
    cls = _entry_class(family)
    assert issubclass(cls, TextEnv)
    params = inspect.signature(cls).parameters
    assert {"game_seed", "max_episode_steps"} <= set(params)
    if info.variants:
        assert info.variant_kwarg in params and cheap.variant in info.variants
    else:
        assert info.variant_kwarg is None and cheap.variant is None
    assert info.prompt_template  # its existence is checked in tests/prior/test_prompts_registry.py


def test_unknown_family_lists_the_choices() -> None:
    with pytest.raises(UnknownEnvironmentError) as err:
        make_env("textwrld")
    assert "textwrld" in str(err.value) and all(name in str(err.value) for name in ENVIRONMENTS)
    for bad in ["", "   ", 3]:
        with pytest.raises(UnknownEnvironmentError):
            make_env(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("family", FAMILIES)
def test_variant_errors_name_the_choices(family: str, tmp_path: Path) -> None:
    info, kwargs = ENVIRONMENTS[family], _no_engine_kwargs(family, tmp_path)
    if not info.variants:
        with pytest.raises(UnknownEnvironmentError, match="no variants"):
            make_env(f"{family}:shoes", **kwargs)
        return
    with pytest.raises(UnknownEnvironmentError) as err:
        make_env(f"{family}:no-such-variant", **kwargs)
    assert "no-such-variant" in str(err.value)
    assert all(variant in str(err.value) for variant in info.variants), str(err.value)
    with pytest.raises(UnknownEnvironmentError, match="empty variant"):
        make_env(f"{family}:", **kwargs)
    first, second = info.variants[:2]
    with pytest.raises(ConfigError, match=f"{info.variant_kwarg}={second!r} was also given"):
        make_env(f"{family}:{first}", **{info.variant_kwarg: second}, **kwargs)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- constructor arguments


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "name, value",
    [
        ("game_seed", -1),
        ("game_seed", 1.0),
        ("game_seed", True),
        ("game_seed", "0"),
        ("max_episode_steps", 0),
        ("max_episode_steps", 2.5),
        ("max_episode_steps", False),
        ("max_episode_steps", "64"),
    ],
)
def test_bad_constructor_arguments(family: str, name: str, value: Any, tmp_path: Path) -> None:
    kwargs = _no_engine_kwargs(family, tmp_path)
    with pytest.raises(ConfigError, match=name):
        make_env(family, **{**kwargs, name: value})
    assert list(tmp_path.iterdir()) == []  # refused before anything was generated


@pytest.mark.parametrize("family", ENGINES)
def test_numpy_integers_are_taken_as_plain_ints(family: str, make: Callable[..., TextEnv]) -> None:
    env = make(game_seed=np.int64(0), max_episode_steps=np.int64(5))
    assert type(env.game_seed) is int and env.game_seed == 0
    assert type(env.max_episode_steps) is int and env.max_episode_steps == 5
    assert env.reset() == make().reset()  # the same game as game_seed=0


# --------------------------------------------------------------------------- the episode protocol


@pytest.mark.parametrize("family", ENGINES)
def test_reset_and_step_keep_the_info_contract(family: str, make: Callable[..., TextEnv]) -> None:
    env = make()
    assert isinstance(env, _entry_class(family))
    with pytest.raises(ConfigError, match=r"episode is over or not started; call reset\(\) first"):
        env.step(NONSENSE)
    obs, info = env.reset()
    _check_observation(env, obs)
    _check_info(env, info)
    assert info["score"] == 0 and not info["won"] and not info["lost"]
    # The objective is told apart from the state: the prior cache keys on the state text alone.
    assert info["objective"] not in info["state_text"]
    with pytest.raises(TypeError, match="actions are strings, got int"):
        env.step(3)  # type: ignore[arg-type]

    result = env.step(NONSENSE)
    assert isinstance(result, tuple) and len(result) == 5
    obs, reward, terminated, truncated, after = result
    _check_observation(env, obs)
    _check_info(env, after)
    assert type(reward) is float and type(terminated) is bool and type(truncated) is bool
    assert reward == 0.0 and not terminated and not truncated
    # the feedback tells the action failed; the state, and so its text, is unchanged
    assert after["state_text"] == info["state_text"] and after["objective"] == info["objective"]


@pytest.mark.parametrize("family", ENGINES)
def test_walkthrough_wins_and_every_episode_replays_it(family: str, make: Callable[..., TextEnv]) -> None:
    env = make()
    walkthrough = list(env.walkthrough)
    assert walkthrough and all(env.action_space.contains(a) for a in walkthrough)
    episodes = []
    for seed in (0, 1):
        obs, info = env.reset(seed=seed)
        seen = [(obs, info["state_text"])]
        terminated = truncated = False
        for i, action in enumerate(walkthrough):
            assert not (terminated or truncated), f"episode ended before walkthrough step {i}"
            assert action in info["admissible_actions"]
            obs, reward, terminated, truncated, info = env.step(action)
            _check_observation(env, obs)
            _check_info(env, info)
            assert reward >= 0.0
            seen.append((obs, info["state_text"]))
        assert terminated and not truncated
        assert info["won"] and not info["lost"] and reward > 0 and info["score"] > 0
        with pytest.raises(ConfigError, match=r"episode is over or not started; call reset\(\) first"):
            env.step(walkthrough[0])
        episodes.append(seen)
    assert episodes[0] == episodes[1]  # same observations and state texts, episode after episode


@pytest.mark.parametrize("family", ENGINES)
def test_truncation_at_max_episode_steps(family: str, make: Callable[..., TextEnv]) -> None:
    env = make(max_episode_steps=3)
    for _ in range(2):  # every reset gives a fresh step budget
        env.reset()
        flags = [env.step(NONSENSE)[1:4] for _ in range(3)]
        assert flags == [(0.0, False, False), (0.0, False, False), (0.0, False, True)]
        with pytest.raises(ConfigError, match=r"call reset\(\) first"):
            env.step(NONSENSE)


@pytest.mark.parametrize("family", ENGINES)
def test_reset_seed_seeds_np_random_only(family: str, make: Callable[..., TextEnv]) -> None:
    a, b = make(), make()
    first = a.reset(seed=3)
    assert b.reset(seed=3) == first
    assert a.np_random.integers(2**31) == b.np_random.integers(2**31)
    # the game is fixed by game_seed, not by the reset seed
    assert a.reset(seed=4) == first == a.reset()


@pytest.mark.parametrize("family", ENGINES)
def test_gymnasium_checker_spaces_and_close(family: str, make: Callable[..., TextEnv]) -> None:
    from gymnasium.utils.env_checker import check_env

    env = make()
    check_env(env, skip_render_check=True)  # it also steps with random strings from the action space
    env.close()
    env.close()  # idempotent
    with pytest.raises(ConfigError, match=f"this {type(env).__name__} is closed; create a new one"):
        env.reset()
    with pytest.raises(ConfigError, match="is closed"):
        env.step(NONSENSE)


@pytest.mark.parametrize("family", ENGINES_WITH_VARIANTS)
def test_registry_shorthand_and_keyword_build_the_same_game(family: str, make: Callable[..., TextEnv]) -> None:
    keyword, variant = ENVIRONMENTS[family].variant_kwarg, CHEAP[family].variant
    a = make()  # "family:variant"
    b = make(family, **{keyword: variant})
    assert type(a) is type(b) is _entry_class(family)
    assert getattr(a, keyword) == getattr(b, keyword) == variant
    assert a.walkthrough == b.walkthrough
    assert a.reset() == b.reset()
