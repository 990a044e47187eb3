"""The simulated demo dataset of `tfvctr demo-data` (docs/demo_data.md).

Procedurally rendered product images and a click model whose visual effect is
category-specific and visible in the pixels, with the true click probability of every
impression, so a model's AUC can be put between the image-blind floor and the ceiling.
`SCENARIOS` are other click worlds with the same tables (`--scenario`), each with the true
per-ad visual effect in ad_effects.csv.
"""

from tfvctr.demo_data.generate import AD_EFFECTS_COLUMNS, ADS_COLUMNS, IMPRESSIONS_COLUMNS, generate
from tfvctr.demo_data.scenarios import DEFAULT_SCENARIO, SCENARIOS, Scenario, get_scenario
from tfvctr.demo_data.simulator import (
    CATEGORIES,
    DEMO_RULES,
    RULES,
    VISUAL_RULES,
    SimulatorParams,
    VisualRule,
    World,
    auc,
    simulate,
)

__all__ = [
    "AD_EFFECTS_COLUMNS",
    "ADS_COLUMNS",
    "CATEGORIES",
    "DEFAULT_SCENARIO",
    "DEMO_RULES",
    "IMPRESSIONS_COLUMNS",
    "RULES",
    "SCENARIOS",
    "Scenario",
    "VISUAL_RULES",
    "SimulatorParams",
    "VisualRule",
    "World",
    "auc",
    "generate",
    "get_scenario",
    "simulate",
]
