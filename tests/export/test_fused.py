"""The one-gather serving path (tfvctr.export.fused) of all-hashed DCN heads, checked like any export."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf

from tests.export.conftest import write_model_dir
from tfvctr.config import FeatureConfig
from tfvctr.export import export_model
from tfvctr.export.fused import applies
from tfvctr.export.signature import DEFAULT_SIGNATURE, input_specs
from tfvctr.export.warmup import sample_rows


def test_an_all_hashed_model_is_served_through_the_fused_path_and_passes_the_check(tiny, tmp_path):
    # Bucket counts out of order (50, 30, 50, 100): the fields come back from the hash groups
    # in a permuted order and must be put back.
    hashed = [FeatureConfig(name=n, source=s, kind="categorical", hash_buckets=b, embedding_dim=4)
              for n, s, b in (("user_age", "impression", 50), ("device", "impression", 30),
                              ("hour", "impression", 50), ("brand", "ad", 100))]
    config = dataclasses.replace(tiny["config"], dataset=dataclasses.replace(tiny["config"].dataset, features=hashed))
    model_dir = str(tmp_path / "model")
    write_model_dir(config, tiny["data"], model_dir)
    info = export_model(model_dir, tiny["table"], str(tmp_path / "serving"), sample_rows=20)
    assert info["fused_path"] is True  # and the fresh-process check against the Keras model passed:
    assert info["check"]["max_abs_diff_logit"] <= 1e-5 and info["check"]["rows"] == 1 + 10 + 20 + 20 + 10

    rows = sample_rows(config, tiny["data"], 8)
    rows["device"][0], rows["brand"][1] = b"", b"never-seen-brand"  # padding id 0; any string hashes
    fn = tf.saved_model.load(info["path"]).signatures[DEFAULT_SIGNATURE]
    served = fn(**{k: tf.constant(rows[k]) for k in input_specs(config)})
    import keras

    import tfvctr.models  # noqa: F401
    from tfvctr.features import FeatureEncoder

    model = keras.saving.load_model(os.path.join(model_dir, "model.keras"), compile=False)
    encoder = FeatureEncoder.from_data_dir(config.dataset, tiny["data"])
    encoded = encoder({k: tf.constant(rows[k]) for k in input_specs(config) if k != "ad_id"})
    shard = np.load(os.path.join(tiny["table"], "part-00000.npz"))
    index = {a: i for i, a in enumerate(shard["ad_id"].tolist())}
    x_v = shard["vectors"][[index[a.decode()] for a in rows["ad_id"]]].astype(np.float32)
    expected = model.head({"features": {n: encoded[n] for n in [f.name for f in hashed] + ["category"]},
                           "x_v": x_v}, training=False)
    np.testing.assert_allclose(served["logit"].numpy(), np.asarray(expected), atol=1e-5, rtol=0)


def test_the_fused_path_does_not_apply_to_vocabulary_multi_or_numeric_fields(tiny):
    import keras

    import tfvctr.models  # noqa: F401

    model = keras.saving.load_model(os.path.join(tiny["model"], "model.keras"), compile=False)
    assert not applies(tiny["config"], model.head)
