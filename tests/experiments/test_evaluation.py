"""The train / evaluate protocol: held-out evaluation never trains, never touches the training cache
and never plays a training game; the runner records it (real shop games, fake LLM and encoder)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from priorcache.agents import AGENTS, make_agent
from priorcache.agents.dqn import DQNConfig
from priorcache.agents.dqn_prior import DQNPriorAgent
from priorcache.cache.prior_cache import CacheConfig, PriorCache
from priorcache.envs.registry import EVAL_SEEDS, TRAIN_SEEDS, make_split_env
from priorcache.errors import ConfigError
from priorcache.experiments.evaluation import evaluate
from priorcache.experiments.runner import RunConfig, run_experiment
from priorcache.prior.prompts import prompt_builder
from tests.cache._fakes import FakeBackend, HashEncoder


def _trained_agent() -> tuple[DQNPriorAgent, PriorCache]:
    encoder = HashEncoder(dim=32)
    cache = PriorCache(CacheConfig(mode="static", refresh_rate=0.0), encoder, FakeBackend())
    agent = DQNPriorAgent(DQNConfig(learning_starts=4, batch_size=4), encoder, cache, prompt_builder("webshop"))
    agent.learn(make_split_env("webshop", "train", 0, max_episode_steps=6), 3)
    return agent, cache


def test_evaluation_leaves_the_agent_and_its_cache_as_they_were():
    agent, cache = _trained_agent()
    weights = {k: v.clone() for k, v in agent.q.state_dict().items()}
    before = (len(agent.buffer), agent.step_count, agent.sampler.schedule.alpha, agent.rng.bit_generator.state)
    entries, stats = [e.state_text for e in cache.entries()], cache.stats()

    games = [(seed, make_split_env("webshop", "eval", seed, max_episode_steps=6)) for seed in EVAL_SEEDS[:2]]
    found = evaluate(agent, games, seed=0, after_episodes=3, train_steps=18, train_llm_queries=5)

    assert [e.game_seed for e in found] == list(EVAL_SEEDS[:2])
    assert all(1 <= e.steps <= 6 for e in found)
    assert sum(e.llm_queries for e in found) >= 1  # held-out states are new to the cache: it asked the LLM
    assert all(torch.equal(v, agent.q.state_dict()[k]) for k, v in weights.items())
    after = (len(agent.buffer), agent.step_count, agent.sampler.schedule.alpha, agent.rng.bit_generator.state)
    assert after == before
    assert agent.prior_cache is cache  # the copy it was evaluated on is gone
    assert [e.state_text for e in cache.entries()] == entries and cache.stats() == stats


def test_a_run_trains_on_training_games_and_evaluates_on_held_out_ones(tmp_path):
    config = RunConfig(
        env="webshop",
        agent="dqn-prior",
        cache=CacheConfig(mode="static"),
        episodes=4,
        seeds=[0, 1],
        max_episode_steps=5,
        train_games=2,
        eval_games=2,
        eval_every=2,
        out=tmp_path / "run",
        tensorboard=True,
    )
    summary = run_experiment(config, backend=FakeBackend(), encoder=HashEncoder(dim=32), progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [json.loads(line) for line in (tmp_path / "run" / "evals.jsonl").read_text().splitlines()]
    assert [r["game_seed"] for r in records] == [0, 1, 0, 1] * 2  # training games in turn, every seed
    assert {e["game_seed"] for e in evals} == set(EVAL_SEEDS[:2])
    assert all(r["game_seed"] in TRAIN_SEEDS for r in records)
    # before training, after 2 and after 4 episodes, each on both held-out games, for both seeds
    assert sorted({(e["seed"], e["after_episodes"]) for e in evals}) == [(s, a) for s in (0, 1) for a in (0, 2, 4)]
    assert len(evals) == 12
    steps_seed0 = np.cumsum([r["steps"] for r in records if r["seed"] == 0])
    assert [e["train_steps"] for e in evals if e["seed"] == 0 and e["game_seed"] == EVAL_SEEDS[0]] == [
        0,
        steps_seed0[1],
        steps_seed0[3],
    ]
    held = summary["held_out"]
    finals = [e for e in evals if e["after_episodes"] == 4]
    assert held["success"]["n"] == 2 and held["games"] == 2
    assert held["success"]["mean"] == pytest.approx(np.mean([e["success"] for e in finals]))
    assert [p["after_episodes"] for p in held["curve"]] == [0, 2, 4]
    assert held["llm_queries"] == sum(e["llm_queries"] for e in evals)
    assert summary["llm_queries"] == sum(r["llm_calls"] + r["partial_calls"] for r in records)  # training only

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "seed1"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"held_out/success", "train/return", "train/llm_queries", "cache/hit_rate", "posterior/alpha"} <= tags
    assert {"cache/similarity_threshold", "held_out/success_vs_llm_queries"} <= tags
    assert [e.step for e in events.Scalars("held_out/success")] == [0, *(e["train_steps"] for e in evals[-4::2])]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"train_games": 0}, "train_games"),
        ({"eval_games": 2_000_000}, "eval split"),
        ({"eval_every": -1}, "eval_every"),
        ({"shots": 2, "adapt": "sideways"}, "adapt must be"),
        ({"adapt": "lora"}, "shots ≥ 1"),
        ({"agent": "dqn", "shots": 5, "adapt": "icl"}, "does not use"),
        ({"shots": 1_000_001, "adapt": "icl"}, "train split"),
    ],
)
def test_bad_protocol_settings_are_refused(tmp_path, settings, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(env="webshop", out=tmp_path / "run", **settings)
    assert not (tmp_path / "run").exists()


def test_lockstep_training_episodes_record_what_one_at_a_time_records(tmp_path):
    """``num_envs``: the direct LLM on an uncached prior acts the same whether its episodes run one
    after another or two at a time (each on its own environment object, even for one game)."""
    actions = {}
    for num_envs in (1, 2, 3):
        out = tmp_path / f"n{num_envs}"
        config = RunConfig(
            env="webshop",
            agent="direct-llm",
            cache=CacheConfig(mode="none"),
            episodes=5,
            max_episode_steps=5,
            train_games=2,
            eval_games=1,
            num_envs=num_envs,
            out=out,
        )
        summary = run_experiment(config, backend=FakeBackend(), encoder=HashEncoder(dim=32), progress=False)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["game_seed"] for r in records] == [0, 1, 0, 1, 0] and summary["episodes"] == 5
        actions[num_envs] = [r["actions"] for r in records]
    assert actions[1] == actions[2] == actions[3]


@pytest.mark.parametrize("name", ["dqn", "dqn-prior", "direct-llm"])
def test_lockstep_evaluation_plays_what_one_game_at_a_time_plays(name):
    """``num_envs`` > 1: the held-out games in lockstep through ``predict_batch`` (one batched LLM
    call per step) give, greedy on an uncached prior, the very episodes and query counts the
    one-at-a-time evaluation gives, and leave the agent's training state as it was."""
    encoder = HashEncoder(dim=32)
    cache = PriorCache(CacheConfig(mode="none"), encoder, FakeBackend())
    config = DQNConfig(learning_starts=4, batch_size=4)
    parts = {"encoder": encoder, "prior_cache": cache, "prompt_builder": prompt_builder("webshop")}
    agent = make_agent(name, config, seed=0, **{k: v for k, v in parts.items() if k in AGENTS[name].cls.components})
    agent.learn(make_split_env("webshop", "train", 0, max_episode_steps=6), 2)
    before = (agent.step_count, getattr(agent, "rng", None) and agent.rng.bit_generator.state)
    games = [(seed, make_split_env("webshop", "eval", seed, max_episode_steps=6)) for seed in EVAL_SEEDS[:5]]
    kwargs = dict(seed=0, after_episodes=2, train_steps=12, train_llm_queries=3)
    one = evaluate(agent, games, **kwargs)
    batched = evaluate(agent, games, num_envs=3, **kwargs)
    fields = ("game_seed", "success", "episode_return", "steps", "llm_queries")
    assert [[getattr(e, f) for f in fields] for e in batched] == [[getattr(e, f) for f in fields] for e in one]
    if name != "dqn":
        assert sum(e.llm_queries for e in batched) == sum(e.steps for e in batched)  # uncached: one per step
    assert (agent.step_count, getattr(agent, "rng", None) and agent.rng.bit_generator.state) == before
