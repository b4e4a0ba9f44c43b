"""``priorcache demos``: oracle episodes on training games, written atomically and read back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from priorcache.cli import app
from priorcache.envs.base import TextEnv
from priorcache.envs.demos import read_demos, read_demos_meta, record_demos
from priorcache.envs.registry import game_seeds, make_split_env
from priorcache.errors import ConfigError

runner = CliRunner()


@pytest.mark.parametrize("env", ["babyai", "webshop"])
def test_demos_write_read_and_replay(env: str, tmp_path: Path) -> None:
    out = tmp_path / "d"
    result = runner.invoke(app, ["demos", env, "--shots", "2", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    steps = read_demos(out)
    meta = read_demos_meta(out)
    assert meta["env"] == env and meta["shots"] == 2 and meta["split"] == "train"
    assert meta["game_seeds"] == game_seeds(env, "train", 2)
    assert all(e["success"] and e["steps"] >= 1 for e in meta["episodes"])
    assert {s["game_seed"] for s in steps} == set(meta["game_seeds"])
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    for episode in meta["episodes"]:
        mine = [s for s in steps if s["episode"] == episode["episode"]]
        game = make_split_env(env, "train", episode["game_seed"])
        _, info = game.reset()
        for step in mine:
            assert step["state_text"] == info["state_text"]
            assert step["action"] in step["admissible_actions"] == info["admissible_actions"]
            _, reward, _, _, info = game.step(step["action"])
            assert reward == step["reward"]
        assert info["won"]
        game.close()
    if meta["minari"]["written"]:
        minari = pytest.importorskip("minari")
        dataset = minari.MinariDataset(out / meta["minari"]["path"])
        assert dataset.total_episodes == 2
        first = next(iter(dataset))
        assert list(first.actions) == [s["action"] for s in steps if s["episode"] == 0]


def test_rerun_replaces_an_earlier_demos_folder(tmp_path: Path) -> None:
    out = tmp_path / "d"
    record_demos("webshop", 1, out, progress=False, minari_dataset=False)
    record_demos("webshop", 2, out, progress=False, minari_dataset=False)
    assert read_demos_meta(out)["shots"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope", "--shots", "1"], "unknown environment"),
        (["webshop", "--shots", "0"], "--shots must be"),
        (["webshop", "--shots", "1"], "not a demos folder"),
    ],
)
def test_bad_input_is_refused(args: list[str], message: str, tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    result = runner.invoke(app, ["demos", *args, "--out", str(out), "--quiet"])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_env_without_an_oracle_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from priorcache.envs.webshop_env import WebShopEnv

    monkeypatch.setattr(WebShopEnv, "_oracle_action", TextEnv._oracle_action)
    result = runner.invoke(app, ["demos", "webshop", "--shots", "1", "--out", str(tmp_path / "d"), "--quiet"])
    assert result.exit_code == 2
    assert "has no oracle" in result.output and "game_seed=0" in result.output
    assert list(tmp_path.iterdir()) == []


def test_a_failing_oracle_names_the_game(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="failed on training game_seed=0"):
        record_demos("webshop", 1, tmp_path / "d", max_steps=1, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_read_demos_refuses_damaged_or_foreign_folders(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such directory"):
        read_demos(tmp_path / "none")
    with pytest.raises(ConfigError, match="meta.json is missing"):
        read_demos(tmp_path)
    out = record_demos("webshop", 1, tmp_path / "d", progress=False, minari_dataset=False)
    lines = (out / "demos.jsonl").read_text().splitlines()
    (out / "demos.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ConfigError, match="does not match the episodes"):
        read_demos(out)
    (out / "demos.jsonl").write_text("{not json\n")
    with pytest.raises(ConfigError, match="line 1 is damaged"):
        read_demos(out)
    step = json.loads(lines[0])
    del step["action"]
    (out / "demos.jsonl").write_text(json.dumps(step) + "\n")
    with pytest.raises(ConfigError, match="'action' is missing"):
        read_demos(out)
    (out / "meta.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ConfigError, match="not a demos folder"):
        read_demos(out)
