"""The VBPR family of CSCNN's ablation study (Liu et al. 2020, §4.1 Eq. 12, Table 4).

    y_{u,a} = α + β_u + β_a + γ_u·γ_a + θ_u·Φ(m_a, k_a)            (Eq. 12)

User u is the `user_id` feature (required). Item a is the `ad_id` feature when the config
declares one (`source: ad`); otherwise the ad's category stands in for the item in β_a and
γ_a (the only ad identity the model is given), and the image/category term carries the
rest. Φ is the visual tower followed by a linear map E to `visual_factors` (VBPR's E;
trainable in every variant). Variants (config `model.vbpr.variant`):

| variant     | Φ / item terms                                                               |
|-------------|-------------------------------------------------------------------------------|
| `bpr_mf`    | no image: the first four terms only                                          |
| `vbpr`      | fixed features of a pre-trained CNN: needs `training.pretrained_cnn`          |
| `dvbpr`     | CNN trained end to end                                                       |
| `dvbpr_c`   | items of one category share γ_a and β_a (tables keyed by category)           |
| `sherlock`  | shared plus category-specific maps after the CNN: Φ = [E_0 f ; E_k f]         |
| `deepstyle` | category embedding subtracted: Φ = E f − c_k                                  |
| `dvbpr_sca` | SCA-CNN attention with a category embedding (`SCAAttention`) inside the CNN    |
| `cscnn`     | the configured attention inside the CNN: `model.attention` (default `cscnn`)   |

`vbpr` (He & McAuley 2016) scores fixed image features extracted by a CNN trained on
another task. Ours: the tower of a `tfvctr pretrain` run (category classification, as
DeepCTR §4 pre-trains), loaded by the trainer from `training.pretrained_cnn` and frozen
here; the config refuses `vbpr` without it (a frozen *random* CNN is not VBPR).

`sherlock` (He et al., IJCAI 2016) stacks a projection shared by all categories over a
category-specific one: the first `visual_factors - visual_factors // 2` factors of Φ come
from E_0 (shared), the rest from E_k (category k).

`dvbpr_sca` follows CSCNN §4.4: SCA-CNN's channel-wise and spatial attention (Chen et
al., CVPR 2017) with the category embedding in place of the captioning state, at the
same sites as CSCNN's attention (`model.attention_layers`).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import keras
from keras import ops

from tfvctr.errors import ConfigError
from tfvctr.layers.arguments import attribute_config, invalid_argument
from tfvctr.models.base import CTRModel, tower_config

VARIANTS = ("bpr_mf", "vbpr", "dvbpr", "dvbpr_c", "sherlock", "deepstyle", "dvbpr_sca", "cscnn")


@keras.saving.register_keras_serializable(package="tfvctr")
class VBPRHead(keras.layers.Layer):
    """Eq. 12 of CSCNN: `y = α + β_u + β_i + γ_u·γ_i + θ_u·Φ`, returning the logit.

    Args:
        variant: one of `VARIANTS` (decides the item key and Φ; see the module docstring).
        num_users: rows of the user tables (`vocab_sizes["user_id"]`).
        num_items: rows of the item tables.
        item_key: the feature that indexes the item tables (`ad_id` or `category`).
        num_categories: rows of the category tables (sherlock, deepstyle).
        visual_dim: width of the tower output f (0: no visual term).
        factors: size of γ_u, γ_i.
        visual_factors: size of θ_u (and of Φ).
        l2: L2 penalty on the embeddings (added to `layer.losses`).
        seed: initializer seed.

    Call arguments:
        inputs: `{"features": {"user_id": [N], item_key: [N], "category": [N]}, "x_v": [N, visual_dim]}`.

    Returns:
        logits `[N]`.

    Example:
        >>> import numpy as np
        >>> head = VBPRHead("vbpr", num_users=5, num_items=4, item_key="ad_id", num_categories=3, visual_dim=6, seed=0)
        >>> ids = {"user_id": np.array([1, 2], "int32"), "ad_id": np.array([3, 0], "int32"),
        ...        "category": np.array([1, 2], "int32")}
        >>> tuple(head({"features": ids, "x_v": np.ones((2, 6), "float32")}).shape)
        (2,)
    """

    def __init__(
        self,
        variant: str,
        num_users: int,
        num_items: int,
        item_key: str,
        num_categories: int,
        visual_dim: int,
        factors: int = 10,
        visual_factors: int = 10,
        l2: float = 0.0,
        seed: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if variant not in VARIANTS:
            raise ValueError(f"Invalid value received for argument `variant`. Expected one of {VARIANTS}. Received: variant={variant!r}")
        for name, value in (("num_users", num_users), ("num_items", num_items), ("num_categories", num_categories)):
            if value < 1:
                raise invalid_argument(name, value, "a positive integer")
        if (variant == "bpr_mf") != (visual_dim == 0):
            raise ValueError(
                f"Invalid value received for argument `visual_dim`. Expected 0 exactly for variant 'bpr_mf'. "
                f"Received: visual_dim={visual_dim} with variant={variant!r}"
            )
        if variant == "sherlock" and visual_factors < 2:
            raise ValueError(
                f"Invalid value received for argument `visual_factors`. Expected >= 2 for variant 'sherlock' "
                f"(shared and category-specific factors). Received: visual_factors={visual_factors}"
            )
        if factors < 1 or visual_factors < 1:
            raise ValueError(
                f"Invalid value received for argument `factors`/`visual_factors`. Expected positive integers. "
                f"Received: factors={factors}, visual_factors={visual_factors}"
            )
        if l2 < 0:
            raise invalid_argument("l2", l2, ">= 0")
        self.variant = variant
        self.num_users = int(num_users)
        self.num_items = int(num_items)
        self.item_key = item_key
        self.num_categories = int(num_categories)
        self.visual_dim = int(visual_dim)
        self.factors = int(factors)
        self.visual_factors = int(visual_factors)
        self.l2 = float(l2)
        self.seed = seed

    def _init(self, offset: int, scale: float = 0.01) -> keras.initializers.Initializer:
        s = None if self.seed is None else self.seed + offset
        return keras.initializers.RandomNormal(stddev=scale, seed=s)

    def build(self, input_shape: Any = None) -> None:
        reg = keras.regularizers.L2(self.l2) if self.l2 else None

        def weight(name: str, shape: tuple, offset: int, init: Any = None) -> keras.Variable:
            return self.add_weight(shape=shape, initializer=init or self._init(offset), regularizer=reg, name=name)

        self.alpha = self.add_weight(shape=(), initializer="zeros", name="alpha")
        self.beta_u = weight("beta_u", (self.num_users,), 0, "zeros")
        self.beta_i = weight("beta_i", (self.num_items,), 0, "zeros")
        self.gamma_u = weight("gamma_u", (self.num_users, self.factors), 1)
        self.gamma_i = weight("gamma_i", (self.num_items, self.factors), 2)
        if self.visual_dim:
            self.theta_u = weight("theta_u", (self.num_users, self.visual_factors), 3)
            glorot = keras.initializers.GlorotUniform(seed=None if self.seed is None else self.seed + 4)
            if self.variant == "sherlock":
                shared = self.visual_factors - self.visual_factors // 2
                self.projection = weight("projection", (self.visual_dim, shared), 4, glorot)
                glorot_k = keras.initializers.GlorotUniform(seed=None if self.seed is None else self.seed + 6)
                self.category_projection = weight(
                    "category_projection", (self.num_categories, self.visual_dim, self.visual_factors - shared), 6, glorot_k
                )
            else:
                self.projection = weight("projection", (self.visual_dim, self.visual_factors), 4, glorot)
            if self.variant == "deepstyle":
                self.category_style = weight("category_style", (self.num_categories, self.visual_factors), 5)

    def call(self, inputs: Mapping[str, Any], training: Optional[bool] = None) -> Any:
        features = inputs["features"]
        u = ops.reshape(ops.cast(features["user_id"], "int32"), (-1,))
        i = ops.reshape(ops.cast(features[self.item_key], "int32"), (-1,))
        y = self.alpha + ops.take(self.beta_u, u, axis=0) + ops.take(self.beta_i, i, axis=0)
        y = y + ops.sum(ops.take(self.gamma_u, u, axis=0) * ops.take(self.gamma_i, i, axis=0), axis=-1)
        if self.visual_dim:
            f = ops.cast(inputs["x_v"], self.compute_dtype)
            if self.variant == "sherlock":
                k = ops.reshape(ops.cast(features["category"], "int32"), (-1,))
                specific = ops.einsum("nd,ndk->nk", f, ops.take(self.category_projection, k, axis=0))
                phi = ops.concatenate([ops.matmul(f, self.projection), specific], axis=-1)
            else:
                phi = ops.matmul(f, self.projection)
            if self.variant == "deepstyle":
                k = ops.reshape(ops.cast(features["category"], "int32"), (-1,))
                phi = phi - ops.take(self.category_style, k, axis=0)
            y = y + ops.sum(ops.take(self.theta_u, u, axis=0) * phi, axis=-1)
        return y

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **attribute_config(self, (
            "variant", "num_users", "num_items", "item_key", "num_categories", "visual_dim", "factors",
            "visual_factors", "l2", "seed"))}


@keras.saving.register_keras_serializable(package="tfvctr")
class VBPR(CTRModel):
    """A VBPR-family model (CSCNN Eq. 12) selected by `config.model.vbpr.variant`.

    See the module docstring for the variants, and `CTRModel` for the batch layout.
    `visual_tower` is None for `bpr_mf`; for `vbpr` it is frozen (`trainable=False`,
    always run in inference mode), so `visual_variables` is empty; the trainer fills it
    from `training.pretrained_cnn`.

    Args: as `CTRModel`. Call arguments / Returns: as `CTRModel` (logits `[N]`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The arguments are CTRModel's (config, num_categories, vocab_sizes, seed).
        kwargs.setdefault("name", "vbpr")
        super().__init__(*args, **kwargs)
        m, v = self.config.model, self.config.model.vbpr
        names = {f.name: f for f in self.config.dataset.features}
        if "user_id" not in names or "user_id" not in self.vocab_sizes:
            raise ConfigError("model.vbpr: the VBPR models need a categorical `user_id` feature in dataset.features")
        if v.variant == "dvbpr_c" or "ad_id" not in names:
            item_key, num_items = "category", self.num_categories
        else:
            if names["ad_id"].kind != "categorical" or names["ad_id"].source != "ad":
                raise ConfigError("model.vbpr: the `ad_id` feature must be categorical with source: ad")
            item_key, num_items = "ad_id", self.vocab_sizes["ad_id"]
        if v.variant == "bpr_mf":
            visual_dim = 0
        else:
            # `cscnn` takes model.attention (CSCNN by default), so the attention ablations of
            # CSCNN Tables 5 and 6 (none, SE, CBAM, each with or without the prior) swap it.
            attention = {"cscnn": m.attention, "dvbpr_sca": "sca"}.get(v.variant, "none")
            self.visual_tower = self.build_tower(tower_config(m, attention=attention))
            if v.variant == "vbpr":
                self.visual_tower.trainable = False
            visual_dim = m.visual_dim
        self.set_head(VBPRHead(
            v.variant, num_users=self.vocab_sizes["user_id"], num_items=num_items, item_key=item_key,
            num_categories=self.num_categories, visual_dim=visual_dim, factors=v.factors,
            visual_factors=v.visual_factors, l2=v.l2, seed=self.seed, name="head",
        ))
