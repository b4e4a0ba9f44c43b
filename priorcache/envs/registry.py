"""Environment registry: every fact about an environment family, and ``make_env`` (docs/design.md §5).

``ENVIRONMENTS`` is the one place that says, per family, what it is, its variants, what it needs,
which class builds it, which constructor keyword picks a variant and which prompt template its
prompts use; the CLI, the prompt builder (``priorcache.prior.prompts``) and the report labels
(``priorcache.experiments.report``) read it from here.

``make_env("textworld", challenge="tw-cooking")`` and the shorthand
``make_env("textworld:tw-cooking")`` build the same environment. Environment modules are imported
only when one is made, so listing environments does not pay for importing their engines.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import gymnasium

from priorcache.errors import ConfigError, UnknownEnvironmentError


class GameSplit(NamedTuple):
    """The games of one split: game seeds from ``seeds``, built with ``kwargs`` on top of a run's own."""

    seeds: range
    kwargs: Mapping[str, Any] = MappingProxyType({})
    #: How these games differ from the training games (said in reports; held out must mean held out).
    held_out: str = ""


#: Training games (learning and demonstrations) and evaluation games never share a game seed.
TRAIN_SEEDS = range(0, 1_000_000)
EVAL_SEEDS = range(1_000_000, 2_000_000)
SPLITS = ("train", "eval")


class EnvironmentInfo(NamedTuple):
    """What ``ENVIRONMENTS`` says about one environment family."""

    description: str
    variants: tuple[str, ...]
    requires: str
    #: ``"module:Class"`` of the environment, imported only when one is made.
    entry_point: str
    #: The constructor keyword that selects a variant ("textworld:tw-cooking" -> challenge=...);
    #: None for a family without variants.
    variant_kwarg: str | None
    #: The name of the text-game prompt template (``priorcache.prior.prompts.TEXT_GAME_TEMPLATES``)
    #: that prompts for this family use.
    prompt_template: str
    #: The held-out evaluation games; the training games are ``GameSplit(TRAIN_SEEDS)`` for every family.
    eval_split: GameSplit
    #: Training episodes per seed of ``run`` and ``bench`` when ``--episodes`` is not given: where the
    #: held-out curves of the uncached 5-shot DQN-Prior measured here stop rising (README, "Measured
    #: here"), and small enough for the text table (3 seeds, every method) to run in hours on 2 cores.
    default_episodes: int = 30
    #: "text" (text observations and admissible actions: the text runner, ``run``, ``bench text``) or
    #: "control" (vector observations, actions in [-1, 1]^d: ``priorcache.envs.control.ControlEnv``).
    kind: str = "text"


KINDS = ("text", "control")


#: name -> what is known about that environment family.
ENVIRONMENTS: Mapping[str, EnvironmentInfo] = MappingProxyType(
    {
        "textworld": EnvironmentInfo(
            description="TextWorld text games generated offline by seed, with admissible commands",
            variants=("tw-simple", "tw-coin_collector", "tw-treasure_hunter", "tw-cooking"),
            requires="textworld==1.7.0 (pip); games are generated on first use and cached on disk",
            entry_point="priorcache.envs.textworld_env:TextWorldEnv",
            variant_kwarg="challenge",
            # The default template, chosen on TextWorld walkthroughs (see prior/prompts.py).
            prompt_template="plain",
            eval_split=GameSplit(
                EVAL_SEEDS,
                held_out="other game seeds of the same challenge; tw-simple games share the house layout and most "
                "commands, so its held-out games mostly re-test trained actions (tw-cooking varies rooms and recipes)",
            ),
        ),
        "alfworld": EnvironmentInfo(
            description="ALFWorld household tasks on the real ALFWorld engine (PDDL domain, grammar, "
            "demangler); official games from $ALFWORLD_DATA, else problems generated offline "
            "(labelled 'generated')",
            variants=(
                "pick_and_place",
                "pick_clean_then_place",
                "pick_heat_then_place",
                "pick_cool_then_place",
                "look_at_obj_in_light",
                "pick_two_obj_and_place",
            ),
            requires="alfworld==0.4.2 and textworld[pddl] (fast-downward, compiled at install); "
            "optional $ALFWORLD_DATA with the official json/ game files",
            entry_point="priorcache.envs.alfworld_env:ALFWorldEnv",
            variant_kwarg="task_type",
            prompt_template="alfworld",
            eval_split=GameSplit(
                EVAL_SEEDS,
                MappingProxyType({"split": "valid_unseen"}),
                held_out="ALFRED's unseen FloorPlans: rooms and receptacle layouts no training game uses",
            ),
        ),
        "babyai": EnvironmentInfo(
            description="BabyAI grid levels (minigrid) rendered as text: the 7x7 egocentric view and "
            "the mission; actions turn left/right, go forward, pick up, drop, toggle",
            variants=("GoToLocal", "PickupLoc", "PutNextLocal", "GoTo"),
            requires="minigrid==3.2.0 (pip); any other BabyAI-* level name also works",
            entry_point="priorcache.envs.babyai_env:BabyAIEnv",
            variant_kwarg="level",
            prompt_template="babyai",
            eval_split=GameSplit(
                EVAL_SEEDS, held_out="other level seeds: new layouts, object positions and missions of the level"
            ),
            default_episodes=40,  # short episodes (about 30 steps): 40 cost what 30 cost elsewhere
        ),
        "webshop": EnvironmentInfo(
            description="WebShop-style shopping simulator (not the original WebShop): seeded synthetic "
            "catalogue, BM25 search, search[...]/click[...] pages, WebShop's reward",
            variants=(),
            requires="rank-bm25==0.2.2 (pip); the catalogue is generated from a seed, no download",
            entry_point="priorcache.envs.webshop_env:WebShopEnv",
            variant_kwarg=None,
            prompt_template="webshop",
            eval_split=GameSplit(
                EVAL_SEEDS, held_out="other instances: new goals (type, attributes, options, price) in one catalogue"
            ),
        ),
        # Continuous control (issue 12). prompt_template is empty: their prompts are the skill prior's, not a
        # text-game template. Their budget is in environment steps (the control runner's DEFAULT_STEPS), so
        # default_episodes does not apply and ``default_episodes()`` refuses them.
        "mujoco": EnvironmentInfo(
            description="Gymnasium MuJoCo v5 locomotion (HalfCheetah, Walker2d, Ant): torques in [-1, 1], "
            "a binned text description of the state, a vocabulary of gait skills",
            variants=("halfcheetah", "walker2d", "ant"),
            requires="gymnasium[mujoco] with mujoco==3.3.0 (pip); demonstrations from a short Stable-Baselines3 "
            "SAC run (stable-baselines3, pip), trained on first use and saved in the cache directory",
            entry_point="priorcache.envs.mujoco_env:MuJoCoEnv",
            variant_kwarg="task",
            prompt_template="",
            eval_split=GameSplit(
                EVAL_SEEDS,
                held_out="other initial-state seeds of the same task: locomotion has no goal to vary, so held-out "
                "episodes start from other random poses and velocities",
            ),
            kind="control",
        ),
        "metaworld": EnvironmentInfo(
            description="MetaWorld MT1 manipulation with a Sawyer arm: (dx, dy, dz, grip) in [-1, 1], MetaWorld's "
            "success flag, a binned text description of gripper, object and goal, manipulation skills",
            variants=("reach-v3", "push-v3", "pick-place-v3"),
            requires="metaworld==3.1.1 (pip, with mujoco==3.3.0 in the same pip command); demonstrations from "
            "MetaWorld's scripted experts",
            entry_point="priorcache.envs.metaworld_env:MetaWorldEnv",
            variant_kwarg="task",
            prompt_template="",
            eval_split=GameSplit(
                EVAL_SEEDS,
                held_out="other task instances: the object starts and the goal lies elsewhere (MetaWorld's rand_vec "
                "drawn from another seed), as MT1's tasks differ",
            ),
            kind="control",
        ),
    }
)


def environment_info(name: str) -> EnvironmentInfo | None:
    """The registry entry of ``name`` (a family or ``"family:variant"``); None for an unknown family."""
    return ENVIRONMENTS.get(name.partition(":")[0].strip())


def require_text_env(name: str, what: str) -> None:
    """Refuse a continuous-control environment where only text environments run (``what`` says where).

    An unknown name passes: the caller's own checks name the choices.
    """
    info = environment_info(name) if isinstance(name, str) else None
    if info is not None and info.kind != "text":
        text = ", ".join(sorted(n for n, i in ENVIRONMENTS.items() if i.kind == "text"))
        raise ConfigError(
            f"{name!r} is a continuous-control environment; {what} runs text environments only ({text}). "
            "Control environments run with `priorcache run ENV --method sac|sac-prior` "
            "(priorcache.experiments.control_runner)"
        )


def default_episodes(name: str) -> int:
    """The training budget of environment ``name`` (``EnvironmentInfo.default_episodes``)."""
    info = environment_info(name)
    if info is None:
        raise UnknownEnvironmentError(f"unknown environment {name!r}; choose from {_choices()}")
    if info.kind != "text":
        raise ConfigError(f"{name!r} is a continuous-control task: its budget is environment steps (--steps)")
    return info.default_episodes


def _choices() -> str:
    return ", ".join(
        f"{name} (variants: {', '.join(info.variants)})" if info.variants else name
        for name, info in sorted(ENVIRONMENTS.items())
    )


def make_env(name: str, **kwargs: Any) -> gymnasium.Env:
    """Build environment ``name`` (or ``"family:variant"``) with constructor ``kwargs``.

    Raises:
        UnknownEnvironmentError: unknown family (the message lists the choices); an unknown
            variant is reported by the environment itself.
        ConfigError: the shorthand's variant and an explicit variant keyword disagree.
    """
    if not isinstance(name, str) or not name.strip():
        raise UnknownEnvironmentError(f"environment name must be a non-empty str, got {name!r}")
    family, sep, variant = name.strip().partition(":")
    family = family.strip()
    if family not in ENVIRONMENTS:
        raise UnknownEnvironmentError(f"unknown environment {family!r}; choose one of: {_choices()}")
    info = ENVIRONMENTS[family]
    if sep:
        variant = variant.strip()
        if info.variant_kwarg is None:
            raise UnknownEnvironmentError(f"{family} has no variants; use {family!r} without ':{variant}'")
        if not variant:
            raise UnknownEnvironmentError(f"empty variant in {name!r}; {family} variants: {list(info.variants)}")
        given = kwargs.get(info.variant_kwarg)
        if given is not None and given != variant:
            raise ConfigError(
                f"{name!r} selects {info.variant_kwarg}={variant!r} but {info.variant_kwarg}={given!r} was also given"
            )
        kwargs[info.variant_kwarg] = variant
    module, _, attribute = info.entry_point.partition(":")
    factory = getattr(importlib.import_module(module), attribute)
    return factory(**kwargs)


def game_split(name: str, split: str) -> GameSplit:
    """The ``"train"`` or ``"eval"`` games of environment ``name`` (``"family:variant"`` allowed)."""
    info = environment_info(name) if isinstance(name, str) else None
    if info is None:
        raise UnknownEnvironmentError(f"unknown environment {name!r}; choose one of: {_choices()}")
    if split == "train":
        return GameSplit(TRAIN_SEEDS, held_out="the training games")
    if split == "eval":
        return info.eval_split
    raise ConfigError(f"unknown game split {split!r}; choose one of {list(SPLITS)}")


def game_seeds(name: str, split: str, n: int) -> list[int]:
    """The first ``n`` game seeds of a split: the same games for every run, method and seed."""
    seeds = game_split(name, split).seeds
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= len(seeds):
        raise ConfigError(f"the {split} split of {name} has {len(seeds)} games; ask for 1 to {len(seeds)}, got {n!r}")
    return list(seeds[:n])


def make_split_env(name: str, which: str, game_seed: int, /, **kwargs: Any) -> gymnasium.Env:
    """``make_env`` for a game of a split: refuses a seed outside it, or settings that undo what holds it out."""
    chosen = game_split(name, which)
    if game_seed not in chosen.seeds:
        raise ConfigError(
            f"game seed {game_seed!r} is not in the {which} split of {name} (seeds {chosen.seeds.start}–"
            f"{chosen.seeds.stop - 1}): training and evaluation games must not overlap"
        )
    clash = {k: v for k, v in kwargs.items() if k in chosen.kwargs and chosen.kwargs[k] != v}
    if clash:
        raise ConfigError(f"{clash} would undo what holds the {which} games of {name} out ({dict(chosen.kwargs)})")
    return make_env(name, game_seed=game_seed, **{**kwargs, **chosen.kwargs})
