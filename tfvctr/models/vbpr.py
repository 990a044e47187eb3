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
another task, from one of two sources (the config refuses `vbpr` with neither: a frozen
*random* CNN is not VBPR):

* `training.pretrained_cnn`: the tower of a `tfvctr pretrain` run (category
  classification, as DeepCTR §4 pre-trains), loaded by the trainer and frozen here; it
  runs on every batch's images.
* `model.vbpr.features_table`: the vectors of a `tfvctr embed` table (docs/formats.md §4),
  looked up by ad: the model has no tower. The `ad_id` feature must use a vocabulary file
  listing the catalog (`write_table_vocabulary` writes the table's ads); id `2 + line`
  gets that ad's vector, and ids without a row (padding 0, out of vocabulary 1, an ad of
  the vocabulary missing from the table) get the mean of the table's vectors.

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

from tfvctr.errors import ConfigError, DataError
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
class FixedFeatures(keras.layers.Layer):
    """A non-trainable `[rows, dim]` table of image features, looked up by encoded item id.

    VBPR's `f_i` when it comes from a `tfvctr embed` table (`table_features` fills it).

    Args:
        rows: table rows (the `ad_id` vocabulary size).
        dim: feature width.

    Call arguments:
        ids: int `[N]`.

    Returns:
        `[N, dim]` float32.

    Example:
        >>> import numpy as np
        >>> layer = FixedFeatures(rows=3, dim=2)
        >>> layer.set_features(np.arange(6, dtype="float32").reshape(3, 2))
        >>> layer(np.array([2, 0])).numpy().tolist()
        [[4.0, 5.0], [0.0, 1.0]]
    """

    def __init__(self, rows: int, dim: int, **kwargs: Any) -> None:
        super().__init__(trainable=False, **{k: v for k, v in kwargs.items() if k != "trainable"})
        if rows < 1:
            raise invalid_argument("rows", rows, "a positive integer")
        if dim < 1:
            raise invalid_argument("dim", dim, "a positive integer")
        self.rows, self.dim = int(rows), int(dim)

    def build(self, input_shape: Any = None) -> None:
        self.table = self.add_weight(shape=(self.rows, self.dim), initializer="zeros", trainable=False, name="table")

    def set_features(self, values: Any) -> None:
        if not self.built:
            self.build(None)
        self.table.assign(values)

    def call(self, ids: Any) -> Any:
        return ops.take(self.table, ops.reshape(ops.cast(ids, "int32"), (-1,)), axis=0)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rows": self.rows, "dim": self.dim}


def table_features(table_path: str, vocabulary_path: str, rows: int) -> tuple[Any, int]:
    """The `[rows, dim]` features of encoded `ad_id` ids from a `tfvctr embed` table.

    Row `2 + line` is the table's vector of the vocabulary's ad on that line; rows without
    one (0 padding, 1 out of vocabulary, ads missing from the table) get the mean vector.

    Returns:
        `(features float32 [rows, dim], number of vocabulary ads found in the table)`.
    """
    import numpy as np

    from tfvctr import layout
    from tfvctr.export.table import load_table
    from tfvctr.features import read_vocabulary
    from tfvctr.io import fs

    index_path = fs.join(table_path, layout.TABLE_INDEX)
    if not fs.exists(index_path):
        raise DataError(f"{table_path}: model.vbpr.features_table names no `tfvctr embed` table (no {layout.TABLE_INDEX})")
    dim = int(fs.read_json(index_path, DataError).get("dim", 0))
    table = load_table(table_path, [], dim)
    vocabulary = read_vocabulary(vocabulary_path)
    if len(vocabulary) + 2 != rows:
        raise DataError(f"{vocabulary_path}: {len(vocabulary)} ad ids, but the `ad_id` feature has {rows - 2} "
                        f"(was the data encoded with another vocabulary?)")
    row_of = {a: i for i, a in enumerate(table.ad_ids.tolist())}
    vectors = table.vectors.astype(np.float32)
    features = np.tile(vectors.astype(np.float64).mean(axis=0), (rows, 1)).astype(np.float32)
    found = 0
    for line, ad in enumerate(vocabulary):
        i = row_of.get(ad)
        if i is not None:
            features[2 + line] = vectors[i]
            found += 1
    if not found:
        raise DataError(f"{table_path}: none of the {len(vocabulary)} ad ids of {vocabulary_path} is in the table "
                        f"(a table of another catalog?)")
    return features, found


def write_table_vocabulary(table_path: str, path: str) -> int:
    """Writes the ad ids of a `tfvctr embed` table, one a line: the `ad_id` vocabulary file of
    `model.vbpr.features_table` (every catalog ad the table holds, cold ones included).

    Returns:
        the number of ad ids written.
    """
    from tfvctr import layout
    from tfvctr.export.table import load_table, write_ad_ids
    from tfvctr.io import fs

    dim = int(fs.read_json(fs.join(table_path, layout.TABLE_INDEX), DataError).get("dim", 0))
    table = load_table(table_path, [], dim)
    write_ad_ids(table, path)
    return table.rows


@keras.saving.register_keras_serializable(package="tfvctr")
class VBPR(CTRModel):
    """A VBPR-family model (CSCNN Eq. 12) selected by `config.model.vbpr.variant`.

    See the module docstring for the variants, and `CTRModel` for the batch layout.
    `visual_tower` is None for `bpr_mf`; for `vbpr` it is frozen (`trainable=False`,
    always run in inference mode), so `visual_variables` is empty; the trainer fills it
    from `training.pretrained_cnn`. With `model.vbpr.features_table` (variant `vbpr`) there
    is no tower: `fixed_features` (`FixedFeatures`) holds the table's vector of every ad_id.

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
        self.fixed_features: Optional[FixedFeatures] = None
        if v.variant == "bpr_mf":
            visual_dim = 0
        elif v.variant == "vbpr" and v.features_table:
            if item_key != "ad_id":  # the config checks this too; a model built from a dict may skip it
                raise ConfigError("model.vbpr.features_table: the table is read by ad_id; declare an `ad_id` feature")
            features, _ = table_features(v.features_table, names["ad_id"].vocabulary, num_items)
            self.fixed_features = FixedFeatures(num_items, features.shape[1], name="fixed_features")
            self.fixed_features.set_features(features)
            visual_dim = int(features.shape[1])
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

    def call(self, batch: Mapping[str, Any], training: Optional[bool] = None) -> Any:
        if self.fixed_features is None:
            return super().call(batch, training=training)
        features = self.gather_features(batch)  # ad_id per impression
        return self.head({"features": features, "x_v": self.fixed_features(features["ad_id"])}, training=training)

