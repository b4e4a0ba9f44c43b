"""A run's output folder: what may already be in it, and the checkpoint a killed run resumes from.

**Before any work** (:func:`plan_run_folder`): ``--out`` must be new, empty, or hold a run of this
very configuration (replaced, or continued with ``resume``); a run of another configuration is
replaced only with ``overwrite``; a folder holding anything else is refused, as are a file in the
way, a folder that cannot be written, and a ``--cache-path`` inside ``--out`` (or around it).

**The checkpoint** ``<out>/checkpoint/`` holds what the run's files do not:

- ``progress.json``: the seed in training (index into the config's seeds), its finished episodes,
  environment steps and LLM queries so far, the episode count of its last evaluation, and how many
  ``metrics.jsonl`` / ``evals.jsonl`` lines all that accounts for;
- ``agent/`` (weights, optimiser, RNGs, temperature: ``Agent.save``) and ``replay.safetensors``
  (its replay buffer), absent between two seeds;
- ``cache/`` (the prior cache, :mod:`priorcache.cache.store`) and ``cache_runtime.json`` (its
  counters, audit log, clock and refresh RNG), absent for agents without a cache.

It is built in a temp folder beside its place and renamed into it, the previous one kept as
``.checkpoint.old`` until then: a kill at any instant leaves one complete checkpoint. The run writes
its metrics and evaluation lines before the checkpoint that counts them, so the files hold at least
the lines a checkpoint accounts for; resuming cuts them back to those.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from priorcache.agents.base import Agent
from priorcache.cache.prior_cache import PriorCache
from priorcache.cache.store import backup_of, read_state, swap_into_place
from priorcache.errors import CacheFormatError, ConfigError
from priorcache.io import atomic_write_json, make_temp_dir
from priorcache.validation import is_json_int

CHECKPOINT = "checkpoint"
#: What a run writes into its folder; anything else there is not ours to replace.
RUN_ENTRIES = ("config.json", "metrics.jsonl", "evals.jsonl", "summary.json", "cache", CHECKPOINT, "tensorboard")


@dataclass
class Progress:
    """Where a run stands after its last checkpoint (see the module docstring)."""

    seed_index: int = 0
    episodes_done: int = 0
    steps: int = 0
    queries: int = 0
    last_eval: int = -1  # episodes done at the seed's last evaluation; -1: not evaluated yet
    metrics_lines: int = 0
    eval_lines: int = 0

    @classmethod
    def from_json(cls, data: Any, where: Path) -> Progress:
        names = [f.name for f in fields(cls)]
        if not isinstance(data, dict) or sorted(data) != sorted(names):
            raise ConfigError(f"{where} is damaged: it must hold exactly {names}")
        if not all(is_json_int(v) and -1 <= v <= 2**53 for v in data.values()):
            raise ConfigError(f"{where} is damaged: every field must be an integer ≥ -1")
        return cls(**data)


# --- the folder, before any work ------------------------------------------------------------------
@dataclass
class RunFolder:
    """What :func:`plan_run_folder` found: ``state`` is "new" (nothing of ours there), "replace"
    (a run whose files are cleared first), "resume" (a killed run of this configuration) or
    "finished" (with ``resume``: the run is complete, nothing to do)."""

    out: Path
    state: str
    note: str | None = None  # what the user should be told (a run replaced, resumed, …)

    def prepare(self) -> None:
        """Create the folder and, for "replace", remove the previous run's files (never a symlinked
        ``cache``: saves write through the link)."""
        self.out.mkdir(parents=True, exist_ok=True)
        if self.state != "replace":
            return
        for entry in self.out.iterdir():
            if entry.name not in RUN_ENTRIES and not _is_leftover(entry.name):
                continue
            if entry.is_symlink() or entry.name.endswith(".lock"):  # a lock file must outlive its holders
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def plan_run_folder(
    out: Path, config_json: dict[str, Any], cache_path: Path | None, *, resume: bool, overwrite: bool
) -> RunFolder:
    """Check ``out`` (and ``cache_path`` against it) for a run of ``config_json``; ConfigError
    naming the problem. Reads only: nothing is written."""
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    out = Path(out)
    _check_cache_path(out, cache_path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder (new, empty, or a run of this configuration)")
    _check_writable(out, "--out")
    if not out.exists() or not any(out.iterdir()):
        return RunFolder(out, "new")
    foreign = sorted(e.name for e in out.iterdir() if e.name not in RUN_ENTRIES and not _is_leftover(e.name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ConfigError(
            f"refusing to write into --out {out}: it holds files that are not a priorcache run ({shown}); "
            "give a new or empty folder"
        )
    if not any(e.name in RUN_ENTRIES for e in out.iterdir()):
        return RunFolder(out, "replace")  # only leftovers of an earlier run (temps, locks)
    saved = _saved_config(out)
    same = saved is not None and saved == _normalised(config_json)
    if resume:
        if saved is None:
            return RunFolder(out, "replace", f"--resume: no run to continue in {out}; starting it")
        if not same:
            differs = _differences(saved, config_json)
            raise ConfigError(
                f"--resume: {out} holds a run of another configuration (differs in {differs}); "
                "give the same settings as that run, or --overwrite to replace it"
            )
        if is_finished(out):
            return RunFolder(out, "finished", f"the run in {out} is already finished; nothing to resume")
        return RunFolder(out, "resume", f"resuming the run in {out}")
    if same:
        return RunFolder(out, "replace", f"replacing the earlier run of this configuration in {out}")
    if not overwrite:
        what = "another configuration" if saved is not None else "an unreadable configuration"
        differs = f" (differs in {_differences(saved, config_json)})" if saved is not None else ""
        raise ConfigError(
            f"--out {out} holds a run of {what}{differs}; use --overwrite to replace it, or another --out"
        )
    return RunFolder(out, "replace", f"--overwrite: replacing the run in {out}")


def is_finished(out: Path) -> bool:
    """Whether ``out`` holds a finished run's summary (a partial one is marked ``"partial"``)."""
    try:
        summary = json.loads((Path(out) / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and bool(summary) and not summary.get("partial")


def _is_leftover(name: str) -> bool:
    """A temp or backup file of one of our entries (``.summary.json.x1y2.tmp``, ``.cache.old``, …)."""
    return name.startswith(".") and any(name[1:].startswith(entry) for entry in RUN_ENTRIES)


def _normalised(data: Any) -> Any:
    return json.loads(json.dumps(data, sort_keys=True, default=str))


def _saved_config(out: Path) -> dict[str, Any] | None:
    try:
        saved = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def _differences(saved: dict[str, Any] | None, config_json: dict[str, Any]) -> str:
    mine = _normalised(config_json)
    keys = sorted(k for k in set(saved or {}) | set(mine) if (saved or {}).get(k) != mine.get(k))
    return ", ".join(keys) or "nothing visible"


def _check_writable(path: Path, what: str) -> None:
    """ConfigError unless ``path`` (or, when it does not exist yet, its nearest existing parent) is
    a folder this process may write into: found now rather than after the run."""
    probe = Path(path)
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{what} {path}: {probe} is a file, so the folder cannot be created")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: cannot write into {probe} (read-only or no permission)")


def _check_cache_path(out: Path, cache_path: Path | None) -> None:
    if cache_path is None:
        return
    a, b = Path(out).resolve(), Path(cache_path).resolve()
    if a == b or a in b.parents or b in a.parents:
        raise ConfigError(
            f"--cache-path {cache_path} and --out {out} overlap; the cache must live outside the run folder "
            "(the run saves its own copy in --out/cache)"
        )
    if b.exists() and not b.is_dir():
        raise ConfigError(f"--cache-path {cache_path} is a file; give a folder")
    _check_writable(b.parent if not b.exists() else b, "--cache-path")


# --- the checkpoint -----------------------------------------------------------------------------
def write_checkpoint(out: Path, progress: Progress, agent: Agent | None, cache: PriorCache | None) -> None:
    """Replace ``<out>/checkpoint`` by one holding ``progress``, ``agent`` and ``cache`` (atomic)."""
    out = Path(out)
    final = out / CHECKPOINT
    for stale in out.glob(f".{CHECKPOINT}.tmp-*"):  # left by a kill mid-write; this run holds --out's lock
        shutil.rmtree(stale, ignore_errors=True)
    tmp = make_temp_dir(out, f".{CHECKPOINT}.tmp-")
    try:
        if agent is not None:
            agent.save(tmp / "agent")
            if agent.learns:
                agent.save_replay_buffer(tmp / "replay.safetensors")
        if cache is not None:
            cache.save(tmp / "cache")
            atomic_write_json(tmp / "cache_runtime.json", cache.runtime_state())
        atomic_write_json(tmp / "progress.json", asdict(progress))  # last: a folder without it is no checkpoint
        swap_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_progress(out: Path) -> tuple[Progress, Path] | None:
    """The last checkpoint's progress and folder (the backup a kill between two renames left, when
    that is all there is), or None when the run never checkpointed."""
    for folder in (Path(out) / CHECKPOINT, backup_of(Path(out) / CHECKPOINT)):
        where = folder / "progress.json"
        if where.is_file():
            try:
                data = json.loads(where.read_text())
            except ValueError as e:
                raise ConfigError(f"{where} is damaged: {e}") from None
            return Progress.from_json(data, where), folder
    return None


def restore_cache(folder: Path, cache: PriorCache) -> None:
    """Load the checkpoint's cache and its run-time state into ``cache``."""
    if not (folder / "cache").is_dir():
        raise ConfigError(f"{folder} is damaged: the run has a prior cache, the checkpoint none")
    try:
        runtime = json.loads((folder / "cache_runtime.json").read_text())
        if not isinstance(runtime, dict):
            raise ValueError("not a JSON object")
        cache.load_runtime_state(runtime)
        _, state = read_state(folder / "cache")
        cache.load_state_dict(state)
    except (OSError, ValueError, CacheFormatError) as e:
        raise ConfigError(f"{folder}: the checkpointed cache does not load: {e}") from None


def restore_agent(folder: Path, agent: Agent, components: dict[str, Any]) -> Agent:
    """The checkpoint's agent, rebuilt with ``components``, with its replay buffer."""
    loaded = type(agent).load(folder / "agent", **{k: components[k] for k in type(agent).components})
    if loaded.learns:
        loaded.load_replay_buffer(folder / "replay.safetensors")
    return loaded


def remove_checkpoint(out: Path) -> None:
    for folder in (Path(out) / CHECKPOINT, backup_of(Path(out) / CHECKPOINT)):
        shutil.rmtree(folder, ignore_errors=True)


def read_lines(path: Path, keep: int) -> list[dict[str, Any]]:
    """The first ``keep`` JSON lines of ``path`` (a checkpoint's count; later ones are cut)."""
    lines = Path(path).read_text().splitlines() if Path(path).exists() else []
    if len(lines) < keep:
        raise ConfigError(f"{path} has {len(lines)} lines, the checkpoint counts {keep}: the run folder was edited")
    try:
        return [json.loads(line) for line in lines[:keep]]
    except ValueError as e:
        raise ConfigError(f"{path} is damaged: {e}") from None
