"""Demonstrations of the continuous-control tasks, on training task instances only (F8 for control).

``record_control_demos("metaworld:push-v3", shots=5)`` plays one episode on each of the first
``shots`` training instances (``game_seeds(env, "train", shots)``, built with ``make_split_env``)
and returns them as ``ControlDemos``: observations, actions in [-1, 1], the ``skill_label`` of each
step, the episode index of each step, and the rewards. Who demonstrates:

* **MetaWorld**: MetaWorld's scripted expert for the task (``MetaWorldEnv.scripted_action``). An
  episode is recorded until ``HOLD_STEPS`` (10) steps after MetaWorld first reports success (the
  expert holding the object at the goal); an expert that does not succeed within the episode is an
  error naming the instance. These are cheap (about 70 steps each) and recorded afresh on every call.
* **MuJoCo locomotion**: a **Stable-Baselines3 SAC demonstrator**: SB3's ``SAC("MlpPolicy")`` with its
  default hyper-parameters (replay buffer sized to the budget), trained for ``budget`` environment
  steps (default ``DEMONSTRATOR_BUDGETS``) on the first training instance with seed ``seed``; its
  deterministic (mean) actions then play full episodes on the training instances. It is a short
  run, not an expert: the returns it reaches are recorded with the demonstrations
  (``episode_returns``; the file also keeps its training episodes' returns). Training takes
  minutes, so the demonstrations (never the model) are saved under ``cache_root() / "control_demos"``
  as one ``.npz`` of observations, actions, rewards and episode indices (written atomically, read
  back with ``allow_pickle=False``; the skills are labelled on reading, by the current rule), keyed
  by environment, seed, budget and episode length, and reused: a file holds
  ``max(shots, POOL_EPISODES)`` episodes on the first training instances, and a call for fewer shots
  takes the first ones, so 5- and 10-shot priors share one demonstrator (a call for more shots than
  a saved file holds trains again and replaces it).

Bad input (``shots`` < 1, a negative seed, an environment without a demonstrator, a budget for a
scripted expert) and a damaged or foreign saved file are ConfigErrors that say what to do.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from priorcache.envs.registry import environment_info, game_seeds, make_split_env
from priorcache.errors import ConfigError
from priorcache.io import atomic_path, cache_root
from priorcache.validation import is_int

#: Environment steps the SAC demonstrator trains for, per MuJoCo task. Measured here (seed 0, SB3 SAC at
#: 23-28 steps/s on 2 cores shared with other jobs, 12-20 min each; returns of the 10 saved episodes):
#: Walker2d 20k walks forward at 0.35-1.0 m/s for 150-370 steps before falling (returns 261-493);
#: HalfCheetah 20k still stood (return about -200 at 15k), 30k creeps forward nose-down at about
#: 0.2 m/s (returns -14 to 145); Ant 20k does not walk: it mostly flips onto its back and lies
#: there (returns -12 to 149). Larger budgets cost hours here; pass ``budget=`` for a better demonstrator.
DEMONSTRATOR_BUDGETS = {"halfcheetah": 30_000, "walker2d": 20_000, "ant": 20_000}
#: Steps a scripted demonstration goes on after its first success: the expert holding the object at
#: the goal, so that the "hold ... at the goal" skill has demonstration steps too.
HOLD_STEPS = 10
#: Episodes a saved demonstrator file holds at least (5- and 10-shot priors share one).
POOL_EPISODES = 10
FORMAT = "priorcache-control-demos"
VERSION = 1
ARRAYS = ("observations", "actions", "episode", "rewards")


@dataclass(frozen=True)
class ControlDemos:
    """Demonstration steps of one environment, in order, episode after episode."""

    env_name: str
    observations: np.ndarray  # (N, obs_dim) float32
    actions: np.ndarray  # (N, act_dim) float32, in [-1, 1]
    skills: list[str]  # (N,) skill_label of each step
    episode: np.ndarray  # (N,) int, which demonstration episode each step is from
    rewards: np.ndarray  # (N,)
    #: Who demonstrated ("MetaWorld scripted expert SawyerPushV3Policy", "Stable-Baselines3 SAC demonstrator ...").
    demonstrator: str = ""
    #: The training instance of each episode.
    game_seeds: tuple[int, ...] = ()
    #: Per episode: its return and whether it succeeded (MetaWorld; always False on locomotion).
    episode_returns: tuple[float, ...] = ()
    episode_success: tuple[bool, ...] = ()
    #: The saved file the demonstrations were read from or written to (None: recorded afresh, not saved).
    path: Path | None = None


def _task(env_name: Any) -> tuple[str, str]:
    """(family, task) of a control environment name; ConfigError for one without a demonstrator."""
    if not isinstance(env_name, str) or environment_info(env_name) is None:
        raise ConfigError(
            f"no control demonstrator for {env_name!r}: name a task such as mujoco:halfcheetah or metaworld:push-v3"
        )
    family, _, task = (part.strip() for part in env_name.strip().partition(":"))
    info = environment_info(family)
    if info is None or info.kind != "control":
        raise ConfigError(
            f"{env_name!r} is a text environment: its demonstrations come from its oracle (priorcache demos), "
            "not from a control demonstrator"
        )
    if not task:
        raise ConfigError(f"name the task of {family}: one of {', '.join(f'{family}:{v}' for v in info.variants)}")
    return family, task


def _check_int(name: str, value: Any, low: int) -> int:
    if not is_int(value) or value < low:
        raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def record_control_demos(
    env_name: str,
    shots: int,
    seed: int = 0,
    *,
    budget: int | None = None,
    max_episode_steps: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> ControlDemos:
    """``shots`` demonstration episodes of ``env_name`` on its first training instances (module docstring).

    Args:
        env_name: ``"metaworld:TASK"`` or ``"mujoco:TASK"``.
        shots: demonstration episodes, >= 1.
        seed: the SAC demonstrator's training seed and the episodes' reset seed.
        budget: environment steps of the SAC demonstrator (MuJoCo only; default ``DEMONSTRATOR_BUDGETS``).
        max_episode_steps: episode length of the demonstrations (default the environment's).
        cache_dir: where saved demonstrations live (default ``cache_root() / "control_demos"``).
        progress: show a progress bar while the demonstrator trains.

    Raises:
        ConfigError: bad ``shots``, ``seed`` or ``budget``; an environment without a demonstrator; a
            scripted expert that fails on a training instance; a damaged saved file.
        UnknownEnvironmentError: an unknown task of a control family.
    """
    family, task = _task(env_name)
    name = f"{family}:{task}"
    shots = _check_int("shots", shots, 1)
    seed = _check_int("seed", seed, 0)
    seeds = game_seeds(name, "train", shots)
    kwargs = (
        {}
        if max_episode_steps is None
        else {"max_episode_steps": _check_int("max_episode_steps", max_episode_steps, 1)}
    )
    if family == "metaworld":
        if budget is not None:
            raise ConfigError(f"{name} is demonstrated by MetaWorld's scripted expert, which takes no training budget")
        return _scripted_demos(name, seeds, seed, kwargs)
    # An unknown task is refused here (the environment names the choices); a saved file is checked
    # against this environment's spaces, and its steps are labelled by its skill rule.
    probe = make_split_env(name, "train", seeds[0])
    try:
        if task not in DEMONSTRATOR_BUDGETS:
            raise ConfigError(f"{name} has no SAC demonstrator budget; known: {sorted(DEMONSTRATOR_BUDGETS)}")
        budget = DEMONSTRATOR_BUDGETS[task] if budget is None else _check_int("budget", budget, 1)
        path = demos_path(name, seed, budget, max_episode_steps, cache_dir)
        key = {"env": name, "seed": seed, "budget": budget, "max_episode_steps": max_episode_steps}
        if path.exists():
            demos = _read(path, key, probe)
            if len(demos.game_seeds) >= shots:
                return _first_episodes(demos, shots)
        pool = game_seeds(name, "train", max(shots, POOL_EPISODES))
        demos = _sac_demos(name, pool, seed, budget, kwargs, progress, key, path)
        return _first_episodes(demos, shots)
    finally:
        probe.close()


def demos_path(
    env_name: str,
    seed: int,
    budget: int,
    max_episode_steps: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Where the SAC demonstrator's demonstrations of ``env_name`` are saved (``cache_dir`` defaults to
    ``cache_root() / "control_demos"``)."""
    family, task = _task(env_name)
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / "control_demos"
    steps_tag = max_episode_steps if max_episode_steps is not None else "default"
    return root / f"{family}-{task}-seed{seed}-budget{budget}-steps{steps_tag}-v{VERSION}.npz"


# --------------------------------------------------------------------------- playing episodes


def _play(name: str, game_seed: int, seed: int, kwargs: dict[str, Any], act: Any, after_success: int | None) -> dict:
    """One episode on training instance ``game_seed``: act(env, obs) chooses each action; the episode
    stops ``after_success`` steps after the first success (None: it runs to its end)."""
    env = make_split_env(name, "train", game_seed, **kwargs)
    try:
        obs, info = env.reset(seed=seed)
        rows: dict[str, list[Any]] = {"observations": [], "actions": [], "skills": [], "rewards": []}
        success, since_success = False, 0
        while True:
            action = np.clip(np.asarray(act(env, obs), dtype=np.float32), -1.0, 1.0)
            rows["observations"].append(obs)
            rows["actions"].append(action)
            rows["skills"].append(env.skill_label(obs, action))
            obs, reward, terminated, truncated, info = env.step(action)
            rows["rewards"].append(float(reward))
            if success:
                since_success += 1
            success = success or bool(info["success"])
            if terminated or truncated or (after_success is not None and success and since_success >= after_success):
                break
        return {**rows, "success": success}
    finally:
        env.close()


def _assemble(name: str, episodes: list[dict], game_seed_list: list[int], demonstrator: str) -> ControlDemos:
    return ControlDemos(
        env_name=name,
        observations=np.asarray([o for e in episodes for o in e["observations"]], dtype=np.float32),
        actions=np.asarray([a for e in episodes for a in e["actions"]], dtype=np.float32),
        skills=[s for e in episodes for s in e["skills"]],
        episode=np.asarray([i for i, e in enumerate(episodes) for _ in e["rewards"]], dtype=np.int64),
        rewards=np.asarray([r for e in episodes for r in e["rewards"]], dtype=np.float64),
        demonstrator=demonstrator,
        game_seeds=tuple(int(s) for s in game_seed_list),
        episode_returns=tuple(float(sum(e["rewards"])) for e in episodes),
        episode_success=tuple(bool(e["success"]) for e in episodes),
    )


def _scripted_demos(name: str, seeds: list[int], seed: int, kwargs: dict[str, Any]) -> ControlDemos:
    from priorcache.envs.metaworld_env import TASKS

    episodes = []
    for game_seed in seeds:
        episode = _play(name, game_seed, seed, kwargs, lambda env, obs: env.scripted_action(obs), HOLD_STEPS)
        if not episode["success"]:
            raise ConfigError(
                f"MetaWorld's scripted expert did not succeed on {name} training instance game_seed={game_seed} "
                f"within {len(episode['rewards'])} steps (raise max_episode_steps, or report the instance)"
            )
        episodes.append(episode)
    policy = TASKS[name.partition(":")[2]].policy
    return _assemble(name, episodes, seeds, f"MetaWorld scripted expert {policy}")


def _first_episodes(demos: ControlDemos, shots: int) -> ControlDemos:
    keep = demos.episode < shots
    return ControlDemos(
        env_name=demos.env_name,
        observations=demos.observations[keep],
        actions=demos.actions[keep],
        skills=[s for s, k in zip(demos.skills, keep) if k],
        episode=demos.episode[keep],
        rewards=demos.rewards[keep],
        demonstrator=demos.demonstrator,
        game_seeds=demos.game_seeds[:shots],
        episode_returns=demos.episode_returns[:shots],
        episode_success=demos.episode_success[:shots],
        path=demos.path,
    )


# --------------------------------------------------------------------------- the SAC demonstrator


def _train_sac(name: str, game_seed: int, seed: int, budget: int, kwargs: dict[str, Any], progress: bool) -> Any:
    """SB3 SAC trained for ``budget`` steps on training instance ``game_seed``; returns (model, the
    returns of its training episodes)."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback
    from tqdm import tqdm

    class Progress(BaseCallback):
        """A tqdm bar over the environment steps, and the returns of the finished training episodes."""

        def __init__(self) -> None:
            super().__init__()
            self.returns: list[float] = []
            self._current = 0.0
            self.bar = tqdm(total=budget, desc=f"SAC demonstrator {name}", unit="step", disable=not progress)

        def _on_step(self) -> bool:
            self.bar.update(1)
            self._current += float(self.locals["rewards"][0])
            if self.locals["dones"][0]:
                self.returns.append(self._current)
                self._current = 0.0
                self.bar.set_postfix_str(f"last episode's return {self.returns[-1]:.0f}")
            return True

    env = make_split_env(name, "train", game_seed, **kwargs)
    callback = Progress()
    try:
        # The replay buffer holds the whole run (SB3's default million rows of Ant's 105 floats is 0.8 GB).
        model = SAC("MlpPolicy", env, buffer_size=max(budget, 1), seed=seed, device="cpu", verbose=0)
        model.learn(total_timesteps=budget, callback=callback)
    finally:
        callback.bar.close()
        env.close()
    return model, callback.returns


def _sac_demos(
    name: str,
    pool: list[int],
    seed: int,
    budget: int,
    kwargs: dict[str, Any],
    progress: bool,
    key: dict[str, Any],
    path: Path,
) -> ControlDemos:
    import stable_baselines3

    print(
        f"priorcache: training the Stable-Baselines3 SAC demonstrator for {name} ({budget} steps, seed {seed}); "
        f"its demonstrations are saved to {path}",
        file=sys.stderr,
        flush=True,
    )
    start = time.perf_counter()
    model, train_returns = _train_sac(name, pool[0], seed, budget, kwargs, progress)
    train_s = time.perf_counter() - start

    def act(env: Any, obs: np.ndarray) -> np.ndarray:
        return model.predict(obs, deterministic=True)[0]

    episodes = [_play(name, game_seed, seed, kwargs, act, None) for game_seed in pool]
    demonstrator = (
        f"Stable-Baselines3 SAC demonstrator ({budget} steps, seed {seed}; a short run, not an expert; "
        f"stable-baselines3 {stable_baselines3.__version__})"
    )
    demos = _assemble(name, episodes, pool, demonstrator)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        **key,
        "demonstrator": demonstrator,
        "game_seeds": list(demos.game_seeds),
        "episode_returns": list(demos.episode_returns),
        "episode_success": list(demos.episode_success),
        "train_wall_time_s": round(train_s, 1),
        "train_steps_per_s": round(budget / train_s, 1) if train_s > 0 else None,
        "train_episode_returns": [round(r, 2) for r in train_returns],
        "created_at": time.time(),
    }
    buffer = io.BytesIO()
    np.savez(
        buffer,
        observations=demos.observations,
        actions=demos.actions,
        episode=demos.episode,
        rewards=demos.rewards,
        meta=np.asarray(json.dumps(meta, sort_keys=True)),
    )
    with atomic_path(path, suffix=".npz") as tmp:
        tmp.write_bytes(buffer.getvalue())
    return ControlDemos(**{**demos.__dict__, "path": path})


def _read(path: Path, key: dict[str, Any], env: Any) -> ControlDemos:
    """The demonstrations saved at ``path``, checked against ``key`` and the spaces of ``env``, their
    steps labelled by ``env.skill_label`` (so a saved file outlives a change of the rule); ConfigError
    when damaged or foreign."""
    fix = f"delete {path} to train the demonstrator again"
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in (*ARRAYS, "meta")}
        meta = json.loads(str(arrays["meta"]))
    except Exception as exc:  # a truncated zip, a missing array, bad JSON: all mean the same to the user
        raise ConfigError(
            f"saved control demonstrations {path} are damaged ({type(exc).__name__}: {exc}); {fix}"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ConfigError(f"{path} is not a priorcache control-demos file of version {VERSION}; {fix}")
    found = {k: meta.get(k) for k in key}
    if found != key:
        raise ConfigError(f"{path} holds the demonstrations of {found}, not {key}; {fix}")
    n = len(arrays["rewards"])
    episodes = len(meta.get("game_seeds", []))
    shapes_ok = (
        arrays["observations"].ndim == 2
        and arrays["actions"].ndim == 2
        and all(len(arrays[a]) == n for a in ARRAYS)
        and n > 0
        and episodes > 0
        and set(np.unique(arrays["episode"]).tolist()) == set(range(episodes))
        and arrays["observations"].shape[1:] == env.observation_space.shape
        and arrays["actions"].shape[1:] == env.action_space.shape
        and np.all(np.abs(arrays["actions"]) <= 1.0)
        and len(meta.get("episode_returns", [])) == episodes == len(meta.get("episode_success", []))
    )
    if not shapes_ok:
        raise ConfigError(
            f"saved control demonstrations {path} are damaged or made for another version of the environment "
            f"(arrays disagree with each other or with {key['env']}'s spaces); {fix}"
        )
    observations, actions = arrays["observations"].astype(np.float32), arrays["actions"].astype(np.float32)
    return ControlDemos(
        env_name=key["env"],
        observations=observations,
        actions=actions,
        skills=[env.skill_label(o, a) for o, a in zip(observations, actions)],
        episode=arrays["episode"].astype(np.int64),
        rewards=arrays["rewards"].astype(np.float64),
        demonstrator=str(meta.get("demonstrator", "")),
        game_seeds=tuple(int(s) for s in meta["game_seeds"]),
        episode_returns=tuple(float(r) for r in meta["episode_returns"]),
        episode_success=tuple(bool(s) for s in meta["episode_success"]),
        path=path,
    )


__all__ = ["DEMONSTRATOR_BUDGETS", "POOL_EPISODES", "ControlDemos", "demos_path", "record_control_demos"]
