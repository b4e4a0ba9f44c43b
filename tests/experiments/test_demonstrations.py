"""--demo-episodes: a learning agent learns from the oracle's episodes on training games before its own
(DQfD-style replay); the runner records them apart from training success (real shop games, fake LLM
and encoder)."""

from __future__ import annotations

import json

import pytest

from priorcache.agents.dqn import DQNAgent, DQNConfig
from priorcache.cache.prior_cache import CacheConfig
from priorcache.envs.registry import TRAIN_SEEDS, make_split_env
from priorcache.errors import ConfigError
from priorcache.experiments.runner import RunConfig, run_experiment
from tests.cache._fakes import FakeBackend, HashEncoder


def test_a_demonstrated_episode_puts_the_oracles_transitions_in_the_replay_buffer():
    env = make_split_env("webshop", "train", TRAIN_SEEDS[0], max_episode_steps=10)
    oracle_actions = []

    def oracle() -> str:
        oracle_actions.append(env.oracle_action())
        return oracle_actions[-1]

    agent = DQNAgent(DQNConfig(learning_starts=1, batch_size=2), HashEncoder(dim=32))
    taken = []
    outcome = agent.run_episode(env, 0, on_step=lambda d, r: taken.append(d.action), demonstrator=oracle)
    assert outcome.success and taken == oracle_actions and len(taken) >= 2
    assert len(agent.buffer) == len(taken) == agent.step_count
    assert agent.train_time_s > 0  # it learnt from them, one gradient step per transition


def test_a_demonstrated_action_outside_the_candidates_is_refused():
    agent = DQNAgent(DQNConfig(), HashEncoder(dim=32))
    agent.begin_episode("buy a lamp")
    with pytest.raises(ConfigError, match="'fly' is not among the candidates"):
        agent.act_demonstrated("a page", ["search[lamp]", "click[back]"], "fly")


def test_a_run_learns_from_demonstrations_first_and_counts_them_apart(tmp_path):
    config = RunConfig(
        env="webshop",
        agent="dqn-prior",
        cache=CacheConfig(mode="static"),
        episodes=3,
        seeds=[0, 1],
        max_episode_steps=10,
        train_games=3,
        eval_games=1,
        eval_every=3,
        demo_episodes=2,
        out=tmp_path / "run",
    )
    summary = run_experiment(config, backend=FakeBackend(), encoder=HashEncoder(dim=32), progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    demos = [r for r in records if r["demonstration"]]
    assert [(r["seed"], r["episode"], r["game_seed"]) for r in demos] == [
        (s, e, g) for s in (0, 1) for e, g in ((-2, TRAIN_SEEDS[0]), (-1, TRAIN_SEEDS[1]))
    ]
    assert all(r["success"] for r in demos)
    assert [r["episode"] for r in records if r["seed"] == 0] == [-2, -1, 0, 1, 2]  # demonstrations come first
    assert summary["episodes"] == 6 and summary["demonstration_episodes"] == 4
    assert summary["steps"] == sum(r["steps"] for r in records)  # costs include the demonstrations
    assert summary["llm_queries"] == sum(r["llm_calls"] + r["partial_calls"] for r in records)
    own = [r for r in records if not r["demonstration"]]
    assert summary["success_rate"]["values"] == [
        pytest.approx(sum(r["success"] for r in own if r["seed"] == s) / 3) for s in (0, 1)
    ]
    evals = [json.loads(line) for line in (tmp_path / "run" / "evals.jsonl").read_text().splitlines()]
    first = next(e for e in evals if e["seed"] == 0 and e["after_episodes"] == 0)
    assert first["train_steps"] == sum(r["steps"] for r in demos if r["seed"] == 0)  # evaluated after them


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"agent": "direct-llm", "demo_episodes": 1}, "does not learn"),
        ({"demo_episodes": 4, "train_games": 3}, "at most train_games"),
        ({"demo_episodes": -1}, "demo_episodes must be"),
        ({"lora_epochs": 0}, "lora_epochs must be"),
    ],
)
def test_bad_demonstration_settings_are_refused(tmp_path, settings, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(env="webshop", out=tmp_path / "run", **settings)
    assert not (tmp_path / "run").exists()


def test_settings_at_their_defaults_leave_config_json_as_earlier_releases_wrote_it(tmp_path):
    """A run folder written before --demo-episodes / --lora-epochs existed still matches its settings."""
    plain = RunConfig(env="webshop", out=tmp_path / "run").to_json()
    assert not {"demo_episodes", "lora_epochs", "base_url", "model"} & set(plain)
    changed = RunConfig(env="webshop", out=tmp_path / "run", demo_episodes=2, lora_epochs=12).to_json()
    assert changed["demo_episodes"] == 2 and changed["lora_epochs"] == 12
