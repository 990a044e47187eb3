"""The simulated demo dataset of `tfvctr demo-data` (docs/demo_data.md).

Procedurally rendered product images and a click model whose visual effect is
category-specific and visible in the pixels, with the true click probability of every
impression, so a model's AUC can be put between the image-blind floor and the ceiling.
"""

from tfvctr.demo_data.generate import ADS_COLUMNS, IMPRESSIONS_COLUMNS, generate
from tfvctr.demo_data.simulator import CATEGORIES, VISUAL_RULES, SimulatorParams, World, auc, simulate

__all__ = [
    "ADS_COLUMNS",
    "CATEGORIES",
    "IMPRESSIONS_COLUMNS",
    "VISUAL_RULES",
    "SimulatorParams",
    "World",
    "auc",
    "generate",
    "simulate",
]
