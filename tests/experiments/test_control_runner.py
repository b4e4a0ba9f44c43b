"""The continuous-control runner on a real MetaWorld task (reach-v3, short episodes): SAC-Prior with a
fake LLM and encoder, Stable-Baselines3 SAC, the files they write, held-out evaluation that never
trains and sees held-out instances only, resume and refusals; the slow set runs `priorcache run` with
the real embedded LLM and MiniLM."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from priorcache.cache.prior_cache import CacheConfig
from priorcache.cli import app
from priorcache.envs.registry import EVAL_SEEDS, TRAIN_SEEDS
from priorcache.errors import ConfigError
from priorcache.experiments import control_episodes, control_runner
from priorcache.experiments.control_runner import ControlRunConfig, run_control
from tests.cache._fakes import FakeBackend, HashEncoder

ENV = "metaworld:reach-v3"
FILES = ("config.json", "metrics.jsonl", "evals.jsonl", "summary.json")
TINY = dict(
    env=ENV,
    steps=80,
    eval_every=40,
    eval_episodes=2,
    train_games=2,
    max_episode_steps=30,
    learning_starts=30,
    batch_size=16,
    hidden_size=16,
)


def _config(out: Path, method: str = "sac-prior", **changes: Any) -> ControlRunConfig:
    prior = dict(cache=CacheConfig(mode="static", refresh_rate=0.3), shots=2, skill_hold=5) if method != "sac" else {}
    return ControlRunConfig(**{**TINY, "method": method, "out": out, **prior, **changes})


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _weights(*modules: torch.nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for m in modules for t in m.state_dict().values()]


def _snapshot(learner: Any) -> dict[str, Any]:
    """Everything a learner trains on or with: weights, optimiser-visible state, buffer, counters, RNGs."""
    if hasattr(learner, "agent"):  # SAC-Prior
        a = learner.agent
        return {
            "weights": _weights(a.actor, a.critic, a.critic_target),
            "log_alpha": float(a.log_alpha.detach()),
            "counters": asdict(a.counters),
            "buffer": len(a.buffer),
            "episodes": len(a.episode_log),
            "rng": json.dumps(a.rng.bit_generator.state),
            "torch_rng": a.torch_rng.get_state().clone(),
            "f2_alpha": a.sampler.schedule.alpha,
            "cache": (learner.cache.stats()["lookups"], len(learner.cache)),
            "env_steps": learner.env.total_steps,
            "in_progress": _in_progress(learner),
        }
    m = learner.model  # SB3 SAC
    return {
        "weights": _weights(m.policy),
        "log_ent_coef": float(m.log_ent_coef.detach()),
        "timesteps": m.num_timesteps,
        "updates": m._n_updates,
        "buffer": (m.replay_buffer.pos, m.replay_buffer.full),
        "env_steps": learner.env.total_steps,
        "in_progress": _in_progress(learner),
    }


def _in_progress(learner: Any) -> Any:
    """The training episode in progress: the training instances' record and SAC-Prior's own."""
    record = learner.env.current
    ours = (record.episode, record.steps, record.episode_return) if record is not None else None
    ep = getattr(getattr(learner, "agent", None), "episode_in_progress", None)
    return ours, None if ep is None else (ep.length, ep.steps_left, ep.obs.tolist())


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor):
            if not torch.equal(x, y):
                return False
        elif key == "weights":
            if len(x) != len(y) or not all(torch.equal(p, q) for p, q in zip(x, y)):
                return False
        elif x != y:
            return False
    return True


@pytest.fixture
def watched(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Every environment the runner builds (split, game seed) and, around every evaluation, whether the
    learner changed."""
    seen: dict[str, list] = {"train_envs": [], "runner_envs": [], "evaluations": []}
    for module, key in ((control_episodes, "train_envs"), (control_runner, "runner_envs")):
        real_make = module.make_split_env

        def make(name: str, split: str, game_seed: int, _real=real_make, _key=key, **kwargs: Any) -> Any:
            seen[_key].append((split, game_seed))
            return _real(name, split, game_seed, **kwargs)

        monkeypatch.setattr(module, "make_split_env", make)
    real_evaluate = control_runner.evaluate_control

    def evaluate(learner: Any, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        before = _snapshot(learner)
        lines = real_evaluate(learner, *args, **kwargs)
        seen["evaluations"].append(_same(before, _snapshot(learner)))
        return lines

    monkeypatch.setattr(control_runner, "evaluate_control", evaluate)
    return seen


def _check_protocol(out: Path, config: ControlRunConfig, watched: dict[str, list], seeds: int = 1) -> None:
    """The files, held-out instances only in evaluations, training instances only in training."""
    assert all((out / name).is_file() for name in FILES)
    assert json.loads((out / "config.json").read_text()) == json.loads(json.dumps(config.to_json()))
    records, evals = _lines(out / "metrics.jsonl"), _lines(out / "evals.jsonl")
    assert sum(r["steps"] for r in records) == config.steps * seeds
    assert {r["game_seed"] for r in records} == {0, 1} and all(r["game_seed"] in TRAIN_SEEDS for r in records)
    # evaluations at 0, 40 and 80 steps, each on the two held-out instances
    assert [(e["after_steps"], e["game_seed"]) for e in evals] == seeds * [
        (s, g) for s in (0, 40, 80) for g in (1_000_000, 1_000_001)
    ]
    assert all(e["game_seed"] in EVAL_SEEDS and e["steps"] == 30 for e in evals)
    assert {split for split, _ in watched["train_envs"]} == {"train"}
    assert set(watched["runner_envs"]) == {("train", 0), ("eval", 1_000_000), ("eval", 1_000_001)}
    assert watched["evaluations"] == [True] * 3 * seeds  # no evaluation changed the learner


def test_sac_prior_run(tmp_path: Path, watched: dict[str, list]) -> None:
    backend = FakeBackend()
    config = _config(tmp_path / "run", tensorboard=True, actor_on_prior=True, prior_scale_q=True)
    summary = run_control(config, backend=backend, encoder=HashEncoder(), progress=False)
    out = config.out
    _check_protocol(out, config, watched)
    assert summary == json.loads((out / "summary.json").read_text()) and "partial" not in summary
    records, evals = _lines(out / "metrics.jsonl"), _lines(out / "evals.jsonl")
    # Every LLM call is counted once: training's in metrics.jsonl, the evaluations' (on a cache copy) apart.
    train_queries = sum(r["llm_calls"] + r["partial_calls"] for r in records)
    eval_queries = sum(e["llm_queries"] for e in evals)
    assert summary["llm_queries"] == train_queries >= 1 and summary["eval_llm_queries"] == eval_queries >= 1
    assert backend.n_calls == train_queries + eval_queries
    assert summary["lookups"] == sum(r["lookups"] for r in records) == summary["decisions"]
    assert [e["train_llm_queries"] for e in evals[::2]] == [
        sum(r["llm_calls"] for r in records if r["end_step"] <= s) for s in (0, 40, 80)
    ]
    assert summary["hit_rate"] > 0 and summary["audits"] >= 1 and summary["audit_f5_violations"] == 0
    assert summary["decision_unit"] == "skill decision" and summary["label"] == "sac-prior-static-2shot-qnorm-residual"
    # SAC-Prior runs its episode on across evaluations, as SB3 does: only the budget cuts the last one
    assert [(r["steps"], r["cut"], r["end_step"]) for r in records] == [
        (30, False, 30),
        (30, False, 60),
        (20, True, 80),
    ]
    seed = summary["per_seed"][0]
    # gradient steps from the step that reaches learning_starts on (SB3: from the one after it)
    assert seed["env_steps"] == 80 and seed["gradient_steps"] == 80 - 30 + 1 and seed["env_steps_per_s"] > 0
    assert summary["demonstrations"]["demonstrator"].startswith("MetaWorld scripted expert")
    assert (out / "cache" / "seed0").is_dir() and not (out / "checkpoint").exists()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard" / "seed0"))
    events.Reload()
    assert {"train/return", "train/llm_queries", "cache/hit_rate", "held_out/return_vs_llm_queries"} <= set(
        events.Tags()["scalars"]
    )
    assert [e.step for e in events.Scalars("held_out/return")] == [0, 40, 80]
    assert [e.value for e in events.Scalars("held_out/return")] == pytest.approx(
        [sum(e["episode_return"] for e in evals if e["after_steps"] == s) / 2 for s in (0, 40, 80)]
    )
    assert [(e.step, e.value) for e in events.Scalars("train/llm_queries")] == [
        (r["end_step"], sum(q["llm_calls"] + q["partial_calls"] for q in records[: i + 1]))
        for i, r in enumerate(records)
    ]


def test_sb3_sac_run_on_the_same_protocol(tmp_path: Path, watched: dict[str, list]) -> None:
    config = _config(tmp_path / "sac", method="sac")
    summary = run_control(config, progress=False)
    _check_protocol(config.out, config, watched)
    records = _lines(config.out / "metrics.jsonl")
    # SB3 runs its episode on across evaluations: 30-step episodes fill 80 steps, the last one cut by the budget
    assert [(r["steps"], r["cut"]) for r in records] == [(30, False), (30, False), (20, True)]
    assert [r["game_seed"] for r in records] == [0, 1, 0]
    assert summary["llm_queries"] == 0 and summary["eval_llm_queries"] is None and summary["cache_mode"] == "n/a"
    assert summary["decision_unit"] == "action" and summary["decisions"] == 80
    assert summary["per_seed"][0]["gradient_steps"] == 80 - 30


def test_finished_runs_are_kept_other_configs_refused_and_a_killed_seed_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path / "run", method="sac", seeds=[0, 1], eval_every=0, steps=40)
    calls = {"seeds": 0}
    real_train_seed = control_runner._Run._train_seed

    def killed_in_second_seed(self: Any, index: int, *args: Any) -> dict[str, Any]:
        calls["seeds"] += 1
        if index == 1 and calls["seeds"] == 2:
            raise KeyboardInterrupt
        return real_train_seed(self, index, *args)

    monkeypatch.setattr(control_runner._Run, "_train_seed", killed_in_second_seed)
    with pytest.raises(KeyboardInterrupt):
        run_control(config, progress=False)
    first = _lines(config.out / "metrics.jsonl")
    assert {r["seed"] for r in first} == {0} and json.loads((config.out / "summary.json").read_text())["partial"]
    summary = run_control(config, progress=False, resume=True)
    resumed = {"seeds_kept": [0], "restarted_seed": 1, "continued_at_step": None}  # SB3: no mid-seed checkpoint
    assert summary["resumed"] == resumed and summary["seeds"] == [0, 1]
    records = _lines(config.out / "metrics.jsonl")
    assert records[: len(first)] == first and {r["seed"] for r in records[len(first) :]} == {1}
    assert [s["seed"] for s in summary["per_seed"]] == [0, 1] and calls["seeds"] == 3

    files = {name: (config.out / name).read_bytes() for name in FILES}
    assert run_control(config, progress=False, resume=True) == summary  # finished: nothing runs
    assert calls["seeds"] == 3
    with pytest.raises(ConfigError, match="another configuration .*differs in steps"):
        run_control(_config(config.out, method="sac", seeds=[0, 1], eval_every=0, steps=50), progress=False)
    assert {name: (config.out / name).read_bytes() for name in FILES} == files


def _untimed(path: Path) -> list[dict[str, Any]]:
    timed = ("time", "wall", "_ms")
    return [{k: v for k, v in line.items() if not any(t in k for t in timed)} for line in _lines(path)]


def test_a_killed_sac_prior_seed_goes_on_from_its_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = _config(tmp_path / "whole", steps=120)
    run_control(whole, backend=FakeBackend(), encoder=HashEncoder(), progress=False)
    config = _config(tmp_path / "killed", steps=120)
    real_learn = control_runner.SACPriorLearner.learn
    calls = {"n": 0}

    def learn(self: Any, steps: int) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # after the checkpoints at 40 and 80 steps
            raise KeyboardInterrupt
        real_learn(self, steps)

    monkeypatch.setattr(control_runner.SACPriorLearner, "learn", learn)
    with pytest.raises(KeyboardInterrupt):
        run_control(config, backend=FakeBackend(), encoder=HashEncoder(), progress=False)
    assert (config.out / "checkpoint" / "learner" / "agent").is_dir()
    # the checkpoint at 80 steps holds an episode in progress (the third, 20 of 30 steps): resuming replays it
    held = json.loads((config.out / "checkpoint" / "learner" / "training_episode.json").read_text())["episode"]
    assert (held["record"]["episode"], held["record"]["steps"]) == (2, 20)
    summary = run_control(config, backend=FakeBackend(), encoder=HashEncoder(), progress=False, resume=True)
    assert summary["resumed"] == {"seeds_kept": [], "restarted_seed": None, "continued_at_step": 80}
    # the same episodes, lookups, LLM calls and held-out returns as the run nobody killed
    for name in ("metrics.jsonl", "evals.jsonl"):
        assert _untimed(config.out / name) == _untimed(whole.out / name)
    assert summary["per_seed"][0]["gradient_steps"] == 120 - 30 + 1 and not (config.out / "checkpoint").exists()
    assert [(r["steps"], r["cut"]) for r in _lines(config.out / "metrics.jsonl")] == 4 * [(30, False)]


def test_bad_configurations_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "never"
    cases = [
        (dict(env="babyai"), "not a continuous-control environment"),
        (dict(env="mujoco"), "name the task of mujoco"),
        (dict(env="metaworld:reach-v2"), "-v3"),
        (dict(method="ppo"), "unknown control method"),
        (dict(method="sac", shots=5), "shots apply to sac-prior only"),
        (dict(method="sac", cache=CacheConfig()), "cache apply to sac-prior only"),
        (dict(steps=0), "steps must be an integer ≥ 1"),
        (dict(eval_every=-1), "eval_every must be an integer ≥ 0"),
        (dict(skill_hold=0), "skill_hold must be an integer ≥ 1"),
        (dict(actor_on_prior=1), "actor_on_prior must be true or false"),
        (dict(skill_q_warmup=-1), "skill_q_warmup must be an integer ≥ 0"),
        (dict(actor_init_alpha=0.0), "actor_init_alpha must be a number > 0"),
        (dict(method="sac", actor_init_alpha=5.0), "actor_init_alpha apply to sac-prior only"),
        (dict(target_kl_per_dim=0.0), "target_kl_per_dim must be a number > 0"),
        (dict(method="sac", actor_on_prior=True), "actor_on_prior apply to sac-prior only"),
        (dict(adapt="icl"), "adapt must be one of none, lora for control"),
        (dict(adapt="lora", shots=0), "give shots ≥ 1"),
        (dict(method="sac", adapt="lora"), "adapt apply to sac-prior only"),
        (dict(eval_episodes=2_000_000), "the eval split"),
        (dict(alpha_0=0.1, alpha_min=0.5), "alpha_min ≤ alpha_0"),
        (dict(backend="nope"), "unknown LLM backend"),
    ]
    for changes, phrase in cases:
        with pytest.raises(ConfigError, match=phrase):
            ControlRunConfig(**{"out": out, **changes})
    assert not out.exists()


@pytest.mark.parametrize(
    "args, phrase",
    [
        (["run", ENV, "--episodes", "3"], "--episodes: an option of text environments; 'metaworld:reach-v3' is a"),
        (["run", ENV, "--agent", "dqn", "--eval-games", "2"], "--agent, --eval-games: options of text environments"),
        (["run", ENV, "--method", "sac", "--cache", "none"], "--cache: an option of --method sac-prior"),
        (["run", ENV, "--method", "sac", "--skill-hold", "3"], "--skill-hold: an option of --method sac-prior"),
        (["run", ENV, "--method", "sac", "--residual-actor"], "--residual-actor: an option of --method sac-prior"),
        (["run", ENV, "--method", "sac", "--adapt", "lora"], "--adapt: an option of --method sac-prior"),
        (["run", "babyai", "--prior-scale-q"], "--prior-scale-q: an option of continuous-control"),
        (["run", ENV, "--method", "sac", "--actor-target-kl", "0.5"], "--actor-target-kl: an option of --method sac-"),
        (["run", ENV, "--method", "sac", "--prior-led"], "--prior-led: an option of --method sac-prior"),
        (["run", ENV, "--method", "sac", "--skill-q-warmup", "9"], "--skill-q-warmup: an option of --method sac-"),
        (["run", "babyai", "--prior-led"], "--prior-led: an option of continuous-control"),
        (["run", "babyai", "--steps", "100"], "--steps: an option of continuous-control environments"),
        (["run", "babyai", "--method", "sac"], "'babyai' is a text environment"),
    ],
)
def test_the_cli_refuses_options_of_the_other_kind(tmp_path: Path, args: list[str], phrase: str) -> None:
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "out")], env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    assert phrase in result.output
    assert not (tmp_path / "out").exists()


def test_prior_led_stands_for_its_settings_and_a_given_option_wins(tmp_path: Path) -> None:
    from priorcache.experiments.control_options import PRIOR_LED, control_config

    params: dict[str, Any] = {"backend": "embedded", "device": "cpu", "seeds": [0], "train_games": 10}
    params |= {"alpha": 1.0, "alpha_min": 0.25, "adapt": "none", "out": tmp_path / "out"}
    cache = CacheConfig(mode="static")
    plain = control_config(ENV, params, set(), {}, cache)
    led = control_config(ENV, {**params, "prior_led": True}, {"prior_led"}, {}, cache)
    assert (plain.adapt, plain.actor_on_prior, plain.prior_scale_q, plain.alpha_0) == ("none", False, False, 1.0)
    assert (led.adapt, led.actor_on_prior, led.prior_scale_q) == ("lora", True, True)
    assert (led.target_kl_per_dim, led.alpha_0, led.alpha_min) == (PRIOR_LED["actor_target_kl"], 16.0, 16.0)
    given = {**params, "prior_led": True, "alpha": 4.0}
    config = control_config(ENV, given, {"prior_led", "alpha"}, {}, cache)  # given beside it: wins
    assert (config.alpha_0, config.alpha_min, config.adapt) == (4.0, 4.0, "lora")
    assert led.skill_q_warmup == PRIOR_LED["skill_q_warmup"] > 0
    warm = control_config(
        ENV, {**params, "prior_led": True, "skill_q_warmup": 900}, {"prior_led", "skill_q_warmup"}, {}, cache
    )
    assert warm.skill_q_warmup == 900 and warm.label == "sac-prior-static-lora-kl0.25-qnorm-residual-alpha16-qwarmup900"
    held = control_config(
        ENV, {**params, "prior_led": True, "actor_init_alpha": 10.0}, {"prior_led", "actor_init_alpha"}, {}, cache
    )
    assert held.actor_init_alpha == 10.0 and held.label.endswith("-qwarmup20000-ainit10")
    # MuJoCo: the 0-shot skill prior (its demonstrations' segmentation reads the action), unless --adapt is given
    walker = control_config("mujoco:walker2d", {**params, "prior_led": True}, {"prior_led"}, {}, cache)
    assert (walker.adapt, walker.actor_on_prior, walker.label) == (
        "none",
        True,
        "sac-prior-static-kl0.25-qnorm-residual-alpha16-qwarmup20000",
    )
    given = {**params, "prior_led": True, "adapt": "lora"}
    assert control_config("mujoco:walker2d", given, {"prior_led", "adapt"}, {}, cache).adapt == "lora"


def test_the_learner_gets_the_runs_actor_settings(tmp_path: Path) -> None:
    from priorcache.experiments.control_learners import SkillPriorParts
    from priorcache.prior.skill_prior import SkillGaussians

    config = _config(tmp_path / "run", target_kl_per_dim=0.05, actor_init_alpha=8.0, skill_q_warmup=300)
    env = control_episodes.TrainingInstances(ENV, [0], 0, {"max_episode_steps": 30})
    try:
        flat = SkillGaussians.uniform(env.skills, env.observation_space.shape[0], env.action_space.shape[0])
        parts = SkillPriorParts(FakeBackend(), HashEncoder(), flat, {})
        agent = control_runner.make_learner(config, env, 0, parts).agent
        assert agent.alpha == pytest.approx(8.0) and agent.target_kl == pytest.approx(0.05 * env.action_space.shape[0])
        assert agent.config.skill_q_warmup == 300
        plain = control_runner.make_learner(_config(tmp_path / "plain"), env, 0, parts).agent
        assert plain.alpha == pytest.approx(1.0)  # SACPriorConfig's
    finally:
        env.close()


@pytest.mark.slow
def test_priorcache_run_on_metaworld_with_the_embedded_llm(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["run", ENV, "--steps", "60", "--eval-every", "30", "--eval-episodes", "2", "--max-steps", "20"]
    args += ["--train-games", "2", "--shots", "2", "--skill-hold", "5", "--prior-led", "--actor-target-kl", "0.5"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    # --prior-led's settings, but the δ_KL given beside it
    assert "sac-prior-static-2shot-lora-kl0.5-qnorm-residual-alpha16-qwarmup20000" in result.output
    assert "held-out return" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["demonstrations"]["adaptation"]["lora_pairs"] >= 2  # the skill prior was fine-tuned (F8)
    records = _lines(out / "metrics.jsonl")
    assert summary["steps"] == 60 and summary["lookups"] == sum(r["lookups"] for r in records) >= 12
    assert 1 <= summary["llm_full_calls"] <= summary["lookups"] and summary["audit_f5_violations"] == 0
    assert summary["eval_llm_queries"] >= 1 and summary["held_out"]["games"] == 2
    assert summary["decision_latency_ms"]["p95"] > summary["decision_latency_ms"]["p50"] > 0
