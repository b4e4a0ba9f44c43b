"""F8 (b) LoRA adaptation: key hashing and refusals (fast, no model), a real fine-tune of the embedded model (slow)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from priorcache.errors import ConfigError
from priorcache.prior.adaptation import (
    ADAPTER_META,
    DEFAULT_EPOCHS,
    FORMAT_VERSION,
    LOSSES,
    _choice_scores,
    _hyper_parameters,
    adapter_key,
    base_model_identity,
    check_adapter_folder,
    lora_finetune,
)
from priorcache.prior.base import Prompt
from priorcache.prior.prompts import prompt_builder

HYPER = _hyper_parameters(8, 16, DEFAULT_EPOCHS, 1e-3, 0, 4)
PAIRS = [(Prompt("Mission: go to the ball\n", "You see: a wall\nAction:"), "turn left")]


def _fake_model(folder: Path, hidden: int = 32) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": hidden}))
    (folder / "model.safetensors").write_bytes(b"0" * 100)
    return folder


def _fake_adapter(folder: Path, base: dict[str, str], key: str = "k" * 64) -> Path:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8}))
    save_file({"w": torch.zeros(2, 2)}, str(folder / "adapter_model.safetensors"))
    meta = {"format": FORMAT_VERSION, "key": key, "base_model": base}
    (folder / ADAPTER_META).write_text(json.dumps(meta))
    return folder


# ---------------------------------------------------------------- fast: pure logic


def test_key_is_deterministic_and_sensitive_to_every_input(tmp_path: Path) -> None:
    key = adapter_key("base", "babyai", PAIRS, HYPER)
    assert key == adapter_key("base", "babyai", list(PAIRS), dict(HYPER))
    assert len(key) == 64 and int(key, 16) >= 0
    other_pairs = [(Prompt("Mission: go to the ball\n", "You see: a wall\nAction:"), "turn right")]
    other_prompt = [(Prompt("Mission: go to the key\n", "You see: a wall\nAction:"), "turn left")]
    variants = {
        adapter_key("other base", "babyai", PAIRS, HYPER),
        adapter_key("base", "webshop", PAIRS, HYPER),
        adapter_key("base", "babyai", other_pairs, HYPER),
        adapter_key("base", "babyai", other_prompt, HYPER),
        adapter_key("base", "babyai", PAIRS, _hyper_parameters(4, 16, 4, 1e-3, 0, 4)),
        adapter_key("base", "babyai", PAIRS, _hyper_parameters(8, 16, 4, 1e-3, 1, 4)),
        adapter_key("base", "babyai", PAIRS, _hyper_parameters(8, 16, 3, 1e-3, 0, 4)),
        adapter_key("base", "babyai", PAIRS, _hyper_parameters(8, 16, 4, 2e-3, 0, 4)),
        adapter_key("base", "babyai", PAIRS, _hyper_parameters(8, 16, 4, 1e-3, 0, 4, "choice")),
        adapter_key("base", "babyai", [(*PAIRS[0], ["turn left", "go forward"])], HYPER),
    }
    assert key not in variants and len(variants) == 10
    # Pairs without candidates keep the keys they had before candidates existed.
    assert HYPER["loss"] == LOSSES["token"] == "mean action-token NLL"


def test_base_identity_follows_content_not_folder(tmp_path: Path) -> None:
    a = base_model_identity(_fake_model(tmp_path / "a"))
    b = base_model_identity(_fake_model(tmp_path / "b"))
    c = base_model_identity(_fake_model(tmp_path / "c", hidden=64))
    assert a["fingerprint"] == b["fingerprint"] != c["fingerprint"]
    assert a["path"] != b["path"]
    with pytest.raises(ConfigError, match="config.json"):
        base_model_identity(tmp_path / "missing")


@pytest.mark.parametrize(
    "bad",
    [
        dict(rank=0),
        dict(epochs=0),
        dict(batch_size=0),
        dict(alpha=0),
        dict(learning_rate=float("nan")),
        dict(seed=1.5),
        dict(loss="softmax"),
    ],
)
def test_bad_hyper_parameters_and_pairs_are_refused(bad: dict) -> None:
    args = dict(rank=8, alpha=16, epochs=4, learning_rate=1e-3, seed=0, batch_size=4) | bad
    with pytest.raises(ConfigError):
        _hyper_parameters(**args)


def test_bad_pairs_are_refused_before_any_model_load(tmp_path: Path) -> None:
    model = _fake_model(tmp_path / "m")
    prompt = PAIRS[0][0]
    for pairs in (
        [],
        [("not a prompt", "go")],
        [(prompt, "  ")],
        [(prompt,)],
        [(prompt, "go", ["stop"])],  # the action is not a candidate
        [(prompt, "go", ["go", "go"])],
        [(prompt, "go", "go")],
    ):
        with pytest.raises(ConfigError):
            lora_finetune(model, pairs, cache_dir=tmp_path / "adapters")
    assert not (tmp_path / "adapters").exists()


def test_adapter_folder_checks(tmp_path: Path) -> None:
    base = base_model_identity(_fake_model(tmp_path / "m"))
    other = base_model_identity(_fake_model(tmp_path / "o", hidden=64))
    good = _fake_adapter(tmp_path / "good", base)
    assert check_adapter_folder(good, base)["key"] == "k" * 64
    with pytest.raises(ConfigError, match="trained on the base model"):
        check_adapter_folder(good, other)
    with pytest.raises(ConfigError, match="does not exist"):
        check_adapter_folder(tmp_path / "nowhere", base)

    no_meta = _fake_adapter(tmp_path / "no-meta", base)
    (no_meta / ADAPTER_META).unlink()
    with pytest.raises(ConfigError, match="not a finished"):
        check_adapter_folder(no_meta, base)

    bad_meta = _fake_adapter(tmp_path / "bad-meta", base)
    (bad_meta / ADAPTER_META).write_text("{broken")
    with pytest.raises(ConfigError, match="damaged"):
        check_adapter_folder(bad_meta, base)

    no_weights = _fake_adapter(tmp_path / "no-weights", base)
    (no_weights / "adapter_model.safetensors").unlink()
    with pytest.raises(ConfigError, match="adapter_model.safetensors is missing"):
        check_adapter_folder(no_weights, base)

    truncated = _fake_adapter(tmp_path / "truncated", base)
    data = (truncated / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match="damaged"):
        check_adapter_folder(truncated, base)


def test_a_damaged_folder_under_the_key_is_refused_not_retrained(tmp_path: Path) -> None:
    model = _fake_model(tmp_path / "m")
    base = base_model_identity(model)
    key = adapter_key(base["fingerprint"], "babyai", PAIRS, HYPER)
    folder = _fake_adapter(tmp_path / "adapters" / key, base, key=key)
    result = lora_finetune(model, PAIRS, env="babyai", cache_dir=tmp_path / "adapters")
    assert not result.trained and result.folder == folder and result.key == key
    (folder / "adapter_config.json").unlink()
    with pytest.raises(ConfigError, match="damaged"):
        lora_finetune(model, PAIRS, env="babyai", cache_dir=tmp_path / "adapters")


# ---------------------------------------------------------------- fast: the choice loss on a tiny random model


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_choice_scores_are_the_backends_f3_scores_with_gradients(tiny_model_dir, attn) -> None:
    import torch

    from priorcache.prior.transformers_backend import TransformersBackend

    backend = TransformersBackend(tiny_model_dir, attn_implementation=attn, prefix_cache_size=0)
    prompt = prompt_builder("babyai")("go to the red ball", STATES[0])
    context = backend._prefix_ids(prompt.prefix) + backend._encode(prompt.state)
    scores = _choice_scores(backend, context, [backend._action_ids(a) for a in CANDIDATES])
    assert scores.requires_grad
    expected = backend.score([prompt], [CANDIDATES]).scores[0]
    np.testing.assert_allclose(scores.detach().double().numpy(), expected, atol=1e-5)
    torch.logsumexp(scores, 0).backward()  # differentiable down to the weights
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backend._model.parameters())


@pytest.mark.parametrize("loss", ["choice", "both"])
def test_choice_loss_trains_the_prior_as_a_classifier_over_the_candidates(
    tiny_model_dir, tmp_path, loss, capsys
) -> None:
    from priorcache.prior.transformers_backend import TransformersBackend

    build = prompt_builder("babyai")
    pairs = [(build("go to the red ball", s), "toggle", CANDIDATES) for s in STATES]
    adapter = lora_finetune(
        tiny_model_dir, pairs, env="babyai", loss=loss, epochs=8, learning_rate=1e-2, cache_dir=tmp_path
    )
    assert (
        adapter.trained
        and json.loads((adapter.folder / ADAPTER_META).read_text())["hyper_parameters"]["loss"] == (LOSSES[loss])
    )
    bar = capsys.readouterr().err  # 8 epochs of one batch each, with the last batch's loss
    assert "LoRA fine-tune: 100%" in bar and "8/8" in bar and "epoch=8" in bar and "loss=" in bar
    prompts = [p for p, _, _ in pairs]
    before = TransformersBackend(tiny_model_dir).score(prompts, [CANDIDATES] * len(prompts)).scores
    after = TransformersBackend(tiny_model_dir, adapter=adapter.folder).score(prompts, [CANDIDATES] * len(prompts))
    target = CANDIDATES.index("toggle")
    for old, new in zip(before, after.scores):
        assert int(np.sum(new >= new[target])) == 1 and int(np.sum(old >= old[target])) > 1
        # the prior's probability of the trained action rose
        assert np.exp(new[target]) / np.exp(new).sum() > np.exp(old[target]) / np.exp(old).sum()


def test_choice_loss_needs_candidates_and_a_choice(tiny_model_dir, tmp_path) -> None:
    prompt = PAIRS[0][0]
    with pytest.raises(ConfigError, match="candidates"):
        lora_finetune(tiny_model_dir, PAIRS, loss="choice", epochs=1, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="more than one candidate"):
        lora_finetune(tiny_model_dir, [(prompt, "go", ["go"])], loss="choice", epochs=1, cache_dir=tmp_path)
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]


# ---------------------------------------------------------------- slow: a real fine-tune of the embedded model

CANDIDATES = ["turn left", "turn right", "go forward", "pick up", "drop", "toggle"]
STATES = ["a wall 2 steps forward", "a red ball 1 step left", "a grey door 3 steps forward", "a green key"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    from priorcache.prior.embedded import embedded_model_dir

    build = prompt_builder("babyai")
    # "toggle" is the embedded model's least likely action on these prompts.
    pairs = [(build("go to the red ball", s), "toggle") for s in STATES]
    root = tmp_path_factory.mktemp("adapters")
    adapter = lora_finetune(embedded_model_dir(), pairs, env="babyai", epochs=2, batch_size=1, cache_dir=root)
    return adapter, pairs, root


@pytest.mark.slow
def test_real_lora_changes_scores_and_raises_the_trained_action(embedded, trained) -> None:
    from priorcache.prior.embedded import EmbeddedBackend

    adapter, pairs, _ = trained
    assert adapter.trained and adapter.train_wall_time_s > 0
    assert (adapter.folder / "adapter_model.safetensors").is_file()
    assert not list(adapter.folder.rglob("*.bin")) and not list(adapter.folder.rglob("*.pt"))
    prompts = [p for p, _ in pairs]
    base = embedded.score(prompts, [CANDIDATES] * len(prompts)).scores
    adapted_backend = EmbeddedBackend(adapter=adapter.folder)
    assert adapted_backend.name == f"embedded+lora:{adapter.key}" and embedded.name == "embedded"
    adapted = adapted_backend.score(prompts, [CANDIDATES] * len(prompts)).scores
    target = CANDIDATES.index("toggle")
    for before, after in zip(base, adapted):
        assert not np.allclose(before, after)
        rank_before = int(np.sum(before >= before[target]))
        rank_after = int(np.sum(after >= after[target]))
        assert rank_after < rank_before and rank_after == 1
    # Merged weights: the F9 fast path still matches the naive reference on the adapted model.
    naive = adapted_backend.score_naive(prompts, [CANDIDATES] * len(prompts)).scores
    for fast, ref in zip(adapted, naive):
        np.testing.assert_allclose(fast, ref, atol=1e-4)


@pytest.mark.slow
def test_saved_adapter_is_reused_with_identical_scores(trained) -> None:
    from priorcache.prior.embedded import EmbeddedBackend, embedded_model_dir

    adapter, pairs, root = trained
    start = time.perf_counter()
    again = lora_finetune(embedded_model_dir(), pairs, env="babyai", epochs=2, batch_size=1, cache_dir=root)
    assert time.perf_counter() - start < 5
    assert not again.trained and again.folder == adapter.folder and again.key == adapter.key
    assert again.train_wall_time_s == pytest.approx(adapter.train_wall_time_s)
    prompts = [p for p, _ in pairs]
    one = EmbeddedBackend(adapter=adapter.folder).score(prompts, [CANDIDATES] * len(prompts)).scores
    two = EmbeddedBackend(adapter=again.folder).score(prompts, [CANDIDATES] * len(prompts)).scores
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
    # no temporary folder left (the build lock's file stays: io.build_once holds folder_lock)
    assert not [p for p in root.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]


@pytest.mark.slow
def test_backends_refuse_another_base_models_or_a_damaged_adapter(trained, tiny_model_dir, tmp_path) -> None:
    import shutil

    from priorcache.prior.registry import make_backend
    from priorcache.prior.transformers_backend import TransformersBackend

    adapter, _, _ = trained
    with pytest.raises(ConfigError, match="trained on the base model"):
        TransformersBackend(tiny_model_dir, adapter=adapter.folder)
    damaged = tmp_path / "damaged"
    shutil.copytree(adapter.folder, damaged)
    weights = damaged / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ConfigError, match="damaged"):
        make_backend("embedded", adapter=damaged)
    backend = make_backend("embedded", adapter=adapter.folder)
    assert adapter.key in backend.name


def test_the_cli_refuses_a_bad_adapt_choice_or_lora_without_shots() -> None:
    from typer.testing import CliRunner

    from priorcache.cli import app

    bad = CliRunner().invoke(app, ["prior-quality", "babyai", "--adapt", "finetune"])
    assert bad.exit_code == 2 and "adapt must be" in bad.output
    no_shots = CliRunner().invoke(app, ["prior-quality", "babyai", "--adapt", "lora"])
    assert no_shots.exit_code == 2 and "--shots" in no_shots.output
