"""The non-visual embedding x_nv: DeepCTR's sparse Basicnet and CSCNN's field embeddings."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import keras
from keras import ops

from tfvctr.layers.arguments import attribute_config
from tfvctr.layers.initializers import clone_initializer

_FEATURE_KEYS = ("name", "kind", "embedding_dim", "combiner", "transform")
_KINDS = ("categorical", "multi", "numeric")


def feature_specs(features: Sequence[Any]) -> list[dict[str, Any]]:
    """`FeatureConfig`s (or dicts) → the plain dicts `NonVisualEmbedding` stores in its config."""
    specs = []
    for f in features:
        d = dataclasses.asdict(f) if dataclasses.is_dataclass(f) else dict(f)
        specs.append({k: d[k] for k in _FEATURE_KEYS if k in d})
    return specs


def _with_defaults(spec: Mapping[str, Any]) -> dict[str, Any]:
    # The defaults of `FeatureConfig`, for dicts that leave a key out.
    return {"embedding_dim": 4, "combiner": "mean", "transform": "bucketize", **spec}


@keras.saving.register_keras_serializable(package="tfvctr")
class NonVisualEmbedding(keras.layers.Layer):
    """Embeds encoded non-visual features into one vector x_nv, without one-hot matrices.

    CSCNN (Liu et al. 2020) Eq. 3: x_nv is the concatenation of one embedding per field
    (`merge="concat"`). DeepCTR (Chen et al. 2016) Eq. 4: the Basicnet is a sparse
    fully-connected layer `Y_fc1 = V W` over one-hot features V; since each one-hot
    block selects one row of W, `V W = sum over fields of W_field[id]`, i.e. an embedding
    lookup per field summed across fields (`merge="sum"`, every field of width
    `embedding_dim`). Both cost O(N d') for d' non-zeros instead of O(N d), and the
    gradient touches only the looked-up rows (`IndexedSlices`), DeepCTR Eq. 5.

    Per field: categorical ids `[N]` → row of a `[vocab_sizes[name], dim]` table;
    multi-valued ids `[N, L]` → rows pooled by `combiner` (`sum` or `mean`), padding id 0
    ignored (an empty list gives zeros); numeric `bucketize` ids → like categorical;
    numeric `normalize` floats `[N]` → passed through as one column (`concat`) or scaled
    by a learned `[dim]` row (`sum`, the FC weight of a real-valued input).

    Args:
        features: list of feature dicts (keys `name`, `kind`, `embedding_dim`,
            `combiner`, `transform`) or `FeatureConfig`s, in output order.
        vocab_sizes: `{name: rows}` for every embedded field (from `FeatureEncoder`).
        merge: `"concat"` (x_nv, CSCNN Eq. 3) or `"sum"` (sparse FC, DeepCTR Eq. 4).
        embedding_dim: overrides every field's `embedding_dim` (required for `sum`
            when the fields' widths differ).
        embeddings_initializer: initializer of the tables.
        embeddings_regularizer: optional regularizer of the tables.
        seed: seed of the default initializer (each table gets `seed + i`).

    Call arguments:
        inputs: dict `{name: tensor}` of encoded features (`FeatureEncoder` output).

    Returns:
        float tensor `[N, output_dim]`.

    Example:
        >>> import numpy as np
        >>> layer = NonVisualEmbedding(
        ...     [{"name": "device", "kind": "categorical", "embedding_dim": 2}], {"device": 5})
        >>> tuple(layer({"device": np.array([0, 3], "int32")}).shape)
        (2, 2)
    """

    def __init__(
        self,
        features: Sequence[Any],
        vocab_sizes: Mapping[str, int],
        merge: str = "concat",
        embedding_dim: Optional[int] = None,
        embeddings_initializer: Any = None,
        embeddings_regularizer: Any = None,
        seed: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.features = feature_specs(features)  # as given, for get_config
        self._specs = [_with_defaults(s) for s in self.features]
        self.vocab_sizes = {k: int(v) for k, v in vocab_sizes.items()}
        if merge not in ("concat", "sum"):
            raise ValueError(f"Invalid value received for argument `merge`. Expected 'concat' or 'sum'. Received: merge={merge!r}")
        if embedding_dim is not None and embedding_dim < 1:
            raise ValueError(
                f"Invalid value received for argument `embedding_dim`. Expected a positive integer or None. "
                f"Received: embedding_dim={embedding_dim}"
            )
        if not self.features:
            raise ValueError("Invalid value received for argument `features`. Expected at least one feature. Received: features=[]")
        for spec in self._specs:
            if spec.get("kind") not in _KINDS:
                raise ValueError(
                    f"Invalid value received for argument `features`. Expected kind in {_KINDS}. "
                    f"Received: kind={spec.get('kind')!r} for feature {spec.get('name')!r}"
                )
            if spec["combiner"] not in ("sum", "mean"):
                raise ValueError(
                    f"Invalid value received for argument `features`. Expected combiner 'sum' or 'mean'. "
                    f"Received: combiner={spec['combiner']!r} for feature {spec['name']!r}"
                )
            if self._embedded(spec) and spec["name"] not in self.vocab_sizes:
                raise ValueError(
                    f"Invalid value received for argument `vocab_sizes`. Expected a size for feature {spec['name']!r}. "
                    f"Received: vocab_sizes={self.vocab_sizes}"
                )
        self.merge = merge
        self.embedding_dim = embedding_dim
        dims = {self._dim(s) for s in self._specs}
        if merge == "sum" and len(dims) > 1:
            raise ValueError(
                f"Invalid value received for argument `embedding_dim`. Expected one width for merge='sum' "
                f"(fields have {sorted(dims)}). Received: embedding_dim={embedding_dim}"
            )
        self.embeddings_initializer = embeddings_initializer
        self.embeddings_regularizer = keras.regularizers.get(embeddings_regularizer)
        self.seed = seed
        self.tables: dict[str, keras.Variable] = {}

    @staticmethod
    def _embedded(spec: Mapping[str, Any]) -> bool:
        return not (spec["kind"] == "numeric" and spec["transform"] == "normalize")

    def _dim(self, spec: Mapping[str, Any]) -> int:
        return int(self.embedding_dim if self.embedding_dim is not None else spec["embedding_dim"])

    @property
    def output_dim(self) -> int:
        if self.merge == "sum":
            return self._dim(self._specs[0])
        return sum(self._dim(s) if self._embedded(s) else 1 for s in self._specs)

    def _initializer(self, i: int) -> keras.initializers.Initializer:
        if self.embeddings_initializer is None:
            # A seeded Keras 3 initializer repeats its values on every call: one seed per table.
            seed = None if self.seed is None else self.seed + i
            return keras.initializers.RandomUniform(-0.05, 0.05, seed=seed)
        return clone_initializer(self.embeddings_initializer)

    def build(self, input_shape: Any = None) -> None:
        for i, spec in enumerate(self._specs):
            name = spec["name"]
            if self._embedded(spec):
                shape = (self.vocab_sizes[name], self._dim(spec))
            elif self.merge == "sum":
                shape = (1, self._dim(spec))
            else:
                continue
            self.tables[name] = self.add_weight(
                shape=shape,
                initializer=self._initializer(i),
                regularizer=self.embeddings_regularizer,
                name=f"{name}_embeddings",
            )

    def call(self, inputs: Mapping[str, Any]) -> Any:
        parts = []
        for spec in self._specs:
            name = spec["name"]
            x = inputs[name]
            if not self._embedded(spec):
                x = ops.cast(ops.reshape(x, (-1, 1)), self.compute_dtype)
                parts.append(x * self.tables[name] if self.merge == "sum" else x)
                continue
            table = self.tables[name]
            ids = ops.cast(x, "int32")
            if spec["kind"] == "multi":
                rows = ops.take(table, ids, axis=0)  # [N, L, d]
                mask = ops.cast(ops.not_equal(ids, 0), rows.dtype)[..., None]
                pooled = ops.sum(rows * mask, axis=1)
                if spec["combiner"] == "mean":
                    count = ops.maximum(ops.sum(mask, axis=1), 1.0)
                    pooled = pooled / count
                parts.append(pooled)
            else:
                parts.append(ops.take(table, ops.reshape(ids, (-1,)), axis=0))
        if self.merge == "sum":
            out = parts[0]
            for p in parts[1:]:
                out = out + p
            return out
        return ops.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]

    def compute_output_shape(self, input_shape: Any) -> tuple:
        first = next(iter(input_shape.values())) if isinstance(input_shape, dict) else None
        return (first[0] if first else None, self.output_dim)

    def get_config(self) -> dict[str, Any]:
        init = self.embeddings_initializer
        return {
            **super().get_config(),
            **attribute_config(self, ("features", "vocab_sizes", "merge", "embedding_dim", "seed")),
            "embeddings_initializer": keras.initializers.serialize(keras.initializers.get(init)) if init is not None else None,
            "embeddings_regularizer": keras.regularizers.serialize(self.embeddings_regularizer),
        }
