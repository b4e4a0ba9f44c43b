"""The CLI refuses bad seeds, malformed run files and unlike comparisons with a one-line error
(exit 2, no traceback), and prints user and run data as written, never as rich markup."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from priorcache import cli
from priorcache.cli import _parse_seeds, app
from priorcache.errors import ConfigError
from tests.experiments._runs import write_run


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Wide enough that no line the tests look for is wrapped."""
    monkeypatch.setattr(cli.console, "_width", 400)


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_refused(result, *phrases: str) -> None:
    """Exit 2 with an error line holding every phrase, and no traceback (only typer.Exit escaped)."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "error: " in result.output and "Traceback" not in result.output
    for phrase in phrases:
        assert phrase in result.output, result.output


# ------------------------------------------------------------------ seeds


def test_seed_lists_and_ranges():
    assert _parse_seeds("0-2") == [0, 1, 2]
    assert _parse_seeds("4,1") == [4, 1]
    assert _parse_seeds(" 3 - 4 ") == [3, 4]


@pytest.mark.parametrize(
    "seeds, phrase",
    [
        ("0,0", "seed(s) [0] given more than once"),
        ("0,1,0,1", "seed(s) [0, 1] given more than once"),
        ("0-10000000000", "names 10000000001 seeds; at most 1000 per run"),
        ("0-1000000", "names 1000001 seeds"),
        ("5-3", "is an empty range"),
        ("1180591620717411303424", "seeds must be integers in [0, 2147483647]"),
        ("-1", "got [-1]"),
        ("1,x", "--seeds must look like '0,1,2' or '0-4', got '1,x'"),
        ("5- ", "--seeds must look like"),
    ],
)
def test_bad_seeds_are_refused_before_anything_is_written(tmp_path, seeds, phrase):
    out = tmp_path / "run"
    result = invoke("run", "babyai", "--agent", "dqn", "--episodes", "1", "--quiet", f"--seeds={seeds}", "--out", out)
    assert_refused(result, phrase)
    assert not out.exists()


def test_bench_refuses_repeated_seeds(tmp_path):
    result = invoke("bench", "text", "--env", "babyai", "--method", "dqn", "--seeds", "2,2", "--out", tmp_path / "b")
    assert_refused(result, "seed(s) [2] given more than once")
    assert not (tmp_path / "b").exists()


def test_parse_errors_are_config_errors():
    with pytest.raises(ConfigError, match="at most 1000"):
        _parse_seeds("0-1000")


# ------------------------------------------------------------------ markup


@pytest.mark.parametrize("agent", ["x[bold]", "x[/bold]"])
def test_an_agent_name_with_brackets_is_printed_as_given(tmp_path, agent):
    result = invoke("run", "babyai", "--agent", agent, "--quiet", "--out", tmp_path / "run")
    assert_refused(result, f"unknown agent '{agent}'")


def test_run_data_with_brackets_is_printed_as_written(tmp_path):
    runs = tmp_path / "runs"
    action = "search[i am looking]"
    run = write_run(runs / "a", label=action, actions=(action, "click[/b]"), with_audits=True)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "env_source": "official[/bold]"}))

    result = invoke("report", runs)
    assert result.exit_code == 0, result.output
    assert f"| babyai (official[/bold]) | {action} |" in result.output

    result = invoke("kl-report", run, "--out", tmp_path / "kl")
    assert result.exit_code == 0, result.output
    assert f"KL report · babyai · {action}" in result.output


def test_compare_prints_folder_names_with_brackets(tmp_path):
    a = write_run(tmp_path / "cached[/x]", mode="static", queries_per_episode=1)
    b = write_run(tmp_path / "[bold]uncached", mode="none")
    result = invoke("compare", a, b)
    assert result.exit_code == 0, result.output
    assert "cached[/x]" in result.output and "[bold]uncached" in result.output


# ------------------------------------------------------------------ malformed summaries

SUMMARIES = {
    "a list": ("[]", "must be a JSON object, got a list"),
    "an empty object": ("{}", "missing episodes, seeds, steps, llm_queries"),
    "missing fields": (None, "missing llm_queries, decision_latency_ms"),
    "not JSON": ("not json{", "not valid JSON"),
}


@pytest.mark.parametrize("command", ["compare", "report", "kl-report"])
@pytest.mark.parametrize("case", list(SUMMARIES))
def test_malformed_summaries_are_refused(tmp_path, command, case):
    run = write_run(tmp_path / "runs" / "bad", with_audits=True)
    good = write_run(tmp_path / "good")
    text, phrase = SUMMARIES[case]
    if text is None:
        summary = json.loads((run / "summary.json").read_text())
        del summary["llm_queries"], summary["decision_latency_ms"]
        text = json.dumps(summary)
    (run / "summary.json").write_text(text)
    args = {
        "compare": ("compare", run, good),
        "report": ("report", tmp_path / "runs", "--out", tmp_path / "out"),
        "kl-report": ("kl-report", run, "--out", tmp_path / "out"),
    }[command]
    result = invoke(*args)
    assert_refused(result, "summary.json", phrase)


def test_a_malformed_metrics_line_is_refused(tmp_path):
    run = write_run(tmp_path / "runs" / "a")
    with (run / "metrics.jsonl").open("a") as f:
        f.write("[]\n")
    result = invoke("report", tmp_path / "runs")
    assert_refused(result, "metrics.jsonl, line 3: a JSON object is expected, got a list")


# ------------------------------------------------------------------ compare guards


def test_compare_like_for_like(tmp_path):
    cached = write_run(tmp_path / "cached", mode="static", queries_per_episode=1)
    uncached = write_run(tmp_path / "uncached", mode="none")
    result = invoke("compare", cached, uncached)
    assert result.exit_code == 0, result.output
    assert "4.00× fewer" in result.output
    assert "warning" not in result.output
    assert "the runs also differ in: cache.mode: 'static' vs 'none'" in result.output


@pytest.mark.parametrize(
    "other, phrase",
    [
        ({"env": "textworld"}, "different environments: textworld vs babyai"),
        ({"env": "babyai:GoTo"}, "different environments: babyai:GoTo vs babyai"),
        ({"agent": "dqn", "mode": "none"}, "different agents: dqn vs dqn-prior"),
        ({"episodes": 4}, "different episodes: 4 vs 2"),
        ({"seeds": (0, 1)}, "different seeds: [0, 1] vs [0]"),
        ({"eval_games": 3}, "different eval_games: 3 vs 2"),
        ({"partial": True}, "is a partial run"),
    ],
)
def test_compare_refuses_unlike_runs_unless_forced(tmp_path, other, phrase):
    a = write_run(tmp_path / "a", **other)
    b = write_run(tmp_path / "b")
    result = invoke("compare", a, b)
    assert_refused(result, "are not like for like", phrase, "--force")
    assert "LLM queries" not in result.output  # no table of headline ratios

    result = invoke("compare", a, b, "--force")
    assert result.exit_code == 0, result.output
    assert "warning: " in result.output and phrase in result.output
    assert "LLM queries" in result.output


def test_compare_refuses_a_partial_run_without_episodes_even_forced(tmp_path):
    a = write_run(tmp_path / "a", partial=True)
    (a / "summary.json").write_text('{"partial": true}')
    b = write_run(tmp_path / "b")
    result = invoke("compare", a, b, "--force")
    assert_refused(result, "has no finished episode yet")
