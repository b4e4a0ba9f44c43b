"""`bench text` cells, resumption after an interruption, and refusal to overwrite other settings.

Real TextWorld games; the LLM and encoder are the small deterministic fakes (the real ones run in the
slow end-to-end test at the bottom)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from priorcache.cli import app
from priorcache.errors import ConfigError
from priorcache.experiments.bench import METHODS, BenchConfig, run_bench
from priorcache.prior.base import GenerationResult
from tests.cache._fakes import FakeBackend, HashEncoder

ENV = "textworld:tw-coin_collector"


class WritingFakeBackend(FakeBackend):
    """The fake scorer, plus a fake writer that always proposes going east."""

    def generate(self, prompt, max_new_tokens=48, stop=("\n\n",)):
        return GenerationResult(" go east", wall_time_s=0.001, prompt_tokens=len(prompt.split()), new_tokens=2)


def bench_config(tmp_path, **overrides):
    settings = dict(out=tmp_path / "bench", envs=[ENV], seeds=[0, 1], episodes=2, max_episode_steps=5)
    settings.update(overrides)
    return BenchConfig(**settings)


def test_every_method_gets_a_run_per_seed_and_interrupted_benches_resume(tmp_path):
    config = bench_config(tmp_path)
    done: list[tuple[str, str, int]] = []

    def stop_after_three(cell, summary):
        done.append((cell.agent, cell.cache.mode, cell.seeds[0]))
        if len(done) == 3:
            raise KeyboardInterrupt

    backend, encoder = WritingFakeBackend(), HashEncoder()
    with pytest.raises(KeyboardInterrupt):
        run_bench(config, backend=backend, encoder=encoder, progress=False, on_run=stop_after_three)
    assert len(done) == 3
    # A run cut off mid-way leaves a partial summary: it must be run again.
    interrupted = config.run_dir(ENV, "direct-llm", 0)
    summary = json.loads((interrupted / "summary.json").read_text())
    (interrupted / "summary.json").write_text(json.dumps({**summary, "partial": True}))

    resumed: list[tuple[str, str, int]] = []
    report = run_bench(
        config,
        backend=backend,
        encoder=encoder,
        progress=False,
        on_run=lambda cell, s: resumed.append((cell.agent, cell.cache.mode, cell.seeds[0])),
    )
    assert ("direct-llm", "none", 0) in resumed
    assert not set(done[1:]) & set(resumed)  # finished runs are kept
    assert len(resumed) == len(METHODS) * 2 - 2
    methods = {row["method"] for row in report["rows"]}
    assert methods == set(METHODS)
    by_method = {row["method"]: row for row in report["rows"]}
    assert by_method["direct-llm"]["episodes"] == 2  # deterministic: one episode per seed
    assert by_method["dqn-prior-static"]["episodes"] == 4
    assert by_method["dqn"]["llm_queries"] == 0 and by_method["react"]["llm_queries"] > 0
    assert (config.out / "results.md").is_file() and (config.out / "learning_curves.png").is_file()

    # Nothing left to do: a third call runs nothing.
    again: list = []
    run_bench(config, backend=backend, encoder=encoder, progress=False, on_run=lambda c, s: again.append(c))
    assert again == []

    # Other settings on the same folder are refused, not silently overwritten.
    with pytest.raises(ConfigError, match="other settings.*episodes"):
        run_bench(bench_config(tmp_path, episodes=3), backend=backend, encoder=encoder, progress=False)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"envs": ["mars"]}, "unknown environment"),
        ({"methods": ["sarsa"]}, "unknown method"),
        ({"seeds": []}, "at least one"),
        ({"episodes": 0}, "episodes"),
    ],
)
def test_bad_bench_settings(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        bench_config(tmp_path, **overrides)


def test_cli_rejects_unknown_method(tmp_path):
    result = CliRunner().invoke(app, ["bench", "text", "--method", "sarsa", "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "unknown method" in result.output
    assert not (tmp_path / "b").exists()


def test_runs_saved_before_a_setting_existed_still_count_but_changed_settings_do_not(tmp_path):
    from priorcache.experiments.bench import run_status

    config = bench_config(tmp_path, methods=["dqn-prior-static", "dqn-prior-kl-budget-0.05"], seeds=[0])
    run_bench(config, backend=FakeBackend(), encoder=HashEncoder(), progress=False)
    static = config.run_config(ENV, "dqn-prior-static", 0)
    saved = json.loads((static.out / "config.json").read_text())
    # a run made before the adaptive modes: its cache config has no meta / kl_budget settings
    del saved["cache"]["meta"], saved["cache"]["kl_budget"]
    (static.out / "config.json").write_text(json.dumps(saved))
    assert run_status(static) == "finished"
    # but a setting it did record must match
    saved["cache"]["similarity_threshold"] = 0.8
    (static.out / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match="other settings.*cache"):
        run_status(static)
    # the kl-budget target is part of the method: another target is another folder, not a clash
    loose = config.run_config(ENV, "dqn-prior-kl-budget-0.2", 0)
    assert loose.out != config.run_config(ENV, "dqn-prior-kl-budget-0.05", 0).out and run_status(loose) == "todo"
