"""The scenario suite of `tfvctr demo-data --scenario NAME` (docs/demo_data.md#scenarios).

A scenario is a click world: which visual property each category's CTR reads (colour,
object size, position, contrast, texture, a region of the image), how strong that visual
effect is, the CTR level, the size, and how much the user matters. All of them share the
demo's tables, columns and images, so `configs/demo.yaml` reads every one; `demo` is the
default and is exactly the data `tfvctr demo-data` wrote before scenarios existed.
`benchmarks/generalisation.py` runs the same models on each, untuned.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from tfvctr.demo_data.simulator import CATEGORIES, DEMO_RULES, RULES, SimulatorParams


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One click world; the sizes are defaults that `--ads/--impressions/...` override."""

    name: str
    summary: str  # one line for --list-scenarios
    num_ads: int
    num_impressions: int
    rules: Mapping[str, str]  # category -> name in simulator.RULES
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # SimulatorParams overrides
    days: int = 7
    num_categories: int = len(CATEGORIES)

    def simulator_params(self) -> SimulatorParams:
        return SimulatorParams(**dict(self.params))

    @property
    def visual_strength(self) -> float:
        return self.simulator_params().visual_strength


def _rules(*names: str) -> dict[str, str]:
    return dict(zip(CATEGORIES, names, strict=True))


# "How much the user matters": the user's own bias, age and interest terms, scaled.
_STRONG_USER = {"user_bias_std": 0.9, "age_effects": (0.3, 0.5, 0.2, 0.0, -0.3, -0.6), "interest_match": 1.6}
_WEAK_USER = {"user_bias_std": 0.1, "age_effects": (0.05, 0.08, 0.03, 0.0, -0.05, -0.1), "interest_match": 0.3}

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "demo",
            "the default demo: a different property per category (colour, size, position, texture, background), CTR 8%",
            2000, 200_000, DEMO_RULES,
        ),
        Scenario(
            "colour",
            "colour only: each category prefers its own hue or saturation; CTR 3%; the user matters little",
            1000, 120_000,
            _rules("red", "blue", "green", "yellow", "saturated", "muted", "blue", "red", "yellow", "green"),
            {"target_ctr": 0.03, "visual_strength": 1.4, **_WEAK_USER},
        ),
        Scenario(
            "geometry",
            "object size and vertical/horizontal position, with opposite signs in different categories; CTR 5%",
            1000, 100_000,
            _rules("large", "small", "left", "right", "high", "low", "large", "small", "high", "left"),
            {"target_ctr": 0.05},
        ),
        Scenario(
            "contrast",
            "object/background contrast and brightness (high contrast helps some categories, blending in others); CTR 2%",
            1000, 150_000,
            _rules("contrast", "low_contrast", "dark_background", "light_background", "bright_object",
                   "contrast", "contrast", "light_background", "low_contrast", "dark_background"),
            {"target_ctr": 0.02, "visual_strength": 1.8},
        ),
        Scenario(
            "texture",
            "texture: stripes, dots, plain or stripe orientation, per category; 6 categories; CTR 6%",
            600, 50_000,
            _rules("stripes", "dots", "plain", "vertical_stripes", "dots", "stripes",
                   "plain", "plain", "plain", "plain"),
            {"target_ctr": 0.06},
            num_categories=6,
        ),
        Scenario(
            "region",
            "a region of the image: the object in the top-left or bottom-right quarter or near the centre; CTR 4%",
            1000, 100_000,
            _rules("top_left", "bottom_right", "centred", "top_left", "bottom_right",
                   "centred", "top_left", "bottom_right", "centred", "top_left"),
            {"target_ctr": 0.04, "visual_strength": 1.8},
        ),
        Scenario(
            "users",
            "the user matters most (strong user bias, age and interest terms), a weaker mixed visual effect; CTR 8%",
            1000, 100_000,
            _rules("yellow", "small", "dots", "high", "stripes", "contrast", "large", "left", "muted", "red"),
            {"visual_strength": 1.0, **_STRONG_USER},
        ),
        Scenario(
            "no_visual",
            "the control: the image has no effect at all (visual_strength 0); CTR 5%",
            800, 60_000, DEMO_RULES,
            {"target_ctr": 0.05, "visual_strength": 0.0},
        ),
        Scenario(
            "large",
            "large scale: 5,000 ads, 1M impressions, every rule family mixed across categories, CTR 1%",
            5000, 1_000_000,
            _rules("blue", "large", "vertical_stripes", "right", "contrast", "dark_background", "top_left",
                   "low", "saturated", "dots"),
            {"target_ctr": 0.01, "visual_strength": 1.8},
        ),
    )
}  # fmt: skip

DEFAULT_SCENARIO = "demo"


def get_scenario(name: str) -> Scenario:
    """The scenario called `name`; `KeyError` names the known ones."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise KeyError(f"unknown scenario {name!r}; expected one of {', '.join(SCENARIOS)}") from None


def describe_scenarios() -> str:
    """The table `tfvctr demo-data --list-scenarios` prints."""
    lines = [f"{'scenario':10s} {'ads':>6s} {'impressions':>11s} {'CTR':>4s} {'visual':>6s}  what"]
    for s in SCENARIOS.values():
        p = s.simulator_params()
        lines.append(
            f"{s.name:10s} {s.num_ads:6d} {s.num_impressions:11d} {p.target_ctr:4.0%} {p.visual_strength:6.1f}  {s.summary}"
        )
    return "\n".join(lines)


def _check() -> None:
    for s in SCENARIOS.values():
        for c in CATEGORIES[: s.num_categories]:
            assert s.rules[c] in RULES, (s.name, c)


_check()
