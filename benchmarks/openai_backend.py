"""The openai backend against a real llama.cpp server vs the in-process embedded backend (docs/design.md §2).

Both score the same model (SmolLM2-135M-Instruct: the server runs the packaged Q4_1 GGUF with
llama.cpp's quantised kernels, the embedded backend the same weights dequantised to float32 in
transformers) on 100 prompts from real environment states (random walks in BabyAI, TextWorld and
the WebShop-style shop, built by priorcache's prompt builders, all admissible actions as candidates).

Reported, per action (F3 score ℓ, the length-normalised log-probability):
- the gap on the same token sequence: the server puts SmolLM2's start token ``<|im_start|>`` first
  (it must: see priorcache/prior/openai_backend.py), so the embedded backend scores the prompt with
  that token at the front too; this gap is numerics only (quantised kernels vs float32), up to the
  tokenisation of the prompt/action boundary (the server tokenises the joined text, the embedded
  backend its parts apart);
- the gap as each is used: the embedded backend on the plain prompt (no start token);
- how often both rank the same action first;
- decisions/s (prompts scored per second, all candidates each) through the server and in process,
  one prompt per call (an agent's step) and 8 per call (``--num-envs 8``), side by side.

Starts its own server (``make llama-server`` installs it) unless ``--base-url`` names a running one.
Writes benchmarks/results/openai_backend.json (atomically).

    python benchmarks/openai_backend.py
    python benchmarks/openai_backend.py --prompts 20   # quick look
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test helper that starts the server (tests/prior/_llama_server.py)

from priorcache.envs.registry import make_env  # noqa: E402
from priorcache.io import atomic_write_json  # noqa: E402
from priorcache.prior.base import Prompt  # noqa: E402
from priorcache.prior.embedded import EmbeddedBackend, embedded_gguf_path  # noqa: E402
from priorcache.prior.openai_backend import OpenAIBackend  # noqa: E402
from priorcache.prior.prompts import prompt_builder  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "openai_backend.json"
START_TOKEN = "<|im_start|>"  # SmolLM2's BOS, which the test server puts first (tests/prior/_llama_server.py)
# WebShop's pages run to 400+ tokens, which llama-cpp-python's echo path (~28 ms per token) makes minutes a prompt.
ENVS = ("babyai:GoToLocal", "textworld:tw-simple")


def collect_prompts(n: int, most: int, seed: int = 0) -> list[tuple[str, Prompt, list[str]]]:
    """``n`` (environment, prompt, candidates) from random walks, spread evenly over ``ENVS``; the
    candidates are ``most`` admissible actions drawn at random."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, Prompt, list[str]]] = []
    per_env = [n // len(ENVS) + (i < n % len(ENVS)) for i in range(len(ENVS))]
    for env_name, wanted in zip(ENVS, per_env):
        build = prompt_builder(env_name)
        seen: set[str] = set()
        game = 0
        while sum(1 for e, _, _ in out if e == env_name) < wanted:
            env = make_env(env_name, game_seed=game)
            _, info = env.reset(seed=game)
            for _ in range(12):
                text, actions = info["state_text"], list(info["admissible_actions"])
                if text not in seen and actions:
                    seen.add(text)
                    picked = sorted(rng.choice(len(actions), size=min(most, len(actions)), replace=False))
                    out.append((env_name, build(info["objective"], text), [actions[i] for i in picked]))
                    if sum(1 for e, _, _ in out if e == env_name) >= wanted:
                        break
                _, _, done, truncated, info = env.step(actions[int(rng.integers(len(actions)))])
                if done or truncated:
                    break
            env.close()
            game += 1
    return out


def with_start(prompt: Prompt) -> Prompt:
    return Prompt(START_TOKEN + prompt.prefix, prompt.state, prompt.label_chars, prompt.cue_chars)


def score_all(backend: Any, prompts: list[Prompt], cands: list[list[str]], batch: int) -> tuple[list, float]:
    start = time.perf_counter()
    scores: list[np.ndarray] = []
    for i in range(0, len(prompts), batch):
        scores.extend(backend.score(prompts[i : i + batch], cands[i : i + batch]).scores)
    return scores, time.perf_counter() - start


def gap(a: list[np.ndarray], b: list[np.ndarray]) -> dict[str, float]:
    diffs = np.concatenate([np.abs(x - y) for x, y in zip(a, b)])
    same_top = np.mean([int(np.argmax(x) == np.argmax(y)) for x, y in zip(a, b)])
    return {
        "max_abs": float(diffs.max()),
        "mean_abs": float(diffs.mean()),
        "p99_abs": float(np.quantile(diffs, 0.99)),
        "actions": int(diffs.size),
        "same_argmax": float(same_top),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=2, help="actions per prompt (each a ~5 s request)")
    parser.add_argument("--base-url", default=None, help="a running server (default: start one)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    items = collect_prompts(args.prompts, args.candidates)
    envs = [e for e, _, _ in items]
    prompts = [p for _, p, _ in items]
    cands = [c for _, _, c in items]
    embedded = EmbeddedBackend()
    with tempfile.TemporaryDirectory() as tmp:
        if args.base_url:
            result = measure(args.base_url, args.model, embedded, prompts, cands)
        else:
            from tests.prior._llama_server import MODEL_ALIAS, llama_server

            with llama_server(embedded_gguf_path(), Path(tmp) / "server.log") as url:
                result = measure(url, MODEL_ALIAS, embedded, prompts, cands)
    result.update(
        {
            "prompts": len(prompts),
            "prompts_per_env": {e: envs.count(e) for e in ENVS},
            "candidates_per_prompt": float(np.mean([len(c) for c in cands])),
            "server": "llama-cpp-python 0.3.36 (llama.cpp), SmolLM2-135M-Instruct Q4_1 GGUF, 2 threads, "
            "--kv_overrides tokenizer.ggml.add_bos_token=bool:true",
            "embedded": "transformers, the same GGUF dequantised to float32, torch threads default",
            "machine": f"{platform.machine()}, {platform.system()}, shared 2-core box (other jobs running)",
            "command": f"python benchmarks/openai_backend.py --prompts {args.prompts} --candidates {args.candidates}",
        }
    )
    atomic_write_json(args.out, result)
    g, u = result["gap_same_tokens"], result["gap_as_used"]
    print(f"{len(prompts)} prompts, {g['actions']} actions")
    print(f"gap, same tokens : max {g['max_abs']:.4f}  mean {g['mean_abs']:.4f}  same argmax {g['same_argmax']:.2f}")
    print(f"gap, as used     : max {u['max_abs']:.4f}  mean {u['mean_abs']:.4f}  same argmax {u['same_argmax']:.2f}")
    for key, row in result["decisions_per_s"].items():
        print(f"decisions/s {key:>9}: server {row['openai']:.2f}  in-process {row['embedded']:.2f}")
    print(f"wrote {args.out}")


def measure(url: str, model: str, embedded: EmbeddedBackend, prompts: list[Prompt], cands: list[list[str]]) -> dict:
    """Gaps on every prompt; decisions/s one prompt a call on every prompt, 8 a call on the first 16
    (the server answers one request at a time, so batching cannot speed it up; 16 shows it)."""
    with OpenAIBackend(url, model) as server:
        server.score(prompts[:1], cands[:1])  # warm both (first requests, lazy imports)
        embedded.score([with_start(prompts[0])], cands[:1])
        served, t_server = score_all(server, prompts, cands, 1)
        local_same, _ = score_all(embedded, [with_start(p) for p in prompts], cands, 1)
        embedded.clear_prefix_cache()
        local_plain, t_local = score_all(embedded, prompts, cands, 1)
        speed = {"batch 1": {"openai": len(prompts) / t_server, "embedded": len(prompts) / t_local}}
        few = min(16, len(prompts))
        _, t_server8 = score_all(server, prompts[:few], cands[:few], 8)
        embedded.clear_prefix_cache()
        _, t_local8 = score_all(embedded, prompts[:few], cands[:few], 8)
        speed["batch 8"] = {"openai": few / t_server8, "embedded": few / t_local8, "prompts": few}
    return {
        "gap_same_tokens": gap(served, local_same),
        "gap_as_used": gap(served, local_plain),
        "decisions_per_s": speed,
    }


if __name__ == "__main__":
    main()
