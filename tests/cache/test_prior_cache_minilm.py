"""The cache with the real all-MiniLM-L6-v2 encoder: the default δ separates near-duplicate states
from other rooms of one game, and a saved cache warm-starts under the same encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from priorcache.cache.encoder import MiniLMEncoder
from priorcache.cache.prior_cache import CacheConfig, PriorCache
from priorcache.prior.base import Prompt
from tests.cache._fakes import FakeBackend

GOAL = "Your task: find the silver key and unlock the chest.\n"
KITCHEN = (
    "-= Kitchen =-\nYou are in a kitchen. You see a closed fridge and a table. On the table is a red "
    "apple and a silver key. There is an exit to the north."
)
KITCHEN_KEY_TAKEN = KITCHEN.replace(" and a silver key", "")
HALLWAY = (
    "-= Hallway =-\nYou are in a hallway. You see a coat rack. There is an exit to the south and a door to the east."
)
ACTIONS = ["go north", "open fridge", "take red apple", "take silver key", "look"]


@pytest.mark.slow
def test_minilm_default_threshold_and_warm_start(tmp_path: Path) -> None:
    encoder = MiniLMEncoder()
    backend = FakeBackend()
    config = CacheConfig(refresh_rate=0.0)  # the defaults under test, δ = 0.92
    cache = PriorCache(config, encoder, backend)

    def look(c: PriorCache, state: str, actions: list[str], prefix: str = GOAL):
        return c.lookup(state, Prompt(prefix, state), actions)

    assert look(cache, KITCHEN, ACTIONS).kind == "miss"
    near = look(cache, KITCHEN_KEY_TAKEN, [a for a in ACTIONS if a != "take silver key"])
    assert near.kind == "similar" and near.similarity > 0.95 and near.llm_calls == 0
    other_room = look(cache, HALLWAY, ["go south", "go east", "look"])
    assert other_room.kind == "miss" and other_room.similarity < config.similarity_threshold
    assert look(cache, KITCHEN_KEY_TAKEN, ACTIONS[:3], prefix="Your task: eat the apple.\n").kind == "miss"
    assert backend.n_calls == 3

    cache.save(tmp_path / "cache")
    warm = PriorCache(config, encoder, FakeBackend())
    warm.load(tmp_path / "cache")
    r = look(warm, KITCHEN_KEY_TAKEN, [a for a in ACTIONS if a != "take silver key"])
    assert r.kind == "similar" and warm.backend.n_calls == 0
    np.testing.assert_array_equal(r.scores, near.scores)
    assert len(warm.entries()[0].key) == encoder.dim == 384
