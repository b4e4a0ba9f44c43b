"""The on-disk format of a saved agent: a folder with ``agent.json`` and, for agents with tensors,
``weights.safetensors``. No pickle anywhere, so loading a folder runs no code from it.

``agent.json``::

    {"format": "priorcache-agent", "version": 1, "agent": "dqn-prior", "config": {...}, "seed": 0,
     "state": {...}, "weights": {"file": "weights.safetensors", "sha256": "...", "tensors": [...]} | null}

The weights are written first and ``agent.json`` last, each atomically, and ``agent.json`` holds the
weights' sha256: a save cut short or a file changed afterwards is refused on load, never half-read.
Every refusal is a ConfigError that says what is wrong with which folder.

Other state that is plain arrays (a replay buffer) is saved by :func:`write_arrays` as one
safetensors file whose metadata holds a JSON header.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as save_arrays

from priorcache.errors import ConfigError
from priorcache.io import atomic_write_bytes, atomic_write_json
from priorcache.weights import WEIGHTS, read_weights, write_weights

FORMAT = "priorcache-agent"
VERSION = 1
MANIFEST = "agent.json"
ARRAYS_FORMAT = "priorcache-arrays"


def write_agent(path: Path, doc: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Save ``doc`` (agent, config, seed, state: JSON-able) and ``tensors`` into folder ``path``."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"cannot save an agent into {path}: it is a file")
    if path.is_dir() and any(path.iterdir()) and not (path / MANIFEST).is_file():
        raise ConfigError(
            f"cannot save an agent into {path}: the folder holds other files; "
            "give an empty or new folder, or one an agent was saved into"
        )
    path.mkdir(parents=True, exist_ok=True)
    weights = None
    if tensors:
        weights = write_weights(path, tensors)
    else:
        (path / WEIGHTS).unlink(missing_ok=True)
    try:
        atomic_write_json(path / MANIFEST, {"format": FORMAT, "version": VERSION, **doc, "weights": weights})
    except ValueError as e:  # NaN/inf in the state: refuse rather than write JSON nothing can read
        raise ConfigError(f"cannot save the agent: its state is not plain JSON ({e})") from None


def read_agent(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The checked ``agent.json`` document and the tensors of the agent saved in ``path``."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise ConfigError(f"{path} holds no saved agent (no {MANIFEST})")
    try:
        doc = json.loads(manifest.read_text(encoding="utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise ConfigError(f"{manifest} is damaged: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConfigError(f"{manifest} is not a saved priorcache agent (format {_get(doc, 'format')!r})")
    if doc.get("version") != VERSION:
        raise ConfigError(f"{manifest} has format version {doc.get('version')!r}; this priorcache reads {VERSION}")
    expected = {"agent": str, "config": dict, "state": dict, "seed": int}
    for key, kind in expected.items():
        value = doc.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigError(f"{manifest} is damaged: {key!r} must be of type {kind.__name__}, got {value!r:.80}")
    return doc, read_weights(path, doc.get("weights"), MANIFEST)


def _get(doc: Any, key: str) -> Any:
    return doc.get(key) if isinstance(doc, dict) else None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def write_arrays(path: Path, arrays: dict[str, np.ndarray], header: dict[str, Any]) -> None:
    """Save named NumPy arrays and a JSON ``header`` as one safetensors file, atomically."""
    data = save_arrays(arrays, metadata={"format": ARRAYS_FORMAT, "header": json.dumps(header)})
    atomic_write_bytes(Path(path), data)


def read_arrays(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Inverse of :func:`write_arrays`; ConfigError naming the file when it is not one."""
    path = Path(path)
    try:
        with safe_open(path, framework="numpy") as f:
            arrays = {k: f.get_tensor(k) for k in f.keys()}
            meta = f.metadata() or {}
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except (OSError, SafetensorError, ValueError) as e:
        raise ConfigError(f"{path} is not a readable safetensors file: {e}") from None
    if meta.get("format") != ARRAYS_FORMAT:
        raise ConfigError(f"{path} is not a priorcache arrays file (format {meta.get('format')!r})")
    try:
        header = json.loads(meta.get("header", ""), parse_constant=_no_constants)
    except ValueError as e:
        raise ConfigError(f"{path} has a damaged header: {e}") from None
    if not isinstance(header, dict):
        raise ConfigError(f"{path} has a damaged header: not a JSON object")
    return arrays, header
