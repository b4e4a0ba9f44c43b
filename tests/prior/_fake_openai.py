"""A small fake OpenAI-compatible server for the openai backend's unit tests (retries, errors, parsing).

It speaks real HTTP on a loopback port, so the real ``openai`` client and the backend's transport
run unchanged; only the model is fake: a text is split into tokens by ``\\s*\\S+`` (a word with the
spaces before it), and token ``t`` gets log-probability ``-0.1 · len(t)``. The integration tests use
a real server (``_llama_server``); this one only serves the fast tests."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = re.compile(r"\s*\S+")


def fake_tokens(text: str) -> list[str]:
    return TOKEN.findall(text)


def fake_logprob(token: str) -> float:
    return -0.1 * len(token)


@dataclass
class Behaviour:
    """What the fake answers; tests change it between requests."""

    models: list[str] = field(default_factory=lambda: ["fake-model"])
    statuses: list[int] = field(default_factory=list)  # consumed by completion requests, one each, before a 200
    retry_after: str | None = None
    models_status: int = 200
    drop_logprobs: bool = False
    no_echo: bool = False
    nan_for: str | None = None  # a token whose log-probability is NaN
    shifted: bool = False  # top_logprobs name the next token (llama-cpp-python without a start token)
    sleep_s: float = 0.0
    generated: str = " done"
    # what was seen
    requests: list[dict[str, Any]] = field(default_factory=list)
    auth_headers: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _completion(behaviour: Behaviour, body: dict[str, Any]) -> dict[str, Any]:
    prompt = body["prompt"]
    if not body.get("echo"):
        return {
            "id": "c",
            "object": "text_completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"text": behaviour.generated, "index": 0, "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(fake_tokens(prompt)), "completion_tokens": 1, "total_tokens": 0},
        }
    tokens = fake_tokens(prompt) + [behaviour.generated]
    offsets, position = [], 0
    for token in tokens:
        offsets.append(position)
        position += len(token)
    values: list[float | None] = [fake_logprob(t) for t in tokens]
    values[0] = None
    if behaviour.nan_for is not None:
        values = [float("nan") if t.strip() == behaviour.nan_for else v for t, v in zip(tokens, values)]
    top: list[dict[str, float] | None] = []
    for i, token in enumerate(tokens):
        best = tokens[i + 1] if behaviour.shifted and i + 1 < len(tokens) else token
        top.append(None if i == 0 else {best: -0.01})
    logprobs = {"tokens": tokens, "token_logprobs": values, "text_offset": offsets, "top_logprobs": top}
    text = ("" if behaviour.no_echo else prompt) + behaviour.generated
    return {
        "id": "c",
        "object": "text_completion",
        "created": 0,
        "model": body["model"],
        "choices": [
            {
                "text": text,
                "index": 0,
                "logprobs": None if behaviour.drop_logprobs else logprobs,
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": len(tokens) - 1, "completion_tokens": 1, "total_tokens": len(tokens)},
    }


def _handler(behaviour: Behaviour) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            behaviour.auth_headers.append(self.headers.get("Authorization", ""))
            if self.path.rstrip("/") != "/v1/models" or behaviour.models_status != 200:
                self._send(404 if behaviour.models_status == 200 else behaviour.models_status, {"error": "no"})
                return
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in behaviour.models]
            self._send(200, {"object": "list", "data": data})

        def do_POST(self) -> None:  # noqa: N802
            behaviour.auth_headers.append(self.headers.get("Authorization", ""))
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            with behaviour.lock:
                behaviour.requests.append(body)
                behaviour.in_flight += 1
                behaviour.max_in_flight = max(behaviour.max_in_flight, behaviour.in_flight)
                status = behaviour.statuses.pop(0) if behaviour.statuses else 200
            try:
                if behaviour.sleep_s:
                    time.sleep(behaviour.sleep_s)
                if status != 200:
                    headers = {"Retry-After": behaviour.retry_after} if behaviour.retry_after else None
                    self._send(status, {"error": {"message": f"fake status {status}"}}, headers)
                    return
                self._send(200, _completion(behaviour, body))
            finally:
                with behaviour.lock:
                    behaviour.in_flight -= 1

    return Handler


@contextmanager
def fake_server(behaviour: Behaviour) -> Iterator[str]:
    """Serve ``behaviour`` on a free loopback port; yields the base URL (``http://127.0.0.1:PORT/v1``)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(behaviour))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
