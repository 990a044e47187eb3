"""`CTRModel`: what every tfvctr model shares (grouped forward pass, variable split, config).

A batch holds n ads and the N impressions of those ads (docs/formats.md §2, tfvctr.data):

    {"image": [n,H,W,3] float32, "category": [n] int32, "ad_index": [N] int32,
     <ad feature>: [n, ...], <impression feature>: [N, ...]}

The visual tower runs once per ad and its output is gathered to the impressions with
`ad_index` (CSCNN §3.4.1; DeepCTR §5.2 Eq. 6). The gradient of a gather is a segment
sum, so each image receives the sum of its impressions' gradients; dividing the loss
by the impression count (the trainer does) turns it into Eq. 6's mean.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Union

import keras
from keras import ops

from tfvctr.config import Config, ModelConfig, config_from_dict
from tfvctr.layers.arguments import invalid_argument
from tfvctr.models.visual_tower import build_visual_tower


def as_config(config: Union[Config, Mapping[str, Any]]) -> Config:
    return config if isinstance(config, Config) else config_from_dict(dict(config), "model config")


def tower_config(model: ModelConfig, **changes: Any) -> ModelConfig:
    """A copy of `model` with `changes` (e.g. another visual_dim or attention)."""
    return dataclasses.replace(model, **changes)


class CTRModel(keras.Model):
    """Base class: a visual tower (or None) and a head, joined per impression.

    Subclasses set `self.visual_tower` (a `keras.Model` `{"image", "category"}` → `[n, d]`
    or None) and `self.head` (a layer `{"features": dict, "x_v": [N, d]} → logits [N]`),
    both fully built, in `__init__`.

    Args:
        config: the `Config` (or its `to_dict()` form, as stored by `get_config`).
        num_categories: rows of the category tables (vocabulary + unknown row 0).
        vocab_sizes: embedding rows per feature (`FeatureEncoder.vocab_sizes`).
        seed: seed of every initializer (None: `config.training.seed`).
    """

    def __init__(
        self,
        config: Union[Config, Mapping[str, Any]],
        num_categories: int,
        vocab_sizes: Mapping[str, int],
        seed: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.config = as_config(config)
        if num_categories < 1:
            raise invalid_argument("num_categories", num_categories, "a positive integer")
        self.num_categories = int(num_categories)
        self.vocab_sizes = {k: int(v) for k, v in vocab_sizes.items()}
        self.seed = self.config.training.seed if seed is None else int(seed)
        self.visual_tower: Optional[keras.Model] = None
        self.head: Any = None

    def build_tower(self, model_config: ModelConfig) -> keras.Model:
        """The visual tower `model_config` describes, at the dataset's image size, seeded as the model."""
        return build_visual_tower(
            model_config, self.config.dataset.image_size, self.num_categories, seed=self.seed, name="visual_tower"
        )

    def set_head(self, head: Any) -> None:
        """Sets and builds the head, the last part a subclass makes: the model is then built."""
        self.head = head
        self.head.build(None)
        self.built = True

    # ------------------------------------------------------------------ forward

    def tower_training(self, training: Optional[bool]) -> Optional[bool]:
        """The `training` flag the tower runs with (a frozen tower always runs in inference)."""
        return training if self.visual_tower is not None and self.visual_tower.trainable else False

    def gather_features(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Encoded features at impression level: ad-level ones gathered with `ad_index`."""
        ad_index = batch["ad_index"]
        features = {}
        for f in self.config.dataset.features:
            value = batch[f.name]
            features[f.name] = ops.take(value, ad_index, axis=0) if f.source == "ad" or f.name == "category" else value
        features["category"] = ops.take(batch["category"], ad_index, axis=0)
        return features

    def call(self, batch: Mapping[str, Any], training: Optional[bool] = None) -> Any:
        inputs: dict[str, Any] = {"features": self.gather_features(batch)}
        if self.visual_tower is not None:
            x_v_ads = self.visual_tower(
                {"image": batch["image"], "category": batch["category"]}, training=self.tower_training(training)
            )
            inputs["x_v"] = ops.take(x_v_ads, batch["ad_index"], axis=0)
        return self.head(inputs, training=training)

    # ------------------------------------------------------------------ variables

    @property
    def visual_variables(self) -> list:
        """Trainable variables of the visual tower (the CNN's own learning rate applies)."""
        return list(self.visual_tower.trainable_variables) if self.visual_tower is not None else []

    @property
    def non_visual_variables(self) -> list:
        visual = {id(v) for v in self.visual_variables}
        return [v for v in self.trainable_variables if id(v) not in visual]

    @property
    def linear_part(self) -> Any:
        """The head's fixed linear part (`model.linear: prefit`, a `LinearLogit`), or None."""
        return getattr(self.head, "linear_part", None)

    @property
    def output_bias(self) -> Any:
        """The bias variable of the final logit (None: the model has none to initialise)."""
        out = getattr(self.head, "out", None)
        return getattr(out, "bias", None)

    # ------------------------------------------------------------------ config

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config": self.config.to_dict(),
            "num_categories": self.num_categories,
            "vocab_sizes": self.vocab_sizes,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "CTRModel":
        return cls(**config)
