"""SAC-Prior on a ControlEnv-shaped Pendulum-v1 (the stand-in task of tests/agents/_pendulum_control.py,
until the MuJoCo and MetaWorld tasks are wired into runs): learning and speed, methods side by side in
one process, same seed and budget.

Methods (all SAC-Prior, priorcache/agents/sac_prior.py):
- ``sac-flat``: no prior source and the flat action prior, i.e. SAC (with the skill as an extra input);
- ``gaussians``: the skill Gaussians fitted on 5 scripted demonstrations, uniform p(z) (no LLM);
- ``prior-static``: the Gaussians and p_LLM(z|s) from the embedded SmolLM2-135M behind a static
  cache keyed by MiniLM (the default δ = 0.92, r = 0.05);
- ``prior-uncached``: the same with the cache in mode "none" (an LLM query at every skill decision).

Reported per method and seed: mean return of the first and last 5 training episodes, the greedy
policy's return on 5 held-out reset seeds, env steps/s over the whole run (LLM included) and
gradient-step time, skill decisions, LLM queries, cache hit rate and F5 audits. Torch runs on one
thread (the agent's default). Writes benchmarks/results/sac_prior_pendulum.json atomically.

    python benchmarks/sac_prior_pendulum.py                       # 5,000 steps, seed 0, all methods
    python benchmarks/sac_prior_pendulum.py --steps 2000 --methods sac-flat,gaussians
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the stand-in task and its scripted demonstrator (tests/agents/_pendulum_control.py)

from priorcache.agents.sac_prior import SACPrior, SACPriorConfig  # noqa: E402
from priorcache.cache.config import CacheConfig  # noqa: E402
from priorcache.cache.prior_cache import PriorCache  # noqa: E402
from priorcache.io import atomic_write_json  # noqa: E402
from priorcache.prior.skill_prior import SkillPrior, SkillPriorConfig, fit_skill_gaussians  # noqa: E402
from tests.agents._pendulum_control import SKILLS, PendulumControl, record_demos  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "sac_prior_pendulum.json"
METHODS = ("sac-flat", "gaussians", "prior-static", "prior-uncached")


def evaluate(agent: SACPrior, env: PendulumControl, seeds: range) -> list[float]:
    """Greedy returns (skills held for H steps, decided by F1's mode) on reset seeds never trained on."""
    returns = []
    for seed in seeds:
        obs, info = env.reset(seed=seed)
        state, total, done = None, 0.0, False
        while not done:
            action, state = agent.predict(obs, state, state_text=info["state_text"])
            obs, reward, terminated, truncated, info = env.step(action)
            total, done = total + reward, terminated or truncated
        returns.append(total)
    return returns


def run(method: str, steps: int, seed: int, components: dict[str, Any]) -> dict[str, Any]:
    env = PendulumControl()
    config = SACPriorConfig(hidden_size=128, batch_size=128, learning_starts=1_000, skill_horizon=10)
    cache = None
    if method.startswith("prior-"):
        mode = "static" if method == "prior-static" else "none"
        cache = PriorCache(
            CacheConfig(mode=mode),
            components["encoder"],
            components["backend"],
            SkillPriorConfig(components["gaussians"]),
            SkillPrior,
        )
    gaussians = None if method == "sac-flat" else components["gaussians"]
    agent = config.create(env, prior_source=cache, gaussians=gaussians, seed=seed)
    start = time.perf_counter()
    agent.learn(steps)
    wall = time.perf_counter() - start
    returns = [e["return"] for e in agent.episode_log]
    c = agent.counters
    result = {
        "method": method,
        "seed": seed,
        "env_steps": c.env_steps,
        "episodes": c.episodes,
        "first5_return": float(np.mean(returns[:5])),
        "last5_return": float(np.mean(returns[-5:])),
        "episode_returns": [round(r, 1) for r in returns],
        "heldout_greedy_return": float(np.mean(evaluate(agent, env, range(50_000, 50_005)))),
        "wall_s": wall,
        "env_steps_per_s": c.env_steps / wall,
        "gradient_step_ms": 1000 * c.train_time_s / max(1, c.gradient_steps),
        "skill_decisions": c.skill_decisions,
        "llm_queries": c.llm_queries,
        "partial_queries": c.partial_queries,
        "cache_hits": c.cache_hits,
        "llm_time_s": c.llm_time_s,
        "decision_time_s": c.decision_time_s,
        "final_alpha": agent.alpha,
    }
    if cache is not None:
        audits = cache.audit_log()
        result["audits"] = len(audits)
        result["audit_max_kl"] = max((a["kl"] for a in audits), default=None)
        result["f5_violations"] = sum(a["kl"] > a["kl_bound"] + 1e-9 for a in audits)
        result["cache_entries"] = len(cache)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5_000)
    parser.add_argument("--seeds", default="0", help="comma-separated")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")

    env = PendulumControl()
    demos = record_demos(env, episodes=5)
    components: dict[str, Any] = {
        "gaussians": fit_skill_gaussians(demos.observations, demos.actions, demos.skills, SKILLS, obs_dim=3, act_dim=1)
    }
    if any(m.startswith("prior-") for m in methods):
        from priorcache.cache.encoder import MiniLMEncoder
        from priorcache.prior.embedded import EmbeddedBackend

        components.update(encoder=MiniLMEncoder(), backend=EmbeddedBackend())
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for method in methods:
            result = run(method, args.steps, seed, components)
            print({k: v for k, v in result.items() if k != "episode_returns"}, flush=True)
            results.append(result)
    atomic_write_json(
        args.out,
        {
            "task": "Pendulum-v1 as a ControlEnv (tests/agents/_pendulum_control.py), actions in [-1, 1]",
            "demonstrations": {"episodes": 5, "returns": [round(r, 1) for r in demos.returns]},
            "steps": args.steps,
            "machine": {"python": platform.python_version(), "processor": platform.processor()},
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
