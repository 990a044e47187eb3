"""The visual tower: image + category -> the visual feature x_v.

CSCNN (Liu et al., KDD 2020, §3.3) embeds an ad image m together with its category k to
x_v = CSCNN(m, k), which the CTR model concatenates into its deep tower (Eq. 3). Here
x_v = Dense(visual_dim)(backbone(image, category)) with the backbone and attention of
`ModelConfig` (`tfvctr.layers.backbones.build_backbone`).

The tower is a model of its own so that the embedding job (CSCNN §3.4.2) can load it from
a `.keras` file and run it over every ad, without the rest of the CTR model.
"""

from __future__ import annotations

from typing import Optional

import keras

from tfvctr.config import ModelConfig
from tfvctr.layers.backbones import build_backbone


def build_visual_tower(
    model_config: ModelConfig,
    image_size: int,
    num_categories: int,
    seed: Optional[int] = None,
    name: str = "visual_tower",
) -> keras.Model:
    """Builds the visual tower of `model_config`.

    Args:
        model_config: uses `backbone`, `backbone_width`, `attention`, `attention_layers`,
            `channel_prior_dim`, `spatial_prior_size`, `reduction` and `visual_dim`.
        image_size: H = W of the images (`DatasetConfig.image_size`).
        num_categories: rows of the category prior tables, the unknown row 0 included
            (the category vocabulary size + 1 unless `model_config.num_categories` is set).
        seed: initializer seed; None for random.
        name: the model's name.

    Returns:
        A `keras.Model` mapping `{"image": [n, H, W, 3] float32 in [0, 1], "category": [n]
        int32}` to x_v [n, visual_dim]. Its backbone is the sub-model named
        `f"{model_config.backbone}_backbone"` (to freeze or load pre-trained weights), its
        projection the Dense layer `visual_projection`.
    """
    backbone = build_backbone(
        model_config.backbone,
        image_size=image_size,
        num_categories=num_categories,
        attention=model_config.attention,
        attention_layers=model_config.attention_layers,
        width=model_config.backbone_width,
        channel_prior_dim=model_config.channel_prior_dim,
        spatial_prior_size=model_config.spatial_prior_size,
        reduction=model_config.reduction,
        seed=seed,
    )
    image = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name="image")
    category = keras.Input(shape=(), dtype="int32", name="category")
    features = backbone({"image": image, "category": category})
    # Linear: x_v is concatenated with the ReLU output of the non-visual MLP (Eq. 3) and
    # the next deep layer applies its own non-linearity.
    visual = keras.layers.Dense(
        model_config.visual_dim,
        kernel_initializer=keras.initializers.GlorotUniform(seed=None if seed is None else seed + 20_000),
        name="visual_projection",
    )(features)
    return keras.Model({"image": image, "category": category}, visual, name=name)
