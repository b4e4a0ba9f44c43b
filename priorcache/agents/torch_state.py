"""Torch modules, optimisers and generators as one flat map name → tensor, for safetensors (no pickle).

``state_tensors({"actor": net, "actor_opt": adam, "rng": generator})`` gives ``actor.<param>``,
``actor_opt.<param index>.<slot>`` (Adam's step and moments) and ``rng`` (the generator's state);
``load_state_tensors`` puts such a map back into the same kinds of objects and refuses tensors it
has no place for.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

Part = nn.Module | torch.optim.Optimizer | torch.Generator


def state_tensors(parts: Mapping[str, Part]) -> dict[str, torch.Tensor]:
    """Every part's state as tensors, keyed by the part's name and the state's own keys."""
    out: dict[str, torch.Tensor] = {}
    for name, part in parts.items():
        if isinstance(part, nn.Module):
            out.update({f"{name}.{k}": v for k, v in part.state_dict().items()})
        elif isinstance(part, torch.optim.Optimizer):
            for i, slots in part.state_dict()["state"].items():
                out.update({f"{name}.{i}.{slot}": torch.as_tensor(v) for slot, v in slots.items()})
        else:
            out[name] = part.get_state()
    return out


def load_state_tensors(tensors: Mapping[str, torch.Tensor], parts: Mapping[str, Part]) -> None:
    """Inverse of :func:`state_tensors` on parts of the same shapes; ValueError/RuntimeError/KeyError
    when a tensor has no part or does not fit it."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        head, _, rest = key.partition(".")
        if head not in parts:
            raise ValueError(f"unexpected tensor {key!r}")
        groups.setdefault(head, {})[rest] = value
    for name, part in parts.items():
        group = groups.get(name, {})
        if isinstance(part, nn.Module):
            part.load_state_dict(group)
        elif isinstance(part, torch.optim.Optimizer):
            state: dict[int, dict[str, torch.Tensor]] = {}
            for key, value in group.items():
                index, _, slot = key.partition(".")
                state.setdefault(int(index), {})[slot] = value
            part.load_state_dict({"state": state, "param_groups": part.state_dict()["param_groups"]})
        else:
            part.set_state(tensors[name])
