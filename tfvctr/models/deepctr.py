"""DeepCTR (Chen et al., "Deep CTR Prediction in Display Advertising", 2016).

Convnet (the visual tower, 128-d output) + Basicnet (a sparse fully-connected layer over
the one-hot basic features, Eq. 4) + Combnet (fully-connected layers with batch norm,
ReLU and dropout) → logit. Also: category pre-training of the Convnet (§4), copying the
pre-trained weights into a CTR model's tower, and the 3-model ensemble (§6.3).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import keras
from keras import ops

from tfvctr.config import Config
from tfvctr.errors import TfvctrError
from tfvctr.layers.arguments import attribute_config, check_layer_sizes, check_rate, invalid_argument
from tfvctr.layers.embedding import NonVisualEmbedding, feature_specs
from tfvctr.models.base import CTRModel, as_config, tower_config
from tfvctr.models.visual_tower import build_visual_tower


@keras.saving.register_keras_serializable(package="tfvctr")
class DeepCTRHead(keras.layers.Layer):
    """Basicnet + Combnet of DeepCTR (Chen et al. 2016, Fig. 3).

    Basicnet, Eq. 4: `Y_fc1 = ReLU(V W + b)` over the one-hot basic features V, computed
    as a sum of embedding rows (`NonVisualEmbedding(merge="sum")`, never a one-hot
    matrix). Combnet (§4: "fed to two fully-connected layers. The output of the last
    fully-connected layer is a real value z"):

        h = [BN(conv), BN(Y_fc1)]                    (Fig. 7: the two outputs normalised)
        z = W_2 · Dropout(ReLU(W_1 · Dropout(h)))    (dropout in both FC layers, Fig. 8)

    Batch norm sits on the Convnet and Basicnet outputs where they are concatenated: §6.2
    explains its gain by the two streams' different scales and variances (Fig. 7).
    `combnet_layers` lists the hidden FC widths (the paper: one, so two FC layers in all).

    Args:
        features: feature dicts / `FeatureConfig`s.
        vocab_sizes: embedding rows per embedded feature.
        convnet_dim: width of the Convnet output (0: Basicnet + Combnet only).
        basicnet_dim: Basicnet output width.
        combnet_layers: widths of the Combnet's hidden FC layers (the last FC, to z, is
            added); the paper's Combnet has one, e.g. `[256]`.
        dropout: Combnet dropout rate.
        seed: initializer seed.

    Call arguments:
        inputs: `{"features": {...}, "x_v": [N, convnet_dim]}`.
        training: batch-norm / dropout mode.

    Returns:
        logits `[N]`.

    Example:
        >>> import numpy as np
        >>> head = DeepCTRHead([{"name": "device", "kind": "categorical"}], {"device": 5},
        ...                    convnet_dim=3, basicnet_dim=8, combnet_layers=[8], seed=0)
        >>> logits = head({"features": {"device": np.array([1, 4], "int32")}, "x_v": np.ones((2, 3), "float32")},
        ...               training=True)
        >>> tuple(logits.shape)
        (2,)
        >>> len([w for w in head.weights if w.name == "kernel"])  # two FC layers
        2
    """

    def __init__(
        self,
        features: Sequence[Any],
        vocab_sizes: Mapping[str, int],
        convnet_dim: int,
        basicnet_dim: int = 128,
        combnet_layers: Sequence[int] = (256,),
        dropout: float = 0.5,
        seed: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if basicnet_dim < 1:
            raise invalid_argument("basicnet_dim", basicnet_dim, "a positive integer")
        check_layer_sizes("combnet_layers", combnet_layers, expected="positive integers")
        check_rate("dropout", dropout)
        self.features = feature_specs(features)
        self.vocab_sizes = dict(vocab_sizes)
        self.convnet_dim = int(convnet_dim)
        self.basicnet_dim = int(basicnet_dim)
        self.combnet_layers = [int(u) for u in combnet_layers]
        self.dropout = float(dropout)
        self.seed = seed
        s = 0 if seed is None else seed
        self.basicnet = NonVisualEmbedding(
            self.features, self.vocab_sizes, merge="sum", embedding_dim=self.basicnet_dim, seed=s + 100, name="basicnet"
        )
        self.fc = [
            keras.layers.Dense(u, kernel_initializer=keras.initializers.HeNormal(seed=s + 200 + i), name=f"combnet_{i}")
            for i, u in enumerate(self.combnet_layers)
        ]
        self.basicnet_bn = keras.layers.BatchNormalization(name="basicnet_bn")
        self.convnet_bn = keras.layers.BatchNormalization(name="convnet_bn") if self.convnet_dim else None
        self.drop = [keras.layers.Dropout(self.dropout, seed=s + 300 + i) for i in range(len(self.combnet_layers) + 1)]
        self.out = keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(seed=s + 400), name="logit")

    def build(self, input_shape: Any = None) -> None:
        self.basicnet.build(None)
        self.basicnet_bias = self.add_weight(shape=(self.basicnet_dim,), initializer="zeros", name="basicnet_bias")
        self.basicnet_bn.build((None, self.basicnet_dim))
        if self.convnet_bn is not None:
            self.convnet_bn.build((None, self.convnet_dim))
        width = self.basicnet_dim + self.convnet_dim
        for fc in self.fc:
            fc.build((None, width))
            width = fc.units
        self.out.build((None, width))

    def call(self, inputs: Mapping[str, Any], training: Optional[bool] = None) -> Any:
        basic = self.basicnet_bn(ops.relu(self.basicnet(inputs["features"]) + self.basicnet_bias), training=training)
        if self.convnet_dim:
            conv = self.convnet_bn(ops.cast(inputs["x_v"], basic.dtype), training=training)
            h = ops.concatenate([conv, basic], axis=-1)
        else:
            h = basic
        for fc, drop in zip(self.fc, self.drop, strict=False):
            if self.dropout:
                h = drop(h, training=training)
            h = ops.relu(fc(h))
        if self.dropout:
            h = self.drop[-1](h, training=training)
        return ops.squeeze(self.out(h), axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **attribute_config(self, (
            "features", "vocab_sizes", "convnet_dim", "basicnet_dim", "combnet_layers", "dropout", "seed"))}


@keras.saving.register_keras_serializable(package="tfvctr")
class DeepCTR(CTRModel):
    """DeepCTR: Convnet + Basicnet + Combnet (Chen et al. 2016, Fig. 3).

    The Convnet is the configured visual tower (`model.backbone`, e.g. `deepctr17`, with
    `visual_dim = model.deepctr.convnet_dim`, the paper's 128-way FC after conv17).

    Args: as `CTRModel`. Call arguments / Returns: as `CTRModel` (logits `[N]`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The arguments are CTRModel's (config, num_categories, vocab_sizes, seed).
        kwargs.setdefault("name", "deepctr")
        super().__init__(*args, **kwargs)
        dc = self.config.model.deepctr
        self.visual_tower = self.build_tower(tower_config(self.config.model, visual_dim=dc.convnet_dim))
        self.set_head(DeepCTRHead(
            self.config.dataset.features, self.vocab_sizes, convnet_dim=dc.convnet_dim, basicnet_dim=dc.basicnet_dim,
            combnet_layers=dc.combnet_layers, dropout=dc.dropout, seed=self.seed, name="head",
        ))

    def call(self, batch: Mapping[str, Any], training: Optional[bool] = None) -> Any:
        if self.config.model.deepctr.image_gradient == "sum":
            return super().call(batch, training=training)
        # Eq. 6: ∇conv_u = (1/k) Σ_{c∈C_u} ∇c. The gather's gradient is the sum over the
        # copies; scale it by 1/k_u (k_u: the ad's impressions in the batch) on the way back
        # only: `x·s + stop_gradient(x − x·s)` equals x forward and passes s·∇ backward.
        x_v_ads = self.visual_tower({"image": batch["image"], "category": batch["category"]}, training=self.tower_training(training))
        ad_index = ops.cast(batch["ad_index"], "int32")
        k = ops.segment_sum(ops.ones_like(ad_index, dtype=x_v_ads.dtype), ad_index, num_segments=ops.shape(x_v_ads)[0])
        scale = (1.0 / ops.maximum(k, 1.0))[:, None]
        x_v_ads = x_v_ads * scale + ops.stop_gradient(x_v_ads - x_v_ads * scale)
        inputs = {"features": self.gather_features(batch), "x_v": ops.take(x_v_ads, batch["ad_index"], axis=0)}
        return self.head(inputs, training=training)


# ---------------------------------------------------------------------- pre-training


@keras.saving.register_keras_serializable(package="tfvctr")
class UnknownCategory(keras.layers.Layer):
    """Category ids of 0 (unknown) for every image: `[n, H, W, 3]` → int32 `[n]`.

    Category pre-training must not show the tower the label it predicts, so a
    category-aware tower sees every image as the unknown category (row 0 of its priors).
    """

    def call(self, image: Any) -> Any:
        return ops.zeros((ops.shape(image)[0],), dtype="int32")

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return (input_shape[0],)


def build_category_pretrainer(
    config: Union[Config, Mapping[str, Any]],
    num_categories: int,
    hidden_units: Sequence[int] = (1024, 1024),
    seed: Optional[int] = None,
) -> keras.Model:
    """The Convnet pre-training network of DeepCTR §4: Convnet → fc18, fc19 → softmax.

    The paper pre-trains the Convnet on the training images' category labels with two
    1024-unit FC layers (fc18, fc19) and a softmax over the categories (fc20), then
    connects the Convnet to the CTR model. `pretrainer.get_layer("visual_tower")` is the
    Convnet; copy it with `transfer_visual_weights`.

    Args:
        config: the `Config` (the tower is built as the CTR model builds it:
            `deepctr.convnet_dim` for `deepctr`, `model.visual_dim` otherwise).
        num_categories: classes (category vocabulary + unknown row 0).
        hidden_units: fc18 / fc19 widths.
        seed: initializer seed (None: `config.training.seed`).

    Returns:
        keras.Model: `{"image": [n,H,W,3]}` → class probabilities `[n, num_categories]`.
    """
    config = as_config(config)
    seed = config.training.seed if seed is None else seed
    if config.model.num_categories is not None:  # as build_model does
        num_categories = config.model.num_categories
    m = config.model
    if m.architecture == "deepctr":
        m = tower_config(m, visual_dim=m.deepctr.convnet_dim)
    size = config.dataset.image_size
    tower = build_visual_tower(m, size, num_categories, seed=seed, name="visual_tower")
    image = keras.Input(shape=(size, size, 3), dtype="float32", name="image")
    x = tower({"image": image, "category": UnknownCategory(name="unknown_category")(image)})
    for i, units in enumerate(hidden_units):
        x = keras.layers.Dense(
            units, activation="relu", kernel_initializer=keras.initializers.HeNormal(seed=seed + 600 + i), name=f"fc{18 + i}"
        )(x)
    probs = keras.layers.Dense(
        num_categories, activation="softmax", kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 700), name="fc20"
    )(x)
    return keras.Model({"image": image}, probs, name="category_pretrainer")


def _leaf_layers(layer: keras.layers.Layer, prefix: str = "") -> dict[str, keras.layers.Layer]:
    """`{path: layer}` for the weight-holding leaves of a (nested) functional model."""
    out = {}
    for child in getattr(layer, "layers", []):
        path = f"{prefix}{child.name}"
        if getattr(child, "layers", None):
            out.update(_leaf_layers(child, path + "/"))
        elif child.weights:
            out[path] = child
    return out


def transfer_visual_weights(src_tower: keras.Model, dst_tower: keras.Model) -> list[str]:
    """Copies the weights of `src_tower` into `dst_tower`, layer by layer.

    Layers are matched by their name path inside the tower; a layer is copied when both
    have it with the same weight shapes (so a pre-trained plain CNN fills the conv layers
    of a CSCNN tower and leaves its attention layers as initialised).

    Returns:
        The copied layer paths.

    Raises:
        TfvctrError: when no layer matches (the towers have different architectures).
    """
    src, dst = _leaf_layers(src_tower), _leaf_layers(dst_tower)
    copied = []
    for path, layer in dst.items():
        other = src.get(path)
        if other is None:
            continue
        weights = other.get_weights()
        if [w.shape for w in weights] != [tuple(w.shape) for w in layer.weights]:
            continue
        layer.set_weights(weights)
        copied.append(path)
    if not copied:
        raise TfvctrError(
            f"transfer_visual_weights: no layer of {src_tower.name!r} matches {dst_tower.name!r} "
            "(were they built with the same backbone?)"
        )
    return copied


# ---------------------------------------------------------------------- ensemble


@keras.saving.register_keras_serializable(package="tfvctr")
class EnsembleModel(keras.Model):
    """Averages the click probabilities of several CTR models (DeepCTR §6.3: 3 DeepCTRs).

    Returns the logit of the mean probability, `log(p / (1 - p))` with
    `p = mean_m sigmoid(z_m)`, so it is a drop-in for one `CTRModel` in evaluation.

    Args:
        models: the member models (same batch layout).

    Call arguments:
        batch: as `CTRModel`.

    Returns:
        logits `[N]`.
    """

    def __init__(self, models: Sequence[keras.Model], **kwargs: Any) -> None:
        kwargs.setdefault("name", "ensemble")
        super().__init__(**kwargs)
        models = [keras.saving.deserialize_keras_object(m) if isinstance(m, dict) else m for m in models]
        if not models:
            raise ValueError("Invalid value received for argument `models`. Expected at least one model. Received: models=[]")
        self.members = list(models)
        self.built = True

    def call(self, batch: Mapping[str, Any], training: Optional[bool] = None) -> Any:
        probs = [ops.sigmoid(ops.cast(m(batch, training=training), "float32")) for m in self.members]
        p = ops.clip(ops.mean(ops.stack(probs, axis=0), axis=0), 1e-7, 1.0 - 1e-7)
        return ops.log(p) - ops.log1p(-p)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "models": [keras.saving.serialize_keras_object(m) for m in self.members]}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "EnsembleModel":
        return cls(**config)

