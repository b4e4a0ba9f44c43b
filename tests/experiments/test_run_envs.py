"""End to end on every text environment: `priorcache run ENV` and `priorcache bench text --quick`
with the real embedded LLM, the real MiniLM encoder and the real engines."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from priorcache.cli import app

runner = CliRunner()


@pytest.mark.slow
@pytest.mark.parametrize("env", ["babyai", "webshop", "alfworld"])
def test_run_each_environment_with_the_embedded_defaults(tmp_path, env):
    out = tmp_path / env
    result = runner.invoke(
        app,
        ["run", env, "--episodes", "2", "--max-steps", "4", "--eval-games", "2", "--out", str(out), "--quiet"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    assert all(1 <= r["steps"] <= 4 for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lookups"] == summary["steps"] and summary["llm_full_calls"] >= 1
    assert summary["audit_f5_violations"] == 0
    long_prompts = summary["long_prompts"]  # the embedded model's cap, and no state of these games reaches it
    assert long_prompts["max_prompt_tokens"] == 4096 and long_prompts["truncated_prompts"] == 0
    if env == "alfworld":
        assert summary["env_source"] in ("generated", "official:valid_seen", "official:valid_unseen", "official:train")


@pytest.mark.slow
def test_quick_bench_on_babyai_writes_the_table(tmp_path):
    out = tmp_path / "bench"
    result = runner.invoke(
        app, ["bench", "text", "--quick", "--env", "babyai", "--out", str(out)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    table = (out / "results.md").read_text()
    for method in ("direct-llm", "react", "dqn", "dqn-prior-uncached", "dqn-prior-static"):
        assert f"| babyai | {method} |" in table
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    react = json.loads((out / "runs" / "babyai" / "react" / "seed0" / "summary.json").read_text())
    assert react["llm_queries"] == react["steps"] > 0  # one (thought + action) call per step
    assert rows["dqn"]["llm_queries"] == 0
    assert rows["dqn-prior-static"]["llm_queries"] <= rows["dqn-prior-uncached"]["llm_queries"]
    assert (out / "success_vs_queries.png").stat().st_size > 1000


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode_args", [["--cache", "adaptive", "--meta-update-every", "10"], ["--cache", "kl-budget", "--kl-target", "0.05"]]
)
def test_adaptive_modes_on_babyai_and_the_kl_report(tmp_path, mode_args):
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "run",
            "babyai",
            *mode_args,
            "--episodes",
            "3",
            "--max-steps",
            "30",
            "--refresh-rate",
            "0.2",
            "--out",
            str(out),
            "--quiet",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["cache_params"] is not None for r in records)
    if mode_args[1] == "adaptive":
        assert sum(len(r["meta_updates"]) for r in records) >= 3
    else:
        assert json.loads((out / "summary.json").read_text())["cache_stats"]["kl_budget"]["target_kl"] == 0.05
    result = runner.invoke(app, ["kl-report", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "kl_report.json").read_text())
    assert report["audits"]["total"] > 0 and report["f5"]["violations"] == 0
    assert report["visitation"]["holds"]
    assert (out / "kl_report.png").stat().st_size > 1000
