"""`build_model`: the one entry point from a config to a CTR model."""

from __future__ import annotations

from typing import Mapping, Optional

from tfvctr.config import Config
from tfvctr.models.base import CTRModel
from tfvctr.models.cscnn_dcn import CSCNNDCN
from tfvctr.models.deepctr import DeepCTR
from tfvctr.models.vbpr import VBPR


def build_model(
    config: Config, num_categories: int, vocab_sizes: Mapping[str, int], seed: Optional[int] = None
) -> CTRModel:
    """Builds the model named by `config.model.architecture`.

    * `cscnn_dcn`: CSCNN tower + Deep & Cross head (CSCNN Eqs. 3–6);
    * `dcn`: the same head without the image ("DCN" baseline, `visual_tower` None);
    * `deepctr`: Convnet + Basicnet + Combnet (DeepCTR 2016);
    * `vbpr`: the VBPR family, `config.model.vbpr.variant` (CSCNN Eq. 12).

    Args:
        config: the typed config.
        num_categories: category vocabulary + 1 (`FeatureEncoder.num_categories`), unless
            `config.model.num_categories` overrides it.
        vocab_sizes: embedding rows per feature (`FeatureEncoder.vocab_sizes`).
        seed: initializer seed (None: `config.training.seed`).

    Returns:
        A built `CTRModel`.
    """
    if config.model.num_categories is not None:
        num_categories = config.model.num_categories
    arch = config.model.architecture
    if arch == "cscnn_dcn":
        return CSCNNDCN(config, num_categories, vocab_sizes, seed=seed)
    if arch == "dcn":
        return CSCNNDCN(config, num_categories, vocab_sizes, seed=seed, use_image=False)
    if arch == "deepctr":
        return DeepCTR(config, num_categories, vocab_sizes, seed=seed)
    if arch == "vbpr":
        return VBPR(config, num_categories, vocab_sizes, seed=seed)
    raise ValueError(
        f"Invalid value received for argument `config.model.architecture`. Expected one of 'cscnn_dcn', 'dcn', "
        f"'deepctr', 'vbpr'. Received: {arch!r}"
    )
