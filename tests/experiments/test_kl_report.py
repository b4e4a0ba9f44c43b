"""The KL report of one run (F5 check, F6 fit, visitation-weighted KL) on hand-built run folders."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from priorcache.errors import ConfigError
from priorcache.experiments.kl_report import write_kl_report

PNG = b"\x89PNG\r\n\x1a\n"


def audit(step, kind, similarity, epsilon, kl, refresh_rate=0.05):
    """One audit_records entry as the contract writes it."""
    served = kind != "shadow"
    r = refresh_rate if served else 1.0
    return {
        "step": step,
        "kind": kind,
        "served": served,
        "similarity": similarity,
        "coverage": 1.0,
        "epsilon": epsilon,
        "kl": kl,
        "kl_bound": 2 * epsilon,
        "log_z_gap": 0.0,
        "refresh_rate": r,
        "weight": 1.0 / r,
    }


def episode(seed, index, lookups, hits, audits=None, legacy=None, cache_params=None, meta_updates=None):
    """A metrics.jsonl line with the fields the KL report reads; ``legacy`` = (ε list, KL list) of an old run."""
    record = {
        "seed": seed,
        "episode": index,
        "steps": lookups,
        "lookups": lookups,
        "hits": hits,
        "audit_epsilons": [],
        "audit_kls": [],
    }
    if legacy is not None:
        record["audit_epsilons"], record["audit_kls"] = legacy
    else:
        record["audit_records"] = audits or []
        served = [a for a in record["audit_records"] if a["served"]]
        record["audit_epsilons"] = [a["epsilon"] for a in served]
        record["audit_kls"] = [a["kl"] for a in served]
        record["cache_params"] = cache_params
        record["meta_updates"] = meta_updates or []
    return record


def make_run(folder, records, mode="static", agent="dqn-prior", refresh_rate=0.05, threshold=0.9):
    folder.mkdir(parents=True)
    config = {
        "env": "textworld",
        "env_kwargs": {},
        "agent": agent,
        "cache": {"mode": mode, "similarity_threshold": threshold, "refresh_rate": refresh_rate, "capacity": 64},
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_violations_are_counted_and_named(tmp_path):
    audits = [
        audit(3, "exact", 1.0, 0.1, 0.05),
        audit(5, "similar", 0.95, 0.2, 0.4),  # KL = 2ε exactly: the bound holds
        audit(7, "similar", 0.95, 0.2, 0.4 + 1e-12),  # within the float tolerance
        audit(9, "similar", 0.93, 0.1, 0.3),  # a violation: KL 0.3 > 2ε = 0.2
        audit(11, "shadow", 0.85, 0.5, 0.2),
    ]
    run = make_run(tmp_path / "run", [episode(0, 0, 20, 10, audits)])
    result = write_kl_report(run)
    f5 = result["f5"]
    assert f5["violations"] == 1
    assert [(a["step"], a["kind"]) for a in f5["violating"]] == [(9, "similar")]
    assert f5["all"]["max_ratio"] == pytest.approx(1.5)
    assert f5["served"]["n"] == 4 and f5["shadow"]["n"] == 1 and f5["shadow"]["violations"] == 0
    assert f5["served"]["kl_max"] == pytest.approx(0.4 + 1e-12)
    assert result["audits"] == {
        "total": 5,
        "served": 4,
        "shadow": 1,
        "by_kind": {"exact": 1, "similar": 3, "shadow": 1},
    }
    md = (run / "kl_report.md").read_text()
    assert "**1** (**VIOLATED**)" in md and "step 9, similar" in md
    saved = json.loads((run / "kl_report.json").read_text())
    assert saved["f5"]["violations"] == 1 and "files" not in saved
    assert (run / "kl_report.png").read_bytes()[:8] == PNG
    assert result["files"] == [run / "kl_report.md", run / "kl_report.json", run / "kl_report.png"]


def test_f6_fit_recovers_a_known_lipschitz_constant(tmp_path):
    lipschitz, stale = 0.8, 0.05
    sims = [0.99, 0.97, 0.95, 0.92, 0.9, 0.85, 0.8]
    d = [math.sqrt(2 * (1 - s)) for s in sims]
    # On the line exactly: both fits find L; two exact audits set ε_stale (the larger one).
    exact = [audit(1, "exact", 1.0, stale, 0.01), audit(2, "exact", 1.0, stale / 2, 0.01)]
    on_line = [
        audit(10 + i, "similar" if s >= 0.9 else "shadow", s, stale + lipschitz * di, 0.0)
        for i, (s, di) in enumerate(zip(sims, d))
    ]
    run = make_run(tmp_path / "line", [episode(0, 0, 50, 30, exact + on_line)])
    f6 = write_kl_report(run)["f6"]
    assert f6["available"] and f6["n"] == 9 and f6["n_at_d0"] == 2
    assert f6["epsilon_stale"] == pytest.approx(stale)
    assert f6["least_squares"]["L"] == pytest.approx(lipschitz)
    assert f6["envelope"]["L"] == pytest.approx(lipschitz)
    assert f6["least_squares"]["share_under"] == f6["envelope"]["share_under"] == 1.0
    assert f6["delta"] == 0.9 and f6["d_at_delta"] == pytest.approx(math.sqrt(0.2))
    assert f6["envelope"]["epsilon_bound_at_delta"] == pytest.approx(stale + lipschitz * math.sqrt(0.2))

    # Under the line, touching it once: the envelope is L and names that audit; least squares is lower.
    fractions = [0.2, 0.5, 1.0, 0.3, 0.6, 0.4, 0.1]
    under = [
        audit(10 + i, "similar", s, stale + f * lipschitz * di, 0.0)
        for i, (s, di, f) in enumerate(zip(sims, d, fractions))
    ]
    run = make_run(tmp_path / "under", [episode(0, 0, 50, 30, exact + under)])
    f6 = write_kl_report(run)["f6"]
    assert f6["envelope"]["L"] == pytest.approx(lipschitz)
    assert f6["envelope"]["defined_by"]["step"] == 12 and f6["envelope"]["defined_by"]["similarity"] == 0.95
    assert f6["envelope"]["share_under"] == 1.0
    assert 0 < f6["least_squares"]["L"] < lipschitz
    assert f6["least_squares"]["share_under"] < 1.0

    # No audit at similarity 1: ε_stale is the least-squares intercept.
    run = make_run(tmp_path / "no-exact", [episode(0, 0, 50, 30, on_line)])
    f6 = write_kl_report(run)["f6"]
    assert f6["n_at_d0"] == 0 and "intercept" in f6["epsilon_stale_source"]
    assert f6["epsilon_stale"] == pytest.approx(stale)
    assert f6["least_squares"]["L"] == pytest.approx(lipschitz)


def test_visitation_weighted_kl_by_hand(tmp_path):
    # Two episodes: 8 hits in 20 lookups. Served audits drawn at r = 0.05 (weight 20) and r = 0.1
    # (weight 10); the shadow audit was never served and must not count.
    first = [audit(1, "similar", 0.95, 0.1, 0.01, refresh_rate=0.05), audit(2, "shadow", 0.8, 3.0, 5.0)]
    second = [audit(3, "exact", 1.0, 0.2, 0.04, refresh_rate=0.1)]
    run = make_run(tmp_path / "run", [episode(0, 0, 10, 5, first), episode(0, 1, 10, 3, second)])
    vis = write_kl_report(run)["visitation"]
    assert vis["lookups"] == 20 and vis["hits"] == 8 and vis["hit_share"] == pytest.approx(0.4)
    assert vis["served_audits"] == 2 and vis["weight_sum"] == pytest.approx(30.0)
    kl_hit = (20 * 0.01 + 10 * 0.04) / 30
    eps_hit = (20 * 0.1 + 10 * 0.2) / 30
    assert vis["per_hit"]["kl"] == pytest.approx(kl_hit)
    assert vis["per_hit"]["kl_bound"] == pytest.approx(2 * eps_hit)
    assert vis["per_decision"]["kl"] == pytest.approx(0.4 * kl_hit)
    assert vis["per_decision"]["kl_bound"] == pytest.approx(0.8 * eps_hit)
    assert vis["holds"] is True


def test_old_runs_fall_back_to_the_served_audit_lists(tmp_path):
    records = [
        episode(0, 0, 10, 4, legacy=([0.1, 0.2], [0.05, 0.5])),  # 0.5 > 2·0.2: a violation
        episode(0, 1, 10, 6, legacy=([0.3], [0.1])),
    ]
    run = make_run(tmp_path / "old", records)
    out = tmp_path / "report"
    result = write_kl_report(run, out)
    assert result["format"] == "legacy"
    assert result["audits"]["total"] == 3 and result["audits"]["served"] == 3
    assert result["f5"]["violations"] == 1
    assert result["f6"]["available"] is False and "this version" in result["f6"]["reason"]
    vis = result["visitation"]
    assert vis["hit_share"] == pytest.approx(0.5)
    assert vis["per_decision"]["kl"] == pytest.approx(0.5 * (0.05 + 0.5 + 0.1) / 3)  # equal weights
    assert (out / "kl_report.png").read_bytes()[:8] == PNG
    assert "this version" in (out / "kl_report.md").read_text()
    assert not (run / "kl_report.md").exists()


def test_new_records_are_not_counted_twice(tmp_path):
    # audit_epsilons/audit_kls repeat the served audits of audit_records; only the latter are read.
    run = make_run(tmp_path / "run", [episode(0, 0, 10, 5, [audit(1, "exact", 1.0, 0.1, 0.01)])])
    assert write_kl_report(run)["audits"]["total"] == 1


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="not a folder"):
        write_kl_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a run folder"):
        write_kl_report(tmp_path / "empty")
    make_run(tmp_path / "bench" / "runs" / "a", [episode(0, 0, 10, 5, [audit(1, "exact", 1.0, 0.1, 0.01)])])
    with pytest.raises(ConfigError, match="holds 1 of them"):
        write_kl_report(tmp_path / "bench")
    with pytest.raises(ConfigError, match="no episodes"):
        write_kl_report(make_run(tmp_path / "fresh", []))
    uncached = make_run(tmp_path / "uncached", [episode(0, 0, 10, 0)], mode="none")
    with pytest.raises(ConfigError, match="no cache.*--refresh-rate"):
        write_kl_report(uncached)
    no_refresh = make_run(tmp_path / "r0", [episode(0, 0, 10, 8)], refresh_rate=0.0)
    with pytest.raises(ConfigError, match="refresh rate r is 0"):
        write_kl_report(no_refresh)
    old_uncached = make_run(tmp_path / "old-dqn", [episode(0, 0, 0, 0, legacy=([], []))], agent="dqn")
    with pytest.raises(ConfigError, match="no F5 audits"):
        write_kl_report(old_uncached)


def test_cli_command(tmp_path):
    from priorcache.cli import app

    run = make_run(
        tmp_path / "run",
        [episode(0, 0, 10, 5, [audit(1, "exact", 1.0, 0.1, 0.01), audit(2, "similar", 0.95, 0.3, 0.2)])],
    )
    result = CliRunner().invoke(app, ["kl-report", str(run), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "F5 violations" in result.output and "E_μ[KL]" in result.output
    assert (tmp_path / "out" / "kl_report.json").exists()
    result = CliRunner().invoke(app, ["kl-report", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "error" in result.output


@pytest.mark.parametrize("mode", ["adaptive", "kl-budget"])
def test_report_on_a_saved_run(tmp_path, mode):
    """A run saved by the runner (real TextWorld games, fake LLM and encoder), then its KL report."""
    from priorcache.cache.prior_cache import CacheConfig
    from priorcache.experiments.report import write_report
    from priorcache.experiments.runner import RunConfig, run_experiment
    from tests.cache._fakes import FakeBackend, HashEncoder

    cache = {"mode": mode, "refresh_rate": 0.2}
    if mode == "adaptive":
        cache.update(similarity_threshold=0.9, meta={"update_every": 10})
    out = tmp_path / "run"
    config = RunConfig(
        env="textworld:tw-coin_collector",
        cache=CacheConfig.from_dict(cache),
        episodes=3,
        max_episode_steps=20,
        out=out,
        train_games=1,  # one game replayed: its states repeat, so near-misses occur
        eval_games=1,
    )
    run_experiment(config, backend=FakeBackend(), encoder=HashEncoder(), progress=False)
    report = write_kl_report(out)
    assert report["audits"]["total"] > 0
    assert report["f5"]["violations"] == 0
    assert report["audits"]["shadow"] > 0  # the adaptive modes audit near-misses too
    assert all(p.stat().st_size > 0 for p in report["files"])
    files = {p.name for p in write_report(out)["files"]}
    assert "cache_params.png" in files
