"""Feature encoding: raw strings and floats → integer ids and normalised floats.

`FeatureEncoder` implements the "Indexing" paragraph of docs/formats.md §2 with graph-only
TensorFlow ops (lookup tables, `tf.strings.to_hash_bucket_fast`, `Bucketize`), so the same
layer runs in the trainer's `tf.data` pipeline and inside the exported serving graph:

* vocabulary features: `0` = padding / missing (`""`), `1` = out of vocabulary,
  `2 + line number` for the values of `vocab/<feature>.txt`;
* hashed features: `1 + fingerprint64(value) mod hash_buckets`, `0` = padding (`""`);
* the ad's category (key `category`): `0` = unknown, `1 + line number` of
  `vocab/category.txt`. A declared feature named `category` is this same id (one key,
  one table of `num_categories` rows), so the tower and the non-visual embedding agree;
* multi-valued features: `[N, max_length]` ids, truncated, padded with `0`;
* numeric features: `normalize` → `(x - mean) / std` (`std == 0` → 1; NaN → 0.0), or
  `bucketize` → `1 + bucket` on `stats.json` boundaries (bucket `b` holds
  `boundaries[b-1] <= x < boundaries[b]`; NaN → 0, the padding row).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping, Union

import keras
import tensorflow as tf

from tfvctr import layout
from tfvctr.config import DatasetConfig, FeatureConfig
from tfvctr.errors import ConfigError, DataError
from tfvctr.io import fs

CATEGORY = "category"


def read_vocabulary(path: str) -> list[str]:
    """Reads a vocabulary file (one value per line); raises `DataError` if it is missing."""
    if not fs.exists(path):
        raise DataError(f"{path}: vocabulary file not found")
    with fs.open(path, "r") as f:
        text = f.read()
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    # "" is the padding value, never a vocabulary entry; a blank line is skipped.
    return [line.rstrip("\r") for line in text.split("\n") if line.rstrip("\r") != ""]


def _dataset_config_from(value: Union[DatasetConfig, Mapping[str, Any]]) -> DatasetConfig:
    if isinstance(value, DatasetConfig):
        return value
    data = dict(value)
    data["features"] = [f if isinstance(f, FeatureConfig) else FeatureConfig(**f) for f in data["features"]]
    return DatasetConfig(**data)


@keras.saving.register_keras_serializable(package="tfvctr")
class FeatureEncoder(keras.layers.Layer):
    """Encodes raw feature values to the ids and floats the models embed.

    Implements docs/formats.md §2 "Indexing" (see the module docstring). Vocabularies and
    statistics are stored in the layer config, so a saved model re-creates the same
    lookup tables; JD-scale vocabularies are meant to be hashed (`hash_buckets`) instead.

    Args:
        dataset_config: the `DatasetConfig` (or its `dataclasses.asdict` form).
        vocabularies: `{feature name: [values]}` for every `vocabulary` feature, plus
            `"category": [categories]` (always required).
        stats: the contents of `stats.json`; numeric features need `mean`/`std`
            (`normalize`) or `boundaries` (`bucketize`).

    Call arguments:
        raw: dict of raw tensors: categorical string `[N]` (or `[N, 1]`), multi
            `tf.RaggedTensor` / `tf.SparseTensor` of strings `[N, None]` or dense `[N, L]`
            strings padded with `""`, numeric float `[N]`, `category` string `[n]`. Keys
            that are not declared features pass through unchanged.

    Returns:
        dict: categorical int32 `[N]`, multi int32 `[N, max_length]`, numeric float32
        `[N]` (normalize) or int32 `[N]` (bucketize), `category` int32 `[n]`.

    `FeatureEncoder.from_data_dir(config.dataset, DATA_DIR)` reads both from a preprocess
    output.

    Example:
        >>> enc = FeatureEncoder(
        ...     {"features": [{"name": "device", "source": "impression", "kind": "categorical", "vocabulary": "auto"}]},
        ...     vocabularies={"device": ["ios", "android"], "category": ["shoes", "bags"]}, stats={})
        >>> out = enc({"device": tf.constant(["ios", "desktop", ""]), "category": tf.constant(["bags", "hats"])})
        >>> out["device"].numpy().tolist(), out["category"].numpy().tolist()  # in vocab, OOV, padding; known, unknown
        ([2, 1, 0], [2, 0])
    """

    def __init__(
        self,
        dataset_config: Union[DatasetConfig, Mapping[str, Any]],
        vocabularies: Mapping[str, list[str]],
        stats: Mapping[str, Any],
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.dataset_config = _dataset_config_from(dataset_config)
        self.vocabularies = {k: [str(v) for v in vs] for k, vs in vocabularies.items()}
        self.stats = dict(stats)
        if CATEGORY not in self.vocabularies:
            raise ConfigError("FeatureEncoder: no category vocabulary (vocab/category.txt) was given")
        self._vocab_sizes: dict[str, int] = {}
        self._lookups: dict[str, keras.layers.StringLookup] = {}
        # Category: 0 = unknown, 1 + line (StringLookup's OOV index 0, no mask).
        self._category_lookup = keras.layers.StringLookup(
            vocabulary=self.vocabularies[CATEGORY], num_oov_indices=1, mask_token=None, name="category_lookup"
        )
        for f in self.dataset_config.features:
            if f.name == CATEGORY:
                if f.kind != "categorical":
                    raise ConfigError(f"feature {CATEGORY!r}: the ad category must be of kind categorical, received {f.kind!r}")
                self._vocab_sizes[f.name] = self.num_categories
            elif f.kind in ("categorical", "multi"):
                if f.hash_buckets is not None:
                    self._vocab_sizes[f.name] = f.hash_buckets + 1
                else:
                    if f.name not in self.vocabularies:
                        raise ConfigError(
                            f"feature {f.name!r}: no vocabulary was given (expected vocab/{f.name}.txt or the file "
                            f"named by `vocabulary`)"
                        )
                    # mask_token "" → 0 (padding), one OOV index → 1, vocabulary → 2 + line.
                    self._lookups[f.name] = keras.layers.StringLookup(
                        vocabulary=self.vocabularies[f.name],
                        num_oov_indices=1,
                        mask_token="",
                        name=f"{f.name}_lookup",
                    )
                    self._vocab_sizes[f.name] = len(self.vocabularies[f.name]) + 2
            else:
                st = self.stats.get(f.name)
                if st is None:
                    raise DataError(f"stats.json: no statistics for numeric feature {f.name!r}")
                if f.transform == "normalize":
                    for key in ("mean", "std"):
                        if key not in st:
                            raise DataError(f"stats.json: numeric feature {f.name!r} has no {key!r} (needed by normalize)")
                else:
                    if "boundaries" not in st:
                        raise DataError(f"stats.json: numeric feature {f.name!r} has no 'boundaries' (needed by bucketize)")
                    # Rows: 0 = missing, 1 .. len(boundaries) + 1 = the buckets.
                    self._vocab_sizes[f.name] = len(st["boundaries"]) + 2

    @classmethod
    def from_data_dir(cls, dataset_config: DatasetConfig, data_dir: str, **kwargs: Any) -> "FeatureEncoder":
        """Reads `data_dir/vocab/*.txt` and `data_dir/stats.json` (docs/formats.md §2)."""
        vocabularies = {CATEGORY: read_vocabulary(fs.join(data_dir, layout.VOCAB_DIR, layout.CATEGORY_VOCAB))}
        for f in dataset_config.features:
            if f.kind == "numeric" or f.hash_buckets is not None or f.name == CATEGORY:
                continue
            path = fs.join(data_dir, layout.vocab_file(f.name)) if f.vocabulary == "auto" else f.vocabulary
            if not fs.exists(path):
                raise DataError(
                    f"{path}: vocabulary file for feature {f.name!r} not found; is {data_dir} the output of "
                    f"`tfvctr preprocess` with this config?"
                )
            vocabularies[f.name] = read_vocabulary(path)
        stats_path = fs.join(data_dir, layout.STATS)
        stats: dict[str, Any] = {}
        if any(f.kind == "numeric" for f in dataset_config.features):
            if not fs.exists(stats_path):
                raise DataError(f"{stats_path}: statistics file not found")
            with fs.open(stats_path, "r") as fh:
                try:
                    stats = json.load(fh)
                except json.JSONDecodeError as e:
                    raise DataError(f"{stats_path}: not valid JSON: {e}") from None
            for f in dataset_config.features:
                if f.kind == "numeric" and f.name not in stats:
                    raise DataError(f"{stats_path}: no statistics for numeric feature {f.name!r}")
            # Keep only what the encoder uses, so the layer config stays small.
            stats = {f.name: stats[f.name] for f in dataset_config.features if f.kind == "numeric"}
        return cls(dataset_config, vocabularies, stats, **kwargs)

    def build(self, input_shape: Any = None) -> None:
        # The lookup tables depend only on the vocabularies and were made in __init__;
        # the encoder has no weights that depend on the input shape.
        self.built = True

    @property
    def vocab_sizes(self) -> dict[str, int]:
        """Embedding-table rows per categorical / multi / bucketized feature (incl. padding/OOV)."""
        return dict(self._vocab_sizes)

    @property
    def num_categories(self) -> int:
        """Rows of the category tables: the category vocabulary + row 0 (unknown)."""
        return len(self.vocabularies[CATEGORY]) + 1

    # ------------------------------------------------------------------ call

    def call(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        declared = {f.name for f in self.dataset_config.features}
        for key, value in raw.items():
            if key not in declared and key != CATEGORY:
                out[key] = value
        if CATEGORY in raw:
            out[CATEGORY] = self._encode_category(raw[CATEGORY])
        for f in self.dataset_config.features:
            if f.name == CATEGORY:
                continue
            if f.name not in raw:
                raise DataError(f"FeatureEncoder: input has no feature {f.name!r}; received keys {sorted(raw)}")
            out[f.name] = self._encode(f, raw[f.name])
        return out

    def _encode_category(self, x: Any) -> tf.Tensor:
        x = _as_vector(tf.convert_to_tensor(x) if not isinstance(x, tf.Tensor) else x)
        return tf.cast(self._category_lookup(x), tf.int32)

    def _encode(self, f: FeatureConfig, x: Any) -> tf.Tensor:
        if f.kind == "numeric":
            x = tf.cast(_as_vector(_to_tensor(x)), tf.float32)
            st = self.stats[f.name]
            missing = tf.math.is_nan(x)
            if f.transform == "normalize":
                std = float(st["std"]) if st["std"] and not math.isnan(float(st["std"])) else 1.0
                y = (x - float(st["mean"])) / std
                return tf.where(missing, tf.zeros_like(y), y)
            boundaries = [float(b) for b in st["boundaries"]]
            bucket = tf.raw_ops.Bucketize(input=x, boundaries=boundaries) + 1
            return tf.where(missing, tf.zeros_like(bucket), bucket)
        if f.kind == "multi":
            x = _to_dense_strings(x, f.max_length)
        else:
            x = _as_vector(_to_tensor(x))
        if f.hash_buckets is not None:
            ids = tf.strings.to_hash_bucket_fast(x, f.hash_buckets) + 1
            return tf.cast(tf.where(tf.equal(x, ""), tf.zeros_like(ids), ids), tf.int32)
        return tf.cast(self._lookups[f.name](x), tf.int32)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "dataset_config": dataclasses.asdict(self.dataset_config),
                "vocabularies": self.vocabularies,
                "stats": self.stats,
            }
        )
        return config


def _to_tensor(x: Any) -> Any:
    if isinstance(x, (tf.Tensor, tf.RaggedTensor, tf.SparseTensor)):
        return x
    return tf.convert_to_tensor(x)


def _as_vector(x: tf.Tensor) -> tf.Tensor:
    """[N] or [N, 1] → [N]: parsed context / sequence features often keep a unit axis."""
    if x.shape.rank == 2:
        return tf.reshape(x, [-1])
    return x


def _to_dense_strings(x: Any, max_length: int) -> tf.Tensor:
    """Ragged / sparse / dense `[N, L]` strings → dense `[N, max_length]`, padded with ""."""
    if isinstance(x, tf.SparseTensor):
        x = tf.RaggedTensor.from_sparse(x)
    if isinstance(x, tf.RaggedTensor):
        return x.to_tensor(default_value="", shape=[None, max_length])
    x = tf.convert_to_tensor(x)
    x = x[:, :max_length]
    pad = max_length - tf.shape(x)[1]
    return tf.pad(x, [[0, 0], [0, pad]], constant_values="")
