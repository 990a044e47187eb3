"""Small SavedModels for the serving tests: string/float/bool inputs and outputs, several
signatures, any version number. Built with `tf.saved_model.save` from a `tf.Module`, as a
Keras-free stand-in for `tfvctr export` (same signature names and dtypes)."""

from __future__ import annotations

import os

import tensorflow as tf

KNOWN_ADS = ("ad1", "ad2", "ad3")


class CtrModule(tf.Module):
    """logit = scale * price + (hash(ad_id) mod 100) / 100 - 0.5 + 0.1 * len(tags); ctr = sigmoid(logit)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = tf.Variable(scale, dtype=tf.float32)
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(KNOWN_ADS), tf.ones([len(KNOWN_ADS)], tf.int64)), default_value=0
        )

    def _score(self, ad_id, category, price, tags, extra):
        h = tf.cast(tf.strings.to_hash_bucket_fast(ad_id, 100), tf.float32) / 100.0 - 0.5
        n_tags = tf.cast(tf.reduce_sum(tf.cast(tf.strings.length(tags) > 0, tf.int32), axis=1), tf.float32)
        cat = tf.where(tf.equal(category, "shoes"), 0.25, 0.0)
        logit = self.scale * price + h + 0.1 * n_tags + cat + extra
        return {"ctr": tf.sigmoid(logit), "logit": logit, "in_table": self.table.lookup(ad_id) > 0}

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name="ad_id"), tf.TensorSpec([None], tf.string, name="category"),
        tf.TensorSpec([None], tf.float32, name="price"), tf.TensorSpec([None, None], tf.string, name="tags")])
    def serve(self, ad_id, category, price, tags):
        return self._score(ad_id, category, price, tags, 0.0)

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name="ad_id"), tf.TensorSpec([None], tf.string, name="category"),
        tf.TensorSpec([None], tf.float32, name="price"), tf.TensorSpec([None, None], tf.string, name="tags"),
        tf.TensorSpec([None], tf.string, name="image_bytes")])
    def score_with_image(self, ad_id, category, price, tags, image_bytes):
        extra = tf.cast(tf.strings.length(image_bytes), tf.float32) / 100.0
        return self._score(ad_id, category, price, tags, extra)

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    def half_plus_two(self, x):
        return {"y": 0.5 * x * self.scale + 2.0}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="payload"), tf.TensorSpec([None], tf.int64, name="n")])
    def echo(self, payload, n):
        return {"payload_bytes": payload, "text": payload, "n2": n * 2, "ok": n > 0}


    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="n")])
    def spin(self, n):
        """Loops n[0] times: a request that outlives any timeout (the per-request timeout test)."""
        _, acc = tf.while_loop(lambda i, a: i < n[0], lambda i, a: (i + 1, a + tf.sin(tf.cast(i, tf.float32))),
                               (tf.constant(0, tf.int64), tf.constant(0.0)))
        return {"acc": tf.fill(tf.shape(n), acc)}


def build(base_path: str, version: int, scale: float | None = None) -> str:
    """Writes version `version` of the test model under `base_path`; returns its folder."""
    module = CtrModule(float(version) if scale is None else scale)
    path = os.path.join(base_path, str(version))
    tf.saved_model.save(module, path, signatures={
        "serving_default": module.serve, "score_with_image": module.score_with_image,
        "half_plus_two": module.half_plus_two, "echo": module.echo, "spin": module.spin,
    })
    return path


CONFIG = """model_config_list {{
  config {{
    name: "ctr"
    base_path: "{base}"
    model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
}}
"""


def write_test_models(out: str, base_path_in_config: str | None = None) -> str:
    """OUT/ctr/1, OUT/ctr/2 and OUT/models.config (versions 1 and 2, labels stable=1, canary=2).

    `base_path_in_config="/models/ctr"` writes the file for `docker run -v OUT:/models`.
    """
    build(os.path.join(out, "ctr"), 1)
    build(os.path.join(out, "ctr"), 2)
    path = os.path.join(out, "models.config")
    with open(path, "w") as f:
        f.write(CONFIG.format(base=base_path_in_config or os.path.join(out, "ctr")))
    return path


if __name__ == "__main__":
    # For the contract suite against real TF Serving (docs/serving.md):
    #   python tests/serving/model_factory.py OUT && docker run -v OUT:/models ... --model_config_file=/models/models.config
    import sys

    print(write_test_models(os.path.abspath(sys.argv[1]), base_path_in_config="/models/ctr"))
