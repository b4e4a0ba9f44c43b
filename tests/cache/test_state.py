"""The state dict's semantic checks (forged but well-typed numbers), all-or-nothing loads through the
Python API, and the merge rule of two saves (``merge_states``)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from priorcache.cache.prior_cache import CacheConfig, PriorCache
from priorcache.cache.state import COUNTER_BOUND, SCORE_BOUND, merge_states
from priorcache.errors import CacheFormatError
from priorcache.prior.action_prior import PriorConfig
from tests.cache._fakes import FakeBackend, HashEncoder
from tests.cache.test_store import _adaptive_modes_cache, look, make, populated


def snapshot(cache: PriorCache) -> tuple[str, bytes]:
    """Everything ``state_dict`` holds, comparable."""
    state = cache.state_dict()
    keys = state.pop("keys")
    return json.dumps(state, sort_keys=True), keys.tobytes()


def target_cache(**cfg: Any) -> PriorCache:
    """A cache holding one entry of its own, smaller than the state loaded into it (so a load evicts)."""
    cfg.setdefault("capacity", 3)
    cache = make(**cfg)
    look(cache, "the one room this cache already knows about, with a lamp")
    return cache


def _scores(value: float) -> Callable[[dict], None]:
    def edit(state: dict) -> None:
        for e in state["entries"]:
            scores = e["prior"]["payload"]["scores"]
            scores[next(iter(scores))] = value

    return edit


def _all_scores(value: float) -> Callable[[dict], None]:
    def edit(state: dict) -> None:
        for e in state["entries"]:
            e["prior"]["payload"]["scores"] = {a: value for a in e["prior"]["payload"]["scores"]}

    return edit


def _entry(**fields: Any) -> Callable[[dict], None]:
    return lambda state: state["entries"][0].update(fields)


def _audit(**fields: Any) -> Callable[[dict], None]:
    def edit(state: dict) -> None:
        state["entries"][0]["last_audit"] = {"epsilon": 0.1, "kl": 0.01, "kl_bound": 0.2, "log_z_gap": 0.0, **fields}

    return edit


# Each forged state is finite and well typed; each broke the cache before (a prior not summing to 1,
# OverflowError half-way through a load), and is refused now with a message naming the field.
FORGED = {
    "score 1e20": (_scores(1e20), "beyond ±10000"),
    "scores -1e308 (prior summed to 3.85)": (_all_scores(-1e308), "beyond ±10000"),
    "score just past the bound": (_scores(SCORE_BOUND * 1.001), "beyond"),
    "score as a 400-digit integer": (_scores(10**400), "beyond ±2\\*\\*53"),
    "hit_count 10**400 (OverflowError in eviction)": (_entry(hit_count=10**400), "hit_count must be in"),
    "refresh_count 2**53 + 1": (_entry(refresh_count=COUNTER_BOUND + 1), "refresh_count must be in"),
    "id 10**30": (_entry(id=10**30), "id must be in"),
    "last_used_step -10**400 (OverflowError in eviction)": (_entry(last_used_step=-(10**400)), "last_used_step"),
    "created_step 10**20": (_entry(created_step=10**20), "created_step"),
    "clock 10**400": (lambda s: s.update(clock=10**400), "'clock' must be an integer in"),
    "negative clock": (lambda s: s.update(clock=-1), "'clock'"),
    "audit epsilon 1e308": (_audit(epsilon=1e308), "last_audit"),
    "audit kl 10**400": (_audit(kl=10**400), "last_audit"),
    "audit kl_bound -1": (_audit(kl_bound=-1.0), "last_audit"),
}


@pytest.mark.parametrize("case", sorted(FORGED))
def test_forged_numbers_are_refused_and_the_cache_is_unchanged(case: str) -> None:
    forge, message = FORGED[case]
    state = populated().state_dict()
    forge(state)
    cache = target_cache()
    before = snapshot(cache)
    with pytest.raises(CacheFormatError, match=message):
        cache.load_state_dict(state)
    assert snapshot(cache) == before
    cache._assert_consistent()


def test_the_bounds_admit_what_real_caches_write() -> None:
    state = populated().state_dict()
    _scores(-SCORE_BOUND)(state)
    state["entries"][0].update(hit_count=COUNTER_BOUND, created_step=-50, last_used_step=-3)  # warm-started ages
    state["clock"] = COUNTER_BOUND
    cache = make()
    cache.load_state_dict(state)
    assert len(cache) == len(state["entries"])
    served = look(cache, state["entries"][0]["state_text"]).prior
    assert np.isclose(np.exp(served.log_prob(served.actions)).sum(), 1.0)


def test_a_prior_that_does_not_sum_to_one_is_refused() -> None:
    # Any prior kind: the decoded prior is evaluated. A temperature this small overflows softmax.
    state = populated().state_dict()
    cache = PriorCache(CacheConfig(), HashEncoder(), FakeBackend(), prior_config=PriorConfig(temperature=1e-320))
    before = snapshot(cache)
    with pytest.raises(CacheFormatError, match="sum to nan, not 1"):
        cache.load_state_dict(state)
    assert snapshot(cache) == before


def test_saves_of_warm_started_caches_load_again(tmp_path) -> None:
    # Loading rebases steps onto a clock that starts at 0, so older entries carry negative steps.
    first = populated()
    warm = make()
    warm.load_state_dict(first.state_dict())
    assert min(e.created_step for e in warm.entries()) < 0
    warm.save(tmp_path / "c")
    again = make()
    again.load(tmp_path / "c")
    assert len(again) == len(first)


# --- all or nothing -------------------------------------------------------------------------------
def test_a_failing_eviction_during_a_load_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    state = populated().state_dict()
    cache = target_cache()
    before = snapshot(cache)

    def overflow(entry, now):
        raise OverflowError("int too large to convert to float")

    monkeypatch.setattr(cache.eviction, "rank", overflow)
    with pytest.raises(CacheFormatError, match="could not be installed.*OverflowError.*unchanged"):
        cache.load_state_dict(state)
    monkeypatch.undo()
    assert snapshot(cache) == before
    cache._assert_consistent()
    assert look(cache, "the one room this cache already knows about, with a lamp").kind == "exact"


def test_a_failing_controller_restore_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    saved, fresh = _adaptive_modes_cache("kl-budget")
    state = saved.state_dict()
    cache = fresh()
    look(cache, "a room only this cache has")
    before, stats_before = snapshot(cache), cache.stats()["kl_budget"]
    assert stats_before["audits"] != saved.stats()["kl_budget"]["audits"]  # the restore would show
    real_check = cache.controller.check_state

    def half_restore(mode, controller_state):
        restore = real_check(mode, controller_state)

        def apply() -> None:
            restore()  # the controller now holds the saved audits …
            raise RuntimeError("disk vanished")  # … and then the load fails

        return apply

    monkeypatch.setattr(cache.controller, "check_state", half_restore)
    with pytest.raises(CacheFormatError, match="RuntimeError: disk vanished"):
        cache.load_state_dict(state)
    assert snapshot(cache) == before
    assert cache.stats()["kl_budget"] == stats_before
    cache._assert_consistent()


def test_a_successful_load_still_replaces_everything() -> None:
    source = populated()
    cache = target_cache(capacity=100)
    cache.load_state_dict(source.state_dict())
    assert sorted(e.state_text for e in cache.entries()) == sorted(e.state_text for e in source.entries())
    cache._assert_consistent()


# --- merging two saves ------------------------------------------------------------------------
def _state_with(texts: list[str], clock_steps: int = 0, **counts: int) -> dict[str, Any]:
    cache = make()
    for t in texts:
        look(cache, t)
    for _ in range(clock_steps):
        cache._tick(None)
    state = cache.state_dict()
    for e in state["entries"]:
        e.update(counts)
    return state


def _by_text(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["state_text"]: e for e in state["entries"]}


def test_merge_is_the_union_with_fresh_ids_for_their_entries() -> None:
    ours = _state_with(["kitchen", "hallway"])
    theirs = _state_with(["garden", "kitchen", "cellar"])
    before = copy.deepcopy(theirs)
    merged = merge_states(ours, theirs)
    assert [e["state_text"] for e in merged["entries"]] == ["kitchen", "hallway", "garden", "cellar"]
    assert [e["id"] for e in merged["entries"]] == [0, 1, 2, 3]
    assert merged["keys"].shape == (4, 64) and merged["keys"].dtype == np.float32
    for i, e in enumerate(merged["entries"]):  # each key row still belongs to its entry
        np.testing.assert_array_equal(merged["keys"][i], HashEncoder().encode([e["state_text"]])[0])
    assert json.dumps(before, sort_keys=True, default=str) == json.dumps(theirs, sort_keys=True, default=str)
    cache = make()
    cache.load_state_dict(merged)
    assert len(cache) == 4


@pytest.mark.parametrize(
    "ours_counts, theirs_counts, winner",
    [
        ({"refresh_count": 1, "hit_count": 0}, {"refresh_count": 2, "hit_count": 0}, "theirs"),
        ({"refresh_count": 2, "hit_count": 0}, {"refresh_count": 1, "hit_count": 9}, "ours"),
        ({"refresh_count": 1, "hit_count": 3}, {"refresh_count": 1, "hit_count": 4}, "theirs"),
        ({"refresh_count": 1, "hit_count": 4}, {"refresh_count": 1, "hit_count": 4}, "ours"),
    ],
)
def test_for_one_state_more_refreshes_then_more_hits_then_the_writer_wins(ours_counts, theirs_counts, winner):
    ours = _state_with(["kitchen", "hallway"], **ours_counts)
    theirs = _state_with(["garden", "kitchen"], **theirs_counts)
    _by_text(theirs)["kitchen"]["prior"]["payload"]["scores"] = {"theirs": -1.0}
    merged = merge_states(ours, theirs)
    kitchen = _by_text(merged)["kitchen"]
    assert kitchen["id"] == _by_text(ours)["kitchen"]["id"]  # the writer's id stays
    assert ("theirs" in kitchen["prior"]["payload"]["scores"]) == (winner == "theirs")
    assert len(merged["entries"]) == 3


def test_their_steps_are_rebased_onto_our_clock() -> None:
    ours = _state_with(["kitchen"], clock_steps=100)
    theirs = _state_with(["garden", "cellar"])
    garden = _by_text(theirs)["garden"]
    age = theirs["clock"] - garden["last_used_step"]
    merged = merge_states(ours, theirs)
    assert merged["clock"] == ours["clock"]
    assert ours["clock"] - _by_text(merged)["garden"]["last_used_step"] == age


def test_merge_keeps_our_controller_config_and_unions_prefixes() -> None:
    ours = _state_with(["kitchen"])
    other = make()
    from tests.cache.test_store import GOALS

    look(other, "garden", GOALS[1])
    theirs = other.state_dict()
    theirs["config"] = {"mode": "from-elsewhere"}
    merged = merge_states(ours, theirs)
    assert merged["config"] == ours["config"] and merged["controller"] == ours["controller"]
    assert set(merged["prefixes"]) == set(ours["prefixes"]) | set(theirs["prefixes"])


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s["encoder"].update(name="minilm"), "encoder 'minilm'"),
        (lambda s: s["encoder"].update(dim=32), "dim 32"),
        (lambda s: s["backend"].update(name="gpt-9"), "backend 'gpt-9'"),
        (lambda s: s["entries"][0]["prior"].update(kind="gaussian"), "gaussian"),
        (lambda s: s["entries"][0].pop("hit_count"), "entry 0 is damaged"),
    ],
)
def test_incomparable_saves_are_not_merged(edit, message) -> None:
    theirs = _state_with(["garden"])
    edit(theirs)
    with pytest.raises(CacheFormatError, match=message):
        merge_states(_state_with(["kitchen"]), theirs)
