"""The click model of the demo dataset: who sees which ad, and the true click probability.

Every impression's click probability is known (`true_ctr`), so the AUC of `true_ctr` is
the ceiling any model can reach; on cold ads (no click history) the AUC of the same logit
*without its visual term* is the ceiling of any model that ignores the image
(docs/demo_data.md)::

    logit = bias + user_bias[u] + age[u] + device[i] + hour[i] + position[i]
            + category[a] + interest_match(u, a) + brand[a] + price(a)
            + visual_strength * visual_score(a)

`visual_score` is category-specific and computed from the parameters the image is
rendered from (`images.py`), so it is visible in pixels: e.g. red shoes, large bags and
striped phones are clicked more. Within a category it varies from ad to ad, so the
category alone cannot predict it. Everything is vectorised over ads and impressions.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

# Each category: its visual rule in words (recorded in simulator.json) and its keywords.
CATEGORIES: tuple[str, ...] = (
    "shoes", "bags", "phones", "bottles", "shirts", "watches", "hats", "laptops", "cups", "lamps",
)  # fmt: skip

# Each category's rule in the default (demo) scenario: a name in `RULES`. Other scenarios
# (scenarios.py) map categories onto other rules.
DEMO_RULES: dict[str, str] = {
    "shoes": "red", "bags": "large", "phones": "stripes", "bottles": "left", "shirts": "dots",
    "watches": "dark_background", "hats": "small", "laptops": "high", "cups": "saturated", "lamps": "yellow",
}  # fmt: skip

KEYWORDS: dict[str, tuple[str, ...]] = {
    "shoes": ("running", "leather", "sneaker", "casual", "sport", "comfort", "boot", "slip-on"),
    "bags": ("tote", "leather", "backpack", "travel", "crossbody", "canvas", "office", "mini"),
    "phones": ("5g", "dual-sim", "camera", "128gb", "fast-charge", "oled", "budget", "flagship"),
    "bottles": ("insulated", "steel", "bpa-free", "sport", "glass", "1l", "leakproof", "kids"),
    "shirts": ("cotton", "slim", "oversize", "linen", "polo", "crew-neck", "summer", "basic"),
    "watches": ("quartz", "automatic", "smart", "steel", "leather", "waterproof", "chrono", "classic"),
    "hats": ("wool", "baseball", "sun", "bucket", "knit", "straw", "winter", "cap"),
    "laptops": ("ultrabook", "gaming", "16gb", "ssd", "touch", "14-inch", "business", "light"),
    "cups": ("ceramic", "travel", "espresso", "mug", "glass", "set", "porcelain", "handmade"),
    "lamps": ("led", "desk", "dimmable", "floor", "vintage", "bedside", "smart", "reading"),
}

AGE_BUCKETS: tuple[str, ...] = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
DEVICES: tuple[str, ...] = ("android", "ios", "desktop")


@dataclasses.dataclass
class SimulatorParams:
    """Every knob of the simulator; written to simulator.json."""

    target_ctr: float = 0.08  # the bias is solved so that the mean true_ctr is this
    visual_strength: float = 1.6  # logit units per unit of visual score
    user_bias_std: float = 0.35
    age_effects: tuple[float, ...] = (0.15, 0.25, 0.1, 0.0, -0.15, -0.3)
    device_effects: tuple[float, ...] = (0.0, 0.15, -0.25)  # android, ios, desktop
    device_probs: tuple[float, ...] = (0.45, 0.35, 0.2)
    same_device_prob: float = 0.85  # a user's impressions come mostly from one device
    hour_amplitude: float = 0.3  # hour effect = amplitude * cos(2*pi*(hour - peak_hour)/24)
    peak_hour: int = 21
    position_slope: float = -0.15  # per slot below the top (positions 1..10)
    num_positions: int = 10
    category_effect_std: float = 0.3
    interest_match: float = 0.9  # the user likes the ad's category
    brand_effect_std: float = 0.35
    brands_per_category: int = 12
    price_slope: float = -0.35  # per std of log price within the category
    cold_fraction: float = 0.1  # ads that appear only on the last day
    cold_boost: float = 2.0  # a new ad's daily share of impressions vs. a warm ad's of equal popularity
    popularity_sigma: float = 1.2  # ad popularity ~ lognormal(0, sigma): a few hot ads, many with few impressions
    user_activity_sigma: float = 1.0
    impressions_per_user: int = 50

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# --------------------------------------------------------------------------- visual parameters

# Ranges of the rendering parameters (images.py draws exactly these).
SCALE_RANGE = (0.45, 0.9)  # object box side / image side
CENTER_RANGE = (0.32, 0.68)  # object centre, as a fraction of the image side
SAT_RANGE = (0.35, 1.0)
VAL_RANGE = (0.4, 1.0)
BG_VAL_RANGE = (0.12, 0.97)
TEXTURES = ("plain", "stripes", "dots")


Visuals = dict[str, np.ndarray]


def sample_visuals(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Rendering parameters of n ads, independent of every non-visual feature."""
    return {
        "hue": rng.random(n),
        "sat": rng.uniform(*SAT_RANGE, n),
        "val": rng.uniform(*VAL_RANGE, n),
        "texture": rng.integers(0, len(TEXTURES), n),
        "stripe_angle": rng.choice(np.array([0.0, 45.0, 90.0, 135.0]), n),
        "scale": rng.uniform(*SCALE_RANGE, n),
        "cx": rng.uniform(*CENTER_RANGE, n),
        "cy": rng.uniform(*CENTER_RANGE, n),
        "bg_hue": rng.random(n),
        "bg_sat": rng.uniform(0.0, 0.25, n),
        "bg_val": rng.uniform(*BG_VAL_RANGE, n),
        "noise": rng.uniform(0.0, 6.0, n),
    }


def _linear(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Maps [lo, hi] linearly onto [-1, 1]."""
    return 2.0 * (x - lo) / (hi - lo) - 1.0


def _cosine_hue(target: float) -> Callable[[Visuals], np.ndarray]:
    return lambda v: np.cos(2 * np.pi * (v["hue"] - target))


def _texture_is(name: str) -> Callable[[Visuals], np.ndarray]:
    # +1 for the texture, -0.5 for the two others: mean 0 over the uniform texture draw.
    return lambda v: np.where(v["texture"] == TEXTURES.index(name), 1.0, -0.5)


def _contrast(v: Visuals) -> np.ndarray:
    # Brightness difference between the object and the background, 0 (none) .. 0.6+ (strong).
    return np.clip(_linear(np.abs(v["val"] - v["bg_val"]), 0.0, 0.6), -1.0, 1.0)


def _quarter(v: Visuals, left: bool, top: bool) -> np.ndarray:
    # +1 inside the quarter, -1/3 elsewhere: mean 0 over the uniform position draw.
    inside = ((v["cx"] < 0.5) == left) & ((v["cy"] < 0.5) == top)
    return np.where(inside, 1.0, -1.0 / 3.0)


def _centred(v: Visuals) -> np.ndarray:
    distance = np.hypot(v["cx"] - 0.5, v["cy"] - 0.5)  # 0 .. 0.25
    return np.clip(1.0 - distance / 0.14, -1.0, 1.0)  # 0.14: about the median distance


def _stripe_orientation(v: Visuals) -> np.ndarray:
    # Angle 0 draws vertical stripes (the phase runs along x), 90 horizontal ones.
    stripes = v["texture"] == TEXTURES.index("stripes")
    return np.where(
        stripes & (v["stripe_angle"] == 0.0), 1.0, np.where(stripes & (v["stripe_angle"] == 90.0), -1.0, 0.0)
    )


@dataclasses.dataclass(frozen=True)
class VisualRule:
    """What raises CTR, in words, and the score in [-1, 1] computed from the rendering parameters."""

    words: str
    score: Callable[[Visuals], np.ndarray]


# Every rule a scenario can give a category. Each reads parameters `images.render_ad`
# draws, so the effect is in the pixels (tests/test_demo_data.py checks each one).
RULES: dict[str, VisualRule] = {
    # colour
    "red": VisualRule("the object's colour is red (hue near 0) raises CTR; cyan lowers it (score = cos(2*pi*hue))",
                      _cosine_hue(0.0)),
    "yellow": VisualRule("a yellow object raises CTR; blue lowers it (score = cos(2*pi*(hue - 1/6)))", _cosine_hue(1 / 6)),
    "green": VisualRule("a green object raises CTR; magenta lowers it (score = cos(2*pi*(hue - 1/3)))", _cosine_hue(1 / 3)),
    "blue": VisualRule("a blue object raises CTR; yellow lowers it (score = cos(2*pi*(hue - 2/3)))", _cosine_hue(2 / 3)),
    "saturated": VisualRule("a vivid, saturated colour raises CTR (score rises linearly with saturation)",
                            lambda v: _linear(v["sat"], *SAT_RANGE)),
    "muted": VisualRule("a muted, greyish colour raises CTR (score falls linearly with saturation)",
                        lambda v: -_linear(v["sat"], *SAT_RANGE)),
    # object size
    "large": VisualRule("a large object raises CTR (score rises linearly with object size)",
                        lambda v: _linear(v["scale"], *SCALE_RANGE)),
    "small": VisualRule("a small object raises CTR (score falls linearly with object size)",
                        lambda v: -_linear(v["scale"], *SCALE_RANGE)),
    # position
    "left": VisualRule("the object on the left of the image raises CTR (score falls linearly with its x position)",
                       lambda v: -_linear(v["cx"], *CENTER_RANGE)),
    "right": VisualRule("the object on the right of the image raises CTR (score rises linearly with its x position)",
                        lambda v: _linear(v["cx"], *CENTER_RANGE)),
    "high": VisualRule("the object high in the image raises CTR (score falls linearly with its y position)",
                       lambda v: -_linear(v["cy"], *CENTER_RANGE)),
    "low": VisualRule("the object low in the image raises CTR (score rises linearly with its y position)",
                      lambda v: _linear(v["cy"], *CENTER_RANGE)),
    # a region of the image
    "top_left": VisualRule("the object's centre in the top-left quarter raises CTR (score +1 there, -1/3 elsewhere)",
                           lambda v: _quarter(v, left=True, top=True)),
    "bottom_right": VisualRule(
        "the object's centre in the bottom-right quarter raises CTR (score +1 there, -1/3 elsewhere)",
        lambda v: _quarter(v, left=False, top=False),
    ),
    "centred": VisualRule("the object near the image centre raises CTR (score 1 - distance/0.14, clipped)", _centred),
    # brightness and contrast
    "dark_background": VisualRule("a dark background raises CTR (score falls linearly with background brightness)",
                                  lambda v: -_linear(v["bg_val"], *BG_VAL_RANGE)),
    "light_background": VisualRule("a light background raises CTR (score rises linearly with background brightness)",
                                   lambda v: _linear(v["bg_val"], *BG_VAL_RANGE)),
    "bright_object": VisualRule("a bright object raises CTR (score rises linearly with the object colour's value)",
                                lambda v: _linear(v["val"], *VAL_RANGE)),
    "contrast": VisualRule(
        "strong object/background brightness contrast raises CTR (score rises with |value - background brightness|)",
        _contrast,
    ),
    "low_contrast": VisualRule("an object that blends into the background raises CTR (score falls with the contrast)",
                               lambda v: -_contrast(v)),
    # texture
    "stripes": VisualRule("a striped texture raises CTR (score +1 for stripes, -0.5 otherwise)", _texture_is("stripes")),
    "dots": VisualRule("a dotted texture raises CTR (score +1 for dots, -0.5 otherwise)", _texture_is("dots")),
    "plain": VisualRule("a plain, untextured object raises CTR (score +1 plain, -0.5 otherwise)", _texture_is("plain")),
    "vertical_stripes": VisualRule(
        "vertical stripes raise CTR, horizontal ones lower it (score +1 / -1; 0 for other textures and angles)",
        _stripe_orientation,
    ),
}  # fmt: skip

VISUAL_RULES: dict[str, str] = {c: RULES[r].words for c, r in DEMO_RULES.items()}


def visual_scores(
    visuals: Visuals, rules: Optional[Mapping[str, str]] = None, categories: Sequence[str] = CATEGORIES
) -> np.ndarray:
    """Every category's visual score of every ad, [n, len(categories)], each in [-1, 1].

    `rules` maps each category onto a name in `RULES` (default: the demo's `DEMO_RULES`).
    """
    rules = DEMO_RULES if rules is None else rules
    return np.stack([RULES[rules[c]].score(visuals) for c in categories], axis=1)


def visual_score(
    visuals: Visuals,
    category_index: np.ndarray,
    rules: Optional[Mapping[str, str]] = None,
    categories: Sequence[str] = CATEGORIES,
) -> np.ndarray:
    """Each ad's visual score under its own category's rule, [n] in [-1, 1]."""
    scores = visual_scores(visuals, rules, categories)
    return scores[np.arange(len(category_index)), category_index]


# --------------------------------------------------------------------------- the world


@dataclasses.dataclass
class World:
    """Everything sampled: ads, users, impressions, and the simulator's hidden terms."""

    params: SimulatorParams
    categories: tuple[str, ...]
    rules: dict[str, str]  # category -> name in RULES
    bias: float
    # ads
    ad_category: np.ndarray  # [A] int index into categories
    ad_brand: list[str]
    ad_price: np.ndarray
    ad_keywords: list[list[str]]
    ad_cold: np.ndarray  # [A] bool
    ad_popularity: np.ndarray
    visuals: dict[str, np.ndarray]
    ad_visual_score: np.ndarray  # [A]
    ad_visual_logit: np.ndarray  # [A] visual_strength * visual score: the true per-ad visual effect
    ad_nonvisual_logit: np.ndarray  # [A] category + brand + price
    category_effects: np.ndarray
    brand_effects: dict[str, float]
    # users
    user_age: np.ndarray  # [U] index into AGE_BUCKETS
    user_interests: list[list[int]]  # category indices, sorted
    user_bias: np.ndarray
    # impressions, ordered by (day, hour)
    imp_ad: np.ndarray
    imp_user: np.ndarray
    imp_day: np.ndarray
    imp_hour: np.ndarray
    imp_device: np.ndarray
    imp_position: np.ndarray
    imp_nonvisual_logit: np.ndarray  # logit without the visual term (bias included)
    imp_visual_logit: np.ndarray  # visual_strength * visual score
    true_ctr: np.ndarray
    label: np.ndarray

    @property
    def num_ads(self) -> int:
        return len(self.ad_category)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _solve_bias(logits: np.ndarray, target: float) -> float:
    """The bias b with mean(sigmoid(logits + b)) == target (bisection; monotone in b)."""
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _sigmoid(logits + mid).mean() < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def simulate(
    num_ads: int,
    num_impressions: int,
    days: int,
    seed: int,
    num_categories: int = len(CATEGORIES),
    params: SimulatorParams | None = None,
    rules: Optional[Mapping[str, str]] = None,
) -> World:
    """Samples the ads, users and impressions of the demo dataset (deterministic for a seed).

    Every ad has at least one impression: warm ads one on a day before the last, cold ads
    one on the last day; the remaining impressions go to ads in proportion to a skewed
    (lognormal) popularity, on a uniformly drawn day, among the ads alive that day.
    `rules` maps each category onto a name in `RULES` (default `DEMO_RULES`); it draws
    no random numbers, so the same seed gives the same ads, users and impressions under
    any rules.
    """
    p = params or SimulatorParams()
    if num_impressions < num_ads:
        raise ValueError(
            f"num_impressions ({num_impressions}) must be >= num_ads ({num_ads}): every ad gets an impression"
        )
    rng = np.random.default_rng(seed)
    categories = CATEGORIES[:num_categories]
    C = len(categories)
    rules = dict(DEMO_RULES if rules is None else rules)
    unknown = sorted({c for c in categories if rules.get(c) not in RULES})
    if unknown:
        raise ValueError(f"rules: no rule of {sorted(RULES)} for categories {unknown}")

    # ---- ads
    A = num_ads
    ad_category = rng.integers(0, C, A)
    category_effects = rng.normal(0.0, p.category_effect_std, C)
    brand_names = [f"{c}-brand{j:02d}" for c in categories for j in range(p.brands_per_category)]
    brand_effect_values = rng.normal(0.0, p.brand_effect_std, len(brand_names))
    brand_effects = dict(zip(brand_names, brand_effect_values.tolist(), strict=True))
    # Zipf-like brand shares inside a category, so some brands are rare (min_frequency matters).
    brand_weights = 1.0 / np.arange(1, p.brands_per_category + 1)
    brand_weights /= brand_weights.sum()
    ad_brand_j = rng.choice(p.brands_per_category, A, p=brand_weights)
    ad_brand = [
        brand_names[c * p.brands_per_category + j]
        for c, j in zip(ad_category.tolist(), ad_brand_j.tolist(), strict=True)
    ]
    ad_brand_effect = np.array([brand_effects[b] for b in ad_brand])
    base_price = np.exp(rng.uniform(np.log(8.0), np.log(400.0), C))
    log_price_z = rng.normal(0.0, 1.0, A)
    ad_price = np.round(base_price[ad_category] * np.exp(0.5 * log_price_z), 2)
    num_kw = rng.integers(1, 5, A)
    ad_keywords = []
    for c, k in zip(ad_category.tolist(), num_kw.tolist(), strict=True):
        words = KEYWORDS[categories[c]]
        picks = sorted(rng.choice(len(words), k, replace=False).tolist())
        ad_keywords.append([words[i] for i in picks])
    visuals = sample_visuals(rng, A)
    ad_visual = visual_score(visuals, ad_category, rules, categories)
    ad_nonvisual = category_effects[ad_category] + ad_brand_effect + p.price_slope * log_price_z
    num_cold = min(int(round(p.cold_fraction * A)), A - 1)
    ad_cold = np.zeros(A, dtype=bool)
    ad_cold[rng.permutation(A)[:num_cold]] = True
    ad_popularity = rng.lognormal(0.0, p.popularity_sigma, A)

    # ---- users
    U = max(20, num_impressions // p.impressions_per_user)
    user_age = rng.choice(len(AGE_BUCKETS), U, p=[0.15, 0.3, 0.25, 0.15, 0.1, 0.05])
    user_device = rng.choice(len(DEVICES), U, p=list(p.device_probs))
    num_interests = rng.integers(1, min(3, C) + 1, U)
    user_interests = [sorted(rng.choice(C, k, replace=False).tolist()) for k in num_interests.tolist()]
    user_bias = rng.normal(0.0, p.user_bias_std, U)
    user_activity = rng.lognormal(0.0, p.user_activity_sigma, U)

    # ---- impressions
    M = num_impressions
    last = days - 1
    imp_day = np.empty(M, dtype=np.int64)
    imp_ad = np.empty(M, dtype=np.int64)
    # One guaranteed impression per ad (so cold-ness is exact and no ad is empty).
    imp_ad[:A] = np.arange(A)
    imp_day[:A] = np.where(ad_cold, last, rng.integers(0, max(last, 1), A))
    rest = M - A
    imp_day[A:] = rng.integers(0, days, rest)
    warm_w = np.where(ad_cold, 0.0, ad_popularity)
    last_w = np.where(ad_cold, p.cold_boost * ad_popularity, ad_popularity)
    on_last = imp_day[A:] == last
    n_last = int(on_last.sum())
    choice = np.empty(rest, dtype=np.int64)
    choice[~on_last] = rng.choice(A, rest - n_last, p=warm_w / warm_w.sum())
    choice[on_last] = rng.choice(A, n_last, p=last_w / last_w.sum())
    imp_ad[A:] = choice
    imp_user = rng.choice(U, M, p=user_activity / user_activity.sum())
    hour_weights = 1.0 + 0.8 * np.cos(2 * np.pi * (np.arange(24) - 20) / 24)
    imp_hour = rng.choice(24, M, p=hour_weights / hour_weights.sum())
    other_device = rng.integers(0, len(DEVICES), M)
    imp_device = np.where(rng.random(M) < p.same_device_prob, user_device[imp_user], other_device)
    pos_weights = 1.0 / np.arange(1, p.num_positions + 1)
    imp_position = 1 + rng.choice(p.num_positions, M, p=pos_weights / pos_weights.sum())

    interest_matrix = np.zeros((U, C), dtype=bool)
    for u, cats in enumerate(user_interests):
        interest_matrix[u, cats] = True
    match = interest_matrix[imp_user, ad_category[imp_ad]]
    nonvisual = (
        user_bias[imp_user]
        + np.asarray(p.age_effects)[user_age[imp_user]]
        + np.asarray(p.device_effects)[imp_device]
        + p.hour_amplitude * np.cos(2 * np.pi * (imp_hour - p.peak_hour) / 24)
        + p.position_slope * (imp_position - 1)
        + ad_nonvisual[imp_ad]
        + p.interest_match * match
    )
    visual = p.visual_strength * ad_visual[imp_ad]
    bias = _solve_bias(nonvisual + visual, p.target_ctr)
    true_ctr = _sigmoid(bias + nonvisual + visual)
    label = (rng.random(M) < true_ctr).astype(np.int64)

    # Logs come in time order; ties broken by the (seeded) sampling order.
    order = np.lexsort((imp_hour, imp_day))
    return World(
        params=p,
        categories=categories,
        rules={c: rules[c] for c in categories},
        bias=float(bias),
        ad_category=ad_category,
        ad_brand=ad_brand,
        ad_price=ad_price,
        ad_keywords=ad_keywords,
        ad_cold=ad_cold,
        ad_popularity=ad_popularity,
        visuals=visuals,
        ad_visual_score=ad_visual,
        ad_visual_logit=p.visual_strength * ad_visual,
        ad_nonvisual_logit=ad_nonvisual,
        category_effects=category_effects,
        brand_effects=brand_effects,
        user_age=user_age,
        user_interests=user_interests,
        user_bias=user_bias,
        imp_ad=imp_ad[order],
        imp_user=imp_user[order],
        imp_day=imp_day[order],
        imp_hour=imp_hour[order],
        imp_device=imp_device[order],
        imp_position=imp_position[order],
        imp_nonvisual_logit=(bias + nonvisual)[order],
        imp_visual_logit=visual[order],
        true_ctr=true_ctr[order],
        label=label[order],
    )


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties counted as half."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    pos = int(labels.sum())
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))
