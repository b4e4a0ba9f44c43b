"""A WebShop-style shopping simulator as a Gymnasium environment (docs/design.md §5).

This is *not* the original WebShop (Yao et al., 2022): its 1.18 M-product catalogue and search
index need downloads that are not available offline, and no usable offline package exists. It
rebuilds WebShop's task on a synthetic catalogue (``webshop_catalogue``): a seeded list of a few
hundred products over six categories, searched with BM25 (``rank_bm25``), browsed through text
pages with WebShop's ``search[...]`` / ``click[...]`` actions, and scored with WebShop's reward.

**Instances.** ``game_seed`` picks one fixed instruction, generated from a target product of the
catalogue: its product type, 1-3 of its attributes, one value per option group and a price bound a
little above its price ("i need a long lasting running shoe in size 8 and in blue, and price lower
than 40.00 dollars"). An instance is kept only if a perfect purchase (reward 1.0) is reachable
through one of the candidate queries below within a few clicks; ``walkthrough`` is that purchase,
replayed and verified when the environment is built.

**Pages and actions** (WebShop's text mode):

* search page: ``search[<query>]``;
* results page: the top 50 BM25 results, 10 per page, with item id, title and price;
  ``click[<item id>]``, ``click[next >]``, ``click[< prev]``, ``click[back to search]``;
* item page: title, price, option values by group and the options selected so far;
  ``click[<option value>]`` (selects it in its group), ``click[description]``,
  ``click[buy now]``, ``click[< prev]`` (back to the results), ``click[back to search]``;
* description page: ``click[< prev]`` (back to the item, options kept), ``click[back to search]``.

Clicking an item opens it with no option selected. Buying ends the episode.

**Admissible actions.** Free-text search cannot be enumerated, so on the search page
``admissible_actions`` offers a small deterministic set of candidate queries derived from the
instruction: the full instruction, the attributes with the product type, the product type with the
option values, and the product type alone. Any other ``search[<free text>]`` typed on the search
page is still accepted. On the other pages the admissible actions are exactly the page's
clickables (item ids and option values in lower case, as in WebShop).

Any string is a valid input to ``step``: a malformed action (``click[`` without ``]``, free text,
an unknown button, a search on a page without search box, an empty query) leaves the page as it is,
returns an observation that says what was wrong, and costs a step.

**Reward** (WebShop paper, eq. 1): on ``click[buy now]``

    r = r_type * (|U_att ∩ Y_att| + |U_opt ∩ Y_opt| + 1[y_price <= u_price]) / (|U_att| + |U_opt| + 1)

where an instruction attribute counts when the product has it (or its title/description contains
it), an instruction option counts when it is among the selected options, and ``r_type`` follows
WebShop's type match: 1 for the same product type, the same category or a type-word overlap above
0.2, else 0.5; 0.1 below an overlap of 0.1 and 0 with no overlap. Type words are the words of the
product type (WebShop uses the nouns of the product names); the catalogue's type names share no
word, so ``r_type`` is 1 for the instructed type and 0 for any other. Options and attributes are
matched exactly (lower case) where WebShop uses fuzzy matching, since generated values are
canonical. ``won`` is reward 1.0; a purchase below 1.0 ends the episode with ``lost``. Reaching
``max_episode_steps`` without buying truncates the episode with reward 0.

``info["state_text"]`` is the current page's text (no instruction, step count or feedback); on the
item and description pages it includes the options selected so far. The instruction is
``info["objective"]``.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from priorcache.envs.base import PRINTABLE, TextEnv
from priorcache.envs.webshop_catalogue import (
    RESULTS_PER_PAGE,
    Catalogue,
    Product,
    get_catalogue,
    tokenize,
)
from priorcache.envs.checks import check_game_seed, check_max_episode_steps
from priorcache.errors import ConfigError, UnknownEnvironmentError

#: Walkthroughs longer than this are rejected when instances are generated, so that the default
#: step budget leaves room for a few mistakes.
MAX_WALKTHROUGH = 10
_MAX_ATTEMPTS = 200
#: Longest query kept from a search action (the rest is dropped), so pages stay compact.
MAX_QUERY_CHARS = 200

SEARCH = "search"
RESULTS = "results"
ITEM = "item"
DESCRIPTION = "description"
DONE = "done"

BACK_TO_SEARCH = "back to search"
NEXT = "next >"
PREV = "< prev"
BUY_NOW = "buy now"
DESCRIPTION_BUTTON = "description"

_SEP = " [SEP] "
_ACTION = re.compile(r"(search|click)\[(.*)\]", re.IGNORECASE | re.DOTALL)

# Types read as mass or plural nouns: no article in front of them.
_NO_ARTICLE = frozenset(
    {"shampoo", "nail polish", "ground coffee", "green tea", "olive oil", "trail mix",
     "wireless earbuds", "yoga pants"}
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
    """WebShop's ``r_type``: product type, category and type-word overlap (see module docstring)."""
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


def _instruction(rng: random.Random, ptype: str, attrs: list[str],
                 options: tuple[tuple[str, str], ...], price: float) -> str:
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


# --------------------------------------------------------------------------- pages


@dataclass(frozen=True)
class _View:
    """Everything that decides what the next action does (the Markov state)."""

    page: str = SEARCH
    query: str = ""
    results_page: int = 1
    item_id: str = ""
    #: (group, value) in the product's group order.
    selected: tuple[tuple[str, str], ...] = ()
    reward: float = 0.0


def _echo(action: str, limit: int = 80) -> str:
    text = "".join(c if 32 <= ord(c) < 127 else "?" for c in " ".join(action.split()))
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _ascii(text: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 else " " for c in text)


class WebShopEnv(TextEnv):
    """One WebShop-style shopping instruction on a synthetic catalogue (see the module docstring).

    ``reset(seed=...)`` seeds ``self.np_random`` only; ``game_seed`` fixes the instruction, and
    every episode starts on the search page.

    ``info`` holds ``state_text``, ``admissible_actions`` (sorted), ``won``, ``lost``,
    ``objective``, ``score`` (cumulative reward), ``max_score`` (1.0), ``page`` and, after a
    purchase, ``reward_breakdown``. ``walkthrough`` is a purchase verified to earn reward 1.0;
    ``oracle_action()`` gives a perfect next action from whatever page the episode is on.
    """

    display_name = "WebShop"

    def __init__(
        self,
        game_seed: int = 0,
        max_episode_steps: int = 15,
        catalogue_seed: int = 0,
        catalogue_size: int = 400,
    ) -> None:
        game_seed = check_game_seed(game_seed)
        max_episode_steps = check_max_episode_steps(max_episode_steps)
        # An observation is a feedback line and a page line, never a tab; a query is cut at
        # MAX_QUERY_CHARS, so a longer action would not be what is played.
        super().__init__(action_max_length=MAX_QUERY_CHARS, observation_charset=PRINTABLE + "\n")
        self.catalogue: Catalogue = get_catalogue(catalogue_seed, catalogue_size)
        self.game_seed = game_seed
        self.max_episode_steps = max_episode_steps
        self.catalogue_seed = catalogue_seed
        self.catalogue_size = catalogue_size
        self.goal, plan = make_instance(self.catalogue, game_seed)
        self.objective: str = self.goal.instruction
        self.candidate_queries: tuple[str, ...] = candidate_queries(self.goal)
        self.max_score = 1.0
        self._perfect: dict[str, bool] = {}

        view = _View()
        for action in plan:
            view, _ = self._transition(view, action)
        if view.page != DONE or view.reward != 1.0:  # pragma: no cover - a bug in the planner
            raise UnknownEnvironmentError(
                f"the generated purchase for game_seed={game_seed} does not earn reward 1.0"
            )
        #: Actions verified to buy a perfect product from the search page.
        self.walkthrough: tuple[str, ...] = plan

        self._view = _View()
        self._score = 0.0

    # ----------------------------------------------------------------------- page rendering

    def _results(self, view: _View) -> tuple[Product, ...]:
        return self.catalogue.search(view.query)

    def _n_pages(self, results: tuple[Product, ...]) -> int:
        return max(1, math.ceil(len(results) / RESULTS_PER_PAGE))

    def _page_slice(self, view: _View) -> tuple[Product, ...]:
        start = (view.results_page - 1) * RESULTS_PER_PAGE
        return self._results(view)[start : start + RESULTS_PER_PAGE]

    @staticmethod
    def _selected_text(view: _View) -> str:
        if not view.selected:
            return "Selected: none"
        return "Selected: " + ", ".join(f"{g}={v}" for g, v in view.selected)

    def _page_text(self, view: _View) -> str:
        if view.page == SEARCH:
            return "Search page" + _SEP + "Search"
        if view.page == RESULTS:
            results = self._results(view)
            head = f'Search results for "{view.query}"'
            if not results:
                return _SEP.join([head, "No products match this query", "Back to Search"])
            n_pages = self._n_pages(results)
            parts = [head, f"Page {view.results_page} of {n_pages} (total results: {len(results)})",
                     "Back to Search"]
            if view.results_page > 1:
                parts.append("< Prev")
            if view.results_page < n_pages:
                parts.append("Next >")
            for p in self._page_slice(view):
                parts += [p.item_id, p.title, f"${p.price:.2f}"]
            return _SEP.join(parts)
        product = self.catalogue.by_id[view.item_id]
        if view.page == ITEM:
            parts = ["Back to Search", "< Prev"]
            for group, values in product.options:
                parts += [group, *values]
            parts += [product.title, f"Price: ${product.price:.2f}", self._selected_text(view),
                      "Description", "Buy Now"]
            return _SEP.join(parts)
        if view.page == DESCRIPTION:
            return _SEP.join(["Back to Search", "< Prev", product.title,
                              f"Description: {product.description}", self._selected_text(view)])
        return _SEP.join(["Order placed", product.title, f"Price: ${product.price:.2f}",
                          self._selected_text(view), f"Reward: {view.reward:.2f}"])

    def _clickables(self, view: _View) -> list[str]:
        if view.page == RESULTS:
            results = self._results(view)
            buttons = [BACK_TO_SEARCH]
            if view.results_page > 1:
                buttons.append(PREV)
            if view.results_page < self._n_pages(results):
                buttons.append(NEXT)
            return buttons + [p.item_id.lower() for p in self._page_slice(view)]
        if view.page == ITEM:
            product = self.catalogue.by_id[view.item_id]
            values = [v for _, vs in product.options for v in vs]
            return [BACK_TO_SEARCH, PREV, DESCRIPTION_BUTTON, BUY_NOW, *values]
        if view.page == DESCRIPTION:
            return [BACK_TO_SEARCH, PREV]
        return []

    def _admissible(self, view: _View) -> list[str]:
        if view.page == SEARCH:
            actions = {f"search[{q}]" for q in self.candidate_queries}
        else:
            actions = {f"click[{c}]" for c in self._clickables(view)}
        return sorted(actions)

    # ----------------------------------------------------------------------- transitions

    def _transition(self, view: _View, action: str) -> tuple[_View, str | None]:
        """Apply ``action`` to ``view``; return the new view and an error message (None if valid)."""
        text = action.strip()
        if not text:
            return view, "Empty action: send search[<query>] or click[<button>]."
        match = _ACTION.fullmatch(text)
        if match is None:
            low = text.lower()
            if (low.startswith("search[") or low.startswith("click[")) and "]" not in low:
                return view, (f"Invalid action {_echo(action)}: missing the closing ']'. "
                              "Actions look like search[<query>] or click[<button>].")
            return view, (f"Invalid action {_echo(action)}: actions are search[<query>] on the "
                          "search page or click[<button>] on the other pages.")
        kind, content = match.group(1).lower(), match.group(2)
        if kind == "search":
            if view.page != SEARCH:
                return view, (f"Invalid action {_echo(action)}: there is no search box on this "
                              f"page; click[{BACK_TO_SEARCH}] first.")
            query = _norm(_ascii(content))[:MAX_QUERY_CHARS].strip()
            if not tokenize(query):
                return view, f"Invalid action {_echo(action)}: the search query is empty."
            return _View(page=RESULTS, query=query, results_page=1), None

        button = _norm(content)
        if view.page == SEARCH:
            return view, (f"Invalid action {_echo(action)}: there is nothing to click on the "
                          "search page; search with search[<query>].")
        clickables = self._clickables(view)
        if button not in clickables:
            return view, (f"Invalid action {_echo(action)}: there is no {_echo(button, 40)} to "
                          f"click on this page. Clickable here: {', '.join(clickables)}.")
        if button == BACK_TO_SEARCH:
            return _View(), None
        if view.page == RESULTS:
            if button == NEXT:
                return replace(view, results_page=view.results_page + 1), None
            if button == PREV:
                return replace(view, results_page=view.results_page - 1), None
            return replace(view, page=ITEM, item_id=button.upper(), selected=()), None
        if view.page == DESCRIPTION:  # only < prev is left
            return replace(view, page=ITEM), None
        # item page
        if button == PREV:
            return replace(view, page=RESULTS, item_id="", selected=()), None
        if button == DESCRIPTION_BUTTON:
            return replace(view, page=DESCRIPTION), None
        product = self.catalogue.by_id[view.item_id]
        if button == BUY_NOW:
            result = webshop_reward(self.goal, product, dict(view.selected))
            return replace(view, page=DONE, reward=result.reward), None
        chosen = dict(view.selected)
        for group, values in product.options:
            if button in values:
                chosen[group] = button
        selected = tuple((g, chosen[g]) for g, _ in product.options if g in chosen)
        return replace(view, selected=selected), None

    # ----------------------------------------------------------------------- Gymnasium API

    def _observation(self, view: _View, feedback: str | None) -> str:
        page = f"Instruction: [SEP] {self.objective}{_SEP}{self._page_text(view)}"
        return f"{feedback}\n{page}" if feedback else page

    def _info(self, view: _View) -> dict[str, Any]:
        won = view.page == DONE and view.reward == 1.0
        info: dict[str, Any] = {
            "state_text": self._page_text(view),
            "admissible_actions": self._admissible(view),
            "won": won,
            "lost": view.page == DONE and not won,
            "objective": self.objective,
            "score": self._score,
            "max_score": self.max_score,
            "page": view.page,
        }
        if view.page == DONE:
            product = self.catalogue.by_id[view.item_id]
            info["reward_breakdown"] = webshop_reward(
                self.goal, product, dict(view.selected)
            ).as_dict()
            info["purchased"] = product.item_id
        return info

    def _reset(self) -> tuple[str, dict[str, Any]]:
        """Start on the search page; return (observation, info)."""
        self._view = _View()
        self._score = 0.0
        return self._observation(self._view, None), self._info(self._view)

    def _step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        """Apply one ``search[...]``/``click[...]`` action; reward is paid on ``click[buy now]``.

        A malformed action leaves the page as it is and the observation says what was wrong.
        """
        view, feedback = self._transition(self._view, action)
        self._view = view
        terminated = view.page == DONE
        reward = view.reward if terminated else 0.0
        self._score += reward
        return self._observation(view, feedback), reward, terminated, self._info(view)

    def oracle_action(self, info: Mapping[str, Any] | None = None) -> str:
        """A next action on the way to a perfect purchase from the current page.

        ``info`` is accepted for symmetry with agents and ignored: the oracle reads the
        environment's own page state. From the search page it follows ``walkthrough``; after any
        detour (another query, a wrong item, a wrong option) it finds its way back.
        """
        if self._done:
            raise ConfigError("episode is over or not started; call reset() first")
        view = self._view
        if view.page == SEARCH:
            return self.walkthrough[0]
        if view.page == DESCRIPTION:
            return f"click[{PREV}]"
        if view.page == RESULTS:
            results = self._results(view)
            index = next((i for i, p in enumerate(results) if self._is_perfect(p)), None)
            if index is None:
                return f"click[{BACK_TO_SEARCH}]"
            page = index // RESULTS_PER_PAGE + 1
            if page == view.results_page:
                return f"click[{results[index].item_id.lower()}]"
            return f"click[{NEXT}]" if page > view.results_page else f"click[{PREV}]"
        product = self.catalogue.by_id[view.item_id]
        if not self._is_perfect(product):
            return f"click[{PREV}]"
        wanted = best_selection(self.goal, product)
        current = dict(view.selected)
        for group, _ in product.options:
            if group in wanted and current.get(group) != wanted[group]:
                return f"click[{wanted[group]}]"
        return f"click[{BUY_NOW}]"

    def _is_perfect(self, product: Product) -> bool:
        found = self._perfect.get(product.item_id)
        if found is None:
            found = self._perfect[product.item_id] = is_perfect(self.goal, product)
        return found
