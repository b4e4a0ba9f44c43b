"""The Agent interface: registry, the shared episode loop (learn/run_episode), predict without side
effects, and save/load (round trip and refusals). Fake encoder and LLM; a Gymnasium corridor."""

from __future__ import annotations

import json
from typing import Any

import gymnasium
import numpy as np
import pytest
import torch

from priorcache.agents import AGENTS, Agent, agent_spec, load_agent, make_agent
from priorcache.agents.dqn import DQNAgent, DQNConfig
from priorcache.agents.dqn_prior import DirectLLMAgent, DQNPriorAgent
from priorcache.agents.react import ReActAgent, ReActConfig
from priorcache.cache.prior_cache import CacheConfig, PriorCache
from priorcache.errors import ConfigError
from priorcache.prior.base import GenerationResult, Prompt
from tests.cache._fakes import FakeBackend, HashEncoder

ACTIONS = ["go forward", "go back", "wait here"]


class GymCorridor(gymnasium.Env):
    """Cells 0..length as a Gymnasium env with the text ``info`` the agents read."""

    def __init__(self, length: int = 4, max_steps: int = 12) -> None:
        self.length, self.max_steps = length, max_steps

    def _info(self) -> dict[str, Any]:
        return {
            "state_text": f"corridor cell number {self.pos} " + " ".join(["stone"] * self.pos),
            "admissible_actions": list(ACTIONS),
            "objective": "reach the end",
            "won": self.pos == self.length,
        }

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        self.pos, self.t = int(self.np_random.integers(0, 2)), 0
        return None, self._info()

    def step(self, action: str) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        self.t += 1
        forward, back = action == "go forward", action == "go back"
        self.pos = min(self.length, self.pos + 1) if forward else max(0, self.pos - back)
        won = self.pos == self.length
        return None, float(won), won, not won and self.t >= self.max_steps, self._info()


class Writer(FakeBackend):
    """Scores like the fake backend and writes "go forward" when asked to generate."""

    def generate(self, prompt, max_new_tokens: int = 48, stop=("\n\n",)) -> GenerationResult:
        return GenerationResult(
            " I should move.\nAction: go forward", wall_time_s=0.001, prompt_tokens=10, new_tokens=5
        )


def prompt_builder(objective: str, state: str) -> Prompt:
    return Prompt(prefix=f"Goal: {objective}\n", state=f"{state}\nAction:")


def components(mode: str = "static", refresh_rate: float = 0.0) -> dict[str, Any]:
    encoder, backend = HashEncoder(dim=32), Writer()
    cache = PriorCache(CacheConfig(mode=mode, refresh_rate=refresh_rate), encoder, backend)
    return {"encoder": encoder, "prior_cache": cache, "backend": backend, "prompt_builder": prompt_builder}


def build(name: str, seed: int = 0, **kw: Any) -> Agent:
    config = AGENTS[name].cls.make_config(**({"learning_starts": 8, "batch_size": 8} if name != "react" else {}))
    return make_agent(name, config, seed=seed, **components(**kw))


# --- registry ---------------------------------------------------------------------------------
def test_registry_names_classes_and_descriptions():
    assert list(AGENTS) == ["dqn-prior", "dqn", "direct-llm", "react"]
    for name, spec in AGENTS.items():
        assert spec.cls.name == name and issubclass(spec.cls, Agent)
        assert spec.description and "\n" not in spec.description
    assert {n for n, s in AGENTS.items() if s.cls.deterministic} == {"direct-llm", "react"}
    assert {n for n, s in AGENTS.items() if s.needs_llm} == {"dqn-prior", "direct-llm", "react"}
    assert [n for n, s in AGENTS.items() if s.cls.learns] == ["dqn-prior", "dqn"]
    with pytest.raises(ConfigError, match="unknown agent 'sarsa'.*direct-llm.*dqn-prior.*react"):
        agent_spec("sarsa")
    with pytest.raises(TypeError):
        AGENTS["sarsa"] = AGENTS["dqn"]  # type: ignore[index]


def test_make_agent_takes_the_components_each_agent_needs():
    assert isinstance(build("dqn-prior"), DQNPriorAgent) and isinstance(build("direct-llm"), DirectLLMAgent)
    assert isinstance(build("react"), ReActAgent)
    dqn = build("dqn")
    assert type(dqn) is DQNAgent and not hasattr(dqn, "prior_cache")
    # config.json's agent_config: the DQN family records its traits as before the agent classes existed.
    assert DQNPriorAgent.config_to_json(DQNConfig())["use_prior"] is True
    assert DirectLLMAgent.config_to_json(DQNConfig())["learn"] is False
    assert DQNAgent.config_to_json(DQNConfig())["use_prior"] is False
    assert "use_prior" not in ReActAgent.config_to_json(ReActConfig())
    assert DQNAgent.make_config(alpha_0=2.0, alpha_min=0.5, history_steps=3) == DQNConfig(alpha_0=2.0, alpha_min=0.5)


# --- the episode loop -------------------------------------------------------------------------
def test_run_episode_reports_every_step_and_learn_replays_the_runner_seeds():
    steps: list[tuple[str, float]] = []
    agent = build("dqn-prior")
    outcome = agent.run_episode(GymCorridor(), reset_seed=5, on_step=lambda d, r: steps.append((d.action, r)))
    assert outcome.steps == len(steps) >= 1 and outcome.episode_return == sum(r for _, r in steps)
    assert outcome.success == (steps[-1][1] == 1.0) and outcome.wall_time_s > 0

    outcomes: list = []
    first = build("dqn-prior").learn(GymCorridor(), 6, seed=1, on_episode=lambda i, o: outcomes.append((i, o.steps)))
    again = build("dqn-prior").learn(GymCorridor(), 6, seed=1)
    assert [i for i, _ in outcomes] == list(range(6))
    state = "corridor cell number 2 stone stone"
    assert np.array_equal(first.q_values(state, ACTIONS), again.q_values(state, ACTIONS))
    assert first.step_count == sum(n for _, n in outcomes) and first.train_time_s > 0
    with pytest.raises(ConfigError, match="episodes"):
        first.learn(GymCorridor(), 0)


def test_learn_takes_the_same_actions_as_the_runner(tmp_path):
    from priorcache.envs.registry import make_env
    from priorcache.experiments.runner import RunConfig, run_experiment

    def parts():
        encoder, backend = HashEncoder(dim=32), FakeBackend()
        return encoder, backend, PriorCache(CacheConfig(mode="static"), encoder, backend)

    encoder, backend, _ = parts()
    config = RunConfig(
        env="webshop",
        agent="dqn-prior",
        episodes=3,
        seeds=[1],
        max_episode_steps=6,
        cache=CacheConfig(mode="static"),
        out=tmp_path / "run",
        train_games=1,  # training game 0, every episode
        eval_games=1,
    )
    run_experiment(config, backend=backend, encoder=encoder, progress=False)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    runner_actions = [json.loads(line)["actions"] for line in lines]

    from priorcache.prior.prompts import prompt_builder as env_prompts

    encoder, backend, cache = parts()
    agent = DQNPriorAgent(config.agent_config(), encoder, cache, env_prompts("webshop"), seed=1)
    actions: list[list[str]] = [[]]
    agent.learn(
        make_env("webshop", game_seed=0, max_episode_steps=6),
        3,
        seed=1,
        on_step=lambda d, r: actions[-1].append(d.action),
        on_episode=lambda i, o: actions.append([]),
    )
    assert actions[:-1] == runner_actions and len(runner_actions) == 3


# --- predict ----------------------------------------------------------------------------------
def _training_state(agent: DQNAgent) -> tuple:
    pending = agent._pending
    return (
        json.dumps(agent.rng.bit_generator.state),
        len(agent.buffer),
        agent.buffer.pos,
        agent.step_count,
        agent.sampler.schedule.hit_rate,
        None if pending is None else (pending.action.tobytes(), pending.reward),
        [p.detach().clone() for p in agent.q.parameters()],
    )


@pytest.mark.parametrize("name", ["dqn", "dqn-prior"])
def test_predict_changes_nothing_training_uses(name):
    agent = build(name).learn(GymCorridor(), 4)
    env = GymCorridor()
    _, info = env.reset(seed=3)
    agent.begin_episode(info["objective"])
    agent.act(info["state_text"], info["admissible_actions"])  # a pending transition, mid-episode
    before = _training_state(agent)
    greedy = {agent.predict(info["state_text"], ACTIONS) for _ in range(3)}
    q = agent.q_values(info["state_text"], ACTIONS)
    if name == "dqn":
        assert greedy == {ACTIONS[int(np.argmax(q))]}
    assert len(greedy) == 1
    drawn = {agent.predict(f"corridor cell number {i}", ACTIONS, deterministic=False) for i in range(30)}
    assert drawn <= set(ACTIONS)
    after = _training_state(agent)
    assert before[:-1] == after[:-1]
    assert all(torch.equal(a, b) for a, b in zip(before[-1], after[-1]))


def test_predict_between_episodes_leaves_plain_dqn_training_unchanged():
    plain, probed = build("dqn", seed=4), build("dqn", seed=4)
    plain_actions: list[str] = []
    probed_actions: list[str] = []
    for episode in range(6):
        plain.run_episode(GymCorridor(), episode, on_step=lambda d, r: plain_actions.append(d.action))
        probed.run_episode(GymCorridor(), episode, on_step=lambda d, r: probed_actions.append(d.action))
        probed.predict("corridor cell number 1 stone", ACTIONS)
        probed.predict("corridor cell number 1 stone", ACTIONS, deterministic=False)
    assert plain_actions == probed_actions and len(plain.buffer) >= plain.config.learning_starts


def test_direct_llm_and_react_predict_keep_their_episode_state():
    direct = build("direct-llm")
    direct.begin_episode("reach the end")
    assert direct.predict("corridor cell number 0", ACTIONS) in ACTIONS
    assert direct.step_count == 0 and direct.schedule.hit_rate == 0.0
    react = build("react")
    react.begin_episode("reach the end")
    assert react.predict("corridor cell number 0", ACTIONS) == "go forward"
    assert "previous actions" not in react.prompt("corridor cell number 0", ACTIONS)


# --- save / load ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dqn", "dqn-prior"])
def test_save_load_round_trip_gives_the_same_q_values_and_greedy_actions(tmp_path, name):
    agent = build(name, seed=2).learn(GymCorridor(), 5, seed=2)
    agent.save(tmp_path / "agent")
    parts = {k: v for k, v in components().items() if k in agent.components}
    parts["encoder"] = agent.encoder
    loaded = type(agent).load(tmp_path / "agent", **parts)
    assert type(loaded) is type(agent) and loaded.config == agent.config and loaded.seed == 2
    assert loaded.step_count == agent.step_count and loaded.sampler.schedule.hit_rate == agent.sampler.schedule.hit_rate
    assert loaded.rng.bit_generator.state == agent.rng.bit_generator.state
    loaded.begin_episode("reach the end")
    agent.begin_episode("reach the end")
    for cell in range(5):
        state = f"corridor cell number {cell} " + " ".join(["stone"] * cell)
        assert np.array_equal(loaded.q_values(state, ACTIONS), agent.q_values(state, ACTIONS))
        assert loaded.predict(state, ACTIONS) == agent.predict(state, ACTIONS)
    for a, b in zip(agent.q_target.parameters(), loaded.q_target.parameters()):
        assert torch.equal(a, b)
    opt_a, opt_b = agent.optimizer.state_dict()["state"], loaded.optimizer.state_dict()["state"]
    assert opt_a.keys() == opt_b.keys() and all(torch.equal(opt_a[i]["exp_avg"], opt_b[i]["exp_avg"]) for i in opt_a)
    # load_agent finds the kind from the folder and picks the components it takes.
    assert type(load_agent(tmp_path / "agent", **{**components(), "encoder": agent.encoder})) is type(agent)
    # Plain formats only: JSON and safetensors, no pickle.
    assert sorted(p.name for p in (tmp_path / "agent").iterdir()) == ["agent.json", "weights.safetensors"]


def test_replay_buffer_round_trip_continues_training_identically(tmp_path):
    """A loaded agent with its replay buffer (and both RNGs) trains on exactly as the saved one does."""
    agent = build("dqn", seed=3).learn(GymCorridor(), 4, seed=3)
    agent.predict("corridor cell number 1 stone", ACTIONS, deterministic=False)  # moves predict's RNG
    agent.save(tmp_path / "agent")
    agent.save_replay_buffer(tmp_path / "replay.safetensors")
    loaded = DQNAgent.load(tmp_path / "agent", encoder=agent.encoder)
    loaded.load_replay_buffer(tmp_path / "replay.safetensors")
    assert len(loaded.buffer) == len(agent.buffer) > 0 and loaded.buffer.pos == agent.buffer.pos
    agent.learn(GymCorridor(), 2, seed=9)
    loaded.learn(GymCorridor(), 2, seed=9)
    for a, b in zip(agent.q.parameters(), loaded.q.parameters()):
        assert torch.equal(a, b)
    state = "corridor cell number 2 stone stone"
    assert [agent.predict(state, ACTIONS, deterministic=False) for _ in range(8)] == [
        loaded.predict(state, ACTIONS, deterministic=False) for _ in range(8)
    ]


def test_a_damaged_or_foreign_replay_buffer_is_refused_and_changes_nothing(tmp_path):
    agent = build("dqn").learn(GymCorridor(), 2)
    agent.save_replay_buffer(tmp_path / "replay.safetensors")
    other = DQNAgent(DQNConfig(goal_conditioned=False), agent.encoder)  # states of another width
    with pytest.raises(ConfigError, match="replay buffer array 'states'"):
        other.load_replay_buffer(tmp_path / "replay.safetensors")
    assert len(other.buffer) == 0
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        agent.load_replay_buffer(tmp_path / "junk.safetensors")
    with pytest.raises(ConfigError, match="does not exist"):
        agent.load_replay_buffer(tmp_path / "missing.safetensors")


def test_save_load_of_agents_without_weights(tmp_path):
    direct = build("direct-llm").learn(GymCorridor(), 2)
    direct.save(tmp_path / "direct")
    loaded = DirectLLMAgent.load(tmp_path / "direct", **{k: v for k, v in components().items() if k != "backend"})
    assert (loaded.step_count, loaded.schedule.hit_rate) == (direct.step_count, direct.schedule.hit_rate)
    react = ReActAgent(Writer(), HashEncoder(), ReActConfig(history_steps=2))
    react.save(tmp_path / "react")
    again = ReActAgent.load(tmp_path / "react", backend=Writer(), encoder=HashEncoder())
    assert again.config == ReActConfig(history_steps=2)
    assert not (tmp_path / "react" / "weights.safetensors").exists()


@pytest.fixture()
def saved(tmp_path):
    agent = build("dqn", seed=1).learn(GymCorridor(), 3)
    agent.save(tmp_path / "agent")
    return tmp_path / "agent", agent.encoder


def _edit_manifest(path, **changes):
    doc = json.loads((path / "agent.json").read_text())
    doc.update(changes)
    (path / "agent.json").write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / "agent.json").unlink(), "holds no saved agent"),
        (lambda p: (p / "agent.json").write_text('{"format": "priorcache-agent", "vers'), "damaged"),
        (
            lambda p: (p / "agent.json").write_text('{"format": "priorcache-cache", "version": 1}'),
            "not a saved priorcache agent",
        ),
        (lambda p: _edit_manifest(p, version=7), "format version 7"),
        (lambda p: _edit_manifest(p, seed="zero"), "'seed' must be of type int"),
        (lambda p: _edit_manifest(p, agent="react"), "holds a saved 'react' agent, not 'dqn'"),
        (lambda p: _edit_manifest(p, config={"gamma": 0.9, "warp": 9}), "does not know.*warp"),
        (lambda p: _edit_manifest(p, config={"gamma": 7.0}), "gamma"),
        (lambda p: _edit_manifest(p, config={"use_prior": True}), "use_prior"),
        (lambda p: _edit_manifest(p, config={"hidden_size": 64}), "do not fit"),
        (lambda p: (p / "weights.safetensors").unlink(), "weights.safetensors is missing"),
        (lambda p: (p / "weights.safetensors").write_bytes((p / "weights.safetensors").read_bytes()[:-40]), "sha256"),
        (lambda p: _flip_last_byte(p / "weights.safetensors"), "sha256"),
    ],
)
def test_load_refuses_a_damaged_or_foreign_save(saved, damage, message):
    path, encoder = saved
    damage(path)
    with pytest.raises(ConfigError, match=message):
        DQNAgent.load(path, encoder=encoder)


def _flip_last_byte(file):
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))


def test_load_refuses_other_components_and_foreign_folders(saved, tmp_path):
    path, encoder = saved
    with pytest.raises(ConfigError, match="encoder"):
        DQNAgent.load(path, encoder=HashEncoder(dim=16))
    with pytest.raises(ConfigError, match="encoder"):
        DQNAgent.load(path, encoder=HashEncoder(dim=32, name="another-model"))
    with pytest.raises(ConfigError, match="missing"):
        DQNAgent.load(path)
    with pytest.raises(ConfigError, match="unknown.*prior_cache"):
        DQNAgent.load(path, encoder=encoder, prior_cache=None)
    with pytest.raises(ConfigError, match="not 'dqn-prior'"):
        DQNPriorAgent.load(
            path, encoder=encoder, prior_cache=components()["prior_cache"], prompt_builder=prompt_builder
        )
    cache_dir = tmp_path / "cache"
    components()["prior_cache"].save(cache_dir)
    with pytest.raises(ConfigError, match="holds no saved agent"):
        DQNAgent.load(cache_dir, encoder=encoder)
    with pytest.raises(ConfigError, match="holds no saved agent"):
        DQNAgent.load(tmp_path / "nowhere", encoder=encoder)
    with pytest.raises(ConfigError, match="other files"):
        build("dqn").save(cache_dir)  # never mixed into a folder of something else
    build("dqn", seed=9).save(path)  # an agent's folder is overwritten by a new save
    assert DQNAgent.load(path, encoder=encoder).seed == 9
