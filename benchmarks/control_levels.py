"""Which level of SAC-Prior moves off the skill prior as RL goes on: the skill choice (F1 over skills) or
the actor π(a|s,z). A diagnostic of the prior-led settings (docs/design.md §4, "Skill temperature").

One task and seed train as a ``bench control`` run does (the same training instances, budget-sized
buffer, ``learning_starts`` 1,000). The skill prior is the 5-shot LoRA one (``--adapt none``: the
0-shot one, file name ending ``-0shot``). Its cache is the static
exact-text one (δ 1.0), which serves the LLM's own prior, so training matches the uncached run. Every
``--every`` steps, each of the ``--episodes`` first held-out instances (reset seed 0, as the
evaluations) is played deterministically four ways, a skill chosen every H steps:

- ``agent``: F1's mode, argmax log p(z|s) + Q(s,z)/α_z, and the actor's mean action: what the
  evaluations play.
- ``prior_skills``: the prior's mode, argmax log p(z|s), and the actor's mean action.
- ``agent_skills_prior_actions``: F1's mode, and the skill Gaussian's mean μ_z(s).
- ``prior``: the prior's mode and μ_z(s). The prior does not learn, so this is played once, at step 0.

Per checkpoint it also records how often F1's mode is the prior's (agreement), and at each decision
where they differ the prior's margin log p(z_prior|s) − log p(z_F1|s) against Q's,
(Q(s,z_F1) − Q(s,z_prior))/α_z. Evaluation asks a copy of the cache (``SACPriorLearner.evaluating``),
so the training run is the same with or without checkpoints. Writes
``benchmarks/results/control_levels/<task>-seed<seed>-alpha<α_z>.json``::

    nice -n 5 .venv/bin/python benchmarks/control_levels.py --task metaworld:push-v3 --skill-alpha 4
    .venv/bin/python benchmarks/control_levels.py --task metaworld:reach-v3 --steps 1200 --every 600 \\
        --episodes 1 --max-steps 50 --out /tmp/levels.json      # a quick check
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from priorcache.cache.config import CacheConfig  # noqa: E402
from priorcache.cache.encoder import MiniLMEncoder  # noqa: E402
from priorcache.envs.registry import game_seeds, make_split_env  # noqa: E402
from priorcache.experiments.control_episodes import TrainingInstances  # noqa: E402
from priorcache.experiments.control_learners import EVAL_RESET_SEED, SkillPriorParts  # noqa: E402
from priorcache.experiments.control_runner import (  # noqa: E402
    PRIOR_LED_SKILL_ALPHA,
    PRIOR_LED_TARGET_KL,
    ControlRunConfig,
    make_learner,
)
from priorcache.io import atomic_write_json  # noqa: E402
from priorcache.prior.registry import make_backend  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "control_levels"
WAYS = ("agent", "prior_skills", "agent_skills_prior_actions", "prior")


def play(agent: Any, env: Any, way: str, margins: list[list[float]]) -> dict[str, Any]:
    """One deterministic episode of ``way`` on ``env``; the decisions where F1's mode differs from the
    prior's add [prior margin, Q margin / α_z] to ``margins`` (``agent`` way only)."""
    obs, info = env.reset(seed=EVAL_RESET_SEED)
    total, success, skill, left, decisions, agreed = 0.0, False, 0, 0, 0, 0
    alpha = agent.sampler.schedule.alpha
    while True:
        obs = np.asarray(obs, np.float32)
        if left == 0:
            q = agent.f1_q(agent.skill_q_values(obs, deterministic=True), observe=False)
            log_prior, _ = agent._skill_prior(obs, info["state_text"], q, alpha)
            by_f1, by_prior = int(np.argmax(log_prior + q / alpha)), int(np.argmax(log_prior))
            decisions, agreed = decisions + 1, agreed + (by_f1 == by_prior)
            if way == "agent" and by_f1 != by_prior:
                margins.append([float(log_prior[by_prior] - log_prior[by_f1]), float((q[by_f1] - q[by_prior]) / alpha)])
            skill = by_prior if way in ("prior_skills", "prior") else by_f1
            left = agent.config.skill_horizon
        if way in ("agent", "prior_skills"):
            action = agent._actor_action(obs, skill, None)
        else:
            action = np.clip(agent.gaussians.mean(obs, skill), -1.0, 1.0)
        obs, reward, terminated, truncated, info = env.step(np.asarray(action, np.float32))
        total += float(reward)
        success = success or bool(info.get("success", False))
        left -= 1
        if terminated or truncated:
            return {"return": total, "success": success, "agreement": agreed / decisions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="metaworld:push-v3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--every", type=int, default=500, help="checkpoint every N training steps")
    parser.add_argument("--episodes", type=int, default=3, help="held-out instances")
    parser.add_argument("--skill-alpha", type=float, default=PRIOR_LED_SKILL_ALPHA, help="α_z, fixed (F2 off)")
    parser.add_argument("--actor-target-kl", type=float, default=PRIOR_LED_TARGET_KL, help="δ_KL per dimension")
    parser.add_argument(
        "--skill-q-warmup", type=int, default=0, help="gradient steps over which Q's weight in F1 rises to 1"
    )
    parser.add_argument("--actor-init-alpha", type=float, help="the actor's α at the start (default 1.0)")
    parser.add_argument(
        "--adapt", choices=("lora", "none"), default="lora", help="the 5-shot LoRA skill prior, or the 0-shot one"
    )
    parser.add_argument("--train-games", type=int, default=10)
    parser.add_argument("--max-steps", type=int, help="episode step limit (default: the task's own)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.steps < 1 or args.every < 1 or args.episodes < 1:
        parser.error("--steps, --every and --episodes must be ≥ 1")
    warmup = f"-qwarmup{args.skill_q_warmup}" if args.skill_q_warmup else ""
    init = "" if args.actor_init_alpha is None else f"-ainit{args.actor_init_alpha:g}"
    zero_shot = "-0shot" if args.adapt == "none" else ""
    name = f"{args.task.replace(':', '-')}-seed{args.seed}-alpha{args.skill_alpha:g}{warmup}{init}{zero_shot}.json"
    out = args.out or RESULTS / name
    env_kwargs = {} if args.max_steps is None else {"max_episode_steps": args.max_steps}

    config = ControlRunConfig(
        env=args.task,
        method="sac-prior",
        cache=CacheConfig(mode="static", similarity_threshold=1.0),
        seeds=[args.seed],
        steps=args.steps,
        train_games=args.train_games,
        max_episode_steps=args.max_steps,
        adapt=args.adapt,
        prior_scale_q=True,
        actor_on_prior=True,
        target_kl_per_dim=args.actor_target_kl,
        alpha_0=args.skill_alpha,
        alpha_min=args.skill_alpha,
        skill_q_warmup=args.skill_q_warmup,
        actor_init_alpha=args.actor_init_alpha,
        out=out.with_suffix(""),
    )
    train_seeds = game_seeds(args.task, "train", args.train_games)
    probe = make_split_env(args.task, "train", train_seeds[0], **env_kwargs)
    try:
        backend = None if args.adapt == "lora" else make_backend("embedded")
        parts = SkillPriorParts.build(config, probe, backend, MiniLMEncoder(), progress=True)
    finally:
        probe.close()
    eval_seeds = game_seeds(args.task, "eval", args.episodes)
    held_out = [make_split_env(args.task, "eval", g, **env_kwargs) for g in eval_seeds]
    env = TrainingInstances(args.task, train_seeds, args.seed, env_kwargs)
    learner = make_learner(config, env, args.seed, parts)
    agent, rows, start, done = learner.agent, [], time.perf_counter(), 0
    while True:
        margins: list[list[float]] = []
        row: dict[str, Any] = {"step": done}
        with learner.evaluating(lambda: None):
            for way in WAYS if done == 0 else WAYS[:3]:
                row[way] = [play(agent, e, way, margins) for e in held_out]
        row["re_picked"] = margins
        row["actor_alpha"] = agent.alpha
        row["q_spread_scale"] = agent.q_spread.scale
        rows.append(row)
        means = {w: round(float(np.mean([r["return"] for r in row[w]]))) for w in WAYS if w in row}
        print(json.dumps({"step": done, **means, "re_picked": len(margins)}), flush=True)
        if done >= args.steps:
            break
        chunk = min(args.every, args.steps - done)
        agent.learn(chunk)
        done += chunk
    atomic_write_json(
        out,
        {
            "task": args.task,
            "seed": args.seed,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "skill_decision_every": config.skill_hold,
            "held_out_game_seeds": eval_seeds,
            "train_returns": [e["return"] for e in agent.episode_log],
            "wall_time_s": time.perf_counter() - start,
            "checkpoints": rows,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
