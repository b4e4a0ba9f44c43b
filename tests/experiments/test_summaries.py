"""Reading run folders, checked: summary.json, config.json, metrics/evals lines, like-for-like runs."""

from __future__ import annotations

import json

import pytest

from priorcache.errors import ConfigError
from priorcache.experiments.kl_report_stats import collect_audits
from priorcache.experiments.report import aggregate, find_runs, read_run
from priorcache.experiments.summaries import comparison_problems, env_label, load_config, load_summary
from tests.experiments._runs import write_run


def _edit_json(path, edit):
    data = json.loads(path.read_text())
    path.write_text(json.dumps(edit(data)))


def test_a_real_shaped_summary_loads(tmp_path):
    run = write_run(tmp_path / "run")
    summary = load_summary(run)
    assert summary["episodes"] == 2 and summary["agent"] == "dqn-prior"


@pytest.mark.parametrize(
    "text, match",
    [
        ("[]", "must be a JSON object, got a list"),
        ("3", "must be a JSON object, got a number"),
        ("{}", "finished run's summary.*missing episodes, seeds, steps, llm_queries"),
        ("not json{", "not valid JSON"),
        ('{"partial": "yes"}', "partial must be true or false"),
    ],
)
def test_malformed_summaries_are_named(tmp_path, text, match):
    run = write_run(tmp_path / "run")
    (run / "summary.json").write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_summary(run)
    assert str(run / "summary.json") in str(info.value)


def test_wrong_field_types_are_named(tmp_path):
    run = write_run(tmp_path / "run")
    _edit_json(run / "summary.json", lambda s: {**s, "seeds": "0", "success_rate": 0.5})
    with pytest.raises(ConfigError, match=r"seeds must be a list of integers, got '0'.*success_rate must be an object"):
        load_summary(run)


def test_partial_summaries(tmp_path):
    run = write_run(tmp_path / "run", partial=True)
    assert load_summary(run)["partial"] is True
    # Before its first episode a run's summary says only that it is partial: not damaged.
    (run / "summary.json").write_text('{"partial": true}')
    assert load_summary(run) == {"partial": True}
    # Once it has episodes, it has all the metrics.
    (run / "summary.json").write_text('{"partial": true, "episodes": 3}')
    with pytest.raises(ConfigError, match="partial run's summary.*missing seeds"):
        load_summary(run)


def test_missing_summary_names_the_folder(tmp_path):
    with pytest.raises(ConfigError, match="is not a run folder"):
        load_summary(tmp_path)


def test_config_is_checked(tmp_path):
    run = write_run(tmp_path / "run")
    (run / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="config.json: a run config must be a JSON object, got a list"):
        load_config(run)
    (run / "config.json").write_text('{"env": "babyai", "cache": "static"}')
    with pytest.raises(ConfigError, match="missing agent; cache must be an object with a string mode"):
        read_run(run)


@pytest.mark.parametrize(
    "line, match",
    [
        ("[1, 2]", "line 2: a JSON object is expected, got a list"),
        ('{"episode": 1}', "line 2: missing seed"),
        ('{"seed": 0, "episode": "1"}', "line 2: episode must be an integer"),
        ("{", "line 2: not valid JSON"),
    ],
)
def test_malformed_metrics_lines_are_named(tmp_path, line, match):
    run = write_run(tmp_path / "run")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], line, *lines[2:]]) + "\n")
    with pytest.raises(ConfigError, match=match):
        read_run(run)


def test_malformed_evals_lines_are_named(tmp_path):
    run = write_run(tmp_path / "run")
    (run / "evals.jsonl").write_text('{"seed": 0}\n')
    with pytest.raises(ConfigError, match=r"evals.jsonl, line 1: missing after_episodes, game_seed"):
        read_run(run)


def test_the_report_names_a_line_without_what_summarise_reads(tmp_path):
    run = write_run(tmp_path / "runs" / "a")
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    del lines[1]["decision_times_ms"]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(ConfigError, match="seed 0, episode 1: missing decision_times_ms"):
        aggregate(find_runs(tmp_path / "runs"))


def test_a_damaged_audit_is_named(tmp_path):
    run = write_run(tmp_path / "run", with_audits=True)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lines[1]["audit_records"][0]["kl"] = "small"
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(ConfigError, match="an audit of seed 0, episode 1 is not an object with numbers"):
        collect_audits(read_run(run))
    lines[1]["audit_records"] = {"not": "a list"}
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(ConfigError, match="audit_records must be a list or null"):
        collect_audits(read_run(run))


# ------------------------------------------------------------------ like for like


def _info(folder):
    return folder, load_summary(folder), load_config(folder)


def test_cache_modes_of_one_agent_are_like_for_like(tmp_path):
    cached = write_run(tmp_path / "cached", mode="static", queries_per_episode=1)
    uncached = write_run(tmp_path / "uncached", mode="none")
    found, others = comparison_problems(_info(cached), _info(uncached))
    assert found == []
    assert "cache.mode: 'static' vs 'none'" in others


def test_variant_named_either_way_is_one_environment(tmp_path):
    a = write_run(tmp_path / "a", env="babyai:GoTo")
    b = write_run(tmp_path / "b", env="babyai", env_kwargs={"level": "GoTo"})
    assert env_label("babyai", {"level": "GoTo"}) == "babyai:GoTo"
    assert comparison_problems(_info(a), _info(b))[0] == []


@pytest.mark.parametrize(
    "other, expected",
    [
        ({"env": "textworld"}, "different environments: textworld vs babyai"),
        ({"env": "babyai:GoTo"}, "different environments: babyai:GoTo vs babyai"),
        ({"env_kwargs": {"max_steps_bonus": 1}}, "different settings of babyai"),
        ({"agent": "dqn"}, "different agents: dqn vs dqn-prior"),
        ({"episodes": 3}, "different episodes: 3 vs 2"),
        ({"seeds": (0, 1)}, "different seeds: [0, 1] vs [0]"),
        ({"eval_games": 3}, "different eval_games: 3 vs 2"),
        ({"train_games": 1}, "different train_games: 1 vs 2"),
        ({"partial": True}, "is a partial run"),
    ],
)
def test_what_is_not_like_for_like(tmp_path, other, expected):
    a = write_run(tmp_path / "a", **other)
    b = write_run(tmp_path / "b")
    found, _ = comparison_problems(_info(a), _info(b))
    assert len(found) == 1 and expected in found[0], found


def test_without_configs_the_summaries_are_compared(tmp_path):
    a = write_run(tmp_path / "a", episodes=3)
    b = write_run(tmp_path / "b", eval_games=3)
    found, others = comparison_problems((a, load_summary(a), None), (b, load_summary(b), None))
    assert found == [
        "different numbers of episodes: 3 vs 2",
        "different numbers of held-out games: 2 vs 3",
    ]
    assert others == []
