"""The synthetic product catalogue behind the WebShop-style simulator, and its BM25 search.

This is not the original WebShop catalogue (1.18 M scraped Amazon products, which needs a download
that is not available offline): products are generated from a seed over six categories (footwear,
beauty, electronics, grocery, furniture, apparel; 30 product types). Every product has an item id in
WebShop's ASIN style (``B0`` + 8 characters), a title, a category and product type, a price,
attributes ("water resistant", "long lasting"), option groups (size, color, scent, ...) with the
values on offer, and a description. The product types, brands and description sentences they are
drawn from are the tables of :mod:`priorcache.envs.webshop_products`.

Generation is deterministic in ``(seed, size)`` and takes a few milliseconds for a few hundred
products (BM25 indexing included), so nothing is cached on disk; ``get_catalogue`` keeps built
catalogues in memory for the process.

Search is BM25 (``rank_bm25.BM25Okapi``) over each product's title, type, category, attributes,
option values and description, returning at most ``MAX_RESULTS`` products with a positive score,
best first (ties broken by catalogue order, so results are deterministic).
"""

from __future__ import annotations

import random
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from priorcache.envs.webshop_products import BRANDS, CLOSERS, PRODUCT_TYPES, ProductType
from priorcache.errors import ConfigError
from priorcache.validation import is_int

#: WebShop shows the top 50 search results, 10 per page.
MAX_RESULTS = 50
RESULTS_PER_PAGE = 10

#: Bounds on ``catalogue_size``: enough products for every type to appear, small enough to build
#: in well under a second.
MIN_CATALOGUE_SIZE = 30
MAX_CATALOGUE_SIZE = 20_000


@dataclass(frozen=True)
class Product:
    """One catalogue entry. ``options`` lists, per group, the values this product is sold in."""

    item_id: str
    title: str
    category: str
    product_type: str
    price: float
    attributes: tuple[str, ...]
    options: tuple[tuple[str, tuple[str, ...]], ...]
    description: str

    def option_groups(self) -> dict[str, tuple[str, ...]]:
        return dict(self.options)


_ID_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
_TOKEN = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens for BM25 (keeps decimals such as ``16.9`` and ``8.5`` whole)."""
    return _TOKEN.findall(text.lower())


_ACRONYMS = frozenset({"gps", "gmo", "led", "spf", "usb"})


def _title_case(text: str) -> str:
    return " ".join(
        w.upper() if w in _ACRONYMS else w if any(c.isdigit() for c in w) else w.capitalize() for w in text.split()
    )


def _make_product(rng: random.Random, ptype: ProductType, item_id: str) -> Product:
    brand = rng.choice(BRANDS)
    n_attrs = rng.randint(3, min(5, len(ptype.attributes)))
    # keep the type's own order so titles and pages read the same way for every product
    picked = set(rng.sample(ptype.attributes, n_attrs))
    attributes = tuple(a for a in ptype.attributes if a in picked)
    options = []
    for group, values in ptype.options:
        k = rng.randint(min(2, len(values)), len(values))
        chosen = set(rng.sample(values, k))
        options.append((group, tuple(v for v in values if v in chosen)))
    low, high = ptype.price_range
    price = max(0.99, round(rng.uniform(low, high)) - 0.01)
    shown = rng.sample(attributes, 2)
    title = f"{brand} {_title_case(ptype.name)} - {_title_case(shown[0])}, {_title_case(shown[1])}"
    description = (
        f"This {ptype.name} from {brand} is {', '.join(attributes[:-1])} and {attributes[-1]}. "
        + CLOSERS[ptype.category]
    )
    return Product(
        item_id=item_id,
        title=title,
        category=ptype.category,
        product_type=ptype.name,
        price=price,
        attributes=attributes,
        options=tuple(options),
        description=description,
    )


class Catalogue:
    """A generated product list with a BM25 index. Immutable once built; searches are memoised."""

    _SEARCH_MEMO = 4096

    def __init__(self, seed: int, size: int) -> None:
        from rank_bm25 import BM25Okapi

        self.seed = seed
        self.size = size
        rng = random.Random(f"webshop-catalogue:{seed}:{size}")
        # every type appears at least once, the rest are drawn at random
        types = list(PRODUCT_TYPES) + [rng.choice(PRODUCT_TYPES) for _ in range(size - len(PRODUCT_TYPES))]
        rng.shuffle(types)
        ids: set[str] = set()
        products = []
        for ptype in types:
            while True:
                item_id = "B0" + "".join(rng.choice(_ID_CHARS) for _ in range(8))
                if item_id not in ids:
                    ids.add(item_id)
                    break
            products.append(_make_product(rng, ptype, item_id))
        self.products: tuple[Product, ...] = tuple(products)
        self.by_id: Mapping[str, Product] = MappingProxyType({p.item_id: p for p in products})
        corpus = [
            tokenize(
                " ".join(
                    [p.title, p.product_type, p.category, " ".join(p.attributes), p.description]
                    + [v for _, values in p.options for v in values]
                )
            )
            for p in products
        ]
        self._bm25 = BM25Okapi(corpus)
        self._memo: OrderedDict[str, tuple[Product, ...]] = OrderedDict()

    def search(self, query: str) -> tuple[Product, ...]:
        """The top ``MAX_RESULTS`` products for ``query`` with a positive BM25 score, best first."""
        key = " ".join(tokenize(query))
        found = self._memo.get(key)
        if found is not None:
            self._memo.move_to_end(key)
            return found
        tokens = key.split()
        result: tuple[Product, ...] = ()
        if tokens:
            scores = self._bm25.get_scores(tokens)
            order = sorted((i for i in range(len(self.products)) if scores[i] > 0), key=lambda i: (-scores[i], i))
            result = tuple(self.products[i] for i in order[:MAX_RESULTS])
        self._memo[key] = result
        if len(self._memo) > self._SEARCH_MEMO:
            self._memo.popitem(last=False)
        return result


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    if not is_int(value) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ConfigError(f"{name} must be an int {bound}, got {value!r}")
    # A plain int whatever integer type came in (a numpy one from a config, say).
    return int(value)


@lru_cache(maxsize=8)
def _cached(seed: int, size: int) -> Catalogue:
    return Catalogue(seed, size)


def get_catalogue(seed: int = 0, size: int = 400) -> Catalogue:
    """The catalogue for ``(seed, size)``, built on first use and kept in memory.

    Raises:
        ConfigError: ``seed`` not a non-negative int or ``size`` outside
            [``MIN_CATALOGUE_SIZE``, ``MAX_CATALOGUE_SIZE``].
    """
    seed = _check_int("catalogue_seed", seed, 0)
    size = _check_int("catalogue_size", size, MIN_CATALOGUE_SIZE, MAX_CATALOGUE_SIZE)
    return _cached(seed, size)
