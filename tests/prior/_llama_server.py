"""A real llama.cpp server (llama-cpp-python's OpenAI-compatible server) serving the embedded model's
GGUF, started as a separate process for the openai backend's integration tests and benchmark.

The server lives in its own virtualenv, ``.venv-llama-server`` (``make llama-server``, which ``make
test`` runs; ``$PRIORCACHE_LLAMA_SERVER_VENV`` points elsewhere). It is started on a free loopback
port with the model's start token switched on (``--kv_overrides tokenizer.ggml.add_bos_token=bool:true``):
llama-cpp-python's echoed log-probabilities are shifted by one token for a model whose GGUF puts no
start token first, as SmolLM2's does not; ``start_token=False`` starts it as it comes, to test that
the backend notices."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_ENV = "PRIORCACHE_LLAMA_SERVER_VENV"
MODEL_ALIAS = "smollm2-135m-instruct"
#: Loading the 98 MB GGUF takes 2-10 s on 2 busy cores; a server that is not up by then has failed.
READY_TIMEOUT_S = 120.0


def server_python() -> Path:
    """The server virtualenv's python; FileNotFoundError naming how to install it when it is absent."""
    venv = Path(os.environ.get(VENV_ENV) or REPO / ".venv-llama-server")
    python = venv / "bin" / "python"
    if not python.is_file():
        raise FileNotFoundError(
            f"llama.cpp's server is not installed: {python} does not exist. Run `make llama-server` (part of "
            f"`make test`) to build it into {venv}, or set ${VENV_ENV} to a virtualenv holding "
            "llama-cpp-python[server]"
        )
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def llama_server(
    gguf: Path,
    log_path: Path,
    *,
    start_token: bool = True,
    threads: int = 2,
    n_ctx: int = 2048,
    extra: tuple[str, ...] = (),
) -> Iterator[str]:
    """Serve ``gguf`` on a free loopback port; yields the base URL (``http://127.0.0.1:PORT/v1``) once
    ``/v1/models`` answers, and stops the server (its whole process group) afterwards. The server's
    output goes to ``log_path``, whose tail a failed start reports."""
    port = free_port()
    command = [
        str(server_python()),
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--model_alias",
        MODEL_ALIAS,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--verbose",
        "false",
        *(["--kv_overrides", "tokenizer.ggml.add_bos_token=bool:true"] if start_token else []),
        *extra,
    ]
    url = f"http://127.0.0.1:{port}/v1"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                state = f"exited with {process.returncode}" if process.poll() is not None else "timed out"
                raise RuntimeError(f"llama.cpp server on port {port} {state} before it was ready; log tail:\n{tail}")
            time.sleep(0.25)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 15)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait(timeout=15)
