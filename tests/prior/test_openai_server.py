"""The openai backend against a real llama.cpp server (llama-cpp-python, started by the ``llama_server_url``
fixture in its own virtualenv) serving the embedded model's GGUF: its scores agree with the embedded
backend's, each way a server can be wrong gives a clear error, and a whole run works through it
without writing the API key anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from priorcache.errors import BackendError, ConfigError
from priorcache.prior.base import Prompt
from priorcache.prior.embedded import embedded_gguf_path
from priorcache.prior.openai_backend import OpenAIBackend, RetryPolicy
from priorcache.prior.prompts import prompt_builder
from tests.prior._llama_server import MODEL_ALIAS, free_port, llama_server

pytestmark = pytest.mark.slow

START_TOKEN = "<|im_start|>"  # SmolLM2's start token, which the fixture's server puts first
#: Per-action |ℓ_server − ℓ_embedded| on the same tokens: llama.cpp runs the Q4_1 weights with its
#: quantised kernels (8-bit activations), the embedded backend the same weights dequantised to float32.
#: benchmarks/openai_backend.py measured max 0.42, mean 0.078 nats on 200 actions of 100 prompts.
SAME_TOKENS_MAX_GAP = 0.5
SAME_TOKENS_MEAN_GAP = 0.15
FAST = RetryPolicy(max_retries=1, backoff_s=0.05, max_backoff_s=0.1)


def _babyai_prompts(n: int, most: int = 4) -> tuple[list[Prompt], list[list[str]]]:
    """``n`` prompts of BabyAI states with at most ``most`` of their actions each: llama-cpp-python's
    server spends ~28 ms per echoed token in Python, ~5 s per candidate on these ~190-token prompts."""
    from priorcache.envs.registry import make_env

    build = prompt_builder("babyai")
    prompts, cands = [], []
    game = 0
    while len(prompts) < n:
        env = make_env("babyai:GoToLocal", game_seed=game)
        _, info = env.reset(seed=game)
        for step in range(3):
            prompts.append(build(info["objective"], info["state_text"]))
            cands.append(list(info["admissible_actions"])[:most])
            _, _, done, truncated, info = env.step(info["admissible_actions"][step % 3])
            if done or truncated or len(prompts) == n:
                break
        env.close()
        game += 1
    return prompts, cands


@pytest.fixture(scope="module")
def server(llama_server_url):
    with OpenAIBackend(llama_server_url, MODEL_ALIAS) as backend:
        yield backend


def test_scores_agree_with_the_embedded_backend(server, embedded):
    prompts, cands = _babyai_prompts(3, most=3)
    served = server.score(prompts, cands)
    same_tokens = [Prompt(START_TOKEN + p.prefix, p.state, p.label_chars, p.cue_chars) for p in prompts]
    local = embedded.score(same_tokens, cands)
    gaps = np.concatenate([np.abs(a - b) for a, b in zip(served.scores, local.scores)])
    assert gaps.max() < SAME_TOKENS_MAX_GAP, f"largest gap {gaps.max():.3f} nats over {gaps.size} actions"
    assert gaps.mean() < SAME_TOKENS_MEAN_GAP, f"mean gap {gaps.mean():.3f} nats over {gaps.size} actions"
    # the ranking the prior is made of agrees: the same best action in most states
    same_best = [np.argmax(a) == np.argmax(b) for a, b in zip(served.scores, local.scores)]
    assert sum(same_best) >= len(prompts) - 1
    assert served.continuation_tokens == local.continuation_tokens
    assert served.prompt_tokens > 0 and served.wall_time_s > 0

    # asked again after other prompts (the server's prefix cache holds another prompt now): the same scores
    again = server.score(prompts[:1], cands[:1]).scores[0]
    np.testing.assert_allclose(again, served.scores[0], atol=1e-3)


def test_generate_writes_text(server):
    prompts, _ = _babyai_prompts(1)
    result = server.generate(prompts[0], max_new_tokens=8)
    assert result.new_tokens >= 1 and result.prompt_tokens > 0 and result.wall_time_s > 0


def test_wrong_model_name_is_refused(llama_server_url):
    with pytest.raises(ConfigError, match=f"does not serve model 'gpt-4'; it serves: '{MODEL_ALIAS}'"):
        OpenAIBackend(llama_server_url, "gpt-4", retry=FAST)


def test_unreachable_server_fails_fast():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(BackendError, match=f"the server at {url} failed .*cannot connect"):
        OpenAIBackend(url, MODEL_ALIAS, retry=FAST)


def test_server_without_start_token_is_caught_by_the_alignment_probe(tmp_path):
    # As llama-cpp-python serves SmolLM2 out of the box: echoed log-probabilities one token off.
    with llama_server(embedded_gguf_path(), tmp_path / "server.log", start_token=False) as url:
        with pytest.raises(BackendError, match="shifted by one token"):
            OpenAIBackend(url, MODEL_ALIAS, retry=FAST)


def test_server_without_logprobs_is_a_clear_error(tmp_path):
    with llama_server(embedded_gguf_path(), tmp_path / "server.log", extra=("--logits_all", "false")) as url:
        # llama-cpp-python answers HTTP 500 "logprobs is not supported for models created with logits_all=False"
        with pytest.raises(BackendError, match=f"the server at {url} failed the echo alignment probe.*logprobs"):
            OpenAIBackend(url, MODEL_ALIAS, retry=FAST)


def test_a_run_through_the_server_keeps_the_api_key_out_of_its_files(llama_server_url, tmp_path):
    secret = "sk-priorcache-test-7f3a9c"
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "priorcache.cli",
        "run",
        "babyai:GoToLocal",
        "--episodes",
        "1",
        "--train-games",
        "1",
        "--eval-games",
        "1",
        "--max-steps",
        "2",
        "--backend",
        "openai",
        "--base-url",
        llama_server_url,
        "--model",
        MODEL_ALIAS,
        "--out",
        str(out),
        "--quiet",
    ]
    env = {**os.environ, "OPENAI_API_KEY": secret}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert summary["backend"] == "openai" and not summary.get("partial")
    assert config["base_url"] == llama_server_url and config["model"] == MODEL_ALIAS
    assert summary["cache_stats"]["llm_calls"] > 0
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert secret.encode() not in path.read_bytes(), f"the API key was written into {path}"
    assert secret not in done.stdout + done.stderr


def test_cli_names_the_unreachable_server(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    out = tmp_path / "run"
    command = [sys.executable, "-m", "priorcache.cli", "run", "babyai", "--backend", "openai", "--base-url", url]
    done = subprocess.run(
        [*command, "--model", MODEL_ALIAS, "--out", str(out), "--quiet"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2
    assert url in " ".join(done.stdout.split()) and "cannot connect" in done.stdout
    assert not out.exists() or not any(Path(out).iterdir())
