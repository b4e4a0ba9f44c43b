"""The causal LM behind :class:`~priorcache.prior.transformers_backend.TransformersBackend`: loading a
local transformers folder (refusing anything but a complete causal LM), and what the scoring paths
need to know about the loaded model and its release of transformers: the name under which a forward
takes and returns its KV cache, the special tokens a tokenizer puts before a text, a pad id, and the
state a prompt prefix leaves (:class:`PrefixState`, what the F9 prefix cache keeps).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from priorcache.errors import BackendError, ConfigError


@dataclass
class PrefixState:
    """The model state after a prefix: its KV cache (never mutated once stored) and the
    log-probabilities of the next token, needed when the state part is empty."""

    cache: Any
    next_logprobs: torch.Tensor
    length: int


def resolve_dtype(dtype: Any, device: str) -> Any:
    """The dtype to load the model in (None: float32 on CPU, the checkpoint's own elsewhere)."""
    if dtype is None:
        # float32 is the fast path on CPU and exact; accelerators take the checkpoint's own dtype.
        return torch.float32 if torch.device(device).type == "cpu" else "auto"
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)
    raise ConfigError(f"unknown dtype {dtype!r}; use a torch dtype, its name (e.g. 'bfloat16') or 'auto'")


def check_device(device: str) -> str:
    """``device`` when torch knows it and it is available here; ConfigError otherwise."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"invalid device {device!r}: {exc}") from exc
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but CUDA is not available here")
    return device


def load_model(path: Path, device: str, dtype: Any, attn_implementation: str | None) -> tuple[Any, Any]:
    """Load tokenizer and causal LM from a local folder, refusing anything else with a clear error."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not path.exists():
        raise BackendError(f"model folder {path} does not exist")
    if not path.is_dir():
        raise BackendError(f"model path {path} is not a folder (expected a transformers model folder)")
    if not (path / "config.json").is_file():
        raise BackendError(f"model folder {path} has no config.json: it is not a transformers model folder")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # transformers raises ValueError/OSError/KeyError for foreign configs
        raise BackendError(f"cannot read the model config in {path}: {exc}") from exc

    causal_names = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        causal_names.update([value] if isinstance(value, str) else value)
    architectures = list(getattr(config, "architectures", None) or [])
    # A BERT-like folder (e.g. a sentence encoder) has a config type that AutoModelForCausalLM would
    # accept, silently adding an untrained LM head; its declared architectures tell the truth.
    if architectures and not any(a in causal_names for a in architectures):
        raise BackendError(
            f"{path} holds a {'/'.join(architectures)} model, not a causal language model "
            "(expected an architecture such as LlamaForCausalLM)"
        )
    if getattr(config, "is_encoder_decoder", False) or config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise BackendError(f"{path} holds a {config.model_type!r} model, not a causal language model")

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model, info = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, local_files_only=True, output_loading_info=True, **extra
        )
    except Exception as exc:
        raise BackendError(f"cannot load the causal LM in {path}: {type(exc).__name__}: {exc}") from exc
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise BackendError(
            f"the model in {path} lacks weights {missing[:5]}{' …' if len(missing) > 5 else ''}: "
            "not a complete causal language model"
        )
    model.to(device)
    model.eval()
    return tokenizer, model


def cache_argument(model: Any) -> str:
    """The name of the forward's KV-cache argument.

    transformers 5.24 renamed ``past_key_values`` to ``cache``, in model forwards and in their
    outputs (the old names still work there but warn; the argument's FutureWarning names 5.40 as
    the release that drops it); earlier 5.x releases know only ``past_key_values``. The forward's
    own signature tells which one this model takes, so no release in the supported range warns.
    """
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # a forward without an introspectable signature: the old name
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def returned_cache(out: Any) -> Any:
    """The KV cache a forward with ``use_cache=True`` returned: ``out["cache"]`` from transformers 5.24 on
    (reading ``past_key_values`` there warns), ``out["past_key_values"]`` before."""
    return out["cache"] if "cache" in out else out["past_key_values"]


def leading_special_ids(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts before a text (a BOS for most models, none for SmolLM2)."""
    with_special = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return with_special[:start]
    return []


def pick_pad_id(tokenizer: Any) -> int:
    """The id that pads a batch: the pad token, else EOS, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0  # any valid id does: padded positions are masked and never scored
