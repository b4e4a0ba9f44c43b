"""The plumbing of Ray rollout workers (priorcache.experiments.workers) without Ray: settings checks,
addresses, and the learner taking a worker's transitions. The Ray cluster runs in
tests/experiments/test_workers_ray.py (slow set)."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from priorcache.agents.dqn import DQNConfig
from priorcache.agents.dqn_prior import DQNPriorAgent
from priorcache.cache.prior_cache import CacheConfig
from priorcache.cache.shared_cache import CacheShard, CacheSpec, LocalHandle, SharedCacheClient
from priorcache.errors import ConfigError
from priorcache.experiments.runner import RunConfig
from priorcache.experiments.workers import (
    _host_port,
    acting_config,
    check_reachable,
    ingest,
    learner_state,
    take_transitions,
)
from tests.agents.test_vector import SeededCorridor, prompt_builder
from tests.cache._fakes import FakeBackend, HashEncoder


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"workers": 0}, r"--workers must be an integer in \[1, 256\].*got 0"),
        ({"workers": -3}, r"--workers must be an integer in \[1, 256\].*got -3"),
        ({"workers": 2.5}, r"--workers must be an integer"),
        ({"workers": 2, "cache_shards": 0}, r"--cache-shards must be an integer"),
        ({"cache_shards": 2}, r"are about the cache of --workers: give --workers too"),
        ({"cache_sharing": "isolated"}, r"are about the cache of --workers: give --workers too"),
        ({"workers": 2, "cache_sharing": "private"}, r"--cache-sharing must be one of shared, isolated"),
        ({"workers": 2, "cache_shards": 2, "cache_sharing": "isolated"}, r"leave --cache-shards at 1"),
        ({"workers": 2, "cache_shards": 2, "cache": CacheConfig(mode="adaptive")}, r"needs --cache static or none"),
        ({"workers": 2, "num_envs": 2}, r"leave --num-envs at 1"),
        ({"workers": 2, "agent": "react"}, r"react calls the backend itself"),
        ({"workers": 2, "cache_shards": 2, "agent": "dqn"}, r"which the dqn agent does not use"),
    ],
)
def test_bad_worker_settings_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(env="babyai", **settings)


def test_config_json_names_workers_only_when_given():
    assert "workers" not in RunConfig(env="babyai").to_json()  # one-process runs: config.json as before
    assert not {"cache_shards", "cache_sharing"} & set(RunConfig(env="babyai").to_json())
    got = RunConfig(env="babyai", workers=4, cache_shards=2).to_json()
    assert (got["workers"], got["cache_shards"], got["cache_sharing"]) == (4, 2, "shared")


def test_addresses():
    assert _host_port("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert _host_port("ray://head.local:10001") == ("head.local", 10001)
    assert _host_port("auto") is None
    for bad in ("nohost", "host:port", ":6379", "host:99999"):
        with pytest.raises(ConfigError, match="--ray-address must be HOST:PORT"):
            _host_port(bad)
    with socket.socket() as s:  # a port nothing listens on: refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match=f"--ray-address 127.0.0.1:{port} does not answer"):
        check_reachable(f"127.0.0.1:{port}", timeout_s=2)


def _agent(config: DQNConfig, cache: SharedCacheClient, seed: int = 0) -> DQNPriorAgent:
    return DQNPriorAgent(config, cache.encoder, cache, prompt_builder, seed=seed)


def test_the_learner_learns_what_a_worker_played():
    """A worker acts without training; its transitions reach the learner's buffer unchanged, one
    gradient step each; the learner's weights are what the worker acts with next."""
    encoder = HashEncoder(dim=32)
    config = CacheConfig(mode="static")
    spec = CacheSpec(config, encoder.name, encoder.dim, lambda: (FakeBackend(), {}))
    cache = SharedCacheClient([LocalHandle(CacheShard(spec))], encoder, config, get=lambda x: x)
    dqn = DQNConfig(learning_starts=8, batch_size=8)
    learner, worker = _agent(dqn, cache), _agent(acting_config(dqn), cache, seed=5)
    assert worker.config.learning_starts > worker.config.buffer_size
    steps = 0
    for episode in range(3):
        state = learner_state(learner)
        worker.q.load_state_dict({k: torch.as_tensor(v) for k, v in state["q"].items()})
        for k, v in worker.q.state_dict().items():
            np.testing.assert_array_equal(v.numpy(), state["q"][k])
        outcome = worker.run_episode(SeededCorridor(), reset_seed=episode)
        arrays = take_transitions(worker)
        assert len(arrays["rewards"]) == outcome.steps and len(worker.buffer) == 0
        assert worker.train_time_s == 0.0  # it never trains
        before = len(learner.buffer)
        weights = [p.detach().clone() for p in learner.q.parameters()]
        assert ingest(learner, arrays) == outcome.steps
        steps += outcome.steps
        rows = slice(before, before + outcome.steps)
        np.testing.assert_array_equal(learner.buffer.states[rows], arrays["states"])
        np.testing.assert_array_equal(learner.buffer.next_mask[rows], arrays["next_mask"])
        assert learner.step_count == steps
        if len(learner.buffer) >= dqn.learning_starts:
            assert any(not torch.equal(a, b) for a, b in zip(weights, learner.q.parameters()))
    assert learner.train_time_s > 0
    assert ingest(learner, None) == 0
