"""CSCNN-DCN (Liu et al., KDD 2020, §3.2 Eqs. 3–6) and the "DCN without images" baseline."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import keras
from keras import ops

from tfvctr.layers.arguments import attribute_config, check_layer_sizes, check_rate, invalid_argument
from tfvctr.layers.cross import CrossNetwork
from tfvctr.layers.embedding import NonVisualEmbedding, feature_specs
from tfvctr.layers.linear import LinearLogit
from tfvctr.models.base import CTRModel


def _dense(units: int, activation: Optional[str], seed: Optional[int], name: str, zeros: bool = False) -> keras.layers.Dense:
    init = keras.initializers.Zeros() if zeros else keras.initializers.GlorotUniform(seed=seed)
    return keras.layers.Dense(units, activation=activation, kernel_initializer=init, name=name)


@keras.saving.register_keras_serializable(package="tfvctr")
class DCNHead(keras.layers.Layer):
    """The modified Deep & Cross head of CSCNN (Liu et al. 2020), Eqs. 3–6.

    Eq. 3: `h_1 = [x_v, ReLU-MLP(x_nv)]`; Eq. 4: `h_{l+1} = ReLU-MLP(h_l)`;
    Eq. 5: `z_{l+1} = z_0 z_l^T w_l + b_l + z_l` with `z_0 = x_nv`;
    Eq. 6: `y = sigmoid(MLP([h_L, z_L]))` — this layer returns the logit.
    With `visual_dim=0` it is the DCN baseline without the image (`h_1 = ReLU-MLP(x_nv)`).
    With `linear="prefit"` the logit is `LinearLogit(x) + MLP([h_L, z_L])`: a fixed
    logistic regression (set by `tfvctr.training.linear_prefit`) with the deep part as a
    residual on top, whose output layer starts at zero, so the untrained head *is* the
    regression.

    Args:
        features: feature dicts / `FeatureConfig`s (x_nv fields, in order).
        vocab_sizes: embedding rows per embedded feature.
        visual_dim: width of x_v (0: no visual input).
        deep_layers: units of the ReLU layers, e.g. `[1024, 512, 256]`.
        cross_layers: number of cross layers L.
        cross_type: `"v1"` (Eq. 5) or `"v2"` (DCN-v2, keras-rs `FeatureCross`).
        projection_dim: DCN-v2 low rank.
        dropout: dropout after each deep layer.
        embedding_l2: L2 penalty `embedding_l2 * sum(W^2)` on every embedding table of x_nv
            (collected in `losses`; the trainer adds it once per step).
        visual_dropout: dropout on x_v where it joins the head (Eq. 3).
        seed: initializer seed.
        linear: `"none"`, or `"prefit"` for the fixed linear part above (`model.linear`).

    Call arguments:
        inputs: `{"features": {name: [N, ...]}, "x_v": [N, visual_dim]}` (no `x_v` when
            `visual_dim == 0`).
        training: enables dropout.

    Returns:
        logits `[N]`.

    Example:
        >>> import numpy as np
        >>> head = DCNHead([{"name": "device", "kind": "categorical", "embedding_dim": 2}], {"device": 5},
        ...                visual_dim=3, deep_layers=[8, 4], cross_layers=2, seed=0)
        >>> logits = head({"features": {"device": np.array([1, 4], "int32")}, "x_v": np.ones((2, 3), "float32")})
        >>> tuple(logits.shape)
        (2,)
    """

    def __init__(
        self,
        features: Sequence[Any],
        vocab_sizes: Mapping[str, int],
        visual_dim: int,
        deep_layers: Sequence[int],
        cross_layers: int = 3,
        cross_type: str = "v1",
        projection_dim: Optional[int] = None,
        dropout: float = 0.0,
        seed: Optional[int] = None,
        embedding_l2: float = 0.0,
        visual_dropout: float = 0.0,
        linear: str = "none",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if linear not in ("none", "prefit"):
            raise invalid_argument("linear", linear, "'none' or 'prefit'")
        if embedding_l2 < 0:
            raise invalid_argument("embedding_l2", embedding_l2, "a value >= 0")
        check_rate("visual_dropout", visual_dropout)
        if visual_dim < 0:
            raise invalid_argument("visual_dim", visual_dim, ">= 0")
        check_layer_sizes("deep_layers", deep_layers)
        check_rate("dropout", dropout)
        self.features = feature_specs(features)
        self.vocab_sizes = dict(vocab_sizes)
        self.visual_dim = int(visual_dim)
        self.deep_layers = [int(u) for u in deep_layers]
        self.cross_layers = int(cross_layers)
        self.cross_type = cross_type
        self.projection_dim = projection_dim
        self.dropout = float(dropout)
        self.seed = seed
        self.embedding_l2 = float(embedding_l2)
        self.visual_dropout = float(visual_dropout)
        self.linear = linear
        s = 0 if seed is None else seed
        regularizer = keras.regularizers.L2(self.embedding_l2) if self.embedding_l2 else None
        self.embedding = NonVisualEmbedding(
            self.features, self.vocab_sizes, merge="concat", embeddings_regularizer=regularizer, seed=s + 100, name="x_nv"
        )
        self.visual_drop = keras.layers.Dropout(self.visual_dropout, seed=s + 350)
        self.deep = [_dense(u, "relu", s + 200 + i, f"deep_{i}") for i, u in enumerate(self.deep_layers)]
        self.drop = [keras.layers.Dropout(self.dropout, seed=s + 300 + i) for i in range(len(self.deep_layers))]
        self.cross = CrossNetwork(cross_layers, kind=cross_type, projection_dim=projection_dim, seed=s + 400, name="cross")
        prefit = linear == "prefit"
        # Fixed: the pre-fit is an exact L2 optimum the step-wise optimizers would only move
        # away from (rarely seen ids are where SGD/Adam fits go wrong, issue 12).
        self.linear_part = LinearLogit(self.features, self.vocab_sizes, trainable=False, name="linear") if prefit else None
        self.out = _dense(1, None, s + 500, "logit", zeros=prefit)

    def build(self, input_shape: Any = None) -> None:
        # Every width is known from the arguments, so the head is built without data
        # (and a reloaded model has its weights before the first call).
        self.embedding.build(None)
        d_nv = self.embedding.output_dim
        width = d_nv
        for i, layer in enumerate(self.deep):
            layer.build((None, width))
            width = layer.units + (self.visual_dim if i == 0 else 0)
        self.cross.build((None, d_nv))
        self.out.build((None, width + d_nv))
        if self.linear_part is not None:
            self.linear_part.build(None)

    def call(self, inputs: Mapping[str, Any], training: Optional[bool] = None) -> Any:
        x_nv = self.embedding(inputs["features"])
        h = x_nv
        for i, (layer, drop) in enumerate(zip(self.deep, self.drop, strict=True)):
            h = layer(h)
            if i == 0 and self.visual_dim:
                x_v = ops.cast(inputs["x_v"], h.dtype)
                if self.visual_dropout:
                    x_v = self.visual_drop(x_v, training=training)
                h = ops.concatenate([x_v, h], axis=-1)  # Eq. 3
            if self.dropout:
                h = drop(h, training=training)
        z = self.cross(x_nv)
        logit = ops.squeeze(self.out(ops.concatenate([h, z], axis=-1)), axis=-1)
        if self.linear_part is not None:
            logit = logit + ops.cast(self.linear_part(inputs["features"]), logit.dtype)
        return logit

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **attribute_config(self, (
            "features", "vocab_sizes", "visual_dim", "deep_layers", "cross_layers", "cross_type", "projection_dim",
            "dropout", "seed", "embedding_l2", "visual_dropout", "linear"))}


@keras.saving.register_keras_serializable(package="tfvctr")
class CSCNNDCN(CTRModel):
    """CSCNN-DCN (Liu et al. 2020): the category-specific CNN feeding a Deep & Cross head.

    `use_image=False` gives the paper's baseline "DCN" (no visual tower, `visual_tower`
    is None). See `CTRModel` for the batch layout and `DCNHead` for Eqs. 3–6.

    Args:
        config: the `Config`; `config.model` gives backbone, attention, visual_dim,
            deep_layers, cross_layers, cross_type, projection_dim, dropout, embedding_l2,
            visual_dropout, linear.
        num_categories: rows of the category tables (vocabulary + unknown).
        vocab_sizes: embedding rows per feature (`FeatureEncoder.vocab_sizes`).
        seed: initializer seed (None: `config.training.seed`).
        use_image: False for the DCN baseline.

    Call arguments:
        batch: dict (see `CTRModel`).
        training: enables dropout / batch-norm updates.

    Returns:
        logits `[N]`.
    """

    def __init__(self, *args: Any, use_image: bool = True, **kwargs: Any) -> None:
        # The positional arguments are CTRModel's (config, num_categories, vocab_sizes, seed).
        kwargs.setdefault("name", "cscnn_dcn" if use_image else "dcn")
        super().__init__(*args, **kwargs)
        self.use_image = bool(use_image)
        m = self.config.model
        if self.use_image:
            self.visual_tower = self.build_tower(m)
        self.set_head(DCNHead(
            self.config.dataset.features, self.vocab_sizes, visual_dim=m.visual_dim if self.use_image else 0,
            deep_layers=m.deep_layers, cross_layers=m.cross_layers, cross_type=m.cross_type,
            projection_dim=m.projection_dim, dropout=m.dropout, seed=self.seed, embedding_l2=m.embedding_l2,
            visual_dropout=m.visual_dropout, linear=m.linear, name="head",
        ))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["use_image"] = self.use_image
        return config
