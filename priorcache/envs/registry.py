"""Environment registry: names to constructors, for the CLI and experiment configs (SPEC §7).

``make_env("textworld", challenge="tw-cooking")`` and the shorthand
``make_env("textworld:tw-cooking")`` build the same environment. Environment modules are imported
only when one is made, so listing environments does not pay for importing their engines.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple, Optional

import gymnasium

from priorcache.errors import ConfigError, UnknownEnvironmentError


class EnvironmentInfo(NamedTuple):
    """What ``ENVIRONMENTS`` says about one environment family."""

    description: str
    variants: tuple[str, ...]
    requires: str


class _EntryPoint(NamedTuple):
    module: str
    attribute: str
    # The constructor keyword that selects a variant ("textworld:tw-cooking" -> challenge=...);
    # None for a family without variants.
    variant_kwarg: Optional[str]


#: name -> (one-line description, variants, what it needs).
ENVIRONMENTS: Mapping[str, EnvironmentInfo] = MappingProxyType(
    {
        "textworld": EnvironmentInfo(
            description="TextWorld text games generated offline by seed, with admissible commands",
            variants=("tw-simple", "tw-coin_collector", "tw-treasure_hunter", "tw-cooking"),
            requires="textworld==1.7.0 (pip); games are generated on first use and cached on disk",
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
        ),
        "babyai": EnvironmentInfo(
            description="BabyAI grid levels (minigrid) rendered as text: the 7x7 egocentric view and "
            "the mission; actions turn left/right, go forward, pick up, drop, toggle",
            variants=("GoToLocal", "PickupLoc", "PutNextLocal", "GoTo"),
            requires="minigrid==3.2.0 (pip); any other BabyAI-* level name also works",
        ),
        "webshop": EnvironmentInfo(
            description="WebShop-style shopping simulator (not the original WebShop): seeded synthetic "
            "catalogue, BM25 search, search[...]/click[...] pages, WebShop's reward",
            variants=(),
            requires="rank-bm25==0.2.2 (pip); the catalogue is generated from a seed, no download",
        ),
    }
)

_ENTRY_POINTS: Mapping[str, _EntryPoint] = MappingProxyType(
    {
        "textworld": _EntryPoint("priorcache.envs.textworld_env", "TextWorldEnv", "challenge"),
        "alfworld": _EntryPoint("priorcache.envs.alfworld_env", "ALFWorldEnv", "task_type"),
        "babyai": _EntryPoint("priorcache.envs.babyai_env", "BabyAIEnv", "level"),
        "webshop": _EntryPoint("priorcache.envs.webshop_env", "WebShopEnv", None),
    }
)


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
    entry = _ENTRY_POINTS[family]
    if sep:
        variant = variant.strip()
        if entry.variant_kwarg is None:
            raise UnknownEnvironmentError(f"{family} has no variants; use {family!r} without ':{variant}'")
        if not variant:
            raise UnknownEnvironmentError(
                f"empty variant in {name!r}; {family} variants: {list(ENVIRONMENTS[family].variants)}"
            )
        given = kwargs.get(entry.variant_kwarg)
        if given is not None and given != variant:
            raise ConfigError(
                f"{name!r} selects {entry.variant_kwarg}={variant!r} but "
                f"{entry.variant_kwarg}={given!r} was also given"
            )
        kwargs[entry.variant_kwarg] = variant
    factory = getattr(importlib.import_module(entry.module), entry.attribute)
    return factory(**kwargs)
