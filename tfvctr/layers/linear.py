"""`LinearLogit`: a logistic regression over the encoded non-visual features, as a Keras layer."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import keras
import numpy as np
from keras import ops

from tfvctr.layers.arguments import attribute_config
from tfvctr.layers.embedding import _KINDS, feature_specs


def _embedded(spec: Mapping[str, Any]) -> bool:
    return not (spec["kind"] == "numeric" and spec.get("transform", "bucketize") == "normalize")


@keras.saving.register_keras_serializable(package="tfvctr")
class LinearLogit(keras.layers.Layer):
    """The "wide" part: one weight per vocabulary id of every feature, plus a bias.

    `logit = b + sum over fields of w_field[id]`: the logit of a logistic regression on the
    one-hot non-visual features (Wide & Deep, Cheng et al. 2016, Eq. 3 without the deep
    term; the floor of `benchmarks/generalisation.py`). Categorical and bucketised numeric
    ids pick one weight; a multi-valued feature adds the weights of all its ids (padding id
    0 excluded), whatever the feature's `combiner`, as a one-hot regression counts every
    token; a `normalize` numeric value is multiplied by its one weight. The weights start at
    zero; `tfvctr.training.linear_prefit` sets them to an L2-regularised fit
    (`model.linear: prefit`), and the head holds them fixed (`trainable=False`).

    Args:
        features: feature dicts / `FeatureConfig`s (keys `name`, `kind`, `transform`).
        vocab_sizes: `{name: rows}` for every embedded feature (`FeatureEncoder.vocab_sizes`).

    Call arguments:
        inputs: `{name: ids}` at impression level (categorical / bucketised `[N]`, multi
            `[N, L]`, normalize floats `[N]`).

    Returns:
        logits `[N]`.

    Example:
        >>> import numpy as np
        >>> layer = LinearLogit([{"name": "device", "kind": "categorical"},
        ...                      {"name": "tags", "kind": "multi"}], {"device": 3, "tags": 4})
        >>> layer.set_fitted({"device": np.array([0.0, 1.0, 2.0]), "tags": np.array([9.0, 0.1, 0.2, 0.3])}, bias=-1.0)
        >>> layer({"device": np.array([2, 1], "int32"), "tags": np.array([[1, 3], [0, 0]], "int32")}).numpy().astype(float).round(2).tolist()
        [1.4, 0.0]
    """

    def __init__(self, features: Sequence[Any], vocab_sizes: Mapping[str, int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.features = feature_specs(features)
        if not self.features:
            raise ValueError("Invalid value received for argument `features`. Expected at least one feature. Received: features=[]")
        self.vocab_sizes = {k: int(v) for k, v in vocab_sizes.items()}
        for spec in self.features:
            if spec.get("kind") not in _KINDS:
                raise ValueError(
                    f"Invalid value received for argument `features`. Expected kind in {_KINDS}. "
                    f"Received: kind={spec.get('kind')!r} for feature {spec.get('name')!r}"
                )
            if _embedded(spec) and self.vocab_sizes.get(spec["name"], 0) < 1:
                raise ValueError(
                    f"Invalid value received for argument `vocab_sizes`. Expected a positive size for feature "
                    f"{spec['name']!r}. Received: vocab_sizes={self.vocab_sizes}"
                )
        self.tables: dict[str, keras.Variable] = {}

    def rows(self, name: str) -> int:
        """Weights of feature `name` (its vocabulary size, or 1 for a normalize numeric)."""
        spec = next(s for s in self.features if s["name"] == name)
        return self.vocab_sizes[name] if _embedded(spec) else 1

    def build(self, input_shape: Any = None) -> None:
        for spec in self.features:
            name = spec["name"]
            self.tables[name] = self.add_weight(shape=(self.rows(name),), initializer="zeros", name=f"{name}_weights")
        self.bias = self.add_weight(shape=(), initializer="zeros", name="bias")

    def call(self, inputs: Mapping[str, Any]) -> Any:
        logit = None
        for spec in self.features:
            name, x = spec["name"], inputs[spec["name"]]
            table = self.tables[name]
            if not _embedded(spec):
                part = ops.reshape(ops.cast(x, self.compute_dtype), (-1,)) * table[0]
            elif spec["kind"] == "multi":
                ids = ops.cast(x, "int32")
                rows = ops.take(table, ids, axis=0) * ops.cast(ops.not_equal(ids, 0), self.compute_dtype)
                part = ops.sum(rows, axis=-1)
            else:
                part = ops.take(table, ops.reshape(ops.cast(x, "int32"), (-1,)), axis=0)
            logit = part if logit is None else logit + part
        return logit + self.bias

    def set_fitted(self, weights: Mapping[str, Any], bias: float) -> None:
        """Assigns fitted weights (`{name: [rows]}`, every feature) and the bias."""
        if not self.built:
            self.build(None)
        missing = [s["name"] for s in self.features if s["name"] not in weights]
        if missing:
            raise ValueError(f"Invalid value received for argument `weights`. Expected every feature. Missing: {missing}")
        for name, table in self.tables.items():
            value = np.asarray(weights[name], dtype=np.float32).reshape(-1)
            if value.shape != tuple(table.shape):
                raise ValueError(
                    f"Invalid value received for argument `weights`. Expected shape {tuple(table.shape)} for "
                    f"{name!r}. Received: {value.shape}"
                )
            table.assign(value)
        self.bias.assign(np.float32(bias))

    def compute_output_shape(self, input_shape: Any) -> tuple:
        first = next(iter(input_shape.values())) if isinstance(input_shape, dict) else None
        return (first[0] if first else None,)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **attribute_config(self, ("features", "vocab_sizes"))}

