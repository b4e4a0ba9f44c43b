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
    result = runner.invoke(app, ["run", env, "--episodes", "2", "--max-steps", "4", "--out", str(out), "--quiet"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    assert all(1 <= r["steps"] <= 4 for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lookups"] == summary["steps"] and summary["llm_full_calls"] >= 1
    assert summary["audit_f5_violations"] == 0
    if env == "alfworld":
        assert summary["env_source"] in ("generated", "official:valid_seen", "official:valid_unseen", "official:train")


@pytest.mark.slow
def test_quick_bench_on_babyai_writes_the_table(tmp_path):
    out = tmp_path / "bench"
    result = runner.invoke(app, ["bench", "text", "--quick", "--env", "babyai", "--out", str(out)],
                           catch_exceptions=False)
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
