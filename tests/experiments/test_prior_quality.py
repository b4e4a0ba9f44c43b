"""Prior quality on held-out oracle steps: oracle episodes, ranks, guesses, in-context examples, CLI errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from priorcache.cli import app
from priorcache.envs.registry import game_seeds
from priorcache.errors import ConfigError
from priorcache.experiments.prior_quality import few_shot_examples, measure_prior_quality, oracle_steps
from priorcache.prior.prompts import prompt_builder
from tests.cache._fakes import FakeBackend


@pytest.fixture(scope="module")
def shop_steps():
    return oracle_steps("webshop", "train", 3), oracle_steps("webshop", "eval", 2)


def test_oracle_steps_come_from_the_split_and_are_admissible(shop_steps) -> None:
    train, held_out = shop_steps
    assert {s.game_seed for s in held_out} == set(game_seeds("webshop", "eval", 2))
    assert {s.game_seed for s in train}.isdisjoint({s.game_seed for s in held_out})
    assert all(s.action in s.candidates for s in train + held_out)


def _backend_knowing(steps, oracle_score: float, other_score: float) -> FakeBackend:
    """Scores the oracle action of each state with ``oracle_score`` and everything else with ``other_score``."""
    build = prompt_builder("webshop")
    oracle = {build(s.objective, s.state_text).text: s.action for s in steps}
    return FakeBackend(lambda prompt, action: oracle_score if oracle[prompt.text] == action else other_score)


def test_a_prior_that_knows_the_oracle_ranks_it_first_and_one_that_hates_it_last(shop_steps) -> None:
    train, held_out = shop_steps
    best = measure_prior_quality("webshop", _backend_knowing(held_out, 0.0, -5.0), train, held_out)
    assert (
        best["prior"]["top1"] == 1.0 and best["prior"]["mean_rank"] == 1.0 and best["prior"]["steps"] == len(held_out)
    )
    worst = measure_prior_quality("webshop", _backend_knowing(held_out, -9.0, -1.0), train, held_out)
    assert worst["prior"]["top1"] == 0.0
    assert worst["prior"]["mean_rank"] == pytest.approx(sum(len(s.candidates) for s in held_out) / len(held_out))


def test_a_prior_that_cannot_tell_actions_apart_earns_no_credit(shop_steps) -> None:
    train, held_out = shop_steps
    flat = measure_prior_quality("webshop", FakeBackend(lambda p, a: -1.0), train, held_out)
    assert flat["prior"]["top1"] == 0.0 or all(len(s.candidates) == 1 for s in held_out)
    assert 0.0 <= flat["guess_most_frequent_action_top1"] <= 1.0
    assert 0.0 < flat["uniform_top1"] <= 1.0
    assert 0.0 <= flat["unseen_action_share"] <= 1.0


def test_few_shot_examples_come_from_the_first_training_games_and_are_thinned(shop_steps) -> None:
    train, _ = shop_steps
    first = [(s.state_text, s.action) for s in train if s.game_seed == game_seeds("webshop", "train", 1)[0]]
    assert few_shot_examples(train, 1, 100) == first
    assert few_shot_examples(train, 0, 10) == []
    thinned = few_shot_examples(train, 3, 4)
    assert len(thinned) == 4 and thinned[0] == (train[0].state_text, train[0].action)
    with pytest.raises(ConfigError, match="only 3 training games"):
        few_shot_examples(train, 4, 10)


def test_the_cli_refuses_bad_input_with_exit_code_2() -> None:
    result = CliRunner().invoke(app, ["prior-quality", "nowhere"])
    assert result.exit_code == 2 and "unknown environment" in result.output


@pytest.mark.parametrize("env", ["webshop", "babyai"])
def test_off_path_states_are_labelled_by_the_reactive_oracle_on_training_games_only(env) -> None:
    from priorcache.experiments.adapt import lora_pairs
    from priorcache.experiments.prior_quality import off_path_steps

    demos = oracle_steps(env, "train", 2)
    off = off_path_steps(env, demos, detours=2, depth=3, seed=0)
    assert off and off == off_path_steps(env, demos, detours=2, depth=3, seed=0)  # deterministic
    assert {s.game_seed for s in off} <= {s.game_seed for s in demos}
    on_path = {(s.objective, s.state_text) for s in demos}
    assert all((s.objective, s.state_text) not in on_path for s in off)
    assert len({(s.objective, s.state_text) for s in off}) == len(off)
    assert all(s.action in s.candidates for s in off)
    if env == "webshop":
        assert any(s.action == "click[< prev]" for s in off)  # the way back after a detour
    with pytest.raises(ConfigError, match="detours"):
        off_path_steps(env, demos, detours=-1)
    plain = lora_pairs(env, demos, 2, detours=0)
    more = lora_pairs(env, demos, 2, detours=2, depth=3)
    assert len(plain) == len(demos) and more[: len(plain)] == plain and len(more) == len(plain) + len(off)
    assert all(a in c for _, a, c in more)
