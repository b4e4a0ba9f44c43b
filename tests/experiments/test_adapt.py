"""F8 set-up for runs (``adapt_prior``): refusals (fast), and the in-context prefix with the real
embedded model: inside its context, and run once per episode (F9) however many states are scored."""

from __future__ import annotations

import pytest

from priorcache.errors import ConfigError
from priorcache.experiments.adapt import adapt_prior, check_adaptation
from priorcache.prior.prompts import prompt_builder


@pytest.mark.parametrize(
    ("shots", "adapt", "message"),
    [
        (5, "fine", "adapt must be one of"),
        (0, "lora", "shots ≥ 1"),
        (-1, "icl", "shots must be"),
        (True, "icl", "shots must be"),
    ],
)
def test_bad_adaptation_settings_are_refused(shots, adapt, message):
    with pytest.raises(ConfigError, match=message):
        check_adaptation(shots, adapt)


def test_a_fine_tune_cannot_reuse_a_loaded_backend():
    with pytest.raises(ConfigError, match="model of its own"):
        adapt_prior("babyai", "embedded", 5, "lora", base=object())


@pytest.mark.slow
@pytest.mark.parametrize("env", ["babyai", "webshop"])
def test_in_context_prefix_fits_the_context_and_is_computed_once_per_episode(env):
    from priorcache.envs.registry import make_split_env
    from priorcache.prior.embedded import EmbeddedBackend

    backend = EmbeddedBackend()
    adapted = adapt_prior(env, "embedded", 5, "icl", base=backend, max_examples=10)
    assert adapted.backend is backend and len(adapted.examples) == 10 == adapted.info["in_context_pairs"]
    assert adapted.info["demos_wall_time_s"] > 0

    build = prompt_builder(env, adapted.examples)
    game = make_split_env(env, "eval", 1_000_000)
    _, info = game.reset(seed=0)
    prompts, candidates = [], []
    for _ in range(3):
        prompts.append(build(info["objective"], info["state_text"]))
        candidates.append(info["admissible_actions"])
        _, _, done, truncated, info = game.step(info["admissible_actions"][0])
        if done or truncated:
            break
    assert len({p.prefix for p in prompts}) == 1  # the examples and objective: constant over the episode
    tokens = len(backend._prefix_ids(prompts[0].prefix)) + max(len(backend._encode(p.state)) for p in prompts)
    longest_action = max(len(backend._action_ids(a)) for c in candidates for a in c)
    assert tokens + longest_action <= backend._model.config.max_position_embeddings
    assert all(example in prompts[0].prefix for example, _ in adapted.examples[:1])

    backend.clear_prefix_cache()
    cold = backend.score(prompts[-1:], candidates[-1:])
    warm = [backend.score([p], [c]) for p, c in zip(prompts, candidates)]
    assert backend.cached_prefixes == [prompts[0].prefix]  # one prefix KV cache for the episode
    # With the prefix cached, a state costs its own tokens only: the examples are not run again.
    assert cold.prompt_tokens - warm[-1].prompt_tokens >= len(backend._prefix_ids(prompts[0].prefix))
    assert [round(float(x), 4) for x in cold.scores[0]] == [round(float(x), 4) for x in warm[-1].scores[0]]


def test_skill_pairs_are_the_demonstrations_described_and_labelled_once_each():
    from priorcache.experiments.adapt import skill_pairs
    from tests.agents._pendulum_control import SKILLS, PendulumControl, record_demos

    env = PendulumControl()
    demos = record_demos(env, episodes=2)
    pairs = skill_pairs(env, demos)
    labelled = {(env.describe(o), z) for o, z in zip(demos.observations, demos.skills)}
    assert {(p.state.removeprefix("State: ").removesuffix("\nSkill:"), z) for p, z, _ in pairs} == labelled
    assert len(pairs) == len(labelled) < len(demos.skills)  # binned texts repeat: each pair once
    assert all(c == SKILLS and env.objective in p.prefix and SKILLS[0] in p.prefix for p, _, c in pairs)


@pytest.mark.slow
def test_the_lora_skill_prior_learns_the_demonstrated_skills():
    """F8 for control with the real embedded model: after the fine-tune on two reach-v3 demonstrations the
    skill prior puts more mass on each demonstrated (φ(s), skill) than the base model, and ranks it first;
    a second call reuses the saved adapter."""
    import numpy as np

    from priorcache.envs.control_demos import record_control_demos
    from priorcache.envs.registry import game_seeds, make_split_env
    from priorcache.experiments.adapt import adapt_skill_prior, skill_pairs
    from priorcache.prior.registry import make_backend

    task = "metaworld:reach-v3"
    env = make_split_env(task, "train", game_seeds(task, "train", 1)[0])
    demos = record_control_demos(task, 2, progress=False)
    adapted = adapt_skill_prior(task, env, demos)
    assert adapted.info["lora_pairs"] == len(skill_pairs(env, demos)) >= 2 and adapted.info["lora_loss"] == "choice"
    pairs = skill_pairs(env, demos)
    prompts, skills = [p for p, _, _ in pairs], list(env.skills)

    def label_probs(backend):
        scores = backend.score(prompts, [skills] * len(prompts)).scores
        return np.array([np.exp(s[skills.index(z)]) / np.exp(s).sum() for s, (_, z, _) in zip(scores, pairs)]), [
            skills[int(np.argmax(s))] for s in scores
        ]

    before, _ = label_probs(make_backend("embedded"))
    after, modes = label_probs(adapted.backend)
    assert np.mean(after) > np.mean(before) + 0.2
    assert np.mean([m == z for m, (_, z, _) in zip(modes, pairs)]) >= 0.75
    assert not adapt_skill_prior(task, env, demos).info["lora_trained_now"]
    env.close()
