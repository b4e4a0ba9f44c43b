"""An LLM backend on any OpenAI-compatible completions server (vLLM, llama.cpp's server through
llama-cpp-python, a hosted endpoint), through the official ``openai`` client (docs/design.md §2).

F3 scores come from echoed log-probabilities: for prompt ``x`` and candidate ``a`` one request
``POST /v1/completions {"prompt": x + " " + a, "echo": true, "logprobs": 1, "max_tokens": 1}``
returns the log-probability of every token of the text. The candidate's tokens are found by the
character offsets the server returns (``text_offset``), never by tokenising here: the tokens that
cover the text after ``x`` (a token straddling the boundary counts as the candidate's), up to the
end of the echoed text (the one generated token is dropped). ``max_tokens`` is 1, not 0:
llama-cpp-python reads 0 as "until the context is full". One candidate per request (a list of
prompts in one request answers HTTP 500 on llama-cpp-python), all candidates of all prompts of a
call in flight at once on a thread pool; a server with prefix caching (vLLM, llama.cpp) runs the
shared prompt once.

Every request has a timeout and is retried with capped exponential backoff (with jitter, honouring
``Retry-After``) on HTTP 408/409/429/5xx, timeouts and connection errors, a bounded number of times;
other answers fail at once. Construction checks the server: ``/v1/models`` must list the model,
and one probe request checks that the echoed log-probabilities are aligned with their tokens
(llama-cpp-python shifts them by one token for a model whose GGUF puts no start token first,
e.g. SmolLM2; see :func:`alignment_report`). Every error names the server and what was wrong.

The API key comes from ``api_key`` or ``$OPENAI_API_KEY`` (a placeholder when neither is set, which
local servers accept); it is held by the client only and is never part of ``name``, a repr or
anything a run writes.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from priorcache.errors import BackendError, ConfigError
from priorcache.prior.action_prior import check_scores
from priorcache.prior.base import GenerationResult, Prompt, ScoreResult, check_batch

API_KEY_ENV = "OPENAI_API_KEY"
#: Sent when no key is given: local servers (vLLM, llama.cpp) accept any key, the client needs one.
PLACEHOLDER_API_KEY = "no-key"
#: HTTP statuses worth another try: timeout, conflict, rate limit, server errors.
RETRY_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))
#: The alignment probe: a sentence said three times, so that a working LM predicts its repeats.
PROBE_TEXT = "The red fox jumps over the lazy brown dog near the river bank. " * 3

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait before trying a request again: attempt ``k`` (0-based) waits
    ``min(max_backoff_s, backoff_s · 2^k)`` halved plus up to as much again at random, or the
    server's ``Retry-After`` when it gives one (capped by ``max_backoff_s``)."""

    max_retries: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def __post_init__(self) -> None:
        if not isinstance(self.max_retries, int) or isinstance(self.max_retries, bool) or self.max_retries < 0:
            raise ConfigError(f"max_retries must be an integer ≥ 0, got {self.max_retries!r}")
        for name in ("backoff_s", "max_backoff_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number ≥ 0 seconds, got {value!r}")

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(self.max_backoff_s, max(0.0, retry_after))
        step = min(self.max_backoff_s, self.backoff_s * 2.0**attempt)
        return step / 2 + rng.uniform(0.0, step / 2)


def normalise_base_url(base_url: str) -> str:
    """``base_url`` checked (http or https, with a host); a URL without a path gets ``/v1``."""
    if not isinstance(base_url, str) or not base_url.strip():
        raise ConfigError("the openai backend needs base_url, the server's URL (e.g. http://127.0.0.1:8000/v1)")
    url = base_url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"base_url {base_url!r} is not an http(s) URL with a host (e.g. http://127.0.0.1:8000/v1)")
    if parts.username or parts.password:
        raise ConfigError(f"base_url {parts.hostname!r}… holds credentials; pass the key in ${API_KEY_ENV} instead")
    return url if parts.path not in ("", "/") else url + "/v1"


def alignment_report(tokens: Sequence[str], logprobs: Sequence[float | None], top: Sequence[Any]) -> tuple[int, int]:
    """How often the most probable token of each echoed position is the position's own token
    (aligned) and how often it is the next position's token (shifted by one). On a text whose
    repeats a working LM predicts, an aligned server has the first count far ahead."""
    aligned = shifted = 0
    for i, options in enumerate(top):
        if not options or logprobs[i] is None:
            continue
        best = max(options.items(), key=lambda kv: kv[1])[0]
        aligned += best == tokens[i]
        shifted += i + 1 < len(tokens) and best == tokens[i + 1]
    return aligned, shifted


class OpenAIBackend:
    """F3 scores (and ReAct generation) from an OpenAI-compatible completions server.

    ``base_url``: the server's URL (``http://host:port/v1``); ``model``: the name it serves the model
    under (checked against ``/v1/models``); ``api_key``: None reads ``$OPENAI_API_KEY``.
    ``timeout_s``: per request, from sending it to its answer (``connect_timeout_s`` for opening the
    connection), generous because a server that answers one request at a time (llama-cpp-python) keeps
    the others of a batch waiting; ``max_concurrency``: requests in flight at once; ``retry``: see
    :class:`RetryPolicy`.
    ``check_alignment``: probe the echo alignment at construction (one request)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 300.0,
        connect_timeout_s: float = 5.0,
        max_concurrency: int = 8,
        retry: RetryPolicy | None = None,
        check_alignment: bool = True,
    ) -> None:
        import openai

        self.base_url = normalise_base_url(base_url)
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f"the openai backend needs model, the name the server at {self.base_url} serves")
        for label, value in (("timeout_s", timeout_s), ("connect_timeout_s", connect_timeout_s)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{label} must be a finite number of seconds > 0, got {value!r}")
        if not isinstance(max_concurrency, int) or isinstance(max_concurrency, bool) or max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be an integer ≥ 1, got {max_concurrency!r}")
        self.model = model
        self.name = f"openai:{model}"  # a saved cache scored by another model is refused (cache/state.py)
        self.retry = retry or RetryPolicy()
        self.max_concurrency = max_concurrency
        self._openai = openai
        self._client = openai.OpenAI(
            api_key=api_key or os.environ.get(API_KEY_ENV) or PLACEHOLDER_API_KEY,
            base_url=self.base_url,
            timeout=openai.Timeout(timeout_s, connect=connect_timeout_s),
            max_retries=0,  # retries are ours: one policy, and errors that say how many were made
        )
        self._rng = random.Random()
        self._rng_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="priorcache-openai")
        try:
            self._check_model()
            if check_alignment:
                self._check_alignment()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"OpenAIBackend(base_url={self.base_url!r}, model={self.model!r})"

    # ------------------------------------------------------------------ public API

    def score(
        self,
        prompts: Sequence[Prompt],
        candidates: Sequence[Sequence[str]],
        length_normalise: bool = True,
    ) -> ScoreResult:
        """F3 scores of ``candidates[i]`` after ``prompts[i]``: one request per candidate, all in
        flight at once. ``prompt_tokens`` counts each prompt once (what a server with prefix caching
        runs), ``continuation_tokens`` every candidate token."""
        pairs = check_batch(prompts, candidates)
        start = time.perf_counter()
        jobs = [
            (i, j, prompt.text, " " + action)
            for i, (prompt, cands) in enumerate(pairs)
            for j, action in enumerate(cands)
        ]
        results = self._map(lambda job: self._score_one(job[2], job[3]), jobs)
        sums = [[0.0] * len(cands) for _, cands in pairs]
        lengths = [[0] * len(cands) for _, cands in pairs]
        prompt_lengths = [0] * len(pairs)
        for (i, j, _, _), (total, count, before) in zip(jobs, results):
            sums[i][j], lengths[i][j] = total, count
            prompt_lengths[i] = max(prompt_lengths[i], before)
        scores = []
        for (_, cands), row_sums, row_lengths in zip(pairs, sums, lengths):
            row = [s / n if length_normalise else s for s, n in zip(row_sums, row_lengths)]
            scores.append(check_scores(row, cands, self._source()))
        continuation = sum(sum(row) for row in lengths)
        return ScoreResult(scores, time.perf_counter() - start, sum(prompt_lengths), continuation)

    def generate(
        self, prompt: str | Prompt, max_new_tokens: int = 48, stop: Sequence[str] = ("\n\n",)
    ) -> GenerationResult:
        """Greedy continuation of ``prompt`` (temperature 0), at most ``max_new_tokens`` tokens, cut
        before the first ``stop`` string. For the ReAct baseline."""
        text = prompt.text if isinstance(prompt, Prompt) else prompt
        if not isinstance(text, str) or not text:
            raise BackendError(f"generate() needs a non-empty prompt string or Prompt, got {prompt!r}")
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        start = time.perf_counter()
        stops = [s for s in stop if s][:4]  # the OpenAI API takes at most 4 stop strings
        response = self._request(
            "generation",
            lambda: self._client.completions.create(
                model=self.model, prompt=text, max_tokens=max_new_tokens, temperature=0.0, stop=stops or None
            ),
        )
        choice = self._first_choice(response)
        out = choice.text or ""
        for marker in stop:
            out = out.split(marker, 1)[0]
        usage = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        new_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        return GenerationResult(out, time.perf_counter() - start, prompt_tokens, new_tokens)

    def close(self) -> None:
        """Stop the request threads and close the HTTP connections."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def __enter__(self) -> OpenAIBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ construction checks

    def _check_model(self) -> None:
        try:
            listing = self._request("the model list (/v1/models)", lambda: self._client.models.list())
        except BackendError as exc:
            cause = exc.__cause__
            if isinstance(cause, self._openai.NotFoundError):
                raise ConfigError(
                    f"{self.base_url} has no /v1/models endpoint (HTTP 404): is it the base URL of an "
                    "OpenAI-compatible server (usually ending in /v1)?"
                ) from None
            raise
        served = sorted(str(getattr(m, "id", m)) for m in getattr(listing, "data", None) or [])
        if self.model not in served:
            raise ConfigError(
                f"the server at {self.base_url} does not serve model {self.model!r}; it serves: "
                f"{', '.join(repr(s) for s in served) or 'nothing'}"
            )

    def _check_alignment(self) -> None:
        response = self._request("the echo alignment probe", lambda: self._completion(PROBE_TEXT))
        logprobs = self._logprobs(response, PROBE_TEXT)
        top = getattr(logprobs, "top_logprobs", None)
        if not top or len(top) != len(logprobs.tokens):
            return  # a server that lists no top tokens cannot be probed; its scores are taken as they come
        aligned, shifted = alignment_report(logprobs.tokens, logprobs.token_logprobs, top)
        if shifted > aligned:
            raise BackendError(
                f"the server at {self.base_url} returns echoed log-probabilities shifted by one token for model "
                f"{self.model!r} (probe: {shifted} tokens matched the next position's best token, {aligned} their "
                "own), so its scores would be wrong. llama-cpp-python's server does this when the model's GGUF "
                "puts no start token first (e.g. SmolLM2): start it with --kv_overrides "
                "tokenizer.ggml.add_bos_token=bool:true"
            )

    # ------------------------------------------------------------------ scoring internals

    def _completion(self, text: str) -> Any:
        return self._client.completions.create(
            model=self.model, prompt=text, echo=True, logprobs=1, max_tokens=1, temperature=0.0
        )

    def _score_one(self, prompt: str, continuation: str) -> tuple[float, int, int]:
        """(sum of the continuation's token log-probs, its token count, the tokens before it)."""
        full = prompt + continuation
        lp = self._logprobs(self._request("a scoring request", lambda: self._completion(full)), full)
        offsets, values, tokens = lp.text_offset, lp.token_logprobs, lp.tokens
        # Token i spans offsets[i] to offsets[i+1]; it is the continuation's when it ends after the
        # prompt and starts inside the echoed text (the generated token starts at its end).
        ends = list(offsets[1:]) + [len(full) + 1]
        picked = [i for i in range(len(offsets)) if ends[i] > len(prompt) and offsets[i] < len(full)]
        if not picked:
            raise BackendError(
                f"the server at {self.base_url} echoed no tokens for the action text {continuation.strip()!r} "
                f"(text offsets {list(offsets)[-5:]} for a prompt of {len(prompt)} characters)"
            )
        echoed = "".join(tokens[i] for i in picked)
        if not _ascii(echoed).endswith(_ascii(continuation.lstrip())):
            raise BackendError(
                f"the server at {self.base_url} gave text offsets that disagree with its echoed tokens for action "
                f"{continuation.strip()!r} (tokens there: {echoed!r}); its offsets cannot be trusted for scoring "
                "(llama-cpp-python counts special tokens such as <|im_start|> inside a prompt as empty text)"
            )
        total = 0.0
        for i in picked:
            value = values[i]
            if i == 0 and value is None:
                raise BackendError(
                    f"empty prompt: the server at {self.base_url} gives the first token no log-probability, so the "
                    f"action {continuation.strip()!r} needs a non-empty prompt before it"
                )
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise BackendError(
                    f"the server at {self.base_url} returned a non-finite log-probability {value!r} for token "
                    f"{tokens[i]!r} of action {continuation.strip()!r}"
                )
            total += float(value)
        return total, len(picked), picked[0]

    def _logprobs(self, response: Any, sent: str) -> Any:
        """The echoed log-probabilities of ``response`` to text ``sent``, checked for shape."""
        choice = self._first_choice(response)
        lp = getattr(choice, "logprobs", None)
        fields = ("tokens", "token_logprobs", "text_offset")
        missing = [f for f in fields if lp is None or getattr(lp, f, None) is None]
        if missing:
            raise BackendError(
                f"the server at {self.base_url} answered model {self.model!r} without log-probabilities "
                f"(missing: {', '.join(missing)}); scoring needs /v1/completions with echo and logprobs "
                "(vLLM, llama-cpp-python's server; llama.cpp's own llama-server returns none for the prompt)"
            )
        if not (len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset)):
            raise BackendError(
                f"the server at {self.base_url} returned {len(lp.tokens)} tokens, {len(lp.token_logprobs)} "
                f"log-probabilities and {len(lp.text_offset)} text offsets; they must match"
            )
        if not isinstance(choice.text, str) or not choice.text.startswith(sent):
            raise BackendError(
                f"the server at {self.base_url} did not echo the prompt (its text starts {str(choice.text)[:60]!r}); "
                "scoring needs echo=true on /v1/completions"
            )
        offsets = list(lp.text_offset)
        if any(not isinstance(o, int) for o in offsets) or any(b < a for a, b in zip(offsets, offsets[1:])):
            raise BackendError(f"the server at {self.base_url} returned text offsets that are not increasing")
        return lp

    def _first_choice(self, response: Any) -> Any:
        choices = getattr(response, "choices", None)
        if not choices:
            raise BackendError(f"the server at {self.base_url} answered with no completion choices")
        return choices[0]

    # ------------------------------------------------------------------ transport

    def _map(self, fn: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
        """``fn`` over ``items`` on the request threads; the first failure cancels the rest and is raised."""
        futures: list[Future[T]] = [self._pool.submit(fn, item) for item in items]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        for future in futures:
            if future in done and future.exception() is not None:
                raise future.exception()  # type: ignore[misc]
        return [future.result() for future in futures]

    def _request(self, what: str, call: Callable[[], T]) -> T:
        """``call`` with the retry policy; BackendError (its cause kept) naming the server and ``what``."""
        openai = self._openai
        started = time.perf_counter()
        for attempt in range(self.retry.max_retries + 1):
            try:
                return call()
            except openai.APIStatusError as exc:
                failure, retry_after = exc, _retry_after(exc)
                reason = f"HTTP {exc.status_code}: {_message(exc)}"
                if exc.status_code not in RETRY_STATUSES:
                    raise BackendError(f"the server at {self.base_url} refused {what} ({reason})") from exc
            except openai.APITimeoutError as exc:
                failure, retry_after, reason = exc, None, "timed out"
            except openai.APIConnectionError as exc:
                failure, retry_after = exc, None
                reason = f"cannot connect: {_root_cause(exc)}"
            except openai.OpenAIError as exc:  # malformed answers (not JSON, wrong shape)
                raise BackendError(f"the server at {self.base_url} gave an unusable answer to {what}: {exc}") from exc
            if attempt == self.retry.max_retries:
                break
            with self._rng_lock:
                pause = self.retry.delay(attempt, self._rng, retry_after)
            time.sleep(pause)
        tries = self.retry.max_retries + 1
        raise BackendError(
            f"the server at {self.base_url} failed {what} for model {self.model!r}: {reason} "
            f"({tries} attempt{'s' if tries > 1 else ''} in {time.perf_counter() - started:.1f} s)"
        ) from failure

    def _source(self) -> str:
        return f"openai backend ({self.base_url}, model {self.model!r})"


def _retry_after(exc: Any) -> float | None:
    """The seconds a ``Retry-After`` header asks for, when it gives a number."""
    try:
        value = exc.response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, TypeError, ValueError):
        return None


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        text = inner.get("message") if isinstance(inner, dict) else inner
        if text:
            return str(text)[:300]
    return str(getattr(exc, "message", exc))[:300]


def _ascii(text: str) -> str:
    """``text`` without non-ASCII characters: servers decode a token that splits a multi-byte
    character with errors ignored, so only the ASCII part of token strings can be compared."""
    return text.encode("ascii", errors="ignore").decode("ascii")


def _root_cause(exc: BaseException) -> str:
    """The innermost cause of a connection error ("Connection refused", a DNS failure, …)."""
    while exc.__cause__ is not None and exc.__cause__ is not exc:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}"[:300]
