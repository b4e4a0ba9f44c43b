"""``bench control`` and the control report on a real MetaWorld task (reach-v3, short episodes): every cell
runs once and is kept, the table's comparison columns are what the run files say, settings that differ
from a finished run are refused, bad input is refused before anything runs; the slow set runs
``priorcache bench control`` with the real embedded LLM and MiniLM."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from priorcache.cli import app
from priorcache.errors import ConfigError
from priorcache.experiments.control_bench import ControlBenchConfig, run_control_bench
from priorcache.experiments.control_report import aggregate_control
from priorcache.experiments.metrics import ratio_ci95
from priorcache.experiments.report import find_runs, write_report
from tests.cache._fakes import FakeBackend, HashEncoder

ENV = "metaworld:reach-v3"
METHODS = ["sac", "sac-prior-uncached", "sac-prior-static"]


def _config(out: Path, **changes: Any) -> ControlBenchConfig:
    settings = dict(
        out=out,
        envs=[ENV],
        methods=METHODS,
        seeds=[0, 1],
        steps=60,
        eval_every=0,
        eval_episodes=2,
        train_games=2,
        max_episode_steps=30,
        shots=2,
        skill_hold=5,
    )
    return ControlBenchConfig(**{**settings, **changes})


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, int]], dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench-control")
    ran: list[tuple[str, int]] = []
    report = run_control_bench(
        _config(out),
        backend=FakeBackend(),
        encoder=HashEncoder(),
        progress=False,
        on_run=lambda cell, _summary: ran.append((cell.label, cell.seeds[0])),
    )
    return out, ran, report


def test_every_cell_runs_once_into_its_own_folder(bench: tuple[Path, list, dict]) -> None:
    out, ran, report = bench
    assert sorted(ran) == sorted((m, s) for m in METHODS for s in (0, 1))
    for method in METHODS:
        for seed in (0, 1):
            run = out / "runs" / "metaworld-reach-v3" / method / f"seed{seed}"
            assert json.loads((run / "config.json").read_text())["label"] == method
            assert not json.loads((run / "summary.json").read_text()).get("partial")
    assert {p.name for p in report["files"]} == {
        "control_results.md",
        "control_results.csv",
        "control_results.json",
        "control_curves.png",
        "control_return_vs_queries.png",
    }
    assert not (out / "results.md").exists()  # no text runs, no text table
    assert [row["method"] for row in report["rows"]] == METHODS  # SAC, the reference, then the cache modes


def test_the_table_is_what_the_run_files_say(bench: tuple[Path, list, dict]) -> None:
    out, _, report = bench
    rows = {row["method"]: row for row in report["rows"]}
    per_step, held_out = {}, {}
    for method in METHODS:
        runs = [out / "runs" / "metaworld-reach-v3" / method / f"seed{s}" for s in (0, 1)]
        records = [r for run in runs for r in _lines(run / "metrics.jsonl")]
        evals = [e for run in runs for e in _lines(run / "evals.jsonl")]
        queries = sum(r["llm_calls"] + r["partial_calls"] for r in records)
        per_step[method] = queries / sum(r["steps"] for r in records)
        held_out[method] = (
            sum(sum(e["episode_return"] for e in evals if e["seed"] == s) / 2 for s in (0, 1)) / 2
        )  # one evaluation per seed (eval_every 0), two held-out instances each
        assert rows[method]["seeds"] == [0, 1]
        assert rows[method]["llm_queries_per_seed"] == pytest.approx(queries / 2)
        assert rows[method]["held_out_return"] == pytest.approx(held_out[method])
    assert per_step["sac"] == 0 and per_step["sac-prior-uncached"] > per_step["sac-prior-static"] > 0
    static = rows["sac-prior-static"]
    assert static["query_reduction_x"] == pytest.approx(per_step["sac-prior-uncached"] / per_step["sac-prior-static"])
    assert static["return_retention"] == pytest.approx(held_out["sac-prior-static"] / held_out["sac-prior-uncached"])
    assert static["return_vs_sac"] == pytest.approx(held_out["sac-prior-static"] / held_out["sac"])
    # each ratio comes with Fieller's interval over the same seeds' held-out returns (or none)
    for key, ref in (("return_retention", "sac-prior-uncached"), ("return_vs_sac", "sac")):
        values = [rows[m]["held_out_return_values"] for m in ("sac-prior-static", ref)]
        assert static[f"{key}_ci95"] == ratio_ci95(*values)
    assert static["hit_rate"] is not None and rows["sac-prior-uncached"]["hit_rate"] is None
    assert rows["sac"]["query_reduction_x"] is None and rows["sac"]["return_vs_sac"] is None
    assert static["env_steps_per_s"] > 0 and static["speed_vs_sac"] == pytest.approx(
        static["env_steps_per_s"] / rows["sac"]["env_steps_per_s"]
    )
    table = (out / "control_results.md").read_text()
    assert "| metaworld:reach-v3 | sac-prior-static |" in table and f"{static['query_reduction_x']:.2f}×" in table


def test_a_rerun_keeps_finished_cells_and_other_settings_are_refused(bench: tuple[Path, list, dict]) -> None:
    out, _, _ = bench
    ran: list[Any] = []
    run_control_bench(
        _config(out), backend=FakeBackend(), encoder=HashEncoder(), progress=False, on_run=lambda c, s: ran.append(c)
    )
    assert ran == []
    with pytest.raises(ConfigError, match="finished run with other settings"):
        run_control_bench(_config(out, steps=90), backend=FakeBackend(), encoder=HashEncoder(), progress=False)


def test_negative_returns_give_no_ratio(bench: tuple[Path, list, dict]) -> None:
    """A ratio of two negative returns reads backwards (−10 vs −20 would be "50 %"): n/a instead."""
    out, _, _ = bench
    runs = find_runs(out)
    for run in runs:
        for e in run.evals:
            e["episode_return"] = -abs(e["episode_return"]) - 1.0
    rows = {row["method"]: row for row in aggregate_control(runs)}
    assert rows["sac-prior-static"]["held_out_return"] < 0
    assert rows["sac-prior-static"]["return_retention"] is None and rows["sac-prior-static"]["return_vs_sac"] is None
    assert not math.isnan(rows["sac-prior-static"]["query_reduction_x"])


def test_report_writes_both_tables_for_a_folder_of_text_and_control_runs(
    bench: tuple[Path, list, dict], tmp_path: Path
) -> None:
    from tests.experiments._runs import write_run  # a text run folder

    out, _, _ = bench
    write_run(tmp_path / "text" / "run", agent="dqn", mode="none")
    shutil.copytree(out / "runs", tmp_path / "control")
    result = write_report(tmp_path, tmp_path / "report")
    names = [p.name for p in result["files"]]
    assert names[:2] in (["control_results.md", "results.md"], ["results.md", "control_results.md"])
    assert [row["method"] for row in result["control"]["rows"]] == METHODS
    assert [row["method"] for row in result["rows"]] == ["dqn"]


@pytest.mark.parametrize(
    ("changes", "phrase"),
    [
        ({"envs": ["textworld"]}, "runs control tasks"),
        ({"envs": ["metaworld:reach-v2"]}, "-v3"),
        ({"methods": ["dqn"]}, "unknown method"),
        ({"methods": []}, "at least one"),
        ({"seeds": [0, 0]}, "seed"),
        ({"steps": 0}, "steps"),
    ],
)
def test_bad_input_is_refused_before_anything_runs(tmp_path: Path, changes: dict[str, Any], phrase: str) -> None:
    with pytest.raises(ConfigError, match=phrase):
        _config(tmp_path / "out", **changes)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_priorcache_bench_control_with_the_embedded_llm(tmp_path: Path) -> None:
    args = ["bench", "control", "--env", ENV, "--method", "sac", "--method", "sac-prior-static", "--seeds", "0"]
    args += ["--steps", "60", "--eval-every", "0", "--eval-episodes", "1", "--train-games", "1"]
    args += ["--max-steps", "30", "--out", str(tmp_path / "bench")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "bench" / "control_results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["sac", "sac-prior-static"]
    static = rows[1]
    assert static["llm_queries_per_seed"] > 0 and static["audits"] >= 0 and static["hit_rate"] is not None
    assert "sac-prior-static" in result.output


def test_a_method_is_compared_with_the_uncached_run_of_its_own_settings() -> None:
    from priorcache.experiments.control_report import reference_of

    led = "-lora-kl0.25-qnorm-residual-alpha16"
    methods = {"sac-prior-uncached", f"sac-prior-uncached{led}"}
    assert reference_of(f"sac-prior-kl-budget-0.05{led}", methods) == f"sac-prior-uncached{led}"
    assert reference_of(f"sac-prior-static{led}-delta1.0", methods) == f"sac-prior-uncached{led}"
    assert reference_of("sac-prior-static", methods) == "sac-prior-uncached"
    assert reference_of("sac-prior-static-10shot", methods) == "sac-prior-uncached"  # no uncached 10-shot run
