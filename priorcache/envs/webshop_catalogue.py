"""The synthetic product catalogue behind the WebShop-style simulator, and its BM25 search.

This is not the original WebShop catalogue (1.18 M scraped Amazon products, which needs a download
that is not available offline): products are generated from a seed over six categories (footwear,
beauty, electronics, grocery, furniture, apparel; 30 product types). Every product has an item id in
WebShop's ASIN style (``B0`` + 8 characters), a title, a category and product type, a price,
attributes ("water resistant", "long lasting"), option groups (size, color, scent, ...) with the
values on offer, and a description.

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
class ProductType:
    """One kind of product: what attributes and option groups its products draw from."""

    name: str
    category: str
    attributes: tuple[str, ...]
    #: (group, values) pairs, e.g. ("size", ("6", "7", ...)); values are unique across groups.
    options: tuple[tuple[str, tuple[str, ...]], ...]
    price_range: tuple[float, float]


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


_SHOE_SIZES = ("6", "6.5", "7", "7.5", "8", "8.5", "9", "9.5", "10", "10.5", "11", "12")
_CLOTHING_SIZES = ("small", "medium", "large", "x-large", "xx-large")
_COLORS = ("black", "white", "blue", "grey", "red", "pink", "navy", "brown", "green", "beige")
_WOOD_COLORS = ("white", "black", "walnut", "oak", "espresso", "grey")


def _t(
    name: str,
    category: str,
    attributes: str,
    options: dict[str, tuple[str, ...]],
    low: float,
    high: float,
) -> ProductType:
    attrs = tuple(a.strip() for a in attributes.split(","))
    return ProductType(name, category, attrs, tuple(options.items()), (low, high))


#: The product types, by category. Type names share no word with one another, so the type part of
#: the reward (matching words of the product type) separates types cleanly.
PRODUCT_TYPES: tuple[ProductType, ...] = (
    # footwear
    _t("running shoe", "footwear",
       "non slip, breathable mesh, lightweight, arch support, memory foam, rubber sole, "
       "long lasting, shock absorbing", {"size": _SHOE_SIZES, "color": _COLORS}, 25, 90),
    _t("hiking boot", "footwear",
       "water resistant, ankle support, rubber sole, slip resistant, insulated, genuine leather, "
       "long lasting, lace up", {"size": _SHOE_SIZES, "color": ("black", "brown", "grey", "green",
                                                                "beige")}, 40, 160),
    _t("sandal", "footwear",
       "open toe, adjustable strap, cushioned footbed, quick drying, lightweight, non slip, "
       "arch support", {"size": _SHOE_SIZES, "color": _COLORS}, 15, 60),
    _t("slipper", "footwear",
       "memory foam, faux fur, machine washable, non slip, closed toe, warm lining, lightweight",
       {"size": _SHOE_SIZES, "color": _COLORS}, 10, 40),
    _t("loafer", "footwear",
       "genuine leather, slip on, cushioned insole, rubber sole, lightweight, breathable lining",
       {"size": _SHOE_SIZES, "color": ("black", "brown", "navy", "beige", "grey")}, 30, 120),
    # beauty
    _t("shampoo", "beauty",
       "sulfate free, paraben free, natural ingredients, cruelty free, color safe, for dry hair, "
       "long lasting, vegan",
       {"size": ("8 fl oz", "12 fl oz", "16.9 fl oz", "33.8 fl oz"),
        "scent": ("lavender", "coconut", "citrus", "unscented", "rose", "eucalyptus")}, 6, 35),
    _t("lipstick", "beauty",
       "long lasting, cruelty free, matte finish, moisturizing, vegan, transfer proof, paraben free",
       {"color": ("red", "nude", "pink", "berry", "coral", "plum", "mauve")}, 5, 30),
    _t("face moisturizer", "beauty",
       "oil free, fragrance free, spf 30, hyaluronic acid, dermatologist tested, "
       "for sensitive skin, non comedogenic, vegan",
       {"size": ("1.7 fl oz", "2.5 fl oz", "3.4 fl oz")}, 10, 60),
    _t("nail polish", "beauty",
       "quick drying, long lasting, non toxic, chip resistant, high gloss, vegan",
       {"color": ("red", "nude", "pink", "black", "white", "coral", "teal", "lilac")}, 4, 20),
    _t("deodorant", "beauty",
       "aluminum free, long lasting, natural ingredients, for sensitive skin, baking soda free, vegan",
       {"scent": ("lavender", "unscented", "citrus", "cedarwood", "coconut"),
        "pack": ("1 pack", "2 pack", "3 pack")}, 5, 25),
    # electronics
    _t("bluetooth speaker", "electronics",
       "waterproof, portable, long battery life, built in microphone, easy to use, deep bass, "
       "usb charging", {"color": ("black", "blue", "red", "grey", "green", "white")}, 20, 150),
    _t("wireless earbuds", "electronics",
       "noise cancelling, water resistant, long battery life, touch control, fast charging, "
       "built in microphone, sweatproof", {"color": ("black", "white", "blue", "pink", "grey")},
       20, 200),
    _t("phone case", "electronics",
       "shockproof, slim fit, wireless charging compatible, anti scratch, raised edges, kickstand",
       {"model": ("iphone 13", "iphone 14", "iphone 15", "galaxy s23", "pixel 8"),
        "color": ("black", "clear", "blue", "pink", "green", "purple")}, 8, 40),
    _t("usb c cable", "electronics",
       "fast charging, braided nylon, high speed data transfer, durable, tangle free",
       {"length": ("3 ft", "6 ft", "10 ft"), "pack": ("1 pack", "2 pack", "3 pack")}, 6, 25),
    _t("power bank", "electronics",
       "fast charging, portable, high capacity, led display, lightweight, dual output",
       {"capacity": ("10000mah", "20000mah", "26800mah"),
        "color": ("black", "white", "blue", "pink")}, 15, 70),
    _t("smart watch", "electronics",
       "heart rate monitor, sleep tracking, waterproof, long battery life, gps, "
       "notification alerts", {"color": ("black", "silver", "rose gold", "blue", "green")}, 30, 200),
    # grocery
    _t("ground coffee", "grocery",
       "organic, fair trade, low acid, non gmo, kosher, gluten free, small batch",
       {"flavor": ("original", "french vanilla", "hazelnut", "mocha", "caramel"),
        "size": ("12 ounce", "2 pound", "5 pound")}, 8, 40),
    _t("protein bar", "grocery",
       "gluten free, low sugar, high protein, keto friendly, plant based, non gmo, "
       "individually wrapped",
       {"flavor": ("chocolate chip", "peanut butter", "cookie dough", "salted caramel",
                   "birthday cake"), "pack": ("12 count", "24 count")}, 12, 45),
    _t("green tea", "grocery",
       "organic, non gmo, individually wrapped, antioxidant rich, sugar free, kosher",
       {"flavor": ("jasmine", "mint", "lemon", "original", "ginger"),
        "pack": ("20 count", "40 count", "100 count")}, 4, 25),
    _t("olive oil", "grocery",
       "extra virgin, cold pressed, organic, non gmo, kosher, single origin",
       {"size": ("16.9 fl oz", "25.3 fl oz", "33.8 fl oz", "68 fl oz")}, 8, 40),
    _t("trail mix", "grocery",
       "gluten free, non gmo, high protein, resealable bag, no artificial colors, vegan",
       {"flavor": ("classic", "tropical", "dark chocolate", "honey nut"),
        "size": ("1 pound", "2 pound", "3 pound")}, 6, 30),
    # furniture
    _t("office chair", "furniture",
       "ergonomic, lumbar support, adjustable height, easy assembly, breathable mesh, heavy duty, "
       "padded armrests", {"color": ("black", "grey", "white", "blue", "pink")}, 50, 300),
    _t("bookshelf", "furniture",
       "easy assembly, solid wood, space saving, heavy duty, storage space, industrial style",
       {"color": _WOOD_COLORS, "size": ("3 tier", "4 tier", "5 tier")}, 30, 200),
    _t("end table", "furniture",
       "solid wood, easy assembly, storage space, mid century modern, tempered glass, "
       "charging station", {"color": _WOOD_COLORS}, 25, 150),
    _t("nightstand", "furniture",
       "easy assembly, with drawer, solid wood, space saving, led light, mid century modern",
       {"color": _WOOD_COLORS, "pack": ("1 pack", "set of 2")}, 30, 150),
    _t("bar stool", "furniture",
       "adjustable height, swivel, faux leather, easy assembly, footrest, heavy duty, backrest",
       {"color": ("black", "grey", "white", "brown", "beige"), "pack": ("set of 2", "set of 4")},
       60, 300),
    # apparel
    _t("t shirt", "apparel",
       "machine wash, short sleeve, slim fit, moisture wicking, crew neck, tagless, "
       "organic cotton", {"size": _CLOTHING_SIZES, "color": _COLORS}, 8, 30),
    _t("hoodie", "apparel",
       "fleece lined, machine wash, kangaroo pocket, pullover, long sleeve, relaxed fit",
       {"size": _CLOTHING_SIZES, "color": _COLORS}, 20, 60),
    _t("yoga pants", "apparel",
       "high waist, tummy control, moisture wicking, four way stretch, with pockets, squat proof",
       {"size": _CLOTHING_SIZES, "color": ("black", "navy", "grey", "green", "pink", "brown")},
       15, 50),
    _t("winter jacket", "apparel",
       "water resistant, hooded, windproof, fleece lined, packable, insulated",
       {"size": _CLOTHING_SIZES, "color": ("black", "navy", "grey", "green", "red", "beige")},
       40, 200),
)

CATEGORIES: tuple[str, ...] = tuple(dict.fromkeys(t.category for t in PRODUCT_TYPES))
TYPES_BY_NAME: Mapping[str, ProductType] = MappingProxyType({t.name: t for t in PRODUCT_TYPES})

_BRANDS = (
    "Aerolite", "Brisa", "Calder", "Dunmore", "Elowen", "Fenwick", "Galvo", "Harlow", "Istra",
    "Juniper Lane", "Kestrel", "Lumio", "Maple & Moss", "Norden", "Orla", "Pinecrest", "Quillon",
    "Rivet", "Solace", "Tidewell", "Umbra", "Verano", "Wrenfield", "Yarrow", "Zephyra", "Northby",
    "Cobalt Co", "Fable", "Halcyon", "Meridian",
)

#: A neutral closing sentence per category for descriptions (never an attribute phrase, so the
#: attribute check that also reads descriptions cannot match it by accident).
_CLOSERS = {
    "footwear": "Designed for everyday comfort from morning to night.",
    "beauty": "Part of a daily routine you can rely on.",
    "electronics": "Comes with a one year limited warranty.",
    "grocery": "Packed fresh and shipped in a sealed package.",
    "furniture": "All hardware and illustrated instructions are included.",
    "apparel": "A wardrobe staple that pairs with anything.",
}

_ID_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
_TOKEN = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens for BM25 (keeps decimals such as ``16.9`` and ``8.5`` whole)."""
    return _TOKEN.findall(text.lower())


_ACRONYMS = frozenset({"gps", "gmo", "led", "spf", "usb"})


def _title_case(text: str) -> str:
    return " ".join(
        w.upper() if w in _ACRONYMS else w if any(c.isdigit() for c in w) else w.capitalize()
        for w in text.split()
    )


def _make_product(rng: random.Random, ptype: ProductType, item_id: str) -> Product:
    brand = rng.choice(_BRANDS)
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
        + _CLOSERS[ptype.category]
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
            order = sorted(
                (i for i in range(len(self.products)) if scores[i] > 0), key=lambda i: (-scores[i], i)
            )
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
