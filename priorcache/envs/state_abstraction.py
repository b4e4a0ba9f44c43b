"""Learned state abstraction for continuous states (docs/design.md F10): observation vectors → unit
vectors trained with InfoNCE, and descriptions propagated from a small labelled set.

This is [Shihab]'s semi-supervised pipeline: 200–300 states get a description, an MLP encoder is
trained with InfoNCE on them and on unlabelled states (positives: the same description, or adjacent
steps of one episode), and every other state takes the description of its nearest labelled neighbour
in the learned embedding. **[Shihab] has people write the descriptions; here the environment's
rule-based describer φ(s) (``ControlEnv.describe``) labels the chosen states and stands in for that
human annotation.** Labels are opaque strings; nothing else about the describer is used.

- ``semi_supervised(observations, episode, env.describe, env_name=...)``: choose ``n_labelled`` states
  (seeded), label them with the describer, train (:mod:`priorcache.envs.infonce`: the loss, the
  positives, our training choices, ``AbstractionConfig``).
- ``StateAbstraction.fit``: the same from labels given (None = unlabelled).
- ``label_agreement``: on held-out states, how often the propagated description equals the
  describer's, beside the same nearest-neighbour propagation in standardised observation space.
- Cache keys: ``embed(observations)`` gives ``(n, dim)`` float32 unit rows. A ``StateAbstraction``
  has the ``name``/``dim``/``encode`` of an ``Encoder`` and can be a ``PriorCache``'s encoder: every
  lookup passes ``embedding=abstraction.embed(obs)[0]`` (``encode`` of a text is refused: the key comes
  from the observation). ``name`` holds the environment, the observation size and a hash of the
  weights, normalisation and labelled set, so a cache saved under one abstraction is refused under
  any other.
- ``save``/``load``: a folder with ``weights.safetensors`` (the network, the key centre and the
  labelled observations) and ``abstraction.json`` (environment, sizes, normalisation, labels, τ, settings,
  training record, hashes), each written atomically, the manifest last; no pickle. Loading for
  another environment or observation size, or a damaged folder, is a ConfigError.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from priorcache.envs.infonce import AbstractionConfig, build_network, info_nce, key_center, keys, train_encoder
from priorcache.errors import ConfigError
from priorcache.io import atomic_write_json
from priorcache.validation import is_number
from priorcache.weights import WEIGHTS, read_weights, write_weights

__all__ = ["AbstractionConfig", "Agreement", "SemiSupervised", "StateAbstraction", "info_nce"]
__all__ += ["label_agreement", "semi_supervised"]

FORMAT = "priorcache-state-abstraction"
VERSION = 1
MANIFEST = "abstraction.json"
_LABELLED = "labelled_observations"  # the labelled states' observations, beside the network's tensors
_CENTER = "center"  # the training states' mean unit output, which keys subtract
_CHUNK = 4096  # rows per forward pass or distance matrix


def _observations(observations: Any, what: str, obs_dim: int | None = None) -> np.ndarray:
    obs = np.asarray(observations, dtype=np.float32)
    if obs.ndim == 1 and obs_dim is not None:
        obs = obs.reshape(1, -1)
    if obs.ndim != 2 or len(obs) == 0 or (obs_dim is not None and obs.shape[1] != obs_dim):
        raise ConfigError(f"{what} must have shape (n ≥ 1, {obs_dim or 'obs_dim'}), got {obs.shape}")
    if not np.all(np.isfinite(obs)):
        raise ConfigError(f"{what} contain NaN or ±inf")
    return obs


def _label_ids(labels: Sequence[str | None], n: int) -> tuple[np.ndarray, list[str]]:
    """Each state's index into the list of distinct labels, -1 for unlabelled."""
    labels = list(labels)
    if len(labels) != n:
        raise ConfigError(f"labels has {len(labels)} items for {n} observations")
    vocab: dict[str, int] = {}
    ids = np.full(n, -1, dtype=np.int64)
    for i, label in enumerate(labels):
        if label is None:
            continue
        if not isinstance(label, str) or not label:
            raise ConfigError(f"labels must be non-empty strings or None; item {i} is {label!r:.80}")
        ids[i] = vocab.setdefault(label, len(vocab))
    if int((ids >= 0).sum()) < 2:
        raise ConfigError("at least 2 labelled states are needed to propagate descriptions")
    return ids, list(vocab)


def _indices(values: Any, n: int, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer):
        raise ConfigError(f"{what} must be ({n},) integers, got shape {arr.shape} of {arr.dtype}")
    return arr.astype(np.int64)


def _steps_in_episode(episode: np.ndarray) -> np.ndarray:
    """Each row's position among the rows of its episode, in row order."""
    order = np.argsort(episode, kind="stable")
    first = np.concatenate([[True], episode[order][1:] != episode[order][:-1]])
    begin = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    step = np.empty(len(order), dtype=np.int64)
    step[order] = np.arange(len(order)) - begin
    return step


@dataclass(frozen=True)
class _Parts:
    """What a trained abstraction is made of besides the network: what ``save`` writes."""

    env_name: str
    obs_dim: int
    config: AbstractionConfig
    mean: np.ndarray  # (obs_dim,) float32 normalisation
    std: np.ndarray
    labelled: np.ndarray  # (m, obs_dim) float32: the labelled states' observations
    labels: list[str]  # (m,) their descriptions
    center: np.ndarray  # (dim,) float32, see infonce.keys
    training: dict[str, Any]  # loss and validation agreement per epoch, best epoch, seconds


class StateAbstraction:
    """A trained encoder of one environment's observations and its labelled set (module docstring)."""

    def __init__(self, parts: _Parts, net: torch.nn.Sequential) -> None:
        self._parts = parts
        self._net = net.eval()
        self.env_name, self.obs_dim, self.config = parts.env_name, parts.obs_dim, parts.config
        self.dim: int = parts.config.dim
        self.tau: float = parts.config.tau
        self.labels: list[str] = list(parts.labels)
        self.training: dict[str, Any] = dict(parts.training)
        self.identity = self._identity()
        # The Encoder name a PriorCache records with its keys: another abstraction never shares them.
        self.name: str = f"state-abstraction/{self.env_name}/obs{self.obs_dim}-d{self.dim}-{self.identity[:16]}"
        self._labelled_keys = self.embed(parts.labelled)

    @classmethod
    def fit(
        cls,
        observations: Any,
        labels: Sequence[str | None],
        episode: Any,
        *,
        env_name: str,
        step: Any = None,
        config: AbstractionConfig | None = None,
    ) -> StateAbstraction:
        """Train on every state: ``labels[i]`` is state i's description or None (unlabelled);
        ``episode[i]`` and ``step[i]`` place it in time (``step`` defaults to the row order within
        each episode). Deterministic given ``config.seed`` (and the thread count)."""
        if not isinstance(env_name, str) or not env_name:
            raise ConfigError(f"env_name must be a non-empty string, got {env_name!r}")
        config = AbstractionConfig() if config is None else config
        if not isinstance(config, AbstractionConfig):
            raise ConfigError(f"config must be an AbstractionConfig, got {type(config).__name__}")
        obs = _observations(observations, "observations")
        n, obs_dim = obs.shape
        label_ids, vocab = _label_ids(labels, n)
        episode = _indices(episode, n, "episode")
        step = _steps_in_episode(episode) if step is None else _indices(step, n, "step")
        mean = obs.mean(axis=0, dtype=np.float64).astype(np.float32)
        std = obs.std(axis=0, dtype=np.float64).astype(np.float32)
        std = np.where(std > 1e-6, std, np.float32(1.0))  # a constant dimension stays 0 after centring
        net = build_network(obs_dim, config.hidden, config.dim, config.seed)
        x = torch.from_numpy((obs - mean) / std)
        training = train_encoder(net, x, label_ids, episode, step, config)
        center = key_center(net, x).numpy()
        rows = np.flatnonzero(label_ids >= 0)
        labelled = [vocab[i] for i in label_ids[rows]]
        return cls(_Parts(env_name, obs_dim, config, mean, std, obs[rows], labelled, center, training), net)

    # --- use --------------------------------------------------------------------------------
    def standardise(self, observations: Any) -> np.ndarray:
        """``(n, obs_dim)`` observations (or one) centred and scaled by the training states' statistics."""
        obs = _observations(observations, "observations", self.obs_dim)
        return (obs - self._parts.mean) / self._parts.std

    def embed(self, observations: Any) -> np.ndarray:
        """``(n, dim)`` float32 unit rows for ``(n, obs_dim)`` observations (or one ``(obs_dim,)``)."""
        x = self.standardise(observations)
        out = np.empty((len(x), self.dim), dtype=np.float32)
        center = torch.from_numpy(self._parts.center)
        for i in range(0, len(x), _CHUNK):
            out[i : i + _CHUNK] = keys(self._net, torch.from_numpy(x[i : i + _CHUNK]), center).numpy()
        # Normalised in float32 here, so norms are 1 to float32 precision.
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), np.float32(1e-12))

    def nearest_labelled(self, observations: Any) -> np.ndarray:
        """Index (into ``labels``) of the labelled state nearest each observation by cosine in the embedding."""
        return np.argmax(self.embed(observations) @ self._labelled_keys.T, axis=1)

    def raw_nearest_labelled(self, observations: Any) -> np.ndarray:
        """The baseline: the nearest labelled state by Euclidean distance in standardised observation space."""
        x, ref = self.standardise(observations), self.standardise(self._parts.labelled)
        out = np.empty(len(x), dtype=np.int64)
        for i in range(0, len(x), _CHUNK):
            chunk = x[i : i + _CHUNK]
            out[i : i + _CHUNK] = np.argmin((ref**2).sum(1)[None, :] - 2 * chunk @ ref.T, axis=1)
        return out

    def propagate(self, observations: Any) -> list[str]:
        """Each observation's description: its nearest labelled neighbour's (F10)."""
        return [self.labels[i] for i in self.nearest_labelled(observations)]

    def describe(self, observation: Any) -> str:
        """The propagated description of one ``(obs_dim,)`` observation."""
        if np.ndim(observation) != 1:
            raise ConfigError(f"describe takes one ({self.obs_dim},) observation, got shape {np.shape(observation)}")
        return self.propagate(observation)[0]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """The ``Encoder`` protocol's text method, refused: this abstraction's keys come from
        observations, so a ``PriorCache`` using it needs ``embedding=`` on every lookup."""
        raise ConfigError(
            f"{self.name} keys states by their observation, not their text: pass "
            "embedding=abstraction.embed(obs)[0] to PriorCache.lookup (LookupRequest.embedding in a batch)"
        )

    # --- identity and files -----------------------------------------------------------------
    def _tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"net.{k}": v.detach().cpu().contiguous().clone() for k, v in self._net.state_dict().items()}
        tensors[_LABELLED] = torch.from_numpy(np.ascontiguousarray(self._parts.labelled))
        tensors[_CENTER] = torch.from_numpy(np.ascontiguousarray(self._parts.center))
        return tensors

    def _manifest(self) -> dict[str, Any]:
        p = self._parts
        return {
            "env_name": p.env_name,
            "obs_dim": p.obs_dim,
            "dim": self.dim,
            "tau": self.tau,
            "config": p.config.to_json(),
            "normalisation": {"mean": [float(v) for v in p.mean], "std": [float(v) for v in p.std]},
            "labels": list(p.labels),
            "training": p.training,
        }

    def _identity(self) -> str:
        """sha256 of the weights, the labelled set and every setting that changes a key (not the
        training record, whose seconds differ between two identical trainings)."""
        h = hashlib.sha256()
        for name, tensor in sorted(self._tensors().items()):
            h.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode() + tensor.numpy().tobytes())
        doc = self._manifest()
        del doc["training"]
        runtime = {"progress": None, "threads": None}  # how training ran, not what it made
        h.update(json.dumps({**doc, "config": {**doc["config"], **runtime}}, sort_keys=True).encode())
        return h.hexdigest()

    def save(self, path: str | Path) -> None:
        """Write into folder ``path`` (new, empty or holding an earlier save): the weights first, the
        manifest with their sha256 last, each atomically, so a save cut short is never loaded."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"cannot save a state abstraction into {path}: it is a file")
        if path.is_dir() and any(path.iterdir()) and not (path / MANIFEST).is_file():
            raise ConfigError(f"cannot save a state abstraction into {path}: the folder holds other files")
        path.mkdir(parents=True, exist_ok=True)
        tensors = self._tensors()
        weights = write_weights(path, tensors)
        try:
            doc = {"format": FORMAT, "version": VERSION, **self._manifest(), "identity": self.identity}
            atomic_write_json(path / MANIFEST, {**doc, "weights": weights})
        except ValueError as e:  # NaN in the training record: refuse rather than write JSON nothing reads
            raise ConfigError(f"cannot save the state abstraction: {e}") from None

    @classmethod
    def load(cls, path: str | Path, *, env_name: str, obs_dim: int) -> StateAbstraction:
        """The abstraction saved in ``path``; ConfigError when it was saved for another environment
        or observation size, or the folder is damaged."""
        path = Path(path)
        doc = _read_manifest(path)
        if doc["env_name"] != env_name:
            raise ConfigError(f"{path} holds a state abstraction of {doc['env_name']!r}, not of {env_name!r}")
        if doc["obs_dim"] != obs_dim:
            raise ConfigError(f"{path} holds a state abstraction of {doc['obs_dim']}-d observations, not {obs_dim}-d")
        tensors = _read_weights(path, doc["weights"])
        try:
            config = AbstractionConfig(**{f.name: doc["config"][f.name] for f in fields(AbstractionConfig)})
            mean, std = (np.asarray(doc["normalisation"][k], dtype=np.float32) for k in ("mean", "std"))
            labelled = tensors.pop(_LABELLED).numpy().astype(np.float32)
            center = tensors.pop(_CENTER).numpy().astype(np.float32)
            if mean.shape != (obs_dim,) or std.shape != (obs_dim,) or labelled.shape != (len(doc["labels"]), obs_dim):
                raise ValueError("the normalisation, labels and labelled observations disagree in size")
            if center.shape != (config.dim,):
                raise ValueError(f"the key centre has shape {center.shape}, not ({config.dim},)")
            if config.dim != doc["dim"] or config.tau != doc["tau"]:
                raise ValueError("'dim' and 'tau' disagree with 'config'")
            net = build_network(obs_dim, config.hidden, config.dim, config.seed)
            net.load_state_dict({k.removeprefix("net."): v for k, v in tensors.items()}, strict=True)
            parts = _Parts(env_name, obs_dim, config, mean, std, labelled, doc["labels"], center, doc["training"])
        except (KeyError, TypeError, ValueError, RuntimeError, ConfigError) as e:
            raise ConfigError(f"{path} is damaged: {e}") from None
        loaded = cls(parts, net)
        if loaded.identity != doc["identity"]:
            raise ConfigError(f"{path} is damaged: its contents do not match the identity hash in {MANIFEST}")
        return loaded


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _read_manifest(path: Path) -> dict[str, Any]:
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise ConfigError(f"{path} holds no saved state abstraction (no {MANIFEST})")
    try:
        doc = json.loads(manifest.read_text(encoding="utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{manifest} is damaged: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConfigError(f"{manifest} is not a saved state abstraction")
    if doc.get("version") != VERSION:
        raise ConfigError(f"{manifest} has format version {doc.get('version')!r}; this priorcache reads {VERSION}")
    kinds = {"env_name": str, "obs_dim": int, "dim": int, "config": dict, "normalisation": dict, "labels": list}
    kinds |= {"training": dict, "identity": str, "weights": dict}
    for key, kind in kinds.items():
        if not isinstance(doc.get(key), kind) or isinstance(doc.get(key), bool):
            raise ConfigError(
                f"{manifest} is damaged: {key!r} must be of type {kind.__name__}, got {doc.get(key)!r:.80}"
            )
    if not is_number(doc.get("tau")):
        raise ConfigError(f"{manifest} is damaged: 'tau' must be a number, got {doc.get('tau')!r:.80}")
    if not all(isinstance(label, str) and label for label in doc["labels"]):
        raise ConfigError(f"{manifest} is damaged: 'labels' must be non-empty strings")
    return doc


def _read_weights(path: Path, weights: dict[str, Any]) -> dict[str, torch.Tensor]:
    tensors = read_weights(path, weights, MANIFEST)
    if not {_LABELLED, _CENTER} <= set(tensors):
        raise ConfigError(f"{path / WEIGHTS} lacks the labelled keys or their centre")
    return tensors


@dataclass(frozen=True)
class SemiSupervised:
    """``semi_supervised``'s result: the abstraction and the rows the describer labelled."""

    abstraction: StateAbstraction
    labelled_rows: np.ndarray


def semi_supervised(
    observations: Any,
    episode: Any,
    describe: Callable[[np.ndarray], str],
    *,
    env_name: str,
    step: Any = None,
    config: AbstractionConfig | None = None,
) -> SemiSupervised:
    """[Shihab]'s pipeline: ``config.n_labelled`` states drawn at random (seeded) are labelled by
    ``describe`` (the rule-based describer, e.g. ``env.describe``, standing in for the paper's human
    annotators); the others stay unlabelled; the encoder trains on all of them."""
    config = AbstractionConfig() if config is None else config
    if not isinstance(config, AbstractionConfig):
        raise ConfigError(f"config must be an AbstractionConfig, got {type(config).__name__}")
    obs = _observations(observations, "observations")
    rng = np.random.default_rng(config.seed)
    rows = np.sort(rng.choice(len(obs), min(config.n_labelled, len(obs)), replace=False))
    labels: list[str | None] = [None] * len(obs)
    for i in rows:
        labels[i] = describe(obs[i])
    abstraction = StateAbstraction.fit(obs, labels, episode, env_name=env_name, step=step, config=config)
    return SemiSupervised(abstraction, rows)


@dataclass(frozen=True)
class Agreement:
    """Held-out label agreement: the share of states whose propagated description equals the describer's."""

    n: int
    learned: float  # nearest labelled neighbour in the learned embedding
    raw: float  # nearest labelled neighbour in standardised observation space (the baseline)
    majority: float  # the commonest description's share: always answering it scores this
    n_descriptions: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def label_agreement(abstraction: StateAbstraction, observations: Any, labels: Sequence[str]) -> Agreement:
    """Agreement of the propagated descriptions of held-out ``observations`` with ``labels``, the
    describer's own, learned embedding and raw-space baseline side by side."""
    obs = _observations(observations, "observations", abstraction.obs_dim)
    truth = np.asarray(list(labels), dtype=object)
    if truth.shape != (len(obs),):
        raise ConfigError(f"label_agreement needs one label per observation: {truth.shape[0]} for {len(obs)}")
    known = np.asarray(abstraction.labels, dtype=object)
    learned = float(np.mean(known[abstraction.nearest_labelled(obs)] == truth))
    raw = float(np.mean(known[abstraction.raw_nearest_labelled(obs)] == truth))
    _, counts = np.unique(truth.astype(str), return_counts=True)
    return Agreement(len(obs), learned, raw, float(counts.max() / len(obs)), len(counts))
