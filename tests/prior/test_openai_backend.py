"""The openai backend against a small fake HTTP server (fast): F3 scores from echoed log-probabilities,
requests in flight together, retries with backoff, and a clear error for each way a server can fail.
The same backend against a real llama.cpp server: ``test_openai_server.py``."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from priorcache.errors import BackendError, ConfigError
from priorcache.prior.base import Prompt
from priorcache.prior.openai_backend import OpenAIBackend, RetryPolicy, alignment_report, normalise_base_url
from priorcache.prior.registry import check_backend_options, make_backend
from tests.prior._fake_openai import Behaviour, fake_logprob, fake_server, fake_tokens

FAST = RetryPolicy(max_retries=2, backoff_s=0.01, max_backoff_s=0.05)
PROMPT = Prompt("Goal: find the coin.\n", "Current location: a dark room\nCommand:")


def _backend(url: str, **kwargs) -> OpenAIBackend:
    kwargs.setdefault("retry", FAST)
    return OpenAIBackend(url, "fake-model", **kwargs)


def _expected(action: str, normalise: bool = True) -> float:
    values = [fake_logprob(t) for t in fake_tokens(" " + action)]
    return float(np.mean(values) if normalise else np.sum(values))


def test_scores_are_the_continuation_token_logprobs():
    behaviour = Behaviour()
    with fake_server(behaviour) as url, _backend(url) as backend:
        actions = [["go north", "take coin", "look"], ["open the wooden door"]]
        prompts = [PROMPT, Prompt("", "You see: a wall\nAction:")]
        mean = backend.score(prompts, actions)
        total = backend.score(prompts, actions, length_normalise=False)
    for row, cands in zip(mean.scores, actions):
        np.testing.assert_allclose(row, [_expected(a) for a in cands])
    for row, cands in zip(total.scores, actions):
        np.testing.assert_allclose(row, [_expected(a, normalise=False) for a in cands])
    assert mean.continuation_tokens == sum(len(fake_tokens(" " + a)) for cands in actions for a in cands)
    # each prompt counted once: the tokens before the action
    assert mean.prompt_tokens == len(fake_tokens(PROMPT.text)) + len(fake_tokens(prompts[1].text))
    assert mean.wall_time_s > 0
    sent = [r for r in behaviour.requests if r["prompt"] == PROMPT.text + " go north"]
    assert sent and sent[0]["echo"] is True and sent[0]["max_tokens"] == 1 and sent[0]["logprobs"] == 1


def test_all_candidates_of_a_batch_are_in_flight_together():
    behaviour = Behaviour()
    with fake_server(behaviour) as url, _backend(url, max_concurrency=16) as backend:
        behaviour.sleep_s = 0.3
        start = time.perf_counter()
        result = backend.score([PROMPT, PROMPT], [["a", "b", "c", "d"], ["e", "f", "g", "h"]])
        elapsed = time.perf_counter() - start
    assert len(result.scores) == 2
    assert behaviour.max_in_flight >= 4
    assert elapsed < 8 * 0.3 / 2, f"8 requests of 0.3 s took {elapsed:.2f} s: not concurrent"


def test_retries_429_and_5xx_then_succeeds():
    behaviour = Behaviour()
    with fake_server(behaviour) as url, _backend(url) as backend:
        behaviour.requests.clear()
        behaviour.statuses[:] = [503, 429]
        behaviour.retry_after = "0"
        result = backend.score([PROMPT], [["go north"]])
    np.testing.assert_allclose(result.scores[0], [_expected("go north")])
    assert len(behaviour.requests) == 3  # two failures, then the answer


def test_persistent_server_error_fails_after_bounded_retries():
    behaviour = Behaviour()
    with fake_server(behaviour) as url, _backend(url) as backend:
        behaviour.requests.clear()
        behaviour.statuses[:] = [500] * 10
        start = time.perf_counter()
        with pytest.raises(BackendError, match=r"HTTP 500.*3 attempts") as info:
            backend.score([PROMPT], [["go north"]])
    assert url in str(info.value)
    assert len(behaviour.requests) == 3 and time.perf_counter() - start < 2


def test_client_errors_are_not_retried():
    behaviour = Behaviour()
    with fake_server(behaviour) as url, _backend(url) as backend:
        behaviour.requests.clear()
        behaviour.statuses[:] = [400, 400, 400]
        with pytest.raises(BackendError, match=r"refused a scoring request \(HTTP 400: fake status 400\)"):
            backend.score([PROMPT], [["go north"]])
    assert len(behaviour.requests) == 1


def test_backoff_grows_and_honours_retry_after():
    import random

    policy = RetryPolicy(max_retries=5, backoff_s=1.0, max_backoff_s=4.0)
    rng = random.Random(0)
    delays = [policy.delay(k, rng) for k in range(5)]
    for k, d in enumerate(delays):
        step = min(4.0, 2.0**k)
        assert step / 2 <= d <= step
    assert policy.delay(0, rng, retry_after=2.5) == 2.5
    assert policy.delay(0, rng, retry_after=60) == 4.0  # capped


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refused_connection_names_the_server_within_bounded_time():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    start = time.perf_counter()
    with pytest.raises(BackendError, match="cannot connect") as info:
        _backend(url)
    assert url in str(info.value) and "3 attempts" in str(info.value)
    assert time.perf_counter() - start < 5


def test_timeout_is_reported():
    behaviour = Behaviour()
    with fake_server(behaviour) as url, _backend(url, timeout_s=0.3) as backend:
        behaviour.sleep_s = 2.0
        start = time.perf_counter()
        with pytest.raises(BackendError, match="timed out") as info:
            backend.score([PROMPT], [["go north"]])
        assert time.perf_counter() - start < 3 * 0.3 + 1.5
    assert url in str(info.value)


def test_wrong_model_name_lists_what_the_server_serves():
    with fake_server(Behaviour(models=["smollm2", "other"])) as url:
        with pytest.raises(ConfigError, match=r"does not serve model 'fake-model'; it serves: 'other', 'smollm2'"):
            _backend(url)


def test_url_without_models_endpoint_is_refused():
    with fake_server(Behaviour(models_status=404)) as url:
        with pytest.raises(ConfigError, match="no /v1/models endpoint"):
            _backend(url)


def test_missing_logprobs_is_a_clear_error():
    with fake_server(Behaviour(drop_logprobs=True)) as url:
        with pytest.raises(BackendError, match="without log-probabilities") as info:
            _backend(url)
        with _backend(url, check_alignment=False) as backend:
            with pytest.raises(BackendError, match="without log-probabilities"):
                backend.score([PROMPT], [["go north"]])
    assert url in str(info.value)


def test_prompt_not_echoed_is_a_clear_error():
    with fake_server(Behaviour(no_echo=True)) as url, _backend(url, check_alignment=False) as backend:
        with pytest.raises(BackendError, match="did not echo the prompt"):
            backend.score([PROMPT], [["go north"]])


def test_non_finite_logprobs_name_the_action():
    behaviour = Behaviour()
    with fake_server(behaviour) as url, _backend(url) as backend:
        behaviour.nan_for = "coin"
        with pytest.raises(
            BackendError, match=r"non-finite log-probability nan for token ' coin' of action 'take coin'"
        ):
            backend.score([PROMPT], [["go north", "take coin"]])


def test_shifted_echo_logprobs_are_detected_at_construction():
    with fake_server(Behaviour(shifted=True)) as url:
        with pytest.raises(BackendError, match="shifted by one token.*add_bos_token=bool:true"):
            _backend(url)


def test_alignment_report_counts_both_ways():
    tokens = ["a", "b", "c", "d"]
    lps = [None, -1.0, -1.0, -1.0]
    assert alignment_report(tokens, lps, [None, {"b": -0.1}, {"c": -0.1}, {"d": -0.1}]) == (3, 0)
    assert alignment_report(tokens, lps, [None, {"c": -0.1, "b": -3}, {"d": -0.1}, {"x": -0.1}]) == (0, 2)


def test_generate_cuts_at_the_stop_string():
    with fake_server(Behaviour(generated=" think: go north\n\nmore")) as url, _backend(url) as backend:
        result = backend.generate(PROMPT, max_new_tokens=8, stop=("\n\n",))
    assert result.text == " think: go north" and result.new_tokens == 1 and result.prompt_tokens > 0


def test_api_key_comes_from_the_environment_and_stays_out_of_names(monkeypatch):
    secret = "sk-test-secret-4242"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    behaviour = Behaviour()
    with fake_server(behaviour) as url, _backend(url) as backend:
        assert secret not in repr(backend) and secret not in backend.name
        assert all(secret not in str(v) for v in vars(backend).values())
    assert behaviour.auth_headers and all(h == f"Bearer {secret}" for h in behaviour.auth_headers)


def test_bad_settings_are_refused_before_any_request():
    for bad in ("", "localhost:8000", "ftp://x/v1", "http://user:pw@host/v1"):
        with pytest.raises(ConfigError):
            normalise_base_url(bad)
    assert normalise_base_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000/v1"
    assert normalise_base_url("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000/v1"
    with pytest.raises(ConfigError, match="max_retries"):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ConfigError, match="needs --base-url"):
        check_backend_options("openai", model="m")
    with pytest.raises(ConfigError, match="takes --model"):
        check_backend_options("openai", model_path="/x", base_url="http://h/v1", model="m")
    with pytest.raises(ConfigError, match="are for the openai backend"):
        check_backend_options("embedded", base_url="http://h/v1")
    with pytest.raises(ConfigError, match="unknown LLM backend"):
        make_backend("nope")
    with pytest.raises(ConfigError, match="--device"):
        make_backend("openai", base_url="http://127.0.0.1:9/v1", model="m", device="cuda")
