"""The control families in the registry: listed by ``priorcache envs``, refused by everything text-only.

The text runner (``RunConfig``), ``bench text``, ``priorcache demos``, the prior quality measurement
and the text-game prompts must refuse a control environment with a clear error, never start on it;
``priorcache run`` sends it to the control runner, which refuses the text options.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from priorcache.cli import app
from priorcache.envs.demos import record_demos
from priorcache.envs.registry import ENVIRONMENTS, KINDS, require_text_env
from priorcache.errors import ConfigError
from priorcache.experiments.bench import BenchConfig
from priorcache.experiments.prior_quality import oracle_steps
from priorcache.experiments.runner import RunConfig
from priorcache.prior.prompts import prompt_builder

runner = CliRunner()
CONTROL = ["mujoco:halfcheetah", "metaworld:push-v3", "mujoco"]


def test_priorcache_envs_lists_the_control_tasks() -> None:
    result = runner.invoke(app, ["envs"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for family in ("mujoco", "metaworld"):
        assert family in result.output
        assert all(variant in result.output for variant in ENVIRONMENTS[family].variants)
    assert "control" in result.output and "text" in result.output
    assert {info.kind for info in ENVIRONMENTS.values()} == set(KINDS)


@pytest.mark.parametrize("name", CONTROL)
def test_text_only_entry_points_refuse_control_environments(name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="continuous-control environment") as err:
        RunConfig(env=name, out=tmp_path / "run")
    assert "text runner" in str(err.value) and "babyai" in str(err.value)
    with pytest.raises(ConfigError, match="continuous-control"):
        BenchConfig(out=tmp_path / "bench", envs=["babyai", name], methods=["dqn"])
    with pytest.raises(ConfigError, match="continuous-control"):
        record_demos(name, 1, out=tmp_path / "demos", progress=False)
    with pytest.raises(ConfigError, match="continuous-control"):
        oracle_steps(name, "train", 1)
    with pytest.raises(ConfigError, match="continuous-control"):
        prompt_builder(name)
    assert list(tmp_path.iterdir()) == []
    require_text_env("babyai", "anything")  # text environments pass
    require_text_env("no-such-env", "anything")  # unknown ones are left to the caller's own check


@pytest.mark.parametrize(
    "command", [["run", "mujoco:walker2d", "--agent", "dqn"], ["bench", "text", "--env", "metaworld:reach-v3"]]
)
def test_the_cli_refuses_control_environments(command: list[str], tmp_path: Path) -> None:
    # `run` runs control environments (priorcache.experiments.control_runner), but not with a text agent.
    result = runner.invoke(app, [*command, "--out", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert "continuous-control environment" in result.output
    assert not (tmp_path / "out").exists()
