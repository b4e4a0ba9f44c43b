"""Training and held-out evaluation games: disjoint seeds, split settings kept, bad requests refused."""

from __future__ import annotations

import pytest

from priorcache.envs.registry import ENVIRONMENTS, SPLITS, game_seeds, game_split, make_split_env
from priorcache.errors import ConfigError, UnknownEnvironmentError

FAMILIES = sorted(ENVIRONMENTS)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_and_evaluation_games_never_share_a_seed(family: str) -> None:
    train, held_out = game_split(family, "train"), game_split(family, "eval")
    assert set(train.seeds).isdisjoint(held_out.seeds)
    assert held_out.held_out  # every family says how its evaluation games differ
    assert (
        game_seeds(family, "eval", 3)
        == game_seeds(f"{family}:x" if ENVIRONMENTS[family].variants else family, "eval", 3)
        == list(held_out.seeds[:3])
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_a_game_is_refused_outside_its_split(family: str) -> None:
    with pytest.raises(ConfigError, match="must not overlap"):
        make_split_env(family, "eval", game_seeds(family, "train", 1)[0])
    with pytest.raises(ConfigError, match="must not overlap"):
        make_split_env(family, "train", game_seeds(family, "eval", 1)[0])


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("babyai", "test", 1), ConfigError),
        (("babyai", "eval", 0), ConfigError),
        (("babyai", "train", 10**7), ConfigError),
        (("nowhere", "eval", 1), UnknownEnvironmentError),
    ],
)
def test_bad_split_requests_are_refused(args, error) -> None:
    with pytest.raises(error):
        game_seeds(*args)
    assert set(SPLITS) == {"train", "eval"}


def test_alfworld_evaluation_games_use_unseen_floorplans_and_cannot_be_moved_back() -> None:
    assert dict(game_split("alfworld", "eval").kwargs) == {"split": "valid_unseen"}
    with pytest.raises(ConfigError, match="undo"):
        make_split_env("alfworld", "eval", game_seeds("alfworld", "eval", 1)[0], split="train")


@pytest.mark.parametrize("family", ["babyai", "webshop"])
def test_evaluation_games_are_other_games(family: str) -> None:
    def objective(split: str) -> str:
        env = make_split_env(family, split, game_seeds(family, split, 1)[0])
        try:
            return env.reset(seed=0)[1]["objective"]
        finally:
            env.close()

    assert objective("train") != objective("eval")


@pytest.mark.slow
def test_an_alfworld_evaluation_game_is_built_from_unseen_floorplans(tmp_path) -> None:
    env = make_split_env("alfworld", "eval", game_seeds("alfworld", "eval", 1)[0], games_dir=tmp_path)
    try:
        _, info = env.reset(seed=0)
        assert info["admissible_actions"] and "valid_unseen" in env.source + str(getattr(env, "split", ""))
    finally:
        env.close()


def test_every_family_has_a_training_budget_that_run_and_bench_default_to(tmp_path):
    from priorcache.envs.registry import default_episodes
    from priorcache.experiments.bench import BenchConfig

    assert default_episodes("babyai") == ENVIRONMENTS["babyai"].default_episodes == 40
    assert default_episodes("textworld:tw-cooking") == ENVIRONMENTS["textworld"].default_episodes
    with pytest.raises(ConfigError, match="environment steps"):
        default_episodes("mujoco:ant")
    with pytest.raises(UnknownEnvironmentError, match="unknown environment 'chess'"):
        default_episodes("chess")
    bench = BenchConfig(out=tmp_path, envs=["babyai", "webshop"], methods=["dqn", "direct-llm"])
    assert bench.run_config("babyai", "dqn", 0).episodes == 40
    assert bench.run_config("webshop", "dqn", 0).episodes == ENVIRONMENTS["webshop"].default_episodes
    assert bench.run_config("webshop", "direct-llm", 0).episodes == 1  # deterministic: one episode is all
    assert (
        BenchConfig(out=tmp_path, envs=["babyai"], methods=["dqn"], episodes=7).run_config("babyai", "dqn", 0).episodes
        == 7
    )
