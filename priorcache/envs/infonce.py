"""InfoNCE training of the state encoder of the learned state abstraction (docs/design.md F10).

``info_nce`` is the loss; ``train_encoder`` fits an MLP on standardised observations with it; ``keys``
turns the MLP's outputs into the abstraction's unit keys.
:mod:`priorcache.envs.state_abstraction` builds on these (the pipeline, propagation, cache keys, files).

Positives (F10): two states sharing a label, or adjacent steps of one episode, unless both are
labelled with different descriptions (where both have a label, the label decides). A batch is
``batch_size // 2`` anchors and one positive partner of each; every other pair in the batch that
is positive counts as well, and all the rest are negatives.

Our choices beyond the formula, each measured on generated data and on MuJoCo/MetaWorld states
(benchmarks/state_abstraction.py):
- anchors are labelled states (``labelled_fraction`` 1.0); unlabelled states enter the batches as the
  time neighbours of labelled anchors (``time_share`` of the partners, 0.1). An unlabelled anchor's
  only positives are its time neighbours, which makes the loss instance discrimination: it keeps every
  dimension that tells states apart, the describer's or not, and lowered held-out agreement;
- feature corruption (as in SCARF, Bahri et al. 2022): each input value is replaced, with probability
  ``corruption``, by the same dimension of a random training state. Positives must then agree
  whatever the corrupted dimensions hold, which teaches the encoder to ignore the dimensions the labels
  do not depend on;
- a small MLP (one hidden layer of 64), L2 weight decay inside Adam (not AdamW's decoupled decay,
  which barely shrank the weights of uninformative inputs) and early stopping on held-out labels: with
  256 labels larger networks and longer training memorise the labelled states.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from priorcache.errors import ConfigError
from priorcache.torch_threads import torch_threads
from priorcache.validation import is_int, is_number

# A bar for runs of at least this many optimiser steps (tens of seconds on 2 cores), on a terminal only.
_PROGRESS_MIN_STEPS = 1000


@dataclass(frozen=True)
class AbstractionConfig:
    """Training settings of the state abstraction. An epoch is ``ceil(n_states / (batch_size // 2))``
    steps of ``batch_size // 2`` anchors (``labelled_fraction`` of them labelled states, the rest
    drawn from all states) and one positive partner of each (a time neighbour with probability
    ``time_share`` when the anchor has one, else a state with its label).

    Early stopping: ``validation_fraction`` of the labelled states (when ≥ 10 are labelled) lose their
    label during training; after each epoch their propagated descriptions are compared with their
    labels, and the best epoch's weights are kept; training stops after ``patience`` epochs without
    a better one (0: run every epoch). Propagation afterwards uses every labelled state.
    ``progress``: a tqdm bar (None: for long runs on a terminal). ``threads``: torch threads while
    training (None: leave torch's setting); batches are small, and on 2 busy cores one thread trained
    3× faster than two (measured: 6 s against 19 s wall for 160 steps)."""

    dim: int = 64
    hidden: tuple[int, ...] = (64,)
    epochs: int = 100
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-2
    tau: float = 0.07
    n_labelled: int = 256
    labelled_fraction: float = 1.0
    time_positives: bool = True
    time_share: float = 0.1
    corruption: float = 0.5
    validation_fraction: float = 0.2
    patience: int = 20
    seed: int = 0
    progress: bool | None = None
    threads: int | None = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden) if isinstance(self.hidden, (list, tuple)) else None)
        if self.hidden is None or not all(is_int(h) and h >= 1 for h in self.hidden):
            raise ConfigError("AbstractionConfig.hidden must be a sequence of layer widths ≥ 1")
        for name, low in (("dim", 1), ("epochs", 1), ("n_labelled", 2), ("batch_size", 4), ("patience", 0)):
            value = getattr(self, name)
            if not is_int(value) or value < low:
                raise ConfigError(f"AbstractionConfig.{name} must be an integer ≥ {low}, got {value!r}")
        for name in ("lr", "tau"):
            value = getattr(self, name)
            if not (is_number(value) and math.isfinite(value) and value > 0):
                raise ConfigError(f"AbstractionConfig.{name} must be a finite number > 0, got {value!r}")
        if not (is_number(self.weight_decay) and 0 <= self.weight_decay < math.inf):
            raise ConfigError(f"AbstractionConfig.weight_decay must be a finite number ≥ 0, got {self.weight_decay!r}")
        for name in ("labelled_fraction", "time_share", "corruption", "validation_fraction"):
            value = getattr(self, name)
            if not (is_number(value) and 0 <= value <= 1) or (name == "validation_fraction" and value == 1):
                raise ConfigError(f"AbstractionConfig.{name} must be in [0, 1], got {value!r}")
        if not isinstance(self.time_positives, bool) or not is_int(self.seed):
            raise ConfigError("AbstractionConfig.time_positives must be a bool and seed an integer")
        if self.threads is not None and (not is_int(self.threads) or self.threads < 1):
            raise ConfigError(f"AbstractionConfig.threads must be an integer ≥ 1 or None, got {self.threads!r}")
        if self.progress is not None and not isinstance(self.progress, bool):
            raise ConfigError(f"AbstractionConfig.progress must be True, False or None, got {self.progress!r}")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "hidden": list(self.hidden)}


def info_nce(z: torch.Tensor, positives: torch.Tensor, tau: float) -> torch.Tensor:
    """F10: the mean over anchors i that have a positive of the mean over their positives j of
    ``−log exp(sim_ij/τ) / Σ_{k≠i} exp(sim_ik/τ)``, sim the cosine of rows of ``z``.

    ``positives`` is a (B, B) bool mask; its diagonal is ignored. Each anchor counts once however
    many positives it has (the "L_out" form of Khosla et al. 2020's supervised contrastive loss)."""
    if z.ndim != 2 or tuple(positives.shape) != (z.shape[0], z.shape[0]):
        raise ConfigError(
            f"info_nce needs z (B, d) and a (B, B) mask, got {tuple(z.shape)} and {tuple(positives.shape)}"
        )
    unit = nn.functional.normalize(z, dim=1)
    sim = unit @ unit.T / tau
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    log_denominator = torch.logsumexp(sim.masked_fill(eye, -math.inf), dim=1, keepdim=True)
    pos = positives.to(torch.bool) & ~eye
    count = pos.sum(dim=1)
    anchors = count > 0
    if not bool(anchors.any()):
        raise ConfigError("info_nce: no anchor in the batch has a positive")
    per_pair = (log_denominator - sim).masked_fill(~pos, 0.0)
    return (per_pair.sum(dim=1)[anchors] / count[anchors]).mean()


def build_network(obs_dim: int, hidden: tuple[int, ...], dim: int, seed: int) -> nn.Sequential:
    """A ReLU MLP obs_dim → hidden… → dim, initialised from its own generator: the seed alone fixes it."""
    layers: list[nn.Module] = []
    width = obs_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    net = nn.Sequential(*layers, nn.Linear(width, dim))
    gen = torch.Generator().manual_seed(seed)
    for layer in net:
        if isinstance(layer, nn.Linear):  # nn.Linear's own initialisation, drawn from ``gen``
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=gen)
            bound = 1 / math.sqrt(layer.in_features)
            nn.init.uniform_(layer.bias, -bound, bound, generator=gen)
    return net.eval()


class Positives:
    """Which states are positives of which (module docstring), and partner sampling."""

    def __init__(self, label_ids: np.ndarray, episode: np.ndarray, step: np.ndarray, time_positives: bool) -> None:
        n = len(label_ids)
        self.label_ids, self.time_positives = label_ids, time_positives
        order = np.lexsort((step, episode))
        same = episode[order][1:] == episode[order][:-1]
        if np.any(same & (step[order][1:] == step[order][:-1])):
            raise ConfigError("two states share one (episode, step): each step of an episode must be one state")
        self.prev, self.next = np.full(n, -1), np.full(n, -1)
        if time_positives:
            linked = same & (step[order][1:] == step[order][:-1] + 1)
            a, b = order[:-1][linked], order[1:][linked]
            keep = (label_ids[a] < 0) | (label_ids[b] < 0) | (label_ids[a] == label_ids[b])
            self.next[a[keep]], self.prev[b[keep]] = b[keep], a[keep]
        labelled = np.flatnonzero(label_ids >= 0)
        self.members = labelled[np.argsort(label_ids[labelled], kind="stable")]  # labelled rows grouped by label
        sizes = np.bincount(label_ids[labelled], minlength=int(label_ids.max()) + 1)
        self.start = np.concatenate([[0], np.cumsum(sizes)])[label_ids.clip(0)]  # where a row's group begins
        self.mates = np.where(label_ids >= 0, sizes[label_ids.clip(0)] - 1, 0)
        self.rank = np.zeros(n, dtype=np.int64)  # a labelled row's place in its group
        self.rank[self.members] = np.arange(len(self.members)) - self.start[self.members]
        self.n_time = (self.prev >= 0).astype(np.int64) + (self.next >= 0)
        self.anchors = np.flatnonzero(self.mates + self.n_time > 0)
        self.labelled_anchors = np.intersect1d(labelled, self.anchors)

    def partners(self, anchors: np.ndarray, rng: np.random.Generator, time_share: float) -> np.ndarray:
        """One positive of each anchor: a time neighbour with probability ``time_share`` (always when
        it has no label mate), else a label mate; each drawn uniformly among its kind."""
        mates, n_time = self.mates[anchors], self.n_time[anchors]
        u_kind, u_mate, u_time = rng.random((3, len(anchors)))
        by_time = (n_time > 0) & ((mates == 0) | (u_kind < time_share))
        r = np.floor(u_mate * mates).astype(np.int64)
        r += r >= self.rank[anchors]  # skip the anchor itself within its group
        mate = self.members[np.minimum(self.start[anchors] + r, len(self.members) - 1)]
        prev, nxt = self.prev[anchors], self.next[anchors]
        neighbour = np.where((prev >= 0) & ((nxt < 0) | (u_time < 0.5)), prev, nxt)
        return np.where(by_time, neighbour, mate)

    def mask(self, idx: np.ndarray) -> np.ndarray:
        """The (B, B) positive mask of the batch of rows ``idx``."""
        lab = self.label_ids[idx]
        mask = (lab[:, None] == lab[None, :]) & (lab[:, None] >= 0)
        mask |= idx[:, None] == idx[None, :]  # a state drawn twice is its own positive
        if self.time_positives:
            mask |= (self.next[idx][:, None] == idx[None, :]) | (self.prev[idx][:, None] == idx[None, :])
        return mask


def validation_rows(label_ids: np.ndarray, config: AbstractionConfig) -> np.ndarray:
    """The labelled rows held out for early stopping (none when fewer than 10 are labelled)."""
    labelled = np.flatnonzero(label_ids >= 0)
    k = int(len(labelled) * config.validation_fraction)
    if len(labelled) < 10 or k == 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.random.default_rng([config.seed, 1]).choice(labelled, k, replace=False))


def key_center(net: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The mean of the unit outputs over the states ``x``: what ``keys`` subtracts."""
    with torch.no_grad():
        return torch.cat([nn.functional.normalize(net(x[i : i + 4096]), dim=1) for i in range(0, len(x), 4096)]).mean(0)


def keys(net: nn.Sequential, x: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """The keys of states ``x``: unit outputs, minus the training states' mean, renormalised.

    Why centre: with feature corruption the loss is minimised by a narrow cone (every cosine
    0.93–0.98 on the generated test set), useless under a cache's cosine threshold. Subtracting the
    mean spreads it (same description 0.65 on average, different −0.12) and left nearest-neighbour
    agreement unchanged where measured."""
    with torch.no_grad():
        return nn.functional.normalize(nn.functional.normalize(net(x), dim=1) - center, dim=1)


def _agreement(net: nn.Sequential, x: torch.Tensor, label_ids: np.ndarray, query: np.ndarray, ref: np.ndarray) -> float:
    """Share of ``query`` rows whose nearest ``ref`` row (cosine of keys) has their label."""
    center = key_center(net, x)
    nearest = ref[torch.argmax(keys(net, x[query], center) @ keys(net, x[ref], center).T, dim=1).numpy()]
    return float(np.mean(label_ids[nearest] == label_ids[query]))


def train_encoder(
    net: nn.Sequential,
    x: torch.Tensor,
    label_ids: np.ndarray,
    episode: np.ndarray,
    step: np.ndarray,
    config: AbstractionConfig,
) -> dict[str, Any]:
    """Fit ``net`` on standardised states ``x`` with F10; ``label_ids[i]`` is state i's label index or
    -1. ``net`` ends with the best epoch's weights. Returns the record: loss and validation agreement
    per epoch, the best epoch, seconds."""
    with torch_threads(config.threads):
        return _train(net, x, label_ids, episode, step, config)


def _train(
    net: nn.Sequential,
    x: torch.Tensor,
    label_ids: np.ndarray,
    episode: np.ndarray,
    step: np.ndarray,
    config: AbstractionConfig,
) -> dict[str, Any]:
    validation = validation_rows(label_ids, config)
    train_ids = label_ids.copy()
    train_ids[validation] = -1
    pairs = Positives(train_ids, episode, step, config.time_positives)
    if len(pairs.anchors) == 0:
        raise ConfigError("no state has a positive: give labels shared by ≥ 2 states or episodes of ≥ 2 steps")
    reference = np.flatnonzero(train_ids >= 0)  # the labels training sees
    rng = np.random.default_rng(config.seed)
    half = config.batch_size // 2
    n_lab = round(half * config.labelled_fraction) if len(pairs.labelled_anchors) else 0
    per_epoch = max(1, math.ceil(len(x) / half))
    total = config.epochs * per_epoch
    # L2 inside Adam's gradient (not AdamW): on the weights of inputs that carry no label information the
    # penalty dominates Adam's normalised step and drives them to zero (module docstring).
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    losses: list[float] = []
    scores: list[float] = []
    best_state = copy.deepcopy(net.state_dict())
    disable = (not config.progress) if config.progress is not None else (None if total >= _PROGRESS_MIN_STEPS else True)
    start = time.perf_counter()
    with tqdm(total=total, desc="InfoNCE", unit="step", disable=disable, leave=False) as bar:
        for _ in range(config.epochs):
            net.train()
            epoch = []
            for _ in range(per_epoch):
                anchors = np.concatenate(
                    [rng.choice(pairs.labelled_anchors, n_lab), rng.choice(pairs.anchors, half - n_lab)]
                )
                idx = np.concatenate([anchors, pairs.partners(anchors, rng, config.time_share)])
                batch = x[idx]
                if config.corruption > 0:
                    swap = torch.from_numpy(rng.random(tuple(batch.shape)) < config.corruption)
                    batch = torch.where(swap, x[rng.integers(0, len(x), len(idx))], batch)
                loss = info_nce(net(batch), torch.from_numpy(pairs.mask(idx)), config.tau)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise ConfigError(f"the InfoNCE loss became {value}: lower lr or raise tau")
                epoch.append(value)
                bar.update()
            losses.append(float(np.mean(epoch)))
            net.eval()
            if len(validation):
                scores.append(_agreement(net, x, label_ids, validation, reference))
                if len(scores) == 1 or scores[-1] > max(scores[:-1]):  # ties keep the earlier epoch
                    best_state = copy.deepcopy(net.state_dict())
                bar.set_postfix(loss=f"{losses[-1]:.3f}", validation=f"{scores[-1]:.3f}")
                if config.patience and len(scores) - 1 - int(np.argmax(scores)) >= config.patience:
                    break
            else:
                best_state = net.state_dict()
    net.load_state_dict(best_state)
    net.eval()
    return {
        "loss": losses,
        "validation_agreement": scores,
        "validation_states": len(validation),
        "best_epoch": int(np.argmax(scores)) + 1 if scores else len(losses),
        "seconds": time.perf_counter() - start,
    }
