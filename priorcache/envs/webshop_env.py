"""A WebShop-style shopping simulator as a Gymnasium environment (docs/design.md §5).

This is *not* the original WebShop (Yao et al., 2022): its 1.18 M-product catalogue and search
index need downloads that are not available offline, and no usable offline package exists. It
rebuilds WebShop's task on a synthetic catalogue (``webshop_catalogue``): a seeded list of a few
hundred products over six categories, searched with BM25 (``rank_bm25``), browsed through text
pages with WebShop's ``search[...]`` / ``click[...]`` actions, and scored with WebShop's reward.
The instructions, the reward and the instance generator are in :mod:`priorcache.envs.webshop_task`;
this module holds the pages and the environment.

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
item and description pages it includes the options selected so far and the option groups still to
choose. The instruction is
``info["objective"]``.

**Oracle** (reactive): ``oracle_action()`` reads the current page and returns a next action on the
way to a perfect purchase (back to search, to the right results page, the perfect item, the
wanted options, buy), so it recovers from any detour; the tests check it after random actions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from priorcache.envs.base import PRINTABLE, TextEnv
from priorcache.envs.checks import check_game_seed, check_max_episode_steps
from priorcache.envs.webshop_catalogue import (
    RESULTS_PER_PAGE,
    Catalogue,
    Product,
    get_catalogue,
    tokenize,
)
from priorcache.envs.webshop_task import (
    BACK_TO_SEARCH,
    BUY_NOW,
    DESCRIPTION_BUTTON,
    NEXT,
    PREV,
    _norm,
    best_selection,
    candidate_queries,
    is_perfect,
    make_instance,
    webshop_reward,
)
from priorcache.errors import UnknownEnvironmentError

#: Longest query kept from a search action (the rest is dropped), so pages stay compact.
MAX_QUERY_CHARS = 200

SEARCH = "search"
RESULTS = "results"
ITEM = "item"
DESCRIPTION = "description"
DONE = "done"

_SEP = " [SEP] "
_ACTION = re.compile(r"(search|click)\[(.*)\]", re.IGNORECASE | re.DOTALL)


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
    oracle_kind = "reactive"

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
            raise UnknownEnvironmentError(f"the generated purchase for game_seed={game_seed} does not earn reward 1.0")
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

    def _selected_text(self, view: _View) -> str:
        # The groups still open are said outright, as a shop's "please choose a colour" does: a small
        # LLM reading "Selected: size=6" alone bought before choosing the colour.
        chosen = dict(view.selected)
        selected = ", ".join(f"{g}={v}" for g, v in view.selected) or "none"
        open_groups = [g for g, _ in self.catalogue.by_id[view.item_id].options if g not in chosen]
        if view.page not in (ITEM, DESCRIPTION):
            open_groups = []
        return f"Selected: {selected}" + (f" (still to choose: {', '.join(open_groups)})" if open_groups else "")

    def _page_text(self, view: _View) -> str:
        if view.page == SEARCH:
            return "Search page" + _SEP + "Search"
        if view.page == RESULTS:
            results = self._results(view)
            head = f'Search results for "{view.query}"'
            if not results:
                return _SEP.join([head, "No products match this query", "Back to Search"])
            n_pages = self._n_pages(results)
            parts = [head, f"Page {view.results_page} of {n_pages} (total results: {len(results)})", "Back to Search"]
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
            parts += [
                product.title,
                f"Price: ${product.price:.2f}",
                self._selected_text(view),
                "Description",
                "Buy Now",
            ]
            return _SEP.join(parts)
        if view.page == DESCRIPTION:
            return _SEP.join(
                [
                    "Back to Search",
                    "< Prev",
                    product.title,
                    f"Description: {product.description}",
                    self._selected_text(view),
                ]
            )
        return _SEP.join(
            [
                "Order placed",
                product.title,
                f"Price: ${product.price:.2f}",
                self._selected_text(view),
                f"Reward: {view.reward:.2f}",
            ]
        )

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
                return view, (
                    f"Invalid action {_echo(action)}: missing the closing ']'. "
                    "Actions look like search[<query>] or click[<button>]."
                )
            return view, (
                f"Invalid action {_echo(action)}: actions are search[<query>] on the "
                "search page or click[<button>] on the other pages."
            )
        kind, content = match.group(1).lower(), match.group(2)
        if kind == "search":
            if view.page != SEARCH:
                return view, (
                    f"Invalid action {_echo(action)}: there is no search box on this "
                    f"page; click[{BACK_TO_SEARCH}] first."
                )
            query = _norm(_ascii(content))[:MAX_QUERY_CHARS].strip()
            if not tokenize(query):
                return view, f"Invalid action {_echo(action)}: the search query is empty."
            return _View(page=RESULTS, query=query, results_page=1), None

        button = _norm(content)
        if view.page == SEARCH:
            return view, (
                f"Invalid action {_echo(action)}: there is nothing to click on the "
                "search page; search with search[<query>]."
            )
        clickables = self._clickables(view)
        if button not in clickables:
            return view, (
                f"Invalid action {_echo(action)}: there is no {_echo(button, 40)} to "
                f"click on this page. Clickable here: {', '.join(clickables)}."
            )
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
            info["reward_breakdown"] = webshop_reward(self.goal, product, dict(view.selected)).as_dict()
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
        """A next action on the way to a perfect purchase from the current page (reactive).

        ``info`` is accepted for symmetry with agents (the older signature) and ignored: the oracle
        reads the environment's own page state. From the search page it follows ``walkthrough``;
        after any detour (another query, a wrong item, a wrong option) it finds its way back.
        """
        return super().oracle_action()

    def _oracle_action(self) -> str:
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
