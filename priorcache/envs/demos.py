"""Demonstrations: oracle episodes on training games, recorded into a dataset folder (``priorcache demos``).

``record_demos("babyai", shots=5)`` plays one episode per training game (game seeds
``game_seeds(env, "train", shots)``, built with ``make_split_env``), each action being the
environment's ``oracle_action()``, and writes the folder (default ``runs/demos/ENV-shotsN``):

* ``demos.jsonl``: one line per step, ``{"env", "game_seed", "episode", "step", "objective",
  "state_text", "admissible_actions", "action", "reward"}`` (``state_text`` and the admissible
  actions are those the action was chosen in);
* ``meta.json``: ``format`` (``"priorcache-demos"``), ``version``, env name, variant, shots, game
  seeds, split ``"train"``, the oracle's kind, and per episode its success, return and steps;
* ``minari/`` when ``minari`` (with ``h5py``) is installed: the same episodes as a Minari dataset
  (``minari.create_dataset_from_buffers``, HDF5) whose observations are ``state_text`` and actions
  the action strings, both ``gymnasium.spaces.Text``; ``meta["minari"]`` names its id and path, or
  says why it was not written.

Every episode must be won (a demonstration replays to success); an oracle that fails is an error
naming the game seed, and nothing is written. The folder is built in a temp folder beside the
target and renamed into place, so a crash never leaves a half-written dataset; an earlier demos
folder at the target is replaced, any other existing path is refused. ``read_demos`` reads the
steps back and checks the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from priorcache.envs.registry import environment_info, game_seeds, make_split_env, require_text_env
from priorcache.errors import ConfigError
from priorcache.io import atomic_write_json, atomic_write_text

FORMAT = "priorcache-demos"
VERSION = 1
STEPS_FILE = "demos.jsonl"
META_FILE = "meta.json"
MINARI_DIR = "minari"
#: The keys of one step line, and their types.
STEP_KEYS: dict[str, type | tuple[type, ...]] = {
    "env": str,
    "game_seed": int,
    "episode": int,
    "step": int,
    "objective": str,
    "state_text": str,
    "admissible_actions": list,
    "action": str,
    "reward": (int, float),
}


def default_out(env: str, shots: int) -> Path:
    """``runs/demos/ENV-shotsN`` (a ``family:variant`` name with ``-`` for ``:``)."""
    return Path("runs") / "demos" / f"{env.strip().replace(':', '-')}-shots{shots}"


def is_demos_folder(path: Path) -> bool:
    """True iff ``path`` is a folder whose ``meta.json`` says it is a demos dataset (any version)."""
    try:
        meta = json.loads((Path(path) / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def _variant(env: Any, name: str) -> str | None:
    info = environment_info(name)
    if info is None or info.variant_kwarg is None:
        return None
    value = getattr(env, info.variant_kwarg, None)
    return value if isinstance(value, str) else None


def record_episode(env: Any, name: str, game_seed: int, episode: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Play one episode of ``env`` by its oracle; return its step lines and its summary.

    Raises:
        ConfigError: the environment has no oracle, or the oracle does not win (naming the game seed).
    """
    _, info = env.reset()
    steps: list[dict[str, Any]] = []
    total, won = 0.0, False
    while True:
        try:
            action = env.oracle_action()
        except ConfigError as exc:
            raise ConfigError(f"{name} game_seed={game_seed}: {exc}") from exc
        _, reward, terminated, truncated, next_info = env.step(action)
        steps.append(
            {
                "env": name,
                "game_seed": game_seed,
                "episode": episode,
                "step": len(steps),
                "objective": str(info["objective"]),
                "state_text": str(info["state_text"]),
                "admissible_actions": [str(a) for a in info["admissible_actions"]],
                "action": action,
                "reward": float(reward),
            }
        )
        total += float(reward)
        info = next_info
        if terminated or truncated:
            won = bool(info["won"])
            break
    if not won:
        why = "it ran out of steps" if truncated else "the episode ended without a win"
        raise ConfigError(
            f"the oracle of {name} failed on training game_seed={game_seed}: {why} after {len(steps)} steps "
            f"(raise --max-steps, or report the game)"
        )
    summary = {
        "episode": episode,
        "game_seed": game_seed,
        "variant": _variant(env, name),
        "success": won,
        "return": total,
        "steps": len(steps),
        "final_state_text": str(info["state_text"]),
    }
    return steps, summary


@contextlib.contextmanager
def _minari_root(root: Path) -> Iterator[None]:
    saved = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = saved


def _minari_id(name: str, shots: int) -> str:
    safe = "".join(c if c.isalnum() else "_" for c in name)
    return f"priorcache/{safe}-shots{shots}-v0"


Episode = tuple[list[dict[str, Any]], dict[str, Any]]


def write_minari(folder: Path, name: str, shots: int, episodes: list[Episode]) -> dict[str, Any]:
    """Write the episodes as a Minari dataset under ``folder/minari``; return what ``meta["minari"]`` says."""
    try:
        import minari
        from minari.data_collector import EpisodeBuffer
    except ImportError as exc:
        return {"written": False, "reason": f"minari is not installed ({exc}); pip install 'minari[hdf5]'"}
    from gymnasium import spaces

    from priorcache.envs.base import MAX_OBSERVATION_CHARS, PRINTABLE

    buffers = []
    for index, (steps, summary) in enumerate(episodes):
        buffers.append(
            EpisodeBuffer(
                id=index,
                seed=summary["game_seed"],
                observations=[s["state_text"] for s in steps] + [summary["final_state_text"]],
                actions=[s["action"] for s in steps],
                rewards=[s["reward"] for s in steps],
                terminations=[False] * (len(steps) - 1) + [True],
                truncations=[False] * len(steps),
            )
        )
    dataset_id = _minari_id(name, shots)
    with _minari_root(folder / MINARI_DIR), warnings.catch_warnings():
        # Minari asks for an author, e-mail, code link and env spec, none of which a local dataset has.
        warnings.simplefilter("ignore", UserWarning)
        minari.create_dataset_from_buffers(
            dataset_id,
            buffers,
            observation_space=spaces.Text(MAX_OBSERVATION_CHARS, min_length=0, charset=PRINTABLE + "\n\t"),
            action_space=spaces.Text(200, min_length=1, charset=PRINTABLE),
            algorithm_name=f"{name} oracle",
            description=f"priorcache oracle demonstrations on {shots} training games of {name}",
            data_format="hdf5",
        )
    return {"written": True, "dataset_id": dataset_id, "path": f"{MINARI_DIR}/{dataset_id}/data"}


def check_out(out: Path) -> None:
    """Refuse an existing ``out`` that is not an earlier demos folder."""
    if out.exists() or out.is_symlink():
        if not out.is_dir() or not is_demos_folder(out):
            raise ConfigError(f"{out} exists and is not a demos folder; choose another --out or remove it")


def record_demos(
    name: str,
    shots: int,
    out: str | os.PathLike[str] | None = None,
    max_steps: int | None = None,
    progress: bool = True,
    minari_dataset: bool = True,
) -> Path:
    """Record ``shots`` oracle episodes on the first training games of ``name``; return the folder.

    Raises:
        UnknownEnvironmentError: unknown environment.
        ConfigError: ``shots`` < 1 or more than the training games, ``out`` exists and is not a
            demos folder, the environment has no oracle, or the oracle fails on a game.
    """
    if not isinstance(shots, int) or isinstance(shots, bool) or shots < 1:
        raise ConfigError(f"--shots must be an int >= 1, got {shots!r}")
    seeds = game_seeds(name, "train", shots)  # an unknown environment is refused here
    require_text_env(name, "priorcache demos (oracle episodes; control tasks: envs.control_demos)")
    target = Path(out) if out is not None else default_out(name, shots)
    check_out(target)
    kwargs = {} if max_steps is None else {"max_episode_steps": max_steps}

    from tqdm import tqdm

    episodes: list[Episode] = []
    kind = None
    for episode, seed in enumerate(tqdm(seeds, desc=f"demos {name}", unit="episode", disable=not progress)):
        env = make_split_env(name, "train", seed, **kwargs)
        try:
            kind = getattr(env, "oracle_kind", None)
            episodes.append(record_episode(env, name, seed, episode))
        finally:
            env.close()

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    tmp.chmod(0o755)
    try:
        lines = [json.dumps(step, sort_keys=True) for steps, _ in episodes for step in steps]
        atomic_write_text(tmp / STEPS_FILE, "\n".join(lines) + "\n")
        minari_info = (
            write_minari(tmp, name, shots, episodes) if minari_dataset else {"written": False, "reason": "not asked"}
        )
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "env": name,
            "variant": episodes[0][1]["variant"],
            "shots": shots,
            "split": "train",
            "game_seeds": seeds,
            "max_episode_steps": max_steps,
            "oracle_kind": kind,
            "episodes": [{k: v for k, v in s.items() if k != "final_state_text"} for _, s in episodes],
            "minari": minari_info,
        }
        atomic_write_json(tmp / META_FILE, meta)
        _replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _replace(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` onto ``target``; an earlier demos folder there is moved aside first, then removed."""
    check_out(target)  # it may have appeared while recording
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_demos_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``meta.json`` of a demos folder, checked to be one of this format and version."""
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a demos folder (no such directory)")
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except OSError:
        raise ConfigError(f"{folder} is not a demos folder: {META_FILE} is missing") from None
    except ValueError as exc:
        raise ConfigError(f"{folder / META_FILE} is damaged: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ConfigError(f"{folder} is not a demos folder: {META_FILE} is not of format {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise ConfigError(f"{folder} holds demos format version {meta.get('version')!r}; this reader knows {VERSION}")
    for key in ("env", "shots", "game_seeds", "episodes"):
        if key not in meta:
            raise ConfigError(f"{folder / META_FILE} is damaged: no {key!r}")
    return meta


def read_demos(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The steps of a demos folder, in order; the folder is checked against its ``meta.json``.

    Raises:
        ConfigError: not a demos folder, another format version, or damaged (a bad line, a
            missing or mistyped key, steps that disagree with the recorded episodes).
    """
    folder = Path(path)
    meta = read_demos_meta(folder)
    try:
        text = (folder / STEPS_FILE).read_text(encoding="utf-8")
    except OSError:
        raise ConfigError(f"{folder} is damaged: {STEPS_FILE} is missing") from None
    steps: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{folder / STEPS_FILE} line {number}"
        try:
            step = json.loads(line)
        except ValueError as exc:
            raise ConfigError(f"{where} is damaged: {exc}") from None
        if not isinstance(step, dict):
            raise ConfigError(f"{where} is damaged: not a JSON object")
        for key, kind in STEP_KEYS.items():
            if not isinstance(step.get(key), kind) or isinstance(step.get(key), bool):
                raise ConfigError(f"{where} is damaged: {key!r} is missing or not a {kind}")
        steps.append(step)
    try:
        recorded = [(e["episode"], e["game_seed"], e["steps"]) for e in meta["episodes"]]
    except (TypeError, KeyError):
        raise ConfigError(f"{folder / META_FILE} is damaged: bad 'episodes'") from None
    found: dict[tuple[int, int], int] = {}
    for step in steps:
        key = (step["episode"], step["game_seed"])
        if step["step"] != found.get(key, 0):
            raise ConfigError(f"{folder / STEPS_FILE} is damaged: episode {key[0]} steps out of order")
        found[key] = step["step"] + 1
    if sorted(found.items()) != sorted(((e, s), n) for e, s, n in recorded):
        raise ConfigError(f"{folder / STEPS_FILE} does not match the episodes recorded in {META_FILE}")
    if [s for _, s, _ in recorded] != list(meta["game_seeds"]):
        raise ConfigError(f"{folder / META_FILE} is damaged: its episodes are not its game seeds")
    return steps


__all__ = [
    "FORMAT",
    "VERSION",
    "default_out",
    "is_demos_folder",
    "read_demos",
    "read_demos_meta",
    "record_demos",
    "record_episode",
]
