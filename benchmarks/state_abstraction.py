"""Label agreement of the learned state abstraction (docs/design.md F10) on real control tasks.

For each task: ``--states`` training states from one episode (at most ``--length`` steps) on each
training game in turn, and ``--heldout-states`` held-out states the same way from the evaluation games
(other starting poses; on MetaWorld other object and goal positions). MuJoCo locomotion plays
uniformly random actions; MetaWorld plays its scripted expert with Gaussian action noise (``--noise``),
so the arm visits the task's phases.
``n_labelled`` (256) training states are labelled by ``env.describe`` (the rule-based describer stands
in for [Shihab]'s human annotators); the encoder trains on all training states. Reported per seed:
held-out agreement (propagated description == the describer's) in the learned embedding, with nearest
neighbours in standardised observation space (the baseline), with nearest neighbours in the dimensions
the describer reads only (an oracle that knows them), the majority description's share, the share of
held-out states whose description occurs among the labelled at all (a ceiling for any propagation), and
training time. ``--variants`` adds ablations of the training settings.

    python benchmarks/state_abstraction.py                      # writes benchmarks/results/state_abstraction.json
    python benchmarks/state_abstraction.py --tasks mujoco:halfcheetah --seeds 0 --variants default,no-time
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from priorcache.envs.registry import game_seeds, make_env
from priorcache.envs.state_abstraction import AbstractionConfig, label_agreement, semi_supervised
from priorcache.io import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results" / "state_abstraction.json"
VARIANTS = {
    "default": {},
    "no-time": {"time_positives": False},  # label positives only
    "no-corruption": {"corruption": 0.0},
    "time-share-0.5": {"time_share": 0.5},  # half of the partners are time neighbours
    "unlabelled-anchors": {"labelled_fraction": 0.5},  # half the anchors unlabelled (time positives only)
    "lr-1e-3": {"lr": 1e-3},
    "no-weight-decay": {"weight_decay": 0.0},
    "wide": {"hidden": (256, 256)},
    "threads-2": {"threads": 2},  # the same training on two torch threads (for its time)
}


def collect(task: str, split: str, states: int, length: int, seed: int, noise: float) -> dict[str, Any]:
    """``states`` states from one episode (at most ``length`` steps) on each game of ``split`` in turn:
    observations, episode and step indices, the describer's texts."""
    rng = np.random.default_rng(seed)
    obs_rows, episode, step, texts = [], [], [], []
    for e, game_seed in enumerate(game_seeds(task, split, states)):
        if len(texts) >= states:
            break
        env = make_env(task, game_seed=game_seed, max_episode_steps=length)
        scripted = getattr(env, "scripted_action", None)
        obs, info = env.reset(seed=seed)
        for t in range(length):
            obs_rows.append(obs)
            episode.append(e)
            step.append(t)
            texts.append(info["state_text"])
            if scripted is None:
                action = rng.uniform(-1, 1, env.action_space.shape)
            else:
                action = np.clip(scripted(obs) + rng.normal(0, noise, env.action_space.shape), -1, 1)
            obs, _, terminated, truncated, info = env.step(action.astype(np.float32))
            if terminated or truncated or len(texts) >= states:
                break
        env.close()
    return {
        "observations": np.asarray(obs_rows, dtype=np.float32),
        "episode": np.asarray(episode),
        "step": np.asarray(step),
        "texts": texts,
        "env": env,
    }


def oracle_agreement(train: dict[str, Any], rows: np.ndarray, held: dict[str, Any]) -> float:
    """Nearest labelled neighbour by Euclidean distance in the standardised dimensions the describer reads."""
    dims = list(train["env"].described_dims)
    obs = train["observations"]
    mean, std = obs.mean(0), np.maximum(obs.std(0), 1e-6)
    ref = ((obs[rows] - mean) / std)[:, dims]
    query = ((held["observations"] - mean) / std)[:, dims]
    nearest = np.argmin(((query[:, None, :] - ref[None, :, :]) ** 2).sum(-1), axis=1)
    labels = np.asarray([train["texts"][i] for i in rows], dtype=object)
    return float(np.mean(labels[nearest] == np.asarray(held["texts"], dtype=object)))


def run_task(task: str, args: argparse.Namespace) -> dict[str, Any]:
    train = collect(task, "train", args.states, args.length, 0, args.noise)
    held = collect(task, "eval", args.heldout_states, args.length, 1, args.noise)
    print(f"{task}: {len(train['texts'])} training states, {len(held['texts'])} held-out", flush=True)
    out: dict[str, Any] = {
        "training_states": len(train["texts"]),
        "heldout_states": len(held["texts"]),
        "distinct_descriptions": len(set(train["texts"])),
        "variants": {},
    }
    for variant in args.variants:
        runs = []
        for seed in args.seeds:
            config = replace(AbstractionConfig(), seed=seed, progress=False, **VARIANTS[variant])
            result = semi_supervised(
                train["observations"],
                train["episode"],
                train["env"].describe,
                env_name=task,
                step=train["step"],
                config=config,
            )
            agreement = label_agreement(result.abstraction, held["observations"], held["texts"])
            labelled = {train["texts"][i] for i in result.labelled_rows}
            run = {
                "seed": seed,
                **agreement.to_json(),
                "oracle_dims": oracle_agreement(train, result.labelled_rows, held),
                "ceiling": float(np.mean([t in labelled for t in held["texts"]])),
                "train_seconds": result.abstraction.training["seconds"],
                "best_epoch": result.abstraction.training["best_epoch"],
                "epochs_run": len(result.abstraction.training["loss"]),
            }
            runs.append(run)
            print(
                f"  {variant:18s} seed {seed}: learned {run['learned']:.3f}  raw {run['raw']:.3f}  "
                f"oracle dims {run['oracle_dims']:.3f}  majority {run['majority']:.3f}  ceiling {run['ceiling']:.3f}  "
                f"{run['train_seconds']:.0f} s ({run['epochs_run']} epochs, best {run['best_epoch']})",
                flush=True,
            )
        mean = {k: float(np.mean([r[k] for r in runs])) for k in ("learned", "raw", "oracle_dims", "train_seconds")}
        out["variants"][variant] = {"settings": VARIANTS[variant], "mean": mean, "runs": runs}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="mujoco:halfcheetah,mujoco:walker2d,metaworld:reach-v3")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default="default")
    parser.add_argument("--states", type=int, default=5000, help="training states per task")
    parser.add_argument("--heldout-states", type=int, default=2000)
    parser.add_argument("--length", type=int, default=250, help="steps per episode at most (one episode a game)")
    parser.add_argument("--noise", type=float, default=0.5, help="MetaWorld: std of the noise on the expert's action")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.variants = args.variants.split(",")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    start = time.perf_counter()
    tasks = {task: run_task(task, args) for task in args.tasks.split(",")}
    atomic_write_json(
        args.out,
        {
            "config": {**AbstractionConfig().to_json(), "progress": None},
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": {
                "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "python": platform.python_version(),
            },
            "wall_seconds": time.perf_counter() - start,
            "tasks": tasks,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
