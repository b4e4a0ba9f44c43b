"""Environment registry: names to constructors, for the CLI and experiment configs (SPEC §7).

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


class EnvironmentInfo(NamedTuple):
    """What ``ENVIRONMENTS`` says about one environment family."""

    description: str
    variants: tuple[str, ...]
    requires: str


class _EntryPoint(NamedTuple):
    module: str
    attribute: str
    # The constructor keyword that selects a variant ("textworld:tw-cooking" -> challenge=...).
    variant_kwarg: str


#: name -> (one-line description, variants, what it needs).
ENVIRONMENTS: Mapping[str, EnvironmentInfo] = MappingProxyType(
    {
        "textworld": EnvironmentInfo(
            description="TextWorld text games generated offline by seed, with admissible commands",
            variants=("tw-simple", "tw-coin_collector", "tw-treasure_hunter", "tw-cooking"),
            requires="textworld==1.7.0 (pip); games are generated on first use and cached on disk",
        ),
    }
)

_ENTRY_POINTS: Mapping[str, _EntryPoint] = MappingProxyType(
    {
        "textworld": _EntryPoint("priorcache.envs.textworld_env", "TextWorldEnv", "challenge"),
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
