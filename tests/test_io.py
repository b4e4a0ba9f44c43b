"""Atomic writes and the cache root."""

import json
import os

import pytest

from priorcache import io


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PRIORCACHE_CACHE_DIR", str(tmp_path / "pc"))
    assert io.cache_root() == tmp_path / "pc"
    monkeypatch.delenv("PRIORCACHE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert io.cache_root() == tmp_path / "xdg" / "priorcache"


def test_failed_write_keeps_the_previous_file_and_leaves_no_temp(monkeypatch, tmp_path):
    target = tmp_path / "summary.json"
    io.atomic_write_json(target, {"episodes": 1})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        io.atomic_write_json(target, {"episodes": 2})
    assert json.loads(target.read_text()) == {"episodes": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_non_finite_numbers_are_refused_not_written(tmp_path):
    with pytest.raises(ValueError):
        io.atomic_write_json(tmp_path / "x.json", {"kl": float("nan")})
    assert not (tmp_path / "x.json").exists()
