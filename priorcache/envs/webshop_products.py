"""The data tables of the synthetic WebShop catalogue: what products are generated from.

Each :class:`ProductType` (30 of them in ``PRODUCT_TYPES``, over the six ``CATEGORIES``) names a
product type, its category, the attributes its products draw from, its option groups with the values
on offer and a price range; ``BRANDS`` are the brand names of the titles and ``CLOSERS`` the neutral
closing sentence of each category's descriptions. The tables are plain data; the products, their ids,
titles and descriptions and the BM25 search are built from them by
:mod:`priorcache.envs.webshop_catalogue`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class ProductType:
    """One kind of product: what attributes and option groups its products draw from."""

    name: str
    category: str
    attributes: tuple[str, ...]
    #: (group, values) pairs, e.g. ("size", ("6", "7", ...)); values are unique across groups.
    options: tuple[tuple[str, tuple[str, ...]], ...]
    price_range: tuple[float, float]


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
    _t(
        "running shoe",
        "footwear",
        "non slip, breathable mesh, lightweight, arch support, memory foam, rubber sole, long lasting, shock absorbing",
        {"size": _SHOE_SIZES, "color": _COLORS},
        25,
        90,
    ),
    _t(
        "hiking boot",
        "footwear",
        "water resistant, ankle support, rubber sole, slip resistant, insulated, genuine leather, "
        "long lasting, lace up",
        {"size": _SHOE_SIZES, "color": ("black", "brown", "grey", "green", "beige")},
        40,
        160,
    ),
    _t(
        "sandal",
        "footwear",
        "open toe, adjustable strap, cushioned footbed, quick drying, lightweight, non slip, arch support",
        {"size": _SHOE_SIZES, "color": _COLORS},
        15,
        60,
    ),
    _t(
        "slipper",
        "footwear",
        "memory foam, faux fur, machine washable, non slip, closed toe, warm lining, lightweight",
        {"size": _SHOE_SIZES, "color": _COLORS},
        10,
        40,
    ),
    _t(
        "loafer",
        "footwear",
        "genuine leather, slip on, cushioned insole, rubber sole, lightweight, breathable lining",
        {"size": _SHOE_SIZES, "color": ("black", "brown", "navy", "beige", "grey")},
        30,
        120,
    ),
    # beauty
    _t(
        "shampoo",
        "beauty",
        "sulfate free, paraben free, natural ingredients, cruelty free, color safe, for dry hair, long lasting, vegan",
        {
            "size": ("8 fl oz", "12 fl oz", "16.9 fl oz", "33.8 fl oz"),
            "scent": ("lavender", "coconut", "citrus", "unscented", "rose", "eucalyptus"),
        },
        6,
        35,
    ),
    _t(
        "lipstick",
        "beauty",
        "long lasting, cruelty free, matte finish, moisturizing, vegan, transfer proof, paraben free",
        {"color": ("red", "nude", "pink", "berry", "coral", "plum", "mauve")},
        5,
        30,
    ),
    _t(
        "face moisturizer",
        "beauty",
        "oil free, fragrance free, spf 30, hyaluronic acid, dermatologist tested, "
        "for sensitive skin, non comedogenic, vegan",
        {"size": ("1.7 fl oz", "2.5 fl oz", "3.4 fl oz")},
        10,
        60,
    ),
    _t(
        "nail polish",
        "beauty",
        "quick drying, long lasting, non toxic, chip resistant, high gloss, vegan",
        {"color": ("red", "nude", "pink", "black", "white", "coral", "teal", "lilac")},
        4,
        20,
    ),
    _t(
        "deodorant",
        "beauty",
        "aluminum free, long lasting, natural ingredients, for sensitive skin, baking soda free, vegan",
        {"scent": ("lavender", "unscented", "citrus", "cedarwood", "coconut"), "pack": ("1 pack", "2 pack", "3 pack")},
        5,
        25,
    ),
    # electronics
    _t(
        "bluetooth speaker",
        "electronics",
        "waterproof, portable, long battery life, built in microphone, easy to use, deep bass, usb charging",
        {"color": ("black", "blue", "red", "grey", "green", "white")},
        20,
        150,
    ),
    _t(
        "wireless earbuds",
        "electronics",
        "noise cancelling, water resistant, long battery life, touch control, fast charging, "
        "built in microphone, sweatproof",
        {"color": ("black", "white", "blue", "pink", "grey")},
        20,
        200,
    ),
    _t(
        "phone case",
        "electronics",
        "shockproof, slim fit, wireless charging compatible, anti scratch, raised edges, kickstand",
        {
            "model": ("iphone 13", "iphone 14", "iphone 15", "galaxy s23", "pixel 8"),
            "color": ("black", "clear", "blue", "pink", "green", "purple"),
        },
        8,
        40,
    ),
    _t(
        "usb c cable",
        "electronics",
        "fast charging, braided nylon, high speed data transfer, durable, tangle free",
        {"length": ("3 ft", "6 ft", "10 ft"), "pack": ("1 pack", "2 pack", "3 pack")},
        6,
        25,
    ),
    _t(
        "power bank",
        "electronics",
        "fast charging, portable, high capacity, led display, lightweight, dual output",
        {"capacity": ("10000mah", "20000mah", "26800mah"), "color": ("black", "white", "blue", "pink")},
        15,
        70,
    ),
    _t(
        "smart watch",
        "electronics",
        "heart rate monitor, sleep tracking, waterproof, long battery life, gps, notification alerts",
        {"color": ("black", "silver", "rose gold", "blue", "green")},
        30,
        200,
    ),
    # grocery
    _t(
        "ground coffee",
        "grocery",
        "organic, fair trade, low acid, non gmo, kosher, gluten free, small batch",
        {
            "flavor": ("original", "french vanilla", "hazelnut", "mocha", "caramel"),
            "size": ("12 ounce", "2 pound", "5 pound"),
        },
        8,
        40,
    ),
    _t(
        "protein bar",
        "grocery",
        "gluten free, low sugar, high protein, keto friendly, plant based, non gmo, individually wrapped",
        {
            "flavor": ("chocolate chip", "peanut butter", "cookie dough", "salted caramel", "birthday cake"),
            "pack": ("12 count", "24 count"),
        },
        12,
        45,
    ),
    _t(
        "green tea",
        "grocery",
        "organic, non gmo, individually wrapped, antioxidant rich, sugar free, kosher",
        {"flavor": ("jasmine", "mint", "lemon", "original", "ginger"), "pack": ("20 count", "40 count", "100 count")},
        4,
        25,
    ),
    _t(
        "olive oil",
        "grocery",
        "extra virgin, cold pressed, organic, non gmo, kosher, single origin",
        {"size": ("16.9 fl oz", "25.3 fl oz", "33.8 fl oz", "68 fl oz")},
        8,
        40,
    ),
    _t(
        "trail mix",
        "grocery",
        "gluten free, non gmo, high protein, resealable bag, no artificial colors, vegan",
        {"flavor": ("classic", "tropical", "dark chocolate", "honey nut"), "size": ("1 pound", "2 pound", "3 pound")},
        6,
        30,
    ),
    # furniture
    _t(
        "office chair",
        "furniture",
        "ergonomic, lumbar support, adjustable height, easy assembly, breathable mesh, heavy duty, padded armrests",
        {"color": ("black", "grey", "white", "blue", "pink")},
        50,
        300,
    ),
    _t(
        "bookshelf",
        "furniture",
        "easy assembly, solid wood, space saving, heavy duty, storage space, industrial style",
        {"color": _WOOD_COLORS, "size": ("3 tier", "4 tier", "5 tier")},
        30,
        200,
    ),
    _t(
        "end table",
        "furniture",
        "solid wood, easy assembly, storage space, mid century modern, tempered glass, charging station",
        {"color": _WOOD_COLORS},
        25,
        150,
    ),
    _t(
        "nightstand",
        "furniture",
        "easy assembly, with drawer, solid wood, space saving, led light, mid century modern",
        {"color": _WOOD_COLORS, "pack": ("1 pack", "set of 2")},
        30,
        150,
    ),
    _t(
        "bar stool",
        "furniture",
        "adjustable height, swivel, faux leather, easy assembly, footrest, heavy duty, backrest",
        {"color": ("black", "grey", "white", "brown", "beige"), "pack": ("set of 2", "set of 4")},
        60,
        300,
    ),
    # apparel
    _t(
        "t shirt",
        "apparel",
        "machine wash, short sleeve, slim fit, moisture wicking, crew neck, tagless, organic cotton",
        {"size": _CLOTHING_SIZES, "color": _COLORS},
        8,
        30,
    ),
    _t(
        "hoodie",
        "apparel",
        "fleece lined, machine wash, kangaroo pocket, pullover, long sleeve, relaxed fit",
        {"size": _CLOTHING_SIZES, "color": _COLORS},
        20,
        60,
    ),
    _t(
        "yoga pants",
        "apparel",
        "high waist, tummy control, moisture wicking, four way stretch, with pockets, squat proof",
        {"size": _CLOTHING_SIZES, "color": ("black", "navy", "grey", "green", "pink", "brown")},
        15,
        50,
    ),
    _t(
        "winter jacket",
        "apparel",
        "water resistant, hooded, windproof, fleece lined, packable, insulated",
        {"size": _CLOTHING_SIZES, "color": ("black", "navy", "grey", "green", "red", "beige")},
        40,
        200,
    ),
)

CATEGORIES: tuple[str, ...] = tuple(dict.fromkeys(t.category for t in PRODUCT_TYPES))
TYPES_BY_NAME: Mapping[str, ProductType] = MappingProxyType({t.name: t for t in PRODUCT_TYPES})

#: Brand names, the first word of every title.
BRANDS = (
    "Aerolite",
    "Brisa",
    "Calder",
    "Dunmore",
    "Elowen",
    "Fenwick",
    "Galvo",
    "Harlow",
    "Istra",
    "Juniper Lane",
    "Kestrel",
    "Lumio",
    "Maple & Moss",
    "Norden",
    "Orla",
    "Pinecrest",
    "Quillon",
    "Rivet",
    "Solace",
    "Tidewell",
    "Umbra",
    "Verano",
    "Wrenfield",
    "Yarrow",
    "Zephyra",
    "Northby",
    "Cobalt Co",
    "Fable",
    "Halcyon",
    "Meridian",
)

#: A neutral closing sentence per category for descriptions (never an attribute phrase, so the
#: attribute check that also reads descriptions cannot match it by accident).
CLOSERS = {
    "footwear": "Designed for everyday comfort from morning to night.",
    "beauty": "Part of a daily routine you can rely on.",
    "electronics": "Comes with a one year limited warranty.",
    "grocery": "Packed fresh and shipped in a sealed package.",
    "furniture": "All hardware and illustrated instructions are included.",
    "apparel": "A wardrobe staple that pairs with anything.",
}
