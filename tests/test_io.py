"""Atomic writes (through symlinks, with the umask's permissions, cleaning killed writes' temps),
folder locks across processes, and the cache root."""

import json
import multiprocessing
import os
import stat
import time
from pathlib import Path

import pytest

from priorcache import io
from priorcache.errors import ConfigError


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


# --- symbolic links ---------------------------------------------------------------------------
def test_a_write_through_a_symlink_updates_the_target_and_keeps_the_link(tmp_path):
    real = tmp_path / "data" / "summary.json"
    real.parent.mkdir()
    real.write_text("{}")
    link = tmp_path / "summary.json"
    link.symlink_to(real)
    io.atomic_write_json(link, {"episodes": 3})
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert json.loads(real.read_text()) == {"episodes": 3}
    # the temp lived beside the target and is gone; nothing was left beside the link
    assert sorted(p.name for p in real.parent.iterdir()) == ["summary.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "summary.json"]


def test_a_relative_symlink_is_followed_from_its_own_folder(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    link = tmp_path / "a" / "x.txt"
    link.symlink_to(Path("..") / "b" / "x.txt")
    io.atomic_write_text(link, "through")
    assert link.is_symlink() and (tmp_path / "b" / "x.txt").read_text() == "through"


def test_a_dangling_symlink_is_written_through_and_mended(tmp_path):
    link = tmp_path / "out.json"
    target = tmp_path / "not" / "yet" / "out.json"
    link.symlink_to(target)
    io.atomic_write_json(link, {"ok": True})
    assert link.is_symlink() and json.loads(target.read_text()) == {"ok": True}
    assert json.loads(link.read_text()) == {"ok": True}


def test_a_symlink_loop_is_refused_with_a_clear_error(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    for path in (tmp_path / "a", tmp_path / "a" / "inside.json"):
        with pytest.raises(ConfigError, match="symbolic link loop"):
            io.atomic_write_json(path, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_build_once_builds_through_a_symlink(tmp_path):
    real = tmp_path / "store" / "model"
    link = tmp_path / "model"
    link.symlink_to(real)

    def read(folder: Path):
        return (folder / "done").read_text() if (folder / "done").is_file() else None

    assert io.build_once(link, read, lambda tmp: (tmp / "done").write_text("built")) == "built"
    assert link.is_symlink() and (real / "done").read_text() == "built"


# --- permissions ------------------------------------------------------------------------------
@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def test_written_files_and_folders_get_the_umask_permissions(tmp_path, umask_027):
    io.atomic_write_json(tmp_path / "new" / "summary.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "new" / "summary.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o750
    built = io.build_once(
        tmp_path / "built",
        lambda f: f.name if (f / "x").exists() else None,
        lambda tmp: (tmp / "x").write_text("x"),
    )
    assert built == "built"
    assert stat.S_IMODE((tmp_path / "built").stat().st_mode) == 0o750
    assert stat.S_IMODE(io.make_temp_dir(tmp_path, ".t-").stat().st_mode) == 0o750
    with io.folder_lock(tmp_path / "locked"):
        assert stat.S_IMODE(io.lock_file_of(tmp_path / "locked").stat().st_mode) == 0o640
    assert os.umask(0o027) == 0o027  # writing did not change the process's umask


# --- leftovers of killed writes ---------------------------------------------------------------
def test_old_leftover_temps_of_the_same_file_are_removed_by_the_next_write(tmp_path):
    old = time.time() - io.STALE_FILE_TMP_SECONDS - 60
    stale = tmp_path / ".summary.json.k1ll3d_x.tmp"  # a write killed long ago (tempfile's naming)
    fresh = tmp_path / ".summary.json.inflight.tmp"  # another process's write in progress
    other = tmp_path / ".metrics.jsonl.k1ll3d_x.tmp"  # another file's leftover: not ours to judge
    plot = tmp_path / ".summary.json.k1ll3d_x.png"  # another writer's suffix
    for p in (stale, fresh, other, plot):
        p.write_text("half")
    for p in (stale, other, plot):
        os.utime(p, (old, old))
    io.atomic_write_json(tmp_path / "summary.json", {"a": 1})
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["summary.json", fresh.name, other.name, plot.name])


# --- folder_lock ------------------------------------------------------------------------------
def test_folder_lock_excludes_a_second_holder_until_released(tmp_path):
    target = tmp_path / "runs" / "seed0"
    with io.folder_lock(target) as held:
        assert held and io.lock_file_of(target) == tmp_path / "runs" / ".seed0.lock"
        with io.folder_lock(target, blocking=False) as second:
            assert second is False
    with io.folder_lock(target, blocking=False) as again:
        assert again is True
    assert not target.exists()  # a lock creates its lock file, not the folder it guards


def test_shared_locks_coexist_but_exclude_a_writer(tmp_path):
    target = tmp_path / "cache"
    with io.folder_lock(target, shared=True), io.folder_lock(target, blocking=False, shared=True) as reader:
        assert reader is True
        with io.folder_lock(target, blocking=False) as writer:
            assert writer is False


def test_a_link_and_its_target_share_one_lock(tmp_path):
    real = tmp_path / "real"
    link = tmp_path / "link"
    link.symlink_to(real)
    with io.folder_lock(real), io.folder_lock(link, blocking=False) as held:
        assert held is False


def _hold_lock(path: str, locked, release) -> None:
    with io.folder_lock(Path(path)):
        locked.set()
        release.wait(30)


def test_folder_lock_excludes_another_process(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    locked, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path / "c"), locked, release))
    holder.start()
    try:
        assert locked.wait(60)
        with io.folder_lock(tmp_path / "c", blocking=False) as held:
            assert held is False
    finally:
        release.set()
        holder.join(60)
    assert holder.exitcode == 0
    with io.folder_lock(tmp_path / "c", blocking=False) as held:
        assert held is True  # released when the holder let go


def test_build_once_builds_once_when_two_builders_race(tmp_path):
    """The second builder waits for the first's folder instead of building its own."""
    import threading

    builds = []

    def build(tmp: Path) -> None:
        builds.append(tmp)
        time.sleep(0.3)  # long enough for the other thread to arrive while this one builds
        (tmp / "done").write_text("built")

    def read(folder: Path):
        return (folder / "done").read_text() if (folder / "done").is_file() else None

    found = []
    threads = [threading.Thread(target=lambda: found.append(io.build_once(tmp_path / "m", read, build))) for _ in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert found == ["built", "built"] and len(builds) == 1
