"""End to end: `priorcache run textworld` with the real embedded LLM, MiniLM and generated games."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from priorcache.cli import app

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args), catch_exceptions=False)
    return result.exit_code, " ".join(result.output.split())  # rich wraps long lines


@pytest.mark.slow
def test_run_warm_start_and_compare(tmp_path):
    cache_dir = tmp_path / "shared-cache"
    code, out = invoke(
        "run",
        "textworld",
        "--episodes",
        "2",
        "--max-steps",
        "6",
        "--seeds",
        "0",
        "--out",
        str(tmp_path / "a"),
        "--cache-path",
        str(cache_dir),
        "--eval-games",
        "1",
        "--quiet",
    )
    assert code == 0, out
    assert "LLM queries" in out and "decision latency" in out
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first = [json.loads(line) for line in lines]
    assert all(r["steps"] == 6 or r["success"] for r in first)
    summary_a = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary_a["llm_queries"] >= 1 and summary_a["lookups"] == summary_a["steps"]
    assert summary_a["audit_f5_violations"] == 0
    assert (tmp_path / "a" / "cache" / "seed0" / "manifest.json").is_file()
    assert (cache_dir / "manifest.json").is_file()

    # The same game again from the saved cache: its first state is an exact hit at once.
    code, out = invoke(
        "run",
        "textworld",
        "--episodes",
        "1",
        "--max-steps",
        "6",
        "--seeds",
        "0",
        "--out",
        str(tmp_path / "b"),
        "--cache-path",
        str(cache_dir),
        "--eval-games",
        "1",
        "--quiet",
    )
    assert code == 0, out
    second = json.loads((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()[0])
    assert second["exact_hits"] >= 1
    assert second["llm_calls"] < first[0]["llm_calls"]

    # Two episodes against one are not like for like: refused, then compared with a warning.
    code, out = invoke("compare", str(tmp_path / "b"), str(tmp_path / "a"))
    assert code == 2 and "different episodes: 1 vs 2" in out
    code, out = invoke("compare", str(tmp_path / "b"), str(tmp_path / "a"), "--force")
    assert code == 0, out
    assert "warning" in out and "fewer" in out and "retained" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "nowhere-env"], "unknown environment"),
        (["run", "textworld", "--agent", "sarsa"], "unknown agent"),
        (["run", "textworld", "--cache", "magic"], "mode"),
        (["run", "textworld", "--similarity-threshold", "1.5"], "similarity_threshold"),
        (["run", "textworld", "--capacity", "0"], "capacity"),
        (["run", "textworld", "--refresh-rate", "-0.1"], "refresh_rate"),
        (["run", "textworld", "--backend", "gpt-9"], "unknown LLM backend"),
        (["run", "textworld", "--variant", "tw-nothing"], "tw-nothing"),
        (["run", "textworld", "--alpha-min", "2"], "alpha_min"),
        (["run", "textworld", "--kl-target", "0.05"], "need --cache kl-budget"),
        (["run", "textworld", "--cache", "kl-budget", "--kl-target", "-1"], "target_kl"),
        (["run", "textworld", "--cache", "kl-budget", "--kl-confidence", "1.5"], "confidence"),
        (["run", "textworld", "--cache", "static", "--meta-kl-weight", "5"], "need --cache adaptive"),
        (["run", "textworld", "--cache", "adaptive", "--meta-update-every", "1"], "update_every"),
        (["run", "textworld", "--cache", "adaptive", "--similarity-threshold", "0.5"], "meta bounds"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, args, message):
    out_dir = tmp_path / "out"
    code, out = invoke(*args, "--out", str(out_dir), "--quiet", "--episodes", "1", "--max-steps", "1")
    assert code == 2
    assert message.lower() in out.lower()
    assert not out_dir.exists()


def test_compare_refuses_a_folder_that_is_not_a_run(tmp_path):
    code, out = invoke("compare", str(tmp_path), str(tmp_path))
    assert code == 2 and "not a run folder" in out
