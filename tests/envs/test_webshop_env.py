"""WebShopEnv (the WebShop-style simulator) on its real generated catalogue and BM25 search.

Nothing is mocked: every test builds the seeded catalogue, searches it with rank_bm25 and plays
through the text pages. The whole file runs in a few seconds, so no test is marked slow. The
contract every environment keeps (info keys, step guards, truncation, spaces, seeding, constructor
checks, registry) is tested in test_contract.py.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace

import numpy as np
import pytest

from priorcache.envs.registry import make_env
from priorcache.envs.webshop_catalogue import (
    MAX_RESULTS,
    RESULTS_PER_PAGE,
    Catalogue,
    get_catalogue,
)
from priorcache.envs.webshop_env import WebShopEnv
from priorcache.envs.webshop_products import CATEGORIES, PRODUCT_TYPES
from priorcache.envs.webshop_task import (
    Goal,
    candidate_queries,
    is_perfect,
    type_reward,
    webshop_reward,
)
from priorcache.errors import ConfigError


def _play(env: WebShopEnv, actions) -> tuple[float, bool, bool, dict]:
    _, info = env.reset()
    reward = 0.0
    terminated = truncated = False
    for action in actions:
        _, reward, terminated, truncated, info = env.step(action)
    return reward, terminated, truncated, info


def _target_click(env: WebShopEnv) -> str:
    """The walkthrough's ``click[<item id>]``."""
    return next(a for a in env.walkthrough if a.startswith("click[b0"))


def _open_target(env: WebShopEnv) -> dict:
    """Reset and follow the walkthrough up to (and including) opening the product page."""
    _, info = env.reset()
    for action in env.walkthrough:
        info = env.step(action)[4]
        if info["page"] == "item":
            return info
    raise AssertionError("walkthrough never opened an item page")


# --------------------------------------------------------------------------- catalogue


def test_catalogue_is_seeded_varied_and_fast() -> None:
    start = time.perf_counter()
    a = Catalogue(0, 400)
    assert time.perf_counter() - start < 1.0
    b = Catalogue(0, 400)
    assert a.products == b.products  # deterministic in the seed
    assert Catalogue(1, 400).products != a.products
    assert len(a.products) == 400 and len(a.by_id) == 400
    assert len(CATEGORIES) >= 5 and {p.category for p in a.products} == set(CATEGORIES)
    assert {p.product_type for p in a.products} == {t.name for t in PRODUCT_TYPES}
    for p in a.products:
        assert p.item_id.startswith("B0") and len(p.item_id) == 10
        assert p.title and p.description and p.price > 0 and p.attributes and p.options
        assert p.title.isascii() and p.description.isascii()
        values = [v for _, vs in p.options for v in vs]
        assert len(values) == len(set(values))  # one click names one option
    for t in PRODUCT_TYPES:
        values = [v for _, vs in t.options for v in vs]
        assert len(values) == len(set(values)), t.name
    # BM25: a type query finds that type first, deterministically, at most MAX_RESULTS deep
    results = a.search("olive oil")
    assert 0 < len(results) <= MAX_RESULTS
    assert results[0].product_type == "olive oil"
    assert results == b.search("  Olive   OIL ")
    assert a.search("zzzz qqqq") == ()
    assert get_catalogue(0, 400) is get_catalogue(0, 400)


# --------------------------------------------------------------------------- oracle and rewards


def test_walkthrough_and_oracle_reach_reward_one_on_many_seeds() -> None:
    for seed in range(40):
        env = WebShopEnv(game_seed=seed)
        _, info = env.reset()
        for action in env.walkthrough:
            assert action in info["admissible_actions"], (seed, action)
            obs, reward, terminated, truncated, info = env.step(action)
        assert terminated and not truncated and reward == 1.0, seed
        assert info["won"] and not info["lost"] and info["score"] == info["max_score"] == 1.0
        assert info["reward_breakdown"]["reward"] == 1.0
        assert info["admissible_actions"] == []
        with pytest.raises(ConfigError, match="reset"):
            env.step("click[buy now]")
        with pytest.raises(ConfigError, match="reset"):
            env.oracle_action(info)

        # the oracle also recovers from detours: another query, a wrong page, a wrong option
        env = WebShopEnv(game_seed=seed, max_episode_steps=40)
        _, info = env.reset()
        for action in ["search[wooden bookshelf]", "click[next >]", "click[< prev]"]:
            info = env.step(action)[4]
        steps = 0
        while True:
            _, reward, terminated, truncated, info = env.step(env.oracle_action(info))
            steps += 1
            if terminated or truncated:
                break
        assert info["won"] and reward == 1.0 and steps <= 12, seed


def test_wrong_option_missing_option_and_over_price_lower_the_reward() -> None:
    env = WebShopEnv(game_seed=0)
    goal = env.goal
    n = len(goal.attributes) + len(goal.options) + 1
    click_item = _target_click(env)
    product = env.catalogue.by_id[click_item[len("click[") : -1].upper()]
    group, wanted = goal.options[0]
    wrong = next(v for g, vs in product.options if g == group for v in vs if v != wanted)

    # the walkthrough with one option swapped for another value of the same group
    actions = [a if a != f"click[{wanted}]" else f"click[{wrong}]" for a in env.walkthrough]
    reward, terminated, truncated, info = _play(env, actions)
    assert terminated and not truncated
    assert reward == pytest.approx((n - 1) / n) and reward < 1.0
    assert not info["won"] and info["lost"] and info["score"] == reward
    assert info["reward_breakdown"]["option_matches"] == len(goal.options) - 1

    # buying straight away, no option selected
    reward, *_ = _play(env, [env.walkthrough[0], click_item, "click[buy now]"])
    assert reward == pytest.approx((n - len(goal.options)) / n)

    # selecting the wrong value then the right one keeps the last choice: reward 1.0
    fixed = list(env.walkthrough)
    fixed.insert(fixed.index(f"click[{wanted}]"), f"click[{wrong}]")
    assert _play(env, fixed)[0] == 1.0

    # over the price bound: the price term is lost
    cheap = replace(goal, price_upper=product.price - 1.0)
    over = webshop_reward(cheap, product, dict(goal.options))
    assert not over.price_ok and over.reward == pytest.approx((n - 1) / n)
    assert webshop_reward(goal, product, dict(goal.options)).reward == 1.0
    assert not is_perfect(cheap, product) and is_perfect(goal, product)


def test_attribute_and_type_parts_of_the_reward() -> None:
    env = WebShopEnv(game_seed=3)
    goal = env.goal
    product = env.catalogue.by_id[goal.target_id]
    n = len(goal.attributes) + len(goal.options) + 1
    # an attribute the product does not have (nor mentions) costs one term
    missing = replace(goal, attributes=(*goal.attributes, "zebra striped"))
    result = webshop_reward(missing, product, dict(goal.options))
    assert result.attribute_matches == len(goal.attributes)
    assert result.reward == pytest.approx(n / (n + 1))
    # another product type with no shared type word: r_type 0, reward 0 whatever else matches
    other = next(p for p in env.catalogue.products if p.product_type != goal.product_type)
    assert type_reward(goal, other) == 0.0
    assert webshop_reward(goal, other, dict(goal.options)).reward == 0.0
    # WebShop's r_type rule: a shared type word above 0.2 counts as the same type
    shoe = Goal("", "running shoe", "footwear", (), (), 10.0, "")
    rack = replace(product, product_type="shoe rack", category="furniture")
    assert type_reward(shoe, rack) == 1.0
    assert type_reward(shoe, replace(product, product_type="running shoe")) == 1.0


def test_buying_another_product_is_a_loss() -> None:
    env = WebShopEnv(game_seed=5)
    _, info = env.reset()
    info = env.step("search[office chair]")[4]
    if env.goal.product_type == "office chair":  # pragma: no cover - seed 5 is not a chair
        pytest.skip("instance is about office chairs")
    item = next(a for a in info["admissible_actions"] if a.startswith("click[b0"))
    env.step(item)
    _, reward, terminated, _, info = env.step("click[buy now]")
    assert terminated and reward == 0.0 and info["lost"] and not info["won"]
    assert info["reward_breakdown"]["r_type"] == 0.0
    assert "Order placed" in info["state_text"]


# --------------------------------------------------------------------------- pages and actions


def test_pagination_and_navigation() -> None:
    env = WebShopEnv(game_seed=0)
    _, info = env.reset()
    query = env.goal.product_type
    info = env.step(f"search[{query}]")[4]
    results = env.catalogue.search(query)
    n_pages = -(-len(results) // RESULTS_PER_PAGE)
    assert n_pages >= 2
    assert f"Page 1 of {n_pages} (total results: {len(results)})" in info["state_text"]
    assert "click[< prev]" not in info["admissible_actions"]
    seen: list[str] = []
    texts = []
    for page in range(1, n_pages + 1):
        ids = [a[len("click[") : -1] for a in info["admissible_actions"] if a.startswith("click[b0")]
        assert 1 <= len(ids) <= RESULTS_PER_PAGE
        # the page lists its items in rank order; the admissible actions are sorted
        shown = sorted(ids, key=lambda i: info["state_text"].index(i.upper()))
        seen += shown
        texts.append(info["state_text"])
        assert ("click[next >]" in info["admissible_actions"]) == (page < n_pages)
        assert ("click[< prev]" in info["admissible_actions"]) == (page > 1)
        if page < n_pages:
            info = env.step("click[next >]")[4]
    assert seen == [p.item_id.lower() for p in results]  # every result once, in rank order
    # next > on the last page is not a button there
    obs, _, _, _, info = env.step("click[next >]")
    assert "no 'next >' to click" in obs and info["state_text"] == texts[-1]
    for page in range(n_pages - 1, 0, -1):
        info = env.step("click[< prev]")[4]
        assert info["state_text"] == texts[page - 1]

    # item -> description -> < prev keeps the selection; item -> < prev -> item resets it
    env = WebShopEnv(game_seed=0, max_episode_steps=30)
    item = _open_target(env)
    value = env.goal.options[0][1]
    selected = env.step(f"click[{value}]")[4]
    assert "Selected: none" in item["state_text"] and f"={value}" in selected["state_text"]
    # The page names the option groups still open, and stops once every group has a value.
    groups = [g for g, _ in env.goal.options]
    assert f"(still to choose: {', '.join(groups)})" in item["state_text"]
    assert groups[0] not in selected["state_text"].partition("still to choose")[2]
    desc = env.step("click[description]")[4]
    assert desc["page"] == "description" and "Description:" in desc["state_text"]
    assert desc["admissible_actions"] == ["click[< prev]", "click[back to search]"]
    assert env.step("click[< prev]")[4]["state_text"] == selected["state_text"]
    results_info = env.step("click[< prev]")[4]
    assert results_info["page"] == "results"
    assert env.step(_target_click(env))[4]["state_text"] == item["state_text"]
    home = env.step("click[back to search]")[4]
    assert home["page"] == "search" and home["state_text"] == "Search page [SEP] Search"


def test_malformed_actions_get_feedback_and_cost_a_step() -> None:
    env = WebShopEnv(game_seed=1, max_episode_steps=40)
    _, info = env.reset()
    start = info["state_text"]
    cases = {
        "click[": "missing the closing ']'",
        "search[blue shoes": "missing the closing ']'",
        "buy the watch": "actions are search[<query>]",
        "": "Empty action",
        "   \n ": "Empty action",
        "search[]": "query is empty",
        "search[ ☃ ]": "query is empty",
        "click[buy now]": "nothing to click on the search page",
    }
    for action, message in cases.items():
        obs, reward, terminated, truncated, info = env.step(action)
        assert message in obs, action
        assert obs.isascii()
        assert reward == 0.0 and not terminated and not truncated
        assert info["state_text"] == start and message not in info["state_text"]
    # on a results page: no search box, unknown buttons and items from elsewhere are refused
    results = env.step(env.walkthrough[0])[4]
    for action, message in {
        "search[hoodie]": "no search box on this page",
        "click[b0zzzzzzzz]": "no 'b0zzzzzzzz' to click",
        "click[description]": "no 'description' to click",
        "click[buy now": "missing the closing ']'",
        "click[buy now]]": "to click",
    }.items():
        obs, reward, terminated, _, info = env.step(action)
        assert message in obs, action
        assert reward == 0.0 and not terminated and info["state_text"] == results["state_text"]
    # case and spacing of a valid action do not matter
    item = _target_click(env)
    info = env.step("  CLICK[ " + item[len("click[") :].upper())[4]
    assert info["page"] == "item"
    # free-text search (not a candidate) is allowed on the search page
    env.reset()
    info = env.step("search[Lavender SHAMPOO for dry hair]")[4]
    assert info["page"] == "results" and 'results for "lavender shampoo for dry hair"' in info["state_text"]


def test_truncation_pays_nothing_even_on_a_good_page() -> None:
    env = WebShopEnv(game_seed=2, max_episode_steps=3)
    reward, terminated, truncated, info = _play(env, env.walkthrough[:3])
    assert reward == 0.0 and truncated and not terminated and not info["won"]
    assert info["admissible_actions"]  # the page still offers its buttons


# --------------------------------------------------------------------------- info contract


def test_info_contract_and_markov_state_text() -> None:
    env = WebShopEnv(game_seed=4, max_episode_steps=30)
    obs, info = env.reset(seed=123)
    assert obs.startswith("Instruction: [SEP] " + env.objective)
    objective = info["objective"]
    assert objective == env.goal.instruction and "price lower than" in objective
    assert info["score"] == 0.0 and info["max_score"] == 1.0
    assert not info["won"] and not info["lost"]
    # search page: the candidate queries, the full instruction among them
    assert info["admissible_actions"] == sorted(f"search[{q}]" for q in candidate_queries(env.goal))
    assert f"search[{objective}]" in info["admissible_actions"]

    def walk(actions):
        texts = [env.reset()[1]["state_text"]]
        for a in actions:
            i = env.step(a)[4]
            texts.append(i["state_text"])
            acts = i["admissible_actions"]
            if i["page"] != "done":
                assert acts and acts == sorted(set(acts)) and all(a.strip() for a in acts)
            assert i["objective"] == objective
            assert "\n" not in i["state_text"] and "  " not in i["state_text"]
            assert "Invalid" not in i["state_text"]
            if i["page"] != "results":  # a results page shows its query, here the instruction
                assert objective not in i["state_text"]
        return texts

    rng = random.Random(0)
    route = list(env.walkthrough[:-1]) + ["click[description]", "click[< prev]", "xyzzy"]
    first, second = walk(route), walk(route)
    assert first == second  # deterministic
    # item -> description -> < prev -> invalid action: back on the same item state twice
    assert first[-4] == first[-2] == first[-1] != first[-3]
    # a random admissible walk replays to the same texts too
    actions, info = [], env.reset()[1]
    for _ in range(12):
        action = rng.choice(info["admissible_actions"])
        actions.append(action)
        _, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break
    assert walk(actions) == walk(actions)


def test_same_seed_same_instance_different_seeds_differ() -> None:
    a, b = WebShopEnv(game_seed=7), WebShopEnv(game_seed=7)
    assert a.objective == b.objective and a.walkthrough == b.walkthrough and a.goal == b.goal
    objectives = {WebShopEnv(game_seed=s).objective for s in range(20)}
    assert len(objectives) == 20
    other = WebShopEnv(game_seed=7, catalogue_seed=1)
    assert other.catalogue.products != a.catalogue.products
    assert other.goal.target_id in other.catalogue.by_id
    small = WebShopEnv(game_seed=0, catalogue_size=60)
    assert _play(small, small.walkthrough)[0] == 1.0


def test_bad_catalogue_arguments() -> None:
    for kwargs, name in [
        ({"catalogue_seed": -3}, "catalogue_seed"),
        ({"catalogue_seed": True}, "catalogue_seed"),
        ({"catalogue_size": 5}, "catalogue_size"),
        ({"catalogue_size": 10**7}, "catalogue_size"),
        ({"catalogue_size": "400"}, "catalogue_size"),
    ]:
        with pytest.raises(ConfigError, match=name):
            WebShopEnv(**kwargs)
    with pytest.raises(TypeError):
        WebShopEnv(variant="x")  # type: ignore[call-arg]
    # numpy integers name the same catalogue as plain ints
    assert get_catalogue(np.int64(0), np.int64(400)) is get_catalogue(0, 400)


def test_nothing_reaches_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    from gymnasium.utils.env_checker import check_env

    env = make_env("webshop", game_seed=2)
    _play(env, env.walkthrough)
    check_env(env, skip_render_check=True)
    env.close()
    assert capsys.readouterr().out == ""
