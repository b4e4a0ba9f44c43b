"""F8 adaptation of the LLM prior to an environment from oracle demonstrations on training games
(docs/design.md, F8): the one place that turns ``--shots`` / ``--adapt`` into a backend and in-context
examples, for ``priorcache run``, ``bench`` and ``prior-quality``.

- ``none``: the base model, no examples (0-shot);
- ``icl``: the (state, action) pairs of the first ``shots`` training games in the prompt prefix,
  thinned to ``max_examples`` (constant over an episode, so F9 reuses its key/value cache);
- ``lora``: a LoRA fine-tune on the (prompt, action) pairs of those games, trained once and cached
  by key (``priorcache.prior.adaptation``); no in-context pairs;
- ``both``: the fine-tuned model with the in-context pairs.

Demonstrations come from training games only (``oracle_steps(env, "train", …)``), so evaluation
games never inform the prior.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from priorcache.errors import ConfigError
from priorcache.experiments.prior_quality import OracleStep, few_shot_examples, off_path_steps, oracle_steps
from priorcache.prior.adaptation import DEFAULT_EPOCHS, DEFAULT_LOSS
from priorcache.prior.base import LLMBackend
from priorcache.prior.prompts import prompt_builder

ADAPT_CHOICES = ("none", "icl", "lora", "both")


def check_adaptation(shots: int, adapt: str) -> None:
    """ConfigError for an unknown ``adapt`` or a fine-tune without demonstrations."""
    if adapt not in ADAPT_CHOICES:
        raise ConfigError(f"adapt must be one of {', '.join(ADAPT_CHOICES)}, not {adapt!r}")
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
        raise ConfigError(f"shots must be an integer ≥ 0, got {shots!r}")
    if adapt in ("lora", "both") and shots < 1:
        raise ConfigError(f"adapt {adapt!r} fine-tunes on oracle episodes of --shots training games; give shots ≥ 1")


@dataclass
class Adaptation:
    """What the adaptation produced: the backend to score with, the in-context examples, and its cost."""

    backend: LLMBackend
    examples: list[tuple[str, str]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


#: Off-path states per demonstrated state (detours) and the longest detour, for ``lora_pairs``.
DEFAULT_DETOURS = 0
DEFAULT_DETOUR_DEPTH = 2


def lora_pairs(
    env: str,
    demos: list[OracleStep],
    shots: int,
    *,
    detours: int = DEFAULT_DETOURS,
    depth: int = DEFAULT_DETOUR_DEPTH,
    seed: int = 0,
    max_steps: int | None = None,
) -> list[tuple[Any, str, tuple[str, ...]]]:
    """(prompt, action, candidates) triples of the first ``shots`` training games of ``demos``, with the
    family's prompt: the demonstrated states, then ``detours`` off-path detours (1..``depth`` random
    actions) from each of them, labelled by the environment's reactive oracle (``off_path_steps``).
    Only those ``shots`` training games are played; the oracle is asked about their states only."""
    build = prompt_builder(env)
    chosen = set(sorted({s.game_seed for s in demos})[:shots])
    steps = [s for s in demos if s.game_seed in chosen]
    if detours > 0 and steps:
        steps = steps + off_path_steps(env, steps, detours=detours, depth=depth, seed=seed, max_steps=max_steps)
    return [(build(s.objective, s.state_text), s.action, s.candidates) for s in steps]


def adapt_prior(
    env: str,
    backend: str,
    shots: int,
    adapt: str,
    *,
    model_path: str | None = None,
    base_url: str | None = None,
    model: str | None = None,
    device: str = "cpu",
    max_examples: int = 10,
    lora_epochs: int = DEFAULT_EPOCHS,
    demos: list[OracleStep] | None = None,
    max_steps: int | None = None,
    base: LLMBackend | None = None,
    progress: bool = False,
) -> Adaptation:
    """Build backend ``backend`` adapted by ``adapt`` on ``shots`` training games of ``env``
    (``model_path``, ``base_url``, ``model``: see :func:`priorcache.prior.registry.make_backend`).

    ``lora_epochs``: the fine-tune's epochs. ``demos``: oracle steps of training games already played
    (at least ``shots`` games); played here when None. ``base``: an already loaded backend to use
    instead of building ``backend`` (not with a fine-tune, which needs its own model). ``info`` records
    what was done and its wall time (demonstrations, LoRA training or reuse of a saved adapter,
    loading the backend)."""
    from priorcache.prior.registry import make_backend

    check_adaptation(shots, adapt)
    if base is not None and adapt in ("lora", "both"):
        raise ConfigError(f"adapt {adapt!r} fine-tunes a model of its own; it cannot use an already loaded backend")
    start = time.perf_counter()
    info: dict[str, Any] = {"adapt": adapt, "shots": shots}
    if adapt != "none" and shots > 0 and demos is None:
        demos = oracle_steps(env, "train", shots, max_steps, progress=progress)
    info["demos_wall_time_s"] = time.perf_counter() - start
    examples = few_shot_examples(demos or [], shots, max_examples) if adapt in ("icl", "both") else []
    info["in_context_pairs"] = len(examples)
    adapter = None
    if adapt in ("lora", "both"):
        pairs = lora_pairs(env, demos or [], shots)
        adapter, lora_info = _fine_tune(backend, model_path, pairs, env, device, lora_epochs, DEFAULT_LOSS)
        info.update(lora_info)
    load_start = time.perf_counter()
    scorer = base or make_backend(
        backend, model_path=model_path, device=device, adapter=adapter, base_url=base_url, model=model
    )
    info["backend_load_wall_time_s"] = time.perf_counter() - load_start
    info["wall_time_s"] = time.perf_counter() - start
    return Adaptation(scorer, examples, info)


def skill_pairs(env: Any, demos: Any) -> list[tuple[Any, str, tuple[str, ...]]]:
    """F8 for control: the (prompt, skill, skills) triples of control demonstrations ``demos``
    (:class:`~priorcache.envs.control_demos.ControlDemos`, training instances only): each step's φ(s)
    in SAC-Prior's skill prompt, labelled with the skill the demonstrations' segmentation gave it.
    A (φ(s), skill) pair that repeats is kept once; one φ(s) under two skills keeps both (the
    description does not tell the two states apart, and the prior should say so)."""
    from priorcache.prior.skill_prior import skill_prompt

    skills = tuple(env.skills)
    seen = dict.fromkeys((env.describe(obs), skill) for obs, skill in zip(demos.observations, demos.skills))
    return [(skill_prompt(env.objective, text, skills=skills), skill, skills) for text, skill in seen]


def adapt_skill_prior(
    env_name: str,
    env: Any,
    demos: Any,
    backend: str = "embedded",
    *,
    model_path: str | None = None,
    device: str = "cpu",
    epochs: int = DEFAULT_EPOCHS,
    loss: str = "choice",
) -> Adaptation:
    """The backend LoRA-fine-tuned on :func:`skill_pairs` of ``demos`` (trained once and cached by key,
    ``priorcache.prior.adaptation``). The loss is F3's own cross-entropy over the skill names by
    default: a skill prior is a classifier over a small fixed vocabulary."""
    from priorcache.prior.registry import make_backend

    start = time.perf_counter()
    pairs = skill_pairs(env, demos)
    if not pairs:
        raise ConfigError(f"no demonstration steps of {env_name} to fine-tune the skill prior on")
    adapter, info = _fine_tune(backend, model_path, pairs, env_name, device, epochs, loss)
    load_start = time.perf_counter()
    scorer = make_backend(backend, model_path=model_path, device=device, adapter=adapter)
    info = {"adapt": "lora", **info, "backend_load_wall_time_s": time.perf_counter() - load_start}
    info["wall_time_s"] = time.perf_counter() - start
    return Adaptation(scorer, [], info)


def _fine_tune(
    backend: str, model_path: str | None, pairs: list[Any], env: str, device: str, epochs: int, loss: str
) -> tuple[Any, dict[str, Any]]:
    """The LoRA adapter's folder for ``pairs`` (trained now or reused by key) and what it cost."""
    from priorcache.prior.adaptation import lora_finetune
    from priorcache.prior.registry import backend_model_path

    path = backend_model_path(backend, model_path)
    lora = lora_finetune(path, pairs, env=env, device=device, epochs=epochs, loss=loss)
    return lora.folder, {
        "lora_pairs": len(pairs),
        "lora_epochs": epochs,
        "lora_loss": loss,
        "lora_key": lora.key,
        "lora_folder": str(lora.folder),
        "lora_trained_now": lora.trained,
        "lora_train_wall_time_s": lora.train_wall_time_s,
        "lora_wall_time_s": lora.wall_time_s,
    }
