"""What the skill prior alone does on held-out control instances, with no RL: the "direct LLM" of the
control table, and how much of it is the LLM's choice of skill rather than the skill Gaussians.

Per task, the skill Gaussians N(μ_z(s), σ_z²) are fitted on ``--shots`` demonstrations exactly as a
SAC-Prior run fits them (``record_control_demos`` with the demonstration seed, ``fit_skill_gaussians``).
Each policy then plays one episode on each of the ``--episodes`` first held-out instances (the
registry's ``eval`` split, reset seed 0: the instances ``bench control`` evaluates on), choosing a skill
every ``--horizon`` steps (H) and acting with that skill's mean action μ_z(s):

- ``llm-mode``: z = argmax p_LLM(z|s) over the skill names (SAC-Prior's prompt, the embedded LLM,
  uncached): the control analogue of the text table's direct LLM; deterministic. p_LLM here is the
  softmax of the LLM's scores, F3 without its floor ε: the mode is F3's, while the draws and the
  entropy below are of the slightly sharper unfloored softmax.
- ``llm-sample``: z ~ p_LLM(z|s), one run per ``--seeds`` seed.
- ``uniform-skill``: z ~ uniform, one run per seed: what the Gaussians give with no skill knowledge.
- ``fixed:<skill>``: one skill held all episode, for every skill of the vocabulary (deterministic).
- ``labelled-skill`` (MetaWorld only): z = the demonstrations' own segmentation rule
  (``skill_label``, which reads the state alone there): the p(z|s) a perfect labeller would give, an
  upper bound on what a better LLM could add with these Gaussians. MuJoCo's rule reads the action too,
  so it has no such policy.

Besides returns (and MetaWorld success), the LLM's prior over the visited decision states is
described: its mean entropy as a share of log|Z| (1: uniform), how often its mode is the labelled
skill (MetaWorld), and how many distinct modes it has. The embedded backend is deterministic (checked),
so its scores are memoised by prompt (``control_cache_keys.MemoBackend``): each distinct φ(s) costs one
LLM call. Writes ``benchmarks/results/control_prior_policy.json``::

    nice -n 5 .venv/bin/python benchmarks/control_prior_policy.py            # every task, about 15 min
    .venv/bin/python benchmarks/control_prior_policy.py --tasks metaworld:reach-v3 --episodes 2
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.control_cache_keys import MemoBackend, deterministic  # noqa: E402
from priorcache.envs.control_demos import record_control_demos  # noqa: E402
from priorcache.envs.registry import game_seeds, make_split_env  # noqa: E402
from priorcache.experiments.adapt import adapt_skill_prior  # noqa: E402
from priorcache.experiments.control_learners import DEMONSTRATION_SEED, EVAL_RESET_SEED  # noqa: E402
from priorcache.experiments.control_runner import control_envs  # noqa: E402
from priorcache.experiments.metrics import mean_ci95  # noqa: E402
from priorcache.io import atomic_write_json  # noqa: E402
from priorcache.prior.adaptation import DEFAULT_EPOCHS, LOSSES  # noqa: E402
from priorcache.prior.registry import make_backend  # noqa: E402
from priorcache.prior.skill_prior import SkillGaussians, fit_skill_gaussians, skill_prompt  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "control_prior_policy.json"


def _shown(path: Path) -> str:
    """``path`` as the results record it: relative to the repository when inside it, so a committed result
    names no folder of the machine that made it."""
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


#: choose(obs, state_text, rng) -> skill index
Chooser = Callable[[np.ndarray, str, np.random.Generator], int]


def fit_gaussians(env: Any, demos: Any) -> SkillGaussians:
    """The skill Gaussians a SAC-Prior run fits on ``demos``."""
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    return fit_skill_gaussians(
        demos.observations, demos.actions, demos.skills, env.skills, obs_dim=obs_dim, act_dim=act_dim
    )


def play(env: Any, gaussians: SkillGaussians, choose: Chooser, horizon: int, rng: np.random.Generator) -> dict:
    """One episode from reset seed 0: a skill chosen every ``horizon`` steps, its mean action played."""
    obs, info = env.reset(seed=EVAL_RESET_SEED)
    total, steps, success, skill = 0.0, 0, False, 0
    while True:
        if steps % horizon == 0:
            skill = choose(obs, info["state_text"], rng)
        obs, reward, terminated, truncated, info = env.step(gaussians.mean(obs, skill).astype(np.float32))
        total, steps = total + float(reward), steps + 1
        success = success or bool(info.get("success", False))
        if terminated or truncated:
            return {"return": total, "success": success, "steps": steps}


def run_task(task: str, args: argparse.Namespace, base: Any) -> dict[str, Any]:
    start = time.perf_counter()
    envs = [make_split_env(task, "eval", g) for g in game_seeds(task, "eval", args.episodes)]
    skills = list(envs[0].skills)
    demos = record_control_demos(task, args.shots, seed=DEMONSTRATION_SEED, progress=False)
    gaussians = fit_gaussians(envs[0], demos)
    adaptation: dict[str, Any] = {"adapt": "none"}
    if args.adapt == "lora":  # F8 for control: the skill prior fine-tuned on the demonstrations' (φ(s), skill)
        adapted = adapt_skill_prior(task, envs[0], demos, epochs=args.lora_epochs, loss=args.lora_loss)
        base, adaptation = adapted.backend, adapted.info
    backend = MemoBackend(base)
    labelled = task.startswith("metaworld:")
    visited: list[tuple[np.ndarray, str | None]] = []  # (log p(z|s), labelled skill) at llm-mode's decisions

    def log_prior(text: str, env: Any) -> np.ndarray:
        scores = np.asarray(backend.score([skill_prompt(env.objective, text, skills=skills)], [skills]).scores[0])
        return scores - np.logaddexp.reduce(scores)  # softmax of the scores (F3 without its floor)

    def chooser(name: str, env: Any) -> Chooser:
        def choose(obs: np.ndarray, text: str, rng: np.random.Generator) -> int:
            if name == "uniform-skill":
                return int(rng.integers(len(skills)))
            if name.startswith("fixed:"):
                return skills.index(name.removeprefix("fixed:"))
            if name == "labelled-skill":
                return skills.index(env.skill_label(obs, np.zeros(env.action_space.shape, np.float32)))
            lp = log_prior(text, env)
            if name == "llm-mode":
                label = env.skill_label(obs, np.zeros(env.action_space.shape, np.float32)) if labelled else None
                visited.append((lp, label))
                return int(np.argmax(lp))
            return int(rng.choice(len(skills), p=np.exp(lp)))

        return choose

    policies = {"llm-mode": [None], "llm-sample": args.seeds, "uniform-skill": args.seeds}
    policies.update({f"fixed:{z}": [None] for z in skills})
    if labelled:
        policies["labelled-skill"] = [None]
    out: dict[str, Any] = {
        "skills": skills,
        "demonstrations": {"demonstrator": demos.demonstrator, "episode_returns": list(demos.episode_returns)},
        "adaptation": adaptation,
        "llm_calls_real": 0,
        "policies": {},
    }
    for name, seeds in policies.items():
        runs = []
        for seed in seeds:
            rng = np.random.default_rng(seed)
            episodes = [play(env, gaussians, chooser(name, env), args.horizon, rng) for env in envs]
            runs.append({"seed": seed, "episodes": episodes})
        # over seeds for the sampled policies, over the held-out instances for the deterministic ones
        unit = [float(np.mean([e["return"] for e in r["episodes"]])) for r in runs] if seeds != [None] else None
        flat = [e for r in runs for e in r["episodes"]]
        out["policies"][name] = {
            "return": mean_ci95(unit if unit is not None else [e["return"] for e in flat]),
            "success": float(np.mean([e["success"] for e in flat])),
            "ci_over": "seeds" if unit is not None else "held-out instances",
            "runs": runs,
        }
        print(f"  {name:28s} return {out['policies'][name]['return']['mean']:9.1f}", flush=True)
    lps = np.array([lp for lp, _ in visited])
    entropy = -(np.exp(lps) * lps).sum(axis=1) / math.log(len(skills))
    modes = [skills[int(i)] for i in lps.argmax(axis=1)]
    out["llm_prior"] = {
        "decisions": len(visited),
        "entropy_share_of_uniform": {"mean": float(entropy.mean()), "min": float(entropy.min())},
        "mode_counts": {z: modes.count(z) for z in skills if modes.count(z)},
        "mode_is_labelled_skill": float(np.mean([m == lab for m, (_, lab) in zip(modes, visited)]))
        if labelled
        else None,
    }
    out["llm_calls_real"], out["llm_seconds_real"] = backend.calls, backend.seconds
    out["wall_seconds"] = time.perf_counter() - start
    for env in envs:
        env.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(control_envs()))
    parser.add_argument("--episodes", type=int, default=5, help="held-out instances (bench control's --eval-episodes)")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the sampled policies")
    parser.add_argument("--shots", type=int, default=5, help="demonstrations the skill Gaussians are fitted on")
    parser.add_argument("--horizon", type=int, default=10, help="H: steps a skill is held")
    parser.add_argument("--adapt", choices=("none", "lora"), default="none", help="F8 on the skill prior")
    parser.add_argument("--lora-epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--lora-loss", choices=tuple(LOSSES), default="choice")
    parser.add_argument("--out", type=Path, help=f"default {RESULTS.name}, or …_lora.json with --adapt lora")
    args = parser.parse_args()
    args.out = args.out or (RESULTS.with_name(f"{RESULTS.stem}_lora.json") if args.adapt == "lora" else RESULTS)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if args.episodes < 1 or args.shots < 1 or args.horizon < 1:
        parser.error("--episodes, --shots and --horizon must be ≥ 1")
    start = time.perf_counter()
    base = make_backend("embedded")
    probe = skill_prompt("reach the goal", "the gripper is far from the goal", skills=["move", "stop"])
    if not deterministic(base, probe, ["move", "stop"]):
        sys.exit("the embedded backend gave different scores for one prompt twice: its scores cannot be memoised")
    tasks: dict[str, Any] = {}
    for task in args.tasks.split(","):
        print(task, flush=True)
        tasks[task] = run_task(task, args, base)
        # after every task: a stopped run keeps the tasks it finished
        atomic_write_json(
            args.out,
            {
                "settings": {k: (_shown(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "backend": str(getattr(base, "name", type(base).__name__)),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": list(os.getloadavg())},
                "wall_seconds": time.perf_counter() - start,
                "tasks": tasks,
            },
        )
    print(f"wrote {args.out} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
