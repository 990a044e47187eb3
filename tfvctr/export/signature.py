"""The serving graph: raw features + ad_id → ctr, logit, in_table (docs/export.md).

`ServingModule` holds the trained model's head and visual tower, the training-time
`FeatureEncoder` (so ids are computed by the very same ops), the table rows as a
variable and the ad_id → row map as a `StaticHashTable` over an asset file. Its two
`tf.function`s become the SavedModel's signatures `serving_default` and
`score_with_image`.
"""

from __future__ import annotations

from typing import Any, Mapping

import tensorflow as tf

from tfvctr.config import Config, FeatureConfig
from tfvctr.data import decode_image
from tfvctr.errors import ConfigError
from tfvctr.export.fused import FusedDCN
from tfvctr.export.fused import applies as fused_applies
from tfvctr.export.table import Table
from tfvctr.features import CATEGORY

AD_ID = "ad_id"
IMAGE_BYTES = "image_bytes"
OUTPUTS = ("ctr", "logit", "in_table")
DEFAULT_SIGNATURE = "serving_default"
IMAGE_SIGNATURE = "score_with_image"


def _spec(f: FeatureConfig) -> tf.TensorSpec:
    if f.kind == "numeric":
        return tf.TensorSpec([None], tf.float32, name=f.name)
    if f.kind == "multi":
        return tf.TensorSpec([None, None], tf.string, name=f.name)
    return tf.TensorSpec([None], tf.string, name=f.name)


def input_specs(config: Config, with_image: bool = False) -> dict[str, tf.TensorSpec]:
    """The signature inputs: `ad_id`, `category`, every declared feature (raw), [`image_bytes`]."""
    specs = {AD_ID: tf.TensorSpec([None], tf.string, name=AD_ID),
             CATEGORY: tf.TensorSpec([None], tf.string, name=CATEGORY)}
    for f in config.dataset.features:
        if f.name in (AD_ID, IMAGE_BYTES):
            raise ConfigError(f"feature {f.name!r}: the name is an input of the serving signature; rename the feature")
        if f.name != CATEGORY:
            specs[f.name] = _spec(f)
    if with_image:
        specs[IMAGE_BYTES] = tf.TensorSpec([None], tf.string, name=IMAGE_BYTES)
    return specs


class ServingModule:
    """The exported computation. `ad_ids_path` is the asset file written by `table.write_ad_ids`.

    Written with Keras' `ExportArchive` (`write`), which saves the *TensorFlow* variables
    the signatures capture: a `tf.Module` holding the Keras layers saves their Keras
    variable wrappers instead, and TF Serving's TF1 loader then finds the captured
    variables uninitialised ("Could not find variable head/logit/kernel"; measured).
    Lookup tables (the encoder's vocabularies, the ad_id map) are tracked explicitly,
    or the SavedModel's init op would not fill them.

    Args:
        config: the model's config.
        model: the trained `CTRModel` (its `head` and `visual_tower` are used).
        encoder: the `FeatureEncoder` of the training data.
        table: the checked table (`tfvctr.export.table.load_table`).
        ad_ids_path: the asset file (one ad_id per line, line i = row i).
    """

    def __init__(self, config: Config, model: Any, encoder: Any, table: Table, ad_ids_path: str,
                 fused: bool = True, jit: bool = False, logit_offset: float = 0.0, bf16: bool = False,
                 logit_scale: float = 1.0) -> None:
        self._config = config
        # log(w) of negative downsampling (tfvctr.daily.recalibration): logit(q) = logit(p) + log(w)
        # is He et al. 2014's q = p / (p + (1 - p) / w), so `logit` and `ctr` both come out calibrated.
        self._logit_offset = float(logit_offset)
        # Platt's slope (training.calibration: platt, tfvctr.calibration.transform): the served logit
        # is scale · logit + offset with offset = a · log(w) + b; 1.0 leaves the graph as before.
        self._logit_scale = float(logit_scale)
        self.model = model
        self.encoder = encoder
        # The one-gather path for all-hashed DCN heads (tfvctr.export.fused), when it applies.
        self.fused = FusedDCN(config, model.head, jit=jit, bf16=bf16) if fused and fused_applies(config, model.head) else None
        if self.fused is not None:
            # Only the category id is needed from the vocabularies: the same ids as the encoder's
            # (0 = unknown, 1 + line of vocab/category.txt), without encoding every field again.
            categories = encoder.vocabularies[CATEGORY]
            self.category_ids = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                tf.constant(categories, tf.string), tf.range(1, len(categories) + 1, dtype=tf.int64)), default_value=0)
        self._num_rows = table.rows
        self._image_size = config.dataset.image_size
        # A variable, so the rows go to the variables shards and never into the GraphDef.
        self.table = tf.Variable(table.all_rows(), trainable=False, name="visual_table")
        self.ad_ids_file = tf.saved_model.Asset(ad_ids_path)
        initializer = tf.lookup.TextFileInitializer(
            self.ad_ids_file, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
            tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER)
        self.rows = tf.lookup.StaticHashTable(initializer, default_value=-1)

    # ------------------------------------------------------------------ graph pieces

    def _features(self, inputs: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        raw = {k: v for k, v in inputs.items() if k not in (AD_ID, IMAGE_BYTES)}
        encoded = self.encoder(raw)
        return {k: encoded[k] for k in [f.name for f in self._config.dataset.features] + [CATEGORY]}

    def _table_lookup(self, ad_id: tf.Tensor, category: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        row = self.rows.lookup(ad_id)
        in_table = row >= 0
        index = tf.where(in_table, row, self._num_rows + tf.cast(category, tf.int64))
        return tf.cast(tf.gather(self.table, index), tf.float32), in_table

    def _head(self, features: dict, x_v: tf.Tensor, in_table: tf.Tensor) -> dict[str, tf.Tensor]:
        logit = tf.cast(self.model.head({"features": features, "x_v": x_v}, training=False), tf.float32)
        return self._outputs(logit, in_table)

    def _decode(self, image_bytes: tf.Tensor) -> tf.Tensor:
        size = self._image_size

        def one(encoded: tf.Tensor) -> tf.Tensor:
            image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
            shape = tf.shape(image)
            same = tf.logical_and(tf.equal(shape[0], size), tf.equal(shape[1], size))
            image = tf.image.convert_image_dtype(image, tf.float32)
            # Prepared images (image_size², docs/formats.md §2) go exactly as the trainer's
            # decoder takes them; other sizes are squashed as the Beam jobs do (bilinear).
            return tf.cond(same, lambda: decode_image(encoded, size),
                           lambda: tf.image.resize(image, [size, size], method="bilinear"))

        return tf.map_fn(one, image_bytes, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))

    # ------------------------------------------------------------------ signatures

    def _outputs(self, logit: tf.Tensor, in_table: tf.Tensor) -> dict[str, tf.Tensor]:
        if self._logit_scale != 1.0:
            logit = logit * self._logit_scale  # Platt's slope (post-hoc calibration on the valid split)
        if self._logit_offset:
            logit = logit + self._logit_offset  # recalibrated (negative downsampling; + Platt's intercept)
        return {"ctr": tf.sigmoid(logit), "logit": logit, "in_table": in_table}

    def _serve(self, inputs: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        if self.fused is not None:
            category = tf.cast(self.category_ids.lookup(inputs[CATEGORY]), tf.int32)
            x_v, in_table = self._table_lookup(inputs[AD_ID], category)
            return self._outputs(self.fused.logit(inputs, x_v), in_table)
        features = self._features(inputs)
        x_v, in_table = self._table_lookup(inputs[AD_ID], features[CATEGORY])
        return self._head(features, x_v, in_table)

    def _serve_with_image(self, inputs: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        if self.fused is not None:
            category = tf.cast(self.category_ids.lookup(inputs[CATEGORY]), tf.int32)
        else:
            features = self._features(inputs)
            category = features[CATEGORY]
        _, in_table = self._table_lookup(inputs[AD_ID], category)
        image = self._decode(inputs[IMAGE_BYTES])
        x_v = tf.cast(self.model.visual_tower({"image": image, "category": category}, training=False), tf.float32)
        if self.fused is not None:
            return self._outputs(self.fused.logit(inputs, x_v), in_table)
        return self._head(features, x_v, in_table)

    def write(self, path: str) -> None:
        """Saves the SavedModel with `serving_default` and `score_with_image`."""
        import keras

        archive = keras.export.ExportArchive()
        if not self.encoder.built:
            self.encoder.build(None)  # no weights: its lookup tables exist since __init__
        archive.track(self.encoder)
        archive.track(self.rows)
        if self.fused is not None:
            archive.track(self.category_ids)
        archive.add_endpoint(DEFAULT_SIGNATURE, self._serve, input_signature=[input_specs(self._config)])
        archive.add_endpoint(IMAGE_SIGNATURE, self._serve_with_image,
                             input_signature=[input_specs(self._config, with_image=True)])
        archive.write_out(path, verbose=False)
