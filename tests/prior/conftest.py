"""Shared fixtures for the LLM-backend tests: the real embedded model, loaded once per session,
and a tiny random causal LM folder (same tokenizer) for paths the real model cannot reach."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from priorcache.prior.embedded import EmbeddedBackend, embedded_model_dir


@pytest.fixture(scope="session")
def embedded() -> EmbeddedBackend:
    # The first use ever converts the packaged GGUF (~20-30 s); later sessions load in < 1 s.
    return EmbeddedBackend()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with random weights and SmolLM2's tokenizer, saved as a model folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        architectures=["LlamaForCausalLM"],
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    source = embedded_model_dir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (source / name).exists():
            shutil.copy(source / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def llama_server_url(tmp_path_factory: pytest.TempPathFactory):
    """A real llama.cpp server (llama-cpp-python, its own virtualenv) serving the embedded model's GGUF on
    a free loopback port, for the whole session; yields its base URL. Without the server's virtualenv
    the tests that use it fail (CI must run them): `make llama-server` builds it."""
    from priorcache.prior.embedded import embedded_gguf_path
    from tests.prior._llama_server import llama_server, server_python

    try:
        server_python()
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with llama_server(embedded_gguf_path(), log) as url:
        yield url
