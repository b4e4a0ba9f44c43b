"""Caches saved by the release before format version 2 (tests/cache/data/v1-*, written by that release) still load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from priorcache.cache.config import CacheConfig
from priorcache.cache.prior_cache import PriorCache
from priorcache.prior.base import Prompt
from tests.cache._fakes import FakeBackend, HashEncoder

DATA = Path(__file__).parent / "data"


def _saved(name: str) -> dict:
    return json.loads((DATA / name / "entries.json").read_text())


def test_a_version_1_save_loads_with_every_entry_and_serves_its_scores(tmp_path: Path) -> None:
    doc = _saved("v1-static")
    assert doc["format_version"] == 1
    cache = PriorCache(CacheConfig(refresh_rate=0.0), HashEncoder(), FakeBackend())
    cache.load(DATA / "v1-static")
    loaded = {(e.prefix_hash, e.state_text): e for e in cache.entries()}
    assert len(loaded) == len(doc["entries"]) == 8
    for item in doc["entries"]:
        entry = loaded[(item["prefix_hash"], item["state_text"])]
        assert entry.scores == item["scores"]
        assert (entry.id, entry.hit_count, entry.refresh_count) == (
            item["id"],
            item["hit_count"],
            item["refresh_count"],
        )
        assert (entry.last_audit is None) == (item["last_audit"] is None)
    cache._assert_consistent()

    # An exact repeat of a saved state is served from the loaded scores, without asking the LLM.
    item = doc["entries"][0]
    prefix = doc["prefixes"][item["prefix_hash"]]
    actions = list(item["scores"])
    backend_calls = cache.backend.n_calls
    served = cache.lookup(item["state_text"], Prompt(prefix, item["state_text"]), actions)
    assert served.kind == "exact" and cache.backend.n_calls == backend_calls
    np.testing.assert_array_equal(served.scores, [item["scores"][a] for a in actions])

    # Saved again, it is written as version 2 and reads back the same.
    cache.save(tmp_path / "v2")
    assert json.loads((tmp_path / "v2" / "entries.json").read_text())["format_version"] == 2
    again = PriorCache(CacheConfig(refresh_rate=0.0), HashEncoder(), FakeBackend())
    again.load(tmp_path / "v2")
    assert [(e.id, e.state_text, e.scores) for e in again.entries()] == [
        (e.id, e.state_text, e.scores) for e in cache.entries()
    ]


def _backend() -> FakeBackend:
    return FakeBackend(lambda prompt, action: -float(len(action)))


def test_a_version_1_adaptive_save_restores_theta() -> None:
    theta = _saved("v1-adaptive")["adaptation"]["meta_theta"]
    cache = PriorCache(
        CacheConfig(mode="adaptive", similarity_threshold=0.9, refresh_rate=0.2, meta={"update_every": 10}),
        HashEncoder(),
        _backend(),
    )
    cache.load(DATA / "v1-adaptive")
    np.testing.assert_allclose(cache.controller.meta.theta, theta)


def test_a_version_1_kl_budget_save_restores_its_audits_and_threshold() -> None:
    adaptation = _saved("v1-kl-budget")["adaptation"]
    cache = PriorCache(CacheConfig(mode="kl-budget", refresh_rate=0.2), HashEncoder(), _backend())
    cache.load(DATA / "v1-kl-budget")
    assert cache.stats()["kl_budget"]["audits"] == len(adaptation["kl_budget"]["audits"]["kl"]) > 0
    assert cache.params()["similarity_threshold"] == pytest.approx(adaptation["params"]["similarity_threshold"])


def test_a_damaged_version_1_adaptation_block_is_refused(tmp_path: Path) -> None:
    from priorcache.errors import CacheFormatError
    from tests.cache.test_store import _edit_json

    shutil.copytree(DATA / "v1-kl-budget", tmp_path / "c")
    _edit_json("entries.json", lambda doc: doc["adaptation"].pop("meta_theta"))(tmp_path / "c")
    cache = PriorCache(CacheConfig(mode="kl-budget", refresh_rate=0.2), HashEncoder(), _backend())
    with pytest.raises(CacheFormatError, match="adaptation"):
        cache.load(tmp_path / "c")
    assert len(cache) == 0
