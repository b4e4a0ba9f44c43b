"""Prompt templates (F9 split) and the backend registry."""

from __future__ import annotations

import pytest

from priorcache.envs.registry import ENVIRONMENTS
from priorcache.errors import BackendError, ConfigError
from priorcache.prior.prompts import (
    DEFAULT_TEXT_GAME_TEMPLATE,
    TEXT_GAME_TEMPLATES,
    prompt_builder,
    text_game_prompt,
)
from priorcache.prior.registry import BACKENDS, make_backend


@pytest.mark.parametrize("template", sorted(TEXT_GAME_TEMPLATES))
def test_state_part_depends_on_state_text_only(template):
    a = text_game_prompt("Take the key.", "A kitchen.  \n A key. ", template=template)
    b = text_game_prompt("Eat the apple.", "A kitchen. A key.", template=template, examples=[("A hall.", "go north")])
    assert a.state == b.state
    assert a.prefix != b.prefix
    assert "Take the key." in a.prefix and "Take the key." not in a.state
    assert "go north" in b.prefix
    assert a.text == a.prefix + a.state
    # The action is appended with a leading space: the cue must not end in whitespace.
    assert a.state == a.state.rstrip()


def test_default_template_and_unknown_template():
    assert DEFAULT_TEXT_GAME_TEMPLATE in TEXT_GAME_TEMPLATES
    assert text_game_prompt("g", "s") == text_game_prompt("g", "s", template=DEFAULT_TEXT_GAME_TEMPLATE)
    with pytest.raises(ConfigError, match="plain"):
        text_game_prompt("g", "s", template="nope")


@pytest.mark.parametrize("family", sorted(name for name, info in ENVIRONMENTS.items() if info.kind == "text"))
def test_prompt_builder_uses_the_template_the_registry_names(family):
    template = ENVIRONMENTS[family].prompt_template
    assert template in TEXT_GAME_TEMPLATES
    expected = text_game_prompt("Win.", "A room.", template=template, examples=[("A hall.", "go north")])
    for name in [family, f"{family}:some-variant", f" {family} "]:
        assert prompt_builder(name, examples=[("A hall.", "go north")])("Win.", "A room.") == expected


def test_families_use_their_own_templates_and_unknown_names_the_default():
    assert ENVIRONMENTS["textworld"].prompt_template == DEFAULT_TEXT_GAME_TEMPLATE
    assert {ENVIRONMENTS[f].prompt_template for f in ("alfworld", "babyai", "webshop")} == {
        "alfworld",
        "babyai",
        "webshop",
    }
    assert prompt_builder("no-such-env")("g", "s") == text_game_prompt("g", "s")


def test_braces_in_game_text_are_kept_verbatim():
    prompt = text_game_prompt("Find the {gold}.", "A room with {braces}.")
    assert "{gold}" in prompt.prefix and "{braces}" in prompt.state


def test_unknown_backend_lists_the_choices():
    with pytest.raises(ConfigError) as info:
        make_backend("gpt-17")
    for name in BACKENDS:
        assert name in str(info.value)


def test_transformers_backend_needs_a_model_path(tmp_path):
    with pytest.raises(ConfigError, match="model_path"):
        make_backend("transformers")
    with pytest.raises(BackendError, match="does not exist"):
        make_backend("transformers", model_path=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="model_path"):
        make_backend("embedded", model_path=str(tmp_path))


def test_make_backend_builds_both(embedded):
    built = make_backend("transformers", model_path=str(embedded.model_path))
    assert built.name == "transformers"
    assert make_backend("embedded").name == "embedded"
