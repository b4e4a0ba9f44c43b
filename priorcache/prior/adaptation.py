"""F8 (b): LoRA fine-tuning of a transformers-loadable backend on a few (prompt, action) pairs (docs/design.md §2).

The pairs are the prompts the cache scores with (``prompt_builder(env)(objective, state_text)``) and
the oracle's action there, optionally with the state's candidate actions (triples). Two losses
(``loss=``), both on token ids exactly as :class:`~priorcache.prior.transformers_backend.TransformersBackend`
scores a continuation (prefix ids, state ids, then ``" " + action``):

- ``"token"``: the mean negative log-probability of the action's tokens (next-token LM loss);
- ``"choice"``: the cross-entropy of the F3 prior itself, softmax over the candidates of their
  length-normalised scores ℓ (mean token log-probability, τ = 1), at the oracle's action: the
  prior is trained as a classifier over the admissible actions. The scores come from the backend's
  own scoring forward (one packed row: state tokens and the candidates' token trie), run with
  gradients, so training raises exactly the F3 score the prior is built from, relative to the
  other candidates. Needs the candidates;
- ``"both"``: the sum of the two.

The adapter (peft's ``adapter_config.json`` + ``adapter_model.safetensors``) is kept under
``cache_root() / "adapters" / <key>``, the key being the sha256 of the base model's identity, the
environment, the pairs' text and the hyper-parameters; it is written into a temporary folder and
renamed into place, with ``priorcache-adapter.json`` (base model identity, key, training wall time)
written last. A second call with the same key checks and reuses the folder instead of training.
A backend given ``adapter=`` merges it into the weights (``merge_and_unload``), so scoring speed
and the F9 prefix KV cache are unchanged, and carries the key in its ``name``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from priorcache.errors import ConfigError
from priorcache.io import build_once, cache_root
from priorcache.prior.base import Prompt

ADAPTER_META = "priorcache-adapter.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
FORMAT_VERSION = 1
DEFAULT_LEARNING_RATE = 1e-3
# Measured on held-out oracle steps, 5 shots (docs/design.md, F8): BabyAI top-1 0.485 at 4 epochs, 0.576
# at 8, 0.515 at 16; the shop 0.522 at 4, 0.609 at 8.
DEFAULT_EPOCHS = 8
#: The losses ``lora_finetune`` knows, with the text that enters the adapter key.
LOSSES = {
    "token": "mean action-token NLL",
    "choice": "cross-entropy of softmax over candidates of mean action-token log-prob",
    "both": "mean action-token NLL + candidate cross-entropy",
}
DEFAULT_LOSS = "token"
# peft 0.21 asks transformers 5.24 the deprecated ``is_gradient_checkpointing``: nothing to act on here.
_CHECKPOINTING_WARNING = ".*is_gradient_checkpointing.*"


@dataclass(frozen=True)
class LoraAdapter:
    """A LoRA adapter folder and how it was obtained: ``trained`` (False: a saved one was reused),
    ``wall_time_s`` (training, or checking the saved folder) and the training time recorded with it."""

    folder: Path
    key: str
    trained: bool
    wall_time_s: float
    train_wall_time_s: float


def base_model_identity(model_path: str | os.PathLike[str]) -> dict[str, str]:
    """What identifies a base model folder without loading it: its resolved path and a sha256 of its
    ``config.json`` and of the names and sizes of its weight files (the same model converted into
    another cache folder has the same fingerprint)."""
    folder = Path(model_path).expanduser()
    config = folder / "config.json"
    if not config.is_file():
        raise ConfigError(f"{folder} holds no config.json: not a transformers model folder")
    digest = hashlib.sha256(config.read_bytes())
    for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        digest.update(f"\0{weights.name}\0{weights.stat().st_size}".encode())
    return {"path": str(folder.resolve()), "fingerprint": digest.hexdigest()}


def _hyper_parameters(
    rank: int, alpha: float, epochs: int, learning_rate: float, seed: int, batch_size: int, loss: str = "token"
) -> dict[str, Any]:
    for label, value in (("rank", rank), ("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{label} must be a positive int, got {value!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an int, got {seed!r}")
    if not (isinstance(alpha, (int, float)) and alpha > 0):
        raise ConfigError(f"alpha must be > 0, got {alpha!r}")
    if not (isinstance(learning_rate, (int, float)) and np.isfinite(learning_rate) and learning_rate > 0):
        raise ConfigError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
    if loss not in LOSSES:
        raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    return {
        "rank": rank,
        "alpha": float(alpha),
        "epochs": epochs,
        "learning_rate": float(learning_rate),
        "seed": seed,
        "batch_size": batch_size,
        "target_modules": "all-linear",
        "dropout": 0.0,
        "loss": LOSSES[loss],
        "format": FORMAT_VERSION,
    }


#: A training example: (Prompt, action) or (Prompt, action, candidates), the action among the candidates.
Pair = tuple[Prompt, str] | tuple[Prompt, str, Sequence[str]]


def _check_pairs(pairs: Sequence[Pair]) -> list[tuple[Prompt, str, tuple[str, ...] | None]]:
    """The pairs as (prompt, action, candidates or None), refusing anything malformed."""
    checked = list(pairs)
    if not checked:
        raise ConfigError("LoRA fine-tuning needs at least one (prompt, action) pair")
    out = []
    for item in checked:
        if not (isinstance(item, (tuple, list)) and len(item) in (2, 3)):
            raise ConfigError(f"expected (Prompt, action) pairs or (Prompt, action, candidates) triples, got {item!r}")
        prompt, action = item[0], item[1]
        if not isinstance(prompt, Prompt):
            raise ConfigError(f"expected a Prompt(prefix, state), got {type(prompt).__name__}")
        if not isinstance(action, str) or not action.strip():
            raise ConfigError(f"an action must be a non-empty string, got {action!r}")
        candidates = None
        if len(item) == 3 and item[2] is not None:
            if isinstance(item[2], str) or not all(isinstance(c, str) and c.strip() for c in item[2]):
                raise ConfigError(f"candidates must be a sequence of non-empty strings, got {item[2]!r}")
            candidates = tuple(item[2])
            if action not in candidates or len(set(candidates)) != len(candidates):
                raise ConfigError(f"the action {action!r} must be one of distinct candidates {candidates!r}")
        out.append((prompt, action, candidates))
    return out


def adapter_key(base_fingerprint: str, env: str, pairs: Sequence[Pair], hyper: dict[str, Any]) -> str:
    """sha256 (hex) of the base model's fingerprint, the environment, the pairs' text (in order, with
    their candidates when given) and the hyper-parameters: equal inputs give the same adapter folder."""
    payload = {
        "base": base_fingerprint,
        "env": env,
        "pairs": [[p.prefix, p.state, a] + ([list(c)] if c is not None else []) for p, a, c in _check_pairs(pairs)],
        "hyper": hyper,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def check_adapter_folder(folder: str | os.PathLike[str], base: dict[str, str] | None = None) -> dict[str, Any]:
    """The adapter's metadata, after checking the folder is complete and (when ``base`` is given, a
    :func:`base_model_identity`) made for that base model; anything else raises ConfigError."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"LoRA adapter folder {folder} does not exist")
    try:
        meta = json.loads((folder / ADAPTER_META).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{folder} has no {ADAPTER_META}: not a finished priorcache LoRA adapter") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{folder}/{ADAPTER_META} is damaged: {exc}") from exc
    if not (
        isinstance(meta, dict)
        and isinstance(meta.get("key"), str)
        and isinstance(meta.get("base_model"), dict)
        and isinstance(meta["base_model"].get("fingerprint"), str)
        and meta.get("format") == FORMAT_VERSION
    ):
        raise ConfigError(f"{folder}/{ADAPTER_META} is damaged or of another format: {meta!r:.200}")
    for name in ADAPTER_FILES:
        if not (folder / name).is_file():
            raise ConfigError(f"LoRA adapter {folder} is damaged: {name} is missing")
    try:
        json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        from safetensors import safe_open

        with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as weights:
            if not list(weights.keys()):
                raise ConfigError(f"LoRA adapter {folder} is damaged: its weight file holds no tensors")
    except ConfigError:
        raise
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise ConfigError(f"LoRA adapter {folder} is damaged: {type(exc).__name__}: {exc}") from exc
    if base is not None and meta["base_model"]["fingerprint"] != base["fingerprint"]:
        raise ConfigError(
            f"LoRA adapter {folder} was trained on the base model {meta['base_model'].get('path')!r} "
            f"(fingerprint {meta['base_model']['fingerprint'][:12]}…), not on {base['path']!r} "
            f"(fingerprint {base['fingerprint'][:12]}…)"
        )
    return meta


def apply_adapter(model: Any, model_path: str | os.PathLike[str], adapter: str | os.PathLike[str]) -> tuple[Any, str]:
    """Load the LoRA ``adapter`` onto ``model`` (loaded from ``model_path``) and merge it into the
    weights; returns the plain merged model and the adapter key."""
    from peft import PeftModel

    meta = check_adapter_folder(adapter, base_model_identity(model_path))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_CHECKPOINTING_WARNING, category=FutureWarning)
            merged = PeftModel.from_pretrained(model, str(Path(adapter).expanduser()), is_trainable=False)
        merged = merged.merge_and_unload()
    except Exception as exc:  # peft raises KeyError/ValueError/RuntimeError on mismatched weights
        raise ConfigError(f"cannot apply the LoRA adapter {adapter}: {type(exc).__name__}: {exc}") from exc
    merged.eval()
    return merged, meta["key"]


def _choice_scores(backend: Any, context: list[int], action_ids: list[list[int]]) -> Any:
    """The F3 scores ℓ (mean token log-probability) of every candidate after ``context``, with gradients.

    One forward of one packed row, the layout the backend scores with: the context tokens, then a
    trie of the candidates' proper token prefixes (shared prefixes run once); a boolean attention
    mask lets each trie node see the context and its own ancestors only, and position ids place it
    where it sits in its own sequence. The logits at the node for a[:k] are then those of token k of
    a after the context. (Eager attention gets the mask as additive −inf, sdpa as booleans.)"""
    import torch

    node_of: dict[tuple[int, ...], int] = {}
    tokens: list[int] = []
    parents: list[int] = []
    depths: list[int] = []
    for ids in action_ids:
        for k in range(1, len(ids)):
            key = tuple(ids[:k])
            if key not in node_of:
                node_of[key] = len(tokens)
                tokens.append(ids[k - 1])
                parents.append(node_of.get(key[:-1], -1))
                depths.append(k - 1)
    c, q = len(context), len(tokens)
    allowed = torch.zeros(c + q, c + q, dtype=torch.bool)
    allowed[:c, :c] = torch.ones(c, c, dtype=torch.bool).tril()
    allowed[c:, :c] = True
    for i in range(q):
        node = i
        while node >= 0:
            allowed[c + i, c + node] = True
            node = parents[node]
    model = backend._model
    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        mask = allowed[None, None]
    else:
        mask = torch.zeros(allowed.shape, dtype=model.dtype).masked_fill(~allowed, torch.finfo(model.dtype).min)[
            None, None
        ]
    positions = list(range(c)) + [c + d for d in depths]
    logits = model(
        input_ids=backend._tensor([context + tokens]),
        attention_mask=mask.to(backend.device),
        position_ids=backend._tensor([positions]),
        use_cache=False,
        logits_to_keep=q + 1,  # the last context position and the trie nodes predict scored tokens
    ).logits[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    first, nodes = logprobs[0], logprobs[1:]
    scores = []
    for ids in action_ids:
        total = first[ids[0]]
        if len(ids) > 1:
            rows = torch.tensor([node_of[tuple(ids[:k])] for k in range(1, len(ids))], device=logprobs.device)
            total = total + nodes[rows, torch.tensor(ids[1:], device=logprobs.device)].sum()
        scores.append(total / len(ids))
    return torch.stack(scores)


def _train(
    backend: Any,
    pairs: list[tuple[Prompt, str, tuple[str, ...] | None]],
    hyper: dict[str, Any],
    out: Path,
    progress: bool,
) -> None:
    """Fit LoRA weights on ``backend``'s model (in place: the backend is spent afterwards) and save them in
    ``out``; ``progress``: a bar over the optimiser steps with the last batch's loss."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm

    torch.manual_seed(hyper["seed"])
    config = LoraConfig(
        r=hyper["rank"],
        lora_alpha=hyper["alpha"],
        target_modules=hyper["target_modules"],
        lora_dropout=hyper["dropout"],
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_CHECKPOINTING_WARNING, category=FutureWarning)
        model = get_peft_model(backend._model, config)
    model.train()
    # The backend's scoring helpers now run the trainable model (the backend is spent afterwards).
    backend._model = model
    loss_kind = next(name for name, text in LOSSES.items() if text == hyper["loss"])
    rows = []
    for prompt, action, candidates in pairs:
        # Fitted to the model's context as scoring fits it, so training sees the ids the prior is scored on.
        context, _ = backend._context_ids(prompt)
        if not context:
            raise ConfigError(backend._empty_context_message())
        if loss_kind == "token":
            action_ids = backend._action_ids(action)
            # As the backend's naive path: the last action token is only a target, never an input.
            rows.append((context + action_ids[:-1], action_ids))
        elif candidates is None:
            raise ConfigError(
                f"loss {loss_kind!r} needs the candidates of every state: give (Prompt, action, candidates)"
            )
        elif loss_kind == "both" or len(candidates) > 1:  # one candidate: nothing to choose, no gradient
            rows.append((context, [backend._action_ids(c) for c in candidates], candidates.index(action)))
    if not rows:
        raise ConfigError("no training state has more than one candidate: the choice loss has nothing to learn")
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=hyper["learning_rate"], weight_decay=0.0)
    rng = np.random.default_rng(hyper["seed"])
    size = hyper["batch_size"]
    steps = hyper["epochs"] * -(-len(rows) // size)
    bar = tqdm(total=steps, desc="LoRA fine-tune", unit="step", disable=not progress, file=sys.stderr)
    for epoch in range(hyper["epochs"]):
        order = rng.permutation(len(rows))
        for start in range(0, len(order), size):
            batch = [rows[i] for i in order[start : start + size]]
            optimiser.zero_grad(set_to_none=True)
            batch_loss = 0.0
            for row in batch:  # one state per forward: no padding, exactly the scored token ids
                if loss_kind == "token":
                    inputs, targets = row
                    logits = model(
                        input_ids=backend._tensor([inputs]), use_cache=False, logits_to_keep=len(targets)
                    ).logits[0]
                    loss = torch.nn.functional.cross_entropy(
                        logits.float(), torch.tensor(targets, device=logits.device), reduction="mean"
                    )
                else:
                    context, action_ids, target = row
                    scores = _choice_scores(backend, context, action_ids).float()
                    # token NLL of the oracle action = −ℓ_target; the F3 prior's cross-entropy at τ = 1
                    loss = -scores[target] if loss_kind == "both" else scores.new_zeros(())
                    loss = loss + torch.logsumexp(scores, 0) - scores[target]
                (loss / len(batch)).backward()
                batch_loss += loss.item() / len(batch)
            optimiser.step()
            bar.set_postfix(epoch=epoch + 1, loss=f"{batch_loss:.3f}", refresh=False)
            bar.update()
    bar.close()
    model.eval()
    model.save_pretrained(str(out), safe_serialization=True)


def lora_finetune(
    model_path: str | os.PathLike[str],
    pairs: Sequence[Pair],
    *,
    env: str = "",
    rank: int = 8,
    alpha: float = 16,
    epochs: int = DEFAULT_EPOCHS,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    seed: int = 0,
    batch_size: int = 4,
    loss: str = DEFAULT_LOSS,
    device: str = "cpu",
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> LoraAdapter:
    """Fine-tune LoRA weights (all linear layers but the LM head) of the causal LM in ``model_path``
    on ``pairs`` of (Prompt, action) or (Prompt, action, candidates) with the ``loss`` named in
    ``LOSSES``, or reuse the adapter saved for the same key; see the module doc.

    ``cache_dir`` overrides ``cache_root() / "adapters"``; ``progress`` shows a bar over the optimiser
    steps (stderr). A damaged folder under the key, or one
    made for another base model, is refused with ConfigError (delete it to train again)."""
    from priorcache.prior.transformers_backend import TransformersBackend

    start = time.perf_counter()
    pairs = _check_pairs(pairs)
    hyper = _hyper_parameters(rank, alpha, epochs, learning_rate, seed, batch_size, loss)
    base = base_model_identity(model_path)
    key = adapter_key(base["fingerprint"], env, pairs, hyper)
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / "adapters"
    dest = root / key
    trained: dict[str, float] = {}

    def read(folder: Path) -> dict[str, Any] | None:
        if not folder.exists():
            return None
        meta = check_adapter_folder(folder, base)
        if meta["key"] != key:
            raise ConfigError(f"LoRA adapter {folder} records the key {meta['key']!r}, not its folder name {key!r}")
        return meta

    def build(tmp: Path) -> None:
        print(
            f"priorcache: LoRA fine-tuning on {len(pairs)} pairs ({epochs} epochs, {loss} loss)…",
            file=sys.stderr,
            flush=True,
        )
        backend = TransformersBackend(model_path, device=device, prefix_cache_size=0)
        _train(backend, pairs, hyper, tmp, progress)
        del backend
        trained["s"] = time.perf_counter() - start
        meta = {
            "format": FORMAT_VERSION,
            "key": key,
            "base_model": base,
            "env": env,
            "pairs": len(pairs),
            "hyper_parameters": hyper,
            "train_wall_time_s": trained["s"],
            "created_at": time.time(),
        }
        (tmp / ADAPTER_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    meta = build_once(dest, read, build)  # a damaged folder under the key is refused by read, never replaced
    if "s" in trained:
        return LoraAdapter(dest, key, True, time.perf_counter() - start, trained["s"])
    return LoraAdapter(dest, key, False, time.perf_counter() - start, float(meta.get("train_wall_time_s", 0.0)))
