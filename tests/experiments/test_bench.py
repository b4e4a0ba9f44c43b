"""`bench text` cells, resumption after an interruption, refusal to overwrite other settings, and
several bench processes sharing one ``--out``.

Real TextWorld and BabyAI games; the LLM and encoder are the small deterministic fakes (the real ones
run in the slow tests)."""

from __future__ import annotations

import json
from pathlib import Path

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
        return GenerationResult(
            " go east", wall_time_s=0.001, prompt_tokens=len(getattr(prompt, "text", prompt).split()), new_tokens=2
        )


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


# --- several bench processes on one --out ---------------------------------------------------------
#: Plain DQN on BabyAI, as small as a run gets: no LLM, seconds per run.
TINY_BABYAI = dict(envs=["babyai"], methods=["dqn"], episodes=1, max_episode_steps=3, train_games=1, eval_games=1)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("other_finishes", [True, False])
def test_a_run_locked_by_another_process_is_done_last_and_not_redone(tmp_path, other_finishes):
    from contextlib import ExitStack

    from priorcache.experiments.bench import run_status
    from priorcache.experiments.runner import run_experiment
    from priorcache.io import folder_lock

    config = BenchConfig(out=tmp_path / "bench", seeds=[0, 1, 2], **TINY_BABYAI)
    busy = config.run_config("babyai", "dqn", 0)
    ran: list[int] = []
    with ExitStack() as other:  # "another bench process", running seed 0 when this one starts
        other.enter_context(folder_lock(busy.out))

        def on_run(cell, summary):
            ran.append(cell.seeds[0])
            if len(ran) == 2:  # the other process ends seed 0 (finished or killed) and lets go
                if other_finishes:
                    run_experiment(busy, encoder=HashEncoder(), progress=False)
                other.close()

        report = run_bench(config, encoder=HashEncoder(), progress=False, on_run=on_run)
    assert ran == ([1, 2] if other_finishes else [1, 2, 0])  # skipped first, then waited for
    assert run_status(busy) == "finished"
    assert report["rows"][0]["episodes"] == 3


def _bench_process(out: str, barrier, results) -> None:
    """One of the two processes of the test below; reports the seeds it ran, or its traceback."""
    import traceback

    try:
        ran: list[int] = []
        config = BenchConfig(out=Path(out), seeds=[0, 1, 2, 3], **TINY_BABYAI)
        barrier.wait(300)  # both start at once, on the same first run
        run_bench(config, encoder=HashEncoder(), progress=False, on_run=lambda cell, s: ran.append(cell.seeds[0]))
        results.put(ran)
    except BaseException:
        results.put(traceback.format_exc())
        raise


@pytest.mark.timeout(900)
def test_two_bench_processes_on_one_out_share_the_runs(tmp_path):
    import multiprocessing
    import queue

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_bench_process, args=(str(tmp_path / "b"), barrier, results)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(800)
    ran = []
    while True:
        try:
            ran.append(results.get(timeout=5))
        except queue.Empty:
            break
    assert [w.exitcode for w in workers] == [0, 0], ran
    # before: both ran every seed (or one crashed on the other's temp files)
    assert sorted(ran[0] + ran[1]) == [0, 1, 2, 3]
    summary = json.loads((tmp_path / "b" / "results.json").read_text())
    assert summary["rows"][0]["episodes"] == 4 and not summary["incomplete"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_bench_commands_on_one_out_neither_crash_nor_repeat_work(tmp_path):
    """The reported case: two `priorcache bench text` processes on one --out (real CLI and encoder; plain
    DQN, so no LLM)."""
    import subprocess
    import sys

    out = tmp_path / "bench"
    args = [sys.executable, "-m", "priorcache.cli", "bench", "text", "--env", "babyai", "--method", "dqn"]
    args += ["--seeds", "0-3", "--episodes", "1", "--max-steps", "3"]
    args += ["--train-games", "1", "--eval-games", "1", "--out", str(out)]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [p.communicate(timeout=850)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    runs = sorted(out.glob("runs/babyai/*/seed*/summary.json"))
    assert len(runs) == 4 and all(not json.loads(r.read_text()).get("partial") for r in runs)
