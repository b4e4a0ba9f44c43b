"""Which key should a continuous state's cache entry have: the learned state abstraction's embedding
of the observation, or the MiniLM sentence embedding of its description φ(s)? Measured on real tasks.

Per task and seed: the learned abstraction (docs/design.md F10) is trained as
``benchmarks/state_abstraction.py`` trains it (``--states`` training states, collect seed 0, default
``AbstractionConfig`` with the run's seed). A stream of skill decisions is then taken from other
training episodes (collect seed 1): every ``--horizon``-th state (the skill horizon H), ``--decisions``
of them. For each key source and each δ of ``--deltas`` a fresh static-mode skill-prior ``PriorCache``
(as ``SkillPriorParts.cache`` builds it, refresh rate ``--refresh-rate``, 0 by default so that every
hit is served) looks the stream up in order with the real embedded LLM backend:

- ``minilm``: the cache's own encoder path, MiniLM on φ(s) (``MiniLMEncoder``);
- ``learned``: the abstraction as the cache's encoder, each lookup passing
  ``embedding=abstraction.embed(obs)[0]``.

Both share the exact-text fast path (equal φ(s) under the same prompt prefix is served before any
key is consulted), so they differ in their similarity hits. Every hit is checked against the fresh
prior of the same state (an uncached ask of its prompt): KL(fresh ‖ served) over the skills, and
whether the served prior's most likely skill differs from the fresh one's. The embedded backend is
deterministic (checked at start and recorded), so its scores are memoised by (prompt, skills): each
distinct state text costs one real LLM call, shared by the ground truth and every cache of the
sweep; each cache still counts the LLM calls it would make. As a scale for the KLs, the mean
KL(fresh ‖ fresh) between the priors of two random stream states of different φ(s) is reported too
(``random_pair_kl``), and each row's similar-hit mean KL divided by it: below 1, the key's neighbours
have closer priors than random states do. The two keys' cosines live on different scales (MiniLM
puts a task's templated φ(s) texts close together; InfoNCE pushes different descriptions apart), so
compare rows at equal LLM calls or hit rate as well as at equal δ.

    # writes benchmarks/results/control_cache_keys.json (about 10 min on 2 busy cores):
    nice -n 5 .venv/bin/python benchmarks/control_cache_keys.py --seeds 0,1,2
    .venv/bin/python benchmarks/control_cache_keys.py --tasks mujoco:halfcheetah --decisions 100 --deltas 0.9
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks/state_abstraction.py's collect, imported as benchmarks.state_abstraction

from benchmarks.state_abstraction import collect  # noqa: E402
from priorcache.cache.config import CacheConfig  # noqa: E402
from priorcache.cache.encoder import MiniLMEncoder  # noqa: E402
from priorcache.cache.prior_cache import PriorCache  # noqa: E402
from priorcache.envs.state_abstraction import AbstractionConfig, StateAbstraction, semi_supervised  # noqa: E402
from priorcache.io import atomic_write_json  # noqa: E402
from priorcache.prior.base import Prompt, ScoreResult  # noqa: E402
from priorcache.prior.divergence import kl_divergence  # noqa: E402
from priorcache.prior.registry import make_backend  # noqa: E402
from priorcache.prior.skill_prior import SkillGaussians, SkillPrior, SkillPriorConfig, skill_prompt  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "control_cache_keys.json"
KEYS = ("minilm", "learned")


class MemoBackend:
    """The real backend with its scores memoised by (prompt, candidates, length_normalise): it is
    deterministic, so a repeat ask returns what a real call would. ``calls`` counts the real calls."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = str(getattr(inner, "name", type(inner).__name__))
        self._memo: dict[tuple[str, tuple[str, ...], bool], tuple[np.ndarray, int, int]] = {}
        self.calls = 0
        self.seconds = 0.0

    def score(
        self, prompts: Sequence[Prompt], candidates: Sequence[Sequence[str]], length_normalise: bool = True
    ) -> ScoreResult:
        start = time.perf_counter()
        scores, prompt_tokens, continuation_tokens = [], 0, 0
        for prompt, cands in zip(prompts, candidates):
            key = (prompt.text, tuple(cands), bool(length_normalise))
            if key not in self._memo:
                t = time.perf_counter()
                got = self.inner.score([prompt], [list(cands)], length_normalise=length_normalise)
                self.seconds += time.perf_counter() - t
                self.calls += 1
                self._memo[key] = (np.asarray(got.scores[0]).copy(), got.prompt_tokens, got.continuation_tokens)
            s, p, c = self._memo[key]
            scores.append(s.copy())
            prompt_tokens, continuation_tokens = prompt_tokens + p, continuation_tokens + c
        return ScoreResult(scores, time.perf_counter() - start, prompt_tokens, continuation_tokens)


def deterministic(backend: Any, prompt: Prompt, skills: Sequence[str]) -> bool:
    """Whether two real asks of one prompt give bit-identical scores (what the memo relies on)."""
    a = backend.score([prompt], [list(skills)], length_normalise=True).scores[0]
    b = backend.score([prompt], [list(skills)], length_normalise=True).scores[0]
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def summary(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "p95": None, "max": None}
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "p95": float(np.percentile(arr, 95)), "max": float(arr.max())}


def run_cache(
    key: str,
    delta: float,
    stream: dict[str, Any],
    abstraction: StateAbstraction,
    encoder: MiniLMEncoder,
    backend: MemoBackend,
    fresh: dict[str, SkillPrior],
    prior_config: SkillPriorConfig,
    env: Any,
    args: argparse.Namespace,
    seed: int,
) -> dict[str, Any]:
    """One static cache of threshold ``delta`` keyed by ``key`` over the stream; every hit checked."""
    skills = list(env.skills)
    config = CacheConfig(
        mode="static", similarity_threshold=delta, refresh_rate=args.refresh_rate, index="numpy", seed=seed
    )
    cache = PriorCache(config, abstraction if key == "learned" else encoder, backend, prior_config, SkillPrior)
    keys = abstraction.embed(stream["observations"]) if key == "learned" else None
    kinds: dict[str, int] = {}
    kl_similar, kl_all, flips, sims, llm_calls = [], [], 0, [], 0
    for i, text in enumerate(stream["texts"]):
        prompt = skill_prompt(env.objective, text, skills=skills)
        lookup = cache.lookup(text, prompt, skills, embedding=None if keys is None else keys[i], step=i)
        kinds[lookup.kind] = kinds.get(lookup.kind, 0) + 1
        llm_calls += int(lookup.llm_calls) + int(lookup.partial_calls)
        if not lookup.hit:
            continue
        truth = fresh[text].log_prob(skills)
        served = lookup.prior.log_prob(skills)
        kl = kl_divergence(truth, served)
        kl_all.append(kl)
        if lookup.kind == "similar":
            kl_similar.append(kl)
            flips += int(np.argmax(served) != np.argmax(truth))
            sims.append(float(lookup.similarity))
    n = len(stream["texts"])
    hits = len(kl_all)
    return {
        "key": key,
        "delta": delta,
        "decisions": n,
        "hit_rate": hits / n,
        "exact_hits": kinds.get("exact", 0),
        "similar_hits": kinds.get("similar", 0),
        "misses": kinds.get("miss", 0),
        "refreshes": kinds.get("refresh", 0),
        "llm_calls": llm_calls,
        "entries": len(cache),
        "kl_similar": summary(kl_similar),
        "kl_all_hits": summary(kl_all),
        "argmax_flip_share_similar": flips / len(kl_similar) if kl_similar else None,
        "similar_hit_cosine_mean": float(np.mean(sims)) if sims else None,
    }


def random_pair_kl(texts: Sequence[str], fresh: dict[str, SkillPrior], skills: list[str], seed: int) -> float:
    """Mean KL(fresh(s) ‖ fresh(s')) over random pairs of stream states with different φ(s) (as a
    similar hit's are): what serving an arbitrary other state's prior costs, the scale for the hits' KLs."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(texts), 4000), rng.integers(0, len(texts), 4000)
    pairs = [(texts[i], texts[j]) for i, j in zip(a, b) if texts[i] != texts[j]]
    if not pairs:
        return float("nan")
    return float(np.mean([kl_divergence(fresh[x].log_prob(skills), fresh[y].log_prob(skills)) for x, y in pairs]))


def run_task(task: str, args: argparse.Namespace, encoder: MiniLMEncoder, backend: MemoBackend) -> dict[str, Any]:
    start = time.perf_counter()
    train = collect(task, "train", args.states, args.length, 0, args.noise)
    full = collect(task, "train", args.decisions * args.horizon, args.length, 1, args.noise)
    # Every H-th state of each episode: where a skill held H steps would end and the next be chosen.
    rows = np.flatnonzero(full["step"] % args.horizon == 0)[: args.decisions]
    stream = {"observations": full["observations"][rows], "texts": [full["texts"][i] for i in rows]}
    env = train["env"]
    skills = list(env.skills)
    collect_seconds = time.perf_counter() - start
    print(
        f"{task}: {len(train['texts'])} training states, {len(rows)} decisions "
        f"({len(set(stream['texts']))} distinct φ(s)), {collect_seconds:.0f} s collecting",
        flush=True,
    )
    llm_start, calls_before = backend.seconds, backend.calls
    # The skill Gaussians do not enter p(z|s), the only part a cache serves: flat ones suffice.
    gaussians = SkillGaussians.uniform(skills, train["observations"].shape[1], env.action_space.shape[0])
    prior_config = SkillPriorConfig(gaussians)
    fresh = {}
    for text in dict.fromkeys(stream["texts"]):
        scores = backend.score([skill_prompt(env.objective, text, skills=skills)], [skills]).scores[0]
        fresh[text] = SkillPrior.from_scores(skills, scores, prior_config)
    print(f"  ground truth: {backend.calls - calls_before} LLM calls, {backend.seconds - llm_start:.0f} s", flush=True)
    out: dict[str, Any] = {
        "training_states": len(train["texts"]),
        "decisions": len(rows),
        "distinct_texts": len(fresh),
        "episodes_in_stream": int(len(set(full["episode"][rows].tolist()))),
        "skills": skills,
        "collect_seconds": collect_seconds,
        "ground_truth_llm_calls": backend.calls - calls_before,
        "ground_truth_llm_seconds": backend.seconds - llm_start,
        "random_pair_kl": random_pair_kl(stream["texts"], fresh, skills, 0),
        "seeds": [],
    }
    for seed in args.seeds:
        config = replace(AbstractionConfig(), seed=seed, progress=False)
        abstraction = semi_supervised(
            train["observations"], train["episode"], env.describe, env_name=task, step=train["step"], config=config
        ).abstraction
        rows_out = []
        for key in KEYS:
            for delta in args.deltas:
                row = run_cache(key, delta, stream, abstraction, encoder, backend, fresh, prior_config, env, args, seed)
                rows_out.append(row)
                print(f"  seed {seed} {key} δ={delta}: hit rate {row['hit_rate']:.3f}", flush=True)
        out["seeds"].append({"seed": seed, "train_seconds": abstraction.training["seconds"], "rows": rows_out})
    for seed_out in out["seeds"]:
        for row in seed_out["rows"]:  # below 1: the key finds neighbours whose priors are closer than random states'
            mean = row["kl_similar"]["mean"]
            row["kl_similar_over_random_pair"] = None if mean is None else mean / out["random_pair_kl"]
    out["wall_seconds"] = time.perf_counter() - start
    return out


def table(tasks: dict[str, Any]) -> str:
    """The rows as a compact text table."""
    head = f"{'task':20s} {'seed':>4s} {'key':7s} {'δ':>4s} {'hit':>5s} {'exact':>5s} {'sim':>4s} {'LLM':>4s}"
    head += f" {'KLsim mean':>10s} {'p95':>7s} {'max':>7s} {'/rand':>5s} {'KLall mean':>10s} {'flips':>5s}"
    lines = [head]
    for task, out in tasks.items():
        lines.append(
            f"{task}: {out['distinct_texts']} distinct φ(s) in {out['decisions']} decisions, "
            f"random-pair KL {out['random_pair_kl']:.4f}"
        )
        for seed_out in out["seeds"]:
            for r in seed_out["rows"]:
                ks = r["kl_similar"]
                lines.append(
                    f"{task:20s} {seed_out['seed']:4d} {r['key']:7s} {r['delta']:4.2f} {r['hit_rate']:5.3f} "
                    f"{r['exact_hits']:5d} {r['similar_hits']:4d} {r['llm_calls']:4d} {_f(ks['mean'], 6):>10s} "
                    f"{_f(ks['p95']):>7s} {_f(ks['max']):>7s} {_f(r['kl_similar_over_random_pair'], 2):>5s} "
                    f"{_f(r['kl_all_hits']['mean'], 6):>10s} {_f(r['argmax_flip_share_similar'], 2):>5s}"
                )
    return "\n".join(lines)


def _f(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="metaworld:reach-v3,mujoco:halfcheetah")
    parser.add_argument("--seeds", default="0")
    parser.add_argument(
        "--deltas", default="0.5,0.7,0.8,0.9,0.92,0.95,0.98", help="similarity thresholds δ (0.92 is the default)"
    )
    parser.add_argument("--decisions", type=int, default=400, help="skill decisions in each task's stream")
    parser.add_argument("--horizon", type=int, default=10, help="H: steps a skill is held (one decision every H steps)")
    parser.add_argument("--states", type=int, default=5000, help="training states of the abstraction")
    parser.add_argument("--length", type=int, default=250, help="steps per episode at most")
    parser.add_argument("--noise", type=float, default=0.5, help="MetaWorld: std of the noise on the expert's action")
    parser.add_argument("--refresh-rate", type=float, default=0.0, help="r of every cache (0: every hit is served)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.deltas = [float(d) for d in args.deltas.split(",")]
    if args.decisions < 1 or args.horizon < 1:
        parser.error("--decisions and --horizon must be ≥ 1")
    start = time.perf_counter()
    encoder = MiniLMEncoder()
    backend = MemoBackend(make_backend("embedded"))
    probe = skill_prompt("reach the goal", "the gripper is far from the goal", skills=["move", "stop"])
    is_deterministic = deterministic(backend.inner, probe, ["move", "stop"])
    if not is_deterministic:
        sys.exit("the embedded backend gave different scores for one prompt twice: its scores cannot be memoised")
    tasks = {task: run_task(task, args, encoder, backend) for task in args.tasks.split(",")}
    atomic_write_json(
        args.out,
        {
            "settings": {
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "abstraction": {**AbstractionConfig().to_json(), "progress": None},
                "cache": {"mode": "static", "index": "numpy", "refresh_rate": args.refresh_rate},
                "backend": backend.name,
                "encoder": encoder.name,
                "backend_deterministic": is_deterministic,
                "kl": "KL(fresh ‖ served) over the skills, priors only (no Q)",
            },
            "machine": {
                "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "python": platform.python_version(),
                "load_average": list(os.getloadavg()),
            },
            "llm_calls_real": backend.calls,
            "llm_seconds_real": backend.seconds,
            "wall_seconds": time.perf_counter() - start,
            "tasks": tasks,
        },
    )
    print(table(tasks))
    print(f"wrote {args.out} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
