"""The task side of the WebShop-style simulator: instructions, WebShop's reward and instance generation.

A :class:`Goal` is one shopping instruction generated from a target product of the synthetic catalogue
(product type, 1-3 attributes, one value per option group, a price bound); :func:`webshop_reward`
scores a purchase against it with WebShop's reward (``RewardBreakdown``; ``best_selection`` and
``is_perfect`` say which options make a product worth 1.0); :func:`candidate_queries` are the search
queries offered as admissible actions; :func:`make_instance` draws the instruction for a
``game_seed`` and plans a short purchase that earns reward 1.0 through those queries. The pages,
actions and episode loop are :class:`priorcache.envs.webshop_env.WebShopEnv`, whose module
docstring describes the whole task and the reward.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from priorcache.envs.webshop_catalogue import RESULTS_PER_PAGE, Catalogue, Product, tokenize
from priorcache.errors import UnknownEnvironmentError

#: Walkthroughs longer than this are rejected when instances are generated, so that the default
#: step budget leaves room for a few mistakes.
MAX_WALKTHROUGH = 10
_MAX_ATTEMPTS = 200

# The buttons of WebShop's pages (the clickables), shared by the planner here and the environment.
BACK_TO_SEARCH = "back to search"
NEXT = "next >"
PREV = "< prev"
BUY_NOW = "buy now"
DESCRIPTION_BUTTON = "description"

# Types read as mass or plural nouns: no article in front of them.
_NO_ARTICLE = frozenset(
    {"shampoo", "nail polish", "ground coffee", "green tea", "olive oil", "trail mix", "wireless earbuds", "yoga pants"}
)
_OPTION_PHRASES = {
    "size": "in size {}",
    "color": "in {}",
    "scent": "with {} scent",
    "flavor": "with {} flavor",
    "pack": "in a {}",
    "length": "{} long",
    "model": "for {}",
    "capacity": "with {} capacity",
}
_TEMPLATES = (
    "i need {article}{attrs} {ptype}{opts}, and price lower than {price} dollars",
    "i am looking for {article}{ptype} that {verb} {attrs}{opts}, and price lower than {price} dollars",
    "find me {article}{attrs} {ptype}{opts}, and price lower than {price} dollars",
)


# --------------------------------------------------------------------------- goals and the reward


@dataclass(frozen=True)
class Goal:
    """One instruction: what a perfect purchase must be."""

    instruction: str
    product_type: str
    category: str
    attributes: tuple[str, ...]
    #: (group, value) pairs, one per option group of the target product.
    options: tuple[tuple[str, str], ...]
    price_upper: float
    #: The product the instruction was generated from (other products may be equally perfect).
    target_id: str


@dataclass(frozen=True)
class RewardBreakdown:
    """The parts of WebShop's reward for one purchase."""

    r_type: float
    attribute_matches: int
    n_attributes: int
    option_matches: int
    n_options: int
    price_ok: bool
    reward: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "r_type": self.r_type,
            "attribute_matches": self.attribute_matches,
            "n_attributes": self.n_attributes,
            "option_matches": self.option_matches,
            "n_options": self.n_options,
            "price_ok": self.price_ok,
            "reward": self.reward,
        }


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def type_reward(goal: Goal, product: Product) -> float:
    """WebShop's ``r_type``: product type, category and type-word overlap (see :mod:`priorcache.envs.webshop_env`)."""
    desired = set(tokenize(goal.product_type))
    bought = set(tokenize(product.product_type))
    title_score = len(desired & bought) / len(desired) if desired else 0.2
    same_type = product.product_type == goal.product_type
    same_category = product.category == goal.category
    r_type = 1.0 if (same_type or same_category or title_score > 0.2) else 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return r_type


def _has_attribute(product: Product, attribute: str) -> bool:
    wanted = _norm(attribute)
    return (
        wanted in (_norm(a) for a in product.attributes)
        or wanted in _norm(product.title)
        or wanted in _norm(product.description)
    )


def webshop_reward(goal: Goal, product: Product, selected: Mapping[str, str]) -> RewardBreakdown:
    """WebShop's reward for buying ``product`` with options ``selected`` (group -> value)."""
    r_type = type_reward(goal, product)
    n_attr = sum(_has_attribute(product, a) for a in goal.attributes)
    chosen = {_norm(v) for v in selected.values()}
    n_opt = sum(_norm(v) in chosen for _, v in goal.options)
    price_ok = product.price <= goal.price_upper
    total = (n_attr + n_opt + int(price_ok)) / (len(goal.attributes) + len(goal.options) + 1)
    return RewardBreakdown(
        r_type=r_type,
        attribute_matches=n_attr,
        n_attributes=len(goal.attributes),
        option_matches=n_opt,
        n_options=len(goal.options),
        price_ok=price_ok,
        reward=float(r_type * total),
    )


def best_selection(goal: Goal, product: Product) -> dict[str, str]:
    """Options to select on ``product`` to match as many instruction options as it offers."""
    groups = product.option_groups()
    chosen: dict[str, str] = {}
    for _, value in goal.options:
        for group, values in groups.items():
            if group not in chosen and value in values:
                chosen[group] = value
                break
    return chosen


def is_perfect(goal: Goal, product: Product) -> bool:
    """Whether some choice of options makes buying ``product`` worth reward 1.0."""
    return webshop_reward(goal, product, best_selection(goal, product)).reward == 1.0


def _price_bound(value: float) -> float:
    step = 5 if value < 50 else 10 if value < 200 else 50
    return float(math.ceil(value / step) * step)


def _article(next_word: str) -> str:
    w = next_word.lower()
    return "an " if w[:1] in ("a", "e", "i", "o") or (w[:1] == "u" and not w.startswith("us")) else "a "


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _instruction(
    rng: random.Random, ptype: str, attrs: list[str], options: tuple[tuple[str, str], ...], price: float
) -> str:
    template = rng.choice(_TEMPLATES)
    attr_text = _join(attrs)
    opts = " and ".join(_OPTION_PHRASES.get(g, "with {} " + g).format(v) for g, v in options)
    first = ptype if template.index("{ptype}") < template.index("{attrs}") else attr_text
    article = "" if ptype in _NO_ARTICLE else _article(first)
    return template.format(
        article=article,
        attrs=attr_text,
        ptype=ptype,
        verb="are" if ptype in ("wireless earbuds", "yoga pants") else "is",
        opts=(" " + opts) if opts else "",
        price=f"{price:.2f}",
    )


def candidate_queries(goal: Goal) -> tuple[str, ...]:
    """The search queries offered as admissible actions on the search page, most specific first."""
    queries = [
        goal.instruction,
        " ".join([*goal.attributes, goal.product_type]),
        " ".join([goal.product_type, *(v for _, v in goal.options)]),
        goal.product_type,
    ]
    return tuple(dict.fromkeys(_norm(q) for q in queries))


def _plan(catalogue: Catalogue, goal: Goal) -> tuple[str, ...] | None:
    """The shortest candidate-query purchase of a perfect product, or None if there is none."""
    best: tuple[int, tuple[str, ...]] | None = None
    for query in candidate_queries(goal):
        results = catalogue.search(query)
        index = next((i for i, p in enumerate(results) if is_perfect(goal, p)), None)
        if index is None:
            continue
        product = results[index]
        selection = best_selection(goal, product)
        clicks = [f"click[{v}]" for g, _ in product.options if (v := selection.get(g))]
        plan = (
            f"search[{query}]",
            *([f"click[{NEXT}]"] * (index // RESULTS_PER_PAGE)),
            f"click[{product.item_id.lower()}]",
            *clicks,
            f"click[{BUY_NOW}]",
        )
        if best is None or len(plan) < best[0]:
            best = (len(plan), plan)
    return best[1] if best else None


def make_instance(catalogue: Catalogue, game_seed: int) -> tuple[Goal, tuple[str, ...]]:
    """The instruction for ``game_seed`` and a purchase plan that earns reward 1.0 (unverified)."""
    rng = random.Random(f"webshop-goal:{catalogue.seed}:{catalogue.size}:{game_seed}")
    for _ in range(_MAX_ATTEMPTS):
        target = rng.choice(catalogue.products)
        n_attr = min(len(target.attributes), rng.choice((1, 2, 2, 3)))
        attrs = rng.sample(target.attributes, n_attr)
        options = tuple((g, rng.choice(values)) for g, values in target.options)
        price = _price_bound(target.price * rng.uniform(1.05, 1.6))
        goal = Goal(
            instruction=_instruction(rng, target.product_type, attrs, options, price),
            product_type=target.product_type,
            category=target.category,
            attributes=tuple(attrs),
            options=options,
            price_upper=price,
            target_id=target.item_id,
        )
        plan = _plan(catalogue, goal)
        if plan is not None and len(plan) <= MAX_WALKTHROUGH:
            return goal, plan
    raise UnknownEnvironmentError(  # pragma: no cover - needs a degenerate catalogue
        f"no instance with a reachable perfect purchase found for game_seed={game_seed}; "
        "try another catalogue_seed or a larger catalogue_size"
    )
