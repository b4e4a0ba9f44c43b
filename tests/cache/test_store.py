"""Saving and loading the prior cache: round trip, warm start, damaged saves, interrupted saves."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from priorcache.cache import store
from priorcache.cache.prior_cache import CacheConfig, CacheEntry, PriorCache
from priorcache.errors import CacheFormatError
from priorcache.prior.action_prior import CategoricalPrior
from priorcache.prior.base import Prompt
from tests.cache._fakes import FakeBackend, HashEncoder

GOALS = [Prompt("Goal: find the key.\n", ""), Prompt("Goal: eat the apple.\n", "")]
STATES = [
    "kitchen with a table, a red apple and a silver key, door north",
    "hallway with a coat rack and a mirror, doors east and south",
    "garden with roses, a shed and a rusty gate to the west",
    "cellar: barrel of wine, stone walls, stairs up",
]


def make(backend: FakeBackend | None = None, encoder: HashEncoder | None = None, **cfg) -> PriorCache:
    cfg.setdefault("refresh_rate", 0.0)
    return PriorCache(CacheConfig(**cfg), encoder or HashEncoder(), backend or FakeBackend())


def look(cache: PriorCache, state: str, goal: Prompt = GOALS[0], actions=("go north", "take key", "look")):
    return cache.lookup(state, Prompt(goal.prefix, state), list(actions))


def populated(**cfg) -> PriorCache:
    """A cache with entries in two prefix partitions, hits, a merged partial result and an audit."""
    cfg.setdefault("seed", 0)
    cache = make(**cfg)
    for goal in GOALS:
        for state in STATES:
            look(cache, state, goal)
    look(cache, STATES[0], GOALS[0])
    look(cache, STATES[0], GOALS[0], actions=("go north", "take key", "open window"))  # partial call
    refreshing = make(refresh_rate=1.0)
    look(refreshing, STATES[1])
    look(refreshing, STATES[1])
    audited = refreshing.entries()[0]
    assert audited.last_audit is not None
    # Graft the audited entry's bookkeeping on: the save must carry last_audit and refresh_count.
    with cache._lock:
        e = cache._table.by_state(audited.prefix_hash, audited.state_text)
        e.last_audit, e.refresh_count = audited.last_audit, audited.refresh_count
    return cache


def as_records(cache: PriorCache) -> list[tuple]:
    return sorted(
        (
            e.id,
            e.prefix_hash,
            e.state_text,
            tuple(sorted(e.scores.items())),
            e.hit_count,
            e.refresh_count,
            e.last_audit,
            e.last_used_step - e.created_step,
            tuple(np.round(e.key, 6)),
        )
        for e in cache.entries()
    )


def test_round_trip_restores_every_entry(tmp_path: Path) -> None:
    cache = populated()
    cache.save(tmp_path / "c")
    fresh = make()
    fresh.load(tmp_path / "c")
    assert as_records(fresh) == as_records(cache)
    assert any(r[6] is not None for r in as_records(fresh))
    fresh._assert_consistent()


def test_warm_start_hits_where_the_saved_cache_did(tmp_path: Path) -> None:
    cache = populated()
    cache.save(tmp_path / "c")
    backend = FakeBackend()
    warm = make(backend)
    warm.load(tmp_path / "c")
    for goal in GOALS:
        for state in STATES:
            before = look(cache, state, goal)
            after = look(warm, state, goal)
            assert before.hit and after.hit and after.kind == before.kind == "exact"
            np.testing.assert_array_equal(after.scores, before.scores)
        near = STATES[2].replace("roses", "tulips")
        assert look(warm, near, goal).kind == look(cache, near, goal).kind == "similar"
    assert backend.n_calls == 0


def test_files_are_plain_and_checksummed(tmp_path: Path) -> None:
    cache = populated()
    cache.save(tmp_path / "c")
    d = tmp_path / "c"
    assert sorted(p.name for p in d.iterdir()) == ["entries.json", "keys.npy", "manifest.json"]
    keys = np.load(d / "keys.npy", allow_pickle=False)
    doc = json.loads((d / "entries.json").read_text())
    manifest = json.loads((d / "manifest.json").read_text())
    assert keys.dtype == np.float32 and keys.shape == (len(cache), cache.dim)
    assert (doc["format"], doc["format_version"]) == (store.FORMAT_NAME, store.FORMAT_VERSION)
    assert doc["encoder"] == {"name": "fake-hash-bow", "dim": 64} and doc["backend"] == {"name": "fake-llm"}
    assert len(doc["entries"]) == len(cache) and set(doc["prefixes"].values()) == {g.prefix for g in GOALS}
    for name in ("entries.json", "keys.npy"):
        assert manifest["files"][name]["sha256"] == hashlib.sha256((d / name).read_bytes()).hexdigest()


def test_an_empty_cache_round_trips(tmp_path: Path) -> None:
    make().save(tmp_path / "c")
    loaded = populated()
    loaded.load(tmp_path / "c")
    assert len(loaded) == 0


def test_saving_again_replaces_the_previous_save(tmp_path: Path) -> None:
    cache = populated()
    cache.save(tmp_path / "c")
    look(cache, "a brand new attic full of dust and old trunks")
    cache.save(tmp_path / "c")
    loaded = make()
    loaded.load(tmp_path / "c")
    assert as_records(loaded) == as_records(cache)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".c.lock", "c"]  # no temp or backup left (the lock stays)


def test_a_smaller_cache_keeps_only_capacity_entries(tmp_path: Path) -> None:
    cache = populated()
    cache.save(tmp_path / "c")
    small = make(capacity=3)
    small.load(tmp_path / "c")
    assert len(small) == 3
    small._assert_consistent()


def test_loaded_steps_are_rebased_onto_the_new_clock(tmp_path: Path) -> None:
    cache = populated()
    cache.save(tmp_path / "c")
    fresh = make()
    fresh.load(tmp_path / "c")
    assert max(e.last_used_step for e in fresh.entries()) == 0  # the newest entry is "now"


def test_refuses_to_overwrite_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "thesis.tex").write_text("precious")
    with pytest.raises(CacheFormatError, match="refusing to overwrite"):
        populated().save(tmp_path / "c")
    assert (tmp_path / "c" / "thesis.tex").read_text() == "precious"


# --- damaged saves: CacheFormatError, cache unchanged -------------------------------------------
def _rewrite_manifest(d: Path) -> None:
    """Recompute the manifest, as a careless tool would after editing a file."""
    m = json.loads((d / "manifest.json").read_text())
    for name in m["files"]:
        data = (d / name).read_bytes()
        m["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (d / "manifest.json").write_text(json.dumps(m))


def _edit_json(name: str, edit: Callable[[dict], None], fix_manifest: bool = True) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        doc = json.loads((d / name).read_text())
        edit(doc)
        (d / name).write_text(json.dumps(doc))
        if fix_manifest and name != "manifest.json":
            _rewrite_manifest(d)

    return apply


def _truncate_keys(fix_manifest: bool) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        data = (d / "keys.npy").read_bytes()
        (d / "keys.npy").write_bytes(data[: len(data) // 2])
        if fix_manifest:
            _rewrite_manifest(d)

    return apply


def _replace_keys(keys: np.ndarray, allow_pickle: bool = False) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        buf = io.BytesIO()
        np.save(buf, keys, allow_pickle=allow_pickle)
        (d / "keys.npy").write_bytes(buf.getvalue())
        _rewrite_manifest(d)

    return apply


def _set_score(value) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        first = doc["entries"][0]["prior"]["payload"]["scores"]
        first[next(iter(first))] = value

    return edit


def _nan_score(d: Path) -> None:
    text = (d / "entries.json").read_text()
    doc = json.loads(text)
    action = next(iter(doc["entries"][0]["prior"]["payload"]["scores"]))
    doc["entries"][0]["prior"]["payload"]["scores"][action] = float("nan")
    (d / "entries.json").write_text(json.dumps(doc))  # json writes a bare NaN
    _rewrite_manifest(d)


def _edit_hit_count(d: Path) -> None:
    """A same-size hand edit: only the checksum can tell."""
    text = (d / "entries.json").read_text()
    assert '"hit_count": 0' in text
    (d / "entries.json").write_text(text.replace('"hit_count": 0', '"hit_count": 7', 1))


DAMAGE = {
    "truncated keys.npy": (_truncate_keys(fix_manifest=False), "bytes"),
    "truncated keys.npy, manifest recomputed": (_truncate_keys(fix_manifest=True), "npy"),
    "edited JSON": (_edit_hit_count, "checksum"),
    "reformatted JSON": (_edit_json("entries.json", lambda d: None, fix_manifest=False), "bytes"),
    "checksum mismatch": (
        _edit_json("manifest.json", lambda m: m["files"]["keys.npy"].update(sha256="0" * 64)),
        "checksum",
    ),
    "wrong version in manifest": (_edit_json("manifest.json", lambda m: m.update(format_version=3)), "version 3"),
    "wrong version in entries": (_edit_json("entries.json", lambda m: m.update(format_version=99)), "version 99"),
    "foreign manifest": (_edit_json("manifest.json", lambda m: m.update(format="something-else")), "not a priorcache"),
    "NaN score": (_nan_score, "not valid JSON"),
    "string score": (_edit_json("entries.json", _set_score("high")), "non-numeric"),
    "missing entry key": (_edit_json("entries.json", lambda d: d["entries"][0].pop("hit_count")), "keys"),
    "negative hit count": (
        _edit_json("entries.json", lambda d: d["entries"][0].update(hit_count=-1)),
        "hit_count must be in",
    ),
    "forged score 1e20": (_edit_json("entries.json", _set_score(1e20)), "beyond"),
    "forged hit count 10**400": (
        _edit_json("entries.json", lambda d: d["entries"][0].update(hit_count=10**400)),
        "hit_count must be in",
    ),
    "duplicate id": (
        _edit_json("entries.json", lambda d: d["entries"][1].update(id=d["entries"][0]["id"])),
        "duplicate id",
    ),
    "unknown prefix": (
        _edit_json("entries.json", lambda d: d["entries"][0].update(prefix_hash="a" * 64)),
        "prefix_hash",
    ),
    "entries list too short": (_edit_json("entries.json", lambda d: d["entries"].pop()), "shape"),
    "other encoder": (_edit_json("entries.json", lambda d: d["encoder"].update(name="other-encoder")), "other-encoder"),
    "other dimension": (_edit_json("entries.json", lambda d: d["encoder"].update(dim=32)), "dim 32"),
    "other backend": (_edit_json("entries.json", lambda d: d["backend"].update(name="gpt-9")), "gpt-9"),
    "NaN key": (lambda d: _replace_keys(np.full((8, 64), np.nan, np.float32))(d), "NaN"),
    "float64 keys": (lambda d: _replace_keys(np.load(d / "keys.npy").astype(np.float64))(d), "float32"),
    "pickled keys": (lambda d: _replace_keys(np.array([{"x": 1}] * 8, dtype=object), allow_pickle=True)(d), "npy"),
    "unnormalised keys": (lambda d: _replace_keys(2 * np.load(d / "keys.npy"))(d), "unit"),
    "missing keys.npy": (lambda d: (d / "keys.npy").unlink(), "keys.npy is missing"),
    "missing entries.json": (lambda d: (d / "entries.json").unlink(), "entries.json is missing"),
    "missing manifest": (lambda d: (d / "manifest.json").unlink(), "manifest.json is missing"),
    "garbage manifest": (lambda d: (d / "manifest.json").write_bytes(b"\x00\xff{"), "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_saves_fail_clearly_and_leave_the_cache_unchanged(tmp_path: Path, case: str) -> None:
    damage, message = DAMAGE[case]
    populated().save(tmp_path / "c")
    damage(tmp_path / "c")
    target = make()
    look(target, "the one room this cache already knows about, with a lamp")
    before = as_records(target)
    with pytest.raises(CacheFormatError, match=message):
        target.load(tmp_path / "c")
    assert as_records(target) == before
    target._assert_consistent()
    assert look(target, "the one room this cache already knows about, with a lamp").kind == "exact"


def test_backend_check_can_be_waived(tmp_path: Path) -> None:
    populated().save(tmp_path / "c")
    other = PriorCache(CacheConfig(), HashEncoder(), FakeBackend(name="another-llm"))
    with pytest.raises(CacheFormatError, match="fake-llm"):
        other.load(tmp_path / "c")
    other.load(tmp_path / "c", check_backend=False)
    assert len(other) == len(populated())


def test_a_foreign_or_missing_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "data.csv").write_text("a,b\n1,2\n")
    with pytest.raises(CacheFormatError, match="manifest.json is missing"):
        make().load(tmp_path / "foreign")
    with pytest.raises(CacheFormatError, match="does not exist"):
        make().load(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CacheFormatError, match="not a directory"):
        make().load(tmp_path / "file")


# --- interrupted saves -------------------------------------------------------------------------
def test_a_crash_while_writing_keeps_the_previous_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = populated()
    first.save(tmp_path / "c")
    second = make()
    look(second, "a completely different save with one room")

    real_write = store._write_file

    def crash_on_entries(path: Path, data: bytes) -> None:
        if path.name == "entries.json":
            real_write(path, data[: len(data) // 3])  # half-written, then the process "dies"
            raise OSError("disk full")
        real_write(path, data)

    monkeypatch.setattr(store, "_write_file", crash_on_entries)
    with pytest.raises(OSError, match="disk full"):
        second.save(tmp_path / "c")
    monkeypatch.undo()
    loaded = make()
    loaded.load(tmp_path / "c")
    assert as_records(loaded) == as_records(first)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".c.lock", "c"]  # the temp directory is gone


def test_a_crash_between_the_renames_keeps_the_previous_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = populated()
    first.save(tmp_path / "c")
    second = make()
    look(second, "a completely different save with one room")

    real_rename = store._rename
    calls = []

    def crash_on_second(src: Path, dst: Path) -> None:
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError("power cut")
        real_rename(src, dst)

    monkeypatch.setattr(store, "_rename", crash_on_second)
    with pytest.raises(OSError, match="power cut"):
        second.save(tmp_path / "c")
    monkeypatch.undo()
    assert not (tmp_path / "c").exists()  # the window the backup covers
    assert store.has_saved_cache(tmp_path / "c")
    loaded = make()
    loaded.load(tmp_path / "c")
    assert as_records(loaded) == as_records(first)

    # The next save completes the interrupted one and clears the backup.
    second.save(tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".c.lock", "c"]
    loaded.load(tmp_path / "c")
    assert as_records(loaded) == as_records(second)


def test_entries_are_plain_data(tmp_path: Path) -> None:
    # A CacheEntry built from the JSON equals the one saved: no hidden state outside the files.
    cache = populated()
    cache.save(tmp_path / "c")
    doc = json.loads((tmp_path / "c" / "entries.json").read_text())
    keys = np.load(tmp_path / "c" / "keys.npy", allow_pickle=False)
    first = cache.entries()[0]
    rebuilt = CacheEntry(
        doc["entries"][0]["id"],
        doc["entries"][0]["prefix_hash"],
        doc["entries"][0]["state_text"],
        keys[0],
        CategoricalPrior.from_payload(doc["entries"][0]["prior"]["payload"]),
        doc["entries"][0]["created_step"],
        doc["entries"][0]["last_used_step"],
        doc["entries"][0]["hit_count"],
    )
    assert (rebuilt.id, rebuilt.state_text, rebuilt.scores, rebuilt.hit_count) == (
        first.id,
        first.state_text,
        first.scores,
        first.hit_count,
    )
    np.testing.assert_array_equal(rebuilt.key, first.key)


def test_a_load_during_a_partial_call_does_not_merge_into_the_loaded_entries(tmp_path: Path) -> None:
    other = make()
    look(other, "a cellar with barrels", actions=("a", "b"))
    other.save(tmp_path / "other")

    cache: PriorCache

    def fn(prompt: Prompt, action: str) -> float:
        if action == "c":  # the partial call of the hit below: swap the entries under its feet
            cache.load(tmp_path / "other")
        return -1.0

    cache = make(FakeBackend(fn=fn))
    look(cache, STATES[0], actions=("a", "b"))
    assert cache.entries()[0].id == other.entries()[0].id  # the same id now names another state
    r = look(cache, STATES[0], actions=("a", "b", "c"))
    assert (r.kind, r.partial_calls) == ("exact", 1)
    (loaded,) = cache.entries()
    assert loaded.state_text == "a cellar with barrels" and set(loaded.scores) == {"a", "b"}
    assert loaded.hit_count == 0


def test_loads_racing_lookups_keep_the_invariants(tmp_path: Path) -> None:
    import threading

    populated().save(tmp_path / "c")
    cache = make(capacity=6, refresh_rate=0.3)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(100):
                look(
                    cache,
                    STATES[int(rng.integers(4))] + " " + "x" * int(rng.integers(3)),
                    GOALS[int(rng.integers(2))],
                    actions=("go north", "take key", f"a{int(rng.integers(5))}"),
                )
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for _ in range(10):
        cache.load(tmp_path / "c")
        cache._assert_consistent()
    for t in threads:
        t.join()
    assert not errors, errors
    cache._assert_consistent()
    assert cache.stats()["lookups"] == 400


# --- the adaptive modes' state ------------------------------------------------------------------
def _adaptive_modes_cache(mode: str):
    from priorcache.prior.base import Prompt
    from tests.cache._fakes import FakeBackend, HashEncoder, at_cosine

    settings = {"mode": mode, "refresh_rate": 0.2}
    if mode == "adaptive":
        settings.update(similarity_threshold=0.9, meta={"update_every": 10})

    def backend():  # the same prior everywhere (KL 0): the KL budget opens, so there is state to keep
        return FakeBackend(lambda prompt, action: -float(len(action)))

    cache = PriorCache(CacheConfig.from_dict(settings), HashEncoder(), backend())
    rng = np.random.default_rng(0)
    for i in range(300):
        state = f"room {int(rng.integers(0, 60))}"
        cache.lookup(
            state,
            Prompt("Goal: x\n", state),
            ["go", "take", "open"],
            embedding=at_cosine(float(rng.uniform(0.6, 1))),
            step=i,
        )
        cache.observe_reward(float(rng.random()))
    return cache, (lambda: PriorCache(CacheConfig.from_dict(settings), HashEncoder(), backend()))


@pytest.mark.parametrize("mode", ["adaptive", "kl-budget"])
def test_adaptive_modes_warm_start_from_a_saved_cache(tmp_path, mode):
    cache, fresh = _adaptive_modes_cache(mode)
    cache.save(tmp_path / "c")
    again = fresh()
    assert again.params() != cache.params()
    again.load(tmp_path / "c")
    assert again.params() == cache.params() or mode == "adaptive"
    if mode == "adaptive":  # θ is restored; the antithetic perturbation restarts at the next window
        assert again.controller.meta.center == cache.controller.meta.center
    else:
        assert again.stats()["kl_budget"]["audits"] == cache.stats()["kl_budget"]["audits"] > 0
    # a static cache loading the same save keeps its own parameters
    from tests.cache._fakes import FakeBackend, HashEncoder

    static = PriorCache(CacheConfig(), HashEncoder(), FakeBackend())
    static.load(tmp_path / "c")
    assert static.params()["similarity_threshold"] == 0.92 and len(static) == len(cache)


def test_a_damaged_controller_state_is_refused_and_changes_nothing(tmp_path):
    cache, fresh = _adaptive_modes_cache("kl-budget")
    cache.save(tmp_path / "c")
    _edit_json("entries.json", lambda doc: doc["controller"]["state"]["audits"]["kl"].__setitem__(0, -5.0))(
        tmp_path / "c"
    )
    again = fresh()
    with pytest.raises(CacheFormatError, match="controller"):
        again.load(tmp_path / "c")
    assert len(again) == 0 and again.stats()["kl_budget"]["audits"] == 0


# --- symbolic links -----------------------------------------------------------------------------
def test_saves_through_a_symlinked_directory_update_its_target_and_keep_the_link(tmp_path: Path) -> None:
    real = tmp_path / "disk" / "shared-cache"
    real.mkdir(parents=True)
    link = tmp_path / "cache"
    link.symlink_to(real, target_is_directory=True)
    first = populated()
    first.save(link)  # before: renamed the link away, then "Cannot call rmtree on a symbolic link"
    second = make()
    look(second, "a completely different save with one room")
    second.save(link)
    assert link.is_symlink() and link.resolve() == real
    loaded = make()
    loaded.load(link)
    assert as_records(loaded) == as_records(second)
    loaded.load(real)
    assert as_records(loaded) == as_records(second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "disk"]  # nothing beside the link
    assert sorted(p.name for p in real.parent.iterdir()) == [".shared-cache.lock", "shared-cache"]


def test_a_dangling_symlink_is_saved_through_and_mended(tmp_path: Path) -> None:
    link = tmp_path / "cache"
    link.symlink_to(tmp_path / "not-yet" / "cache")
    populated().save(link)
    assert link.is_symlink() and store.has_saved_cache(link)
    loaded = make()
    loaded.load(link)
    assert as_records(loaded) == as_records(populated())


def test_a_crash_between_the_renames_through_a_symlink_is_recovered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tmp_path / "real"
    link = tmp_path / "link"
    link.symlink_to(real)
    first = populated()
    first.save(link)
    calls: list[Path] = []
    real_rename = store._rename

    def crash_on_second(src: Path, dst: Path) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("power cut")
        real_rename(src, dst)

    monkeypatch.setattr(store, "_rename", crash_on_second)
    with pytest.raises(OSError, match="power cut"):
        make().save(link)
    monkeypatch.undo()
    assert link.is_symlink()
    loaded = make()
    loaded.load(link)  # the backup beside the target is found through the link
    assert as_records(loaded) == as_records(first)


def test_a_symlink_loop_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(CacheFormatError, match="symbolic link loop"):
        populated().save(tmp_path / "a")
    with pytest.raises(CacheFormatError, match="symbolic link loop"):
        make().load(tmp_path / "a")


# --- permissions and leftovers ------------------------------------------------------------------
def test_saved_files_get_the_umask_permissions(tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o027)
    try:
        populated().save(tmp_path / "new" / "c")
    finally:
        os.umask(old)
    mode = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "new" / "c").iterdir()}
    assert mode == {"entries.json": 0o640, "keys.npy": 0o640, "manifest.json": 0o640}
    assert stat.S_IMODE((tmp_path / "new" / "c").stat().st_mode) == 0o750  # before: 0o700 (mkdtemp)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o750


def test_a_killed_saves_temp_directories_are_removed_by_the_next_save(tmp_path: Path) -> None:
    populated().save(tmp_path / "c")
    for name in (".c.tmp-k1ll3d_1", ".c.tmp-k1ll3d_2"):  # left by saves killed mid-write (any age)
        (tmp_path / name).mkdir()
        (tmp_path / name / "keys.npy").write_bytes(b"half")
    (tmp_path / ".other.tmp-k1ll3d_1").mkdir()  # another target's: not this save's to judge
    populated().save(tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".c.lock", ".other.tmp-k1ll3d_1", "c"]


# --- several writers: merge on save ------------------------------------------------------------
def test_merge_keeps_both_writers_entries_and_a_plain_save_replaces(tmp_path: Path) -> None:
    a, b = make(), make()
    for i in range(3):
        look(a, f"room a{i} with a red lamp")
        look(b, f"room b{i} with a blue lamp")
    a.save(tmp_path / "c", merge=True)
    b.save(tmp_path / "c", merge=True)
    merged = make()
    merged.load(tmp_path / "c")
    assert sorted(e.state_text for e in merged.entries()) == sorted(
        [f"room a{i} with a red lamp" for i in range(3)] + [f"room b{i} with a blue lamp" for i in range(3)]
    )
    merged._assert_consistent()
    b.save(tmp_path / "c")  # merge=False: the run's own folder, a plain overwrite
    merged.load(tmp_path / "c")
    assert len(merged) == 3


def test_merging_into_a_save_of_another_encoder_or_backend_is_refused(tmp_path: Path) -> None:
    populated().save(tmp_path / "c")
    before = (tmp_path / "c" / "entries.json").read_bytes()
    for other, message in (
        (PriorCache(CacheConfig(), HashEncoder(name="minilm"), FakeBackend()), "encoder 'fake-hash-bow'"),
        (PriorCache(CacheConfig(), HashEncoder(dim=32), FakeBackend()), "dim 64"),
        (PriorCache(CacheConfig(), HashEncoder(), FakeBackend(name="gpt-9")), "backend 'fake-llm'"),
    ):
        look(other, "a room of the other cache")
        with pytest.raises(CacheFormatError, match=f"cannot merge into .*{message}"):
            other.save(tmp_path / "c", merge=True)
        assert (tmp_path / "c" / "entries.json").read_bytes() == before  # nothing written


def test_merging_into_a_damaged_or_forged_save_is_refused(tmp_path: Path) -> None:
    populated().save(tmp_path / "c")
    _edit_json("entries.json", lambda d: d["entries"][0].update(hit_count=10**400))(tmp_path / "c")
    with pytest.raises(CacheFormatError, match="cannot merge into .*hit_count"):
        make().save(tmp_path / "c", merge=True)
    (tmp_path / "c" / "keys.npy").write_bytes(b"garbage")
    with pytest.raises(CacheFormatError, match="cannot merge into .*keys.npy"):
        make().save(tmp_path / "c", merge=True)


def test_a_merge_into_a_folder_without_a_save_writes_ours(tmp_path: Path) -> None:
    cache = populated()
    cache.save(tmp_path / "new", merge=True)
    loaded = make()
    loaded.load(tmp_path / "new")
    assert as_records(loaded) == as_records(cache)


def test_a_merged_save_is_bounded_by_the_larger_capacity(tmp_path: Path) -> None:
    big = make(capacity=10)
    for i in range(8):
        look(big, f"room {i} of the big cache")
    big.save(tmp_path / "c", merge=True)
    small = make(capacity=4)
    for i in range(4):
        look(small, f"room {i} of the small cache")
    small.save(tmp_path / "c", merge=True)  # 12 distinct entries, the save there holds 8 ≥ K = 4
    loaded = make()
    loaded.load(tmp_path / "c")
    assert len(loaded) == 8  # a small cache does not shrink the shared save, nor grow it past 8
    again = make(capacity=10)
    for i in range(10):
        look(again, f"room {i} of a third cache")
    again.save(tmp_path / "c", merge=True)
    loaded.load(tmp_path / "c")
    assert len(loaded) == 10  # never more than the largest K that saved into it


def _save_three_times(folder: str, name: str, barrier) -> None:
    """One process of the real-process test: three saves of its own new entries to a shared folder."""
    cache = make()
    for i in range(3):
        look(cache, f"{name}: room {i} with a {name} lamp")
        barrier.wait(60)  # both processes save at the same moment
        cache.save(folder, merge=True)


def test_two_processes_saving_to_one_folder_lose_no_entry(tmp_path: Path) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    folder = str(tmp_path / "shared")
    workers = [ctx.Process(target=_save_three_times, args=(folder, name, barrier)) for name in ("red", "blue")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    loaded = make()
    loaded.load(folder)
    # before: 3 of the 6 (the last writer's), or a crash on the other's .shared.old
    assert sorted(e.state_text for e in loaded.entries()) == sorted(
        f"{name}: room {i} with a {name} lamp" for name in ("red", "blue") for i in range(3)
    )
    loaded._assert_consistent()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".shared.lock", "shared"]


def test_a_cache_holding_scores_a_load_would_refuse_is_not_saved(tmp_path: Path) -> None:
    populated().save(tmp_path / "c")
    before = (tmp_path / "c" / "entries.json").read_bytes()
    wild = make(FakeBackend(fn=lambda prompt, action: -2e4))  # a broken backend: no model scores that
    look(wild, "a room scored by a broken backend")
    with pytest.raises(CacheFormatError, match="not saving to .*beyond ±10000 nats.*a load would refuse"):
        wild.save(tmp_path / "c")
    assert (tmp_path / "c" / "entries.json").read_bytes() == before  # the previous save stays


def test_loading_writes_nothing_beside_the_save(tmp_path: Path) -> None:
    populated().save(tmp_path / "shipped" / "c")
    (tmp_path / "shipped" / ".c.lock").unlink()  # a save copied elsewhere, e.g. a test fixture
    make().load(tmp_path / "shipped" / "c")
    assert sorted(p.name for p in (tmp_path / "shipped").iterdir()) == ["c"]
