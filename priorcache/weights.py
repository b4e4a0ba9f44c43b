"""Tensors in a saved folder: one ``weights.safetensors`` described by an entry of the folder's JSON
manifest (file name, sha256, tensor names). The file is written first and the manifest, holding its
sha256, last, so a save cut short or a file changed afterwards is refused on load, never half-read.
safetensors holds no code: loading a folder someone handed over runs nothing from it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from priorcache.errors import ConfigError
from priorcache.io import atomic_write_bytes

WEIGHTS = "weights.safetensors"


def write_weights(path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Write ``tensors`` to ``path/weights.safetensors`` atomically; the manifest entry that describes them."""
    # safetensors wants contiguous CPU tensors that share no memory with each other.
    data = save_tensors({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()})
    atomic_write_bytes(path / WEIGHTS, data)
    return {"file": WEIGHTS, "sha256": hashlib.sha256(data).hexdigest(), "tensors": sorted(tensors)}


def read_weights(path: Path, weights: Any, manifest: str) -> dict[str, torch.Tensor]:
    """The tensors of ``path/weights.safetensors`` that ``manifest``'s ``weights`` entry describes
    (file name, sha256, tensor names); ConfigError naming what is wrong. None: no weights."""
    if weights is None:
        return {}
    if (
        not isinstance(weights, dict)
        or weights.get("file") != WEIGHTS
        or not isinstance(weights.get("sha256"), str)
        or not isinstance(weights.get("tensors"), list)
    ):
        raise ConfigError(f"{path / manifest} is damaged: bad 'weights' entry {weights!r:.120}")
    file = path / WEIGHTS
    if not file.is_file():
        raise ConfigError(f"{path} is damaged: {WEIGHTS} is missing")
    data = file.read_bytes()
    if hashlib.sha256(data).hexdigest() != weights["sha256"]:
        raise ConfigError(f"{file} is damaged or from another save: its sha256 differs from {manifest}'s")
    try:
        tensors = load_tensors(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise ConfigError(f"{file} is not a readable safetensors file: {e}") from None
    if sorted(tensors) != sorted(weights["tensors"]):
        raise ConfigError(f"{file} holds other tensors than {manifest} lists")
    return tensors
