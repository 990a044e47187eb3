"""FeatureEncoder: docs/formats.md §2 "Indexing", exactly, and clear errors."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfvctr.config import DatasetConfig, FeatureConfig
from tfvctr.errors import DataError
from tfvctr.features import FeatureEncoder


def _dataset(**extra):
    features = [
        FeatureConfig(name="device", source="impression", kind="categorical", vocabulary="auto"),
        FeatureConfig(name="user_id", source="impression", kind="categorical", hash_buckets=50),
        FeatureConfig(name="tags", source="impression", kind="multi", vocabulary="auto", max_length=3),
        FeatureConfig(name="position", source="impression", kind="numeric", transform="bucketize", num_buckets=3),
        FeatureConfig(name="price", source="ad", kind="numeric", transform="normalize"),
        FeatureConfig(name="category", source="ad", kind="categorical", vocabulary="auto"),
    ]
    return DatasetConfig(features=features, **extra)


VOCABS = {"device": ["ios", "android"], "tags": ["a", "b", "c"], "category": ["shoes", "hats"]}
STATS = {"position": {"boundaries": [1.0, 2.0]}, "price": {"mean": 2.0, "std": 4.0}}


def _raw(tags=None):
    return {
        "device": tf.constant(["android", "", "tablet", "ios"]),
        "user_id": tf.constant(["u1", "", "u2", "u1"]),
        "tags": tags if tags is not None else tf.ragged.constant([["c", "a", "zz", "b"], [], ["b"], ["a"]]),
        "position": tf.constant([0.5, 1.0, 5.0, float("nan")]),
        "price": tf.constant([6.0, float("nan")]),
        "category": tf.constant(["hats", "boots"]),
        "label": tf.constant([1, 0, 0, 1]),
    }


def _fingerprint_bucket(value: str, buckets: int) -> int:
    fp = tf.fingerprint(tf.constant([value]), method="farmhash64").numpy()[0]
    return int.from_bytes(bytes(fp), "little") % buckets + 1


def test_vocabulary_features_map_padding_to_0_oov_to_1_and_values_to_2_plus_line():
    out = FeatureEncoder(_dataset(), VOCABS, STATS)(_raw())
    np.testing.assert_array_equal(out["device"].numpy(), [3, 0, 1, 2])
    assert out["device"].dtype == tf.int32


def test_hashed_feature_is_1_plus_fingerprint64_mod_buckets_and_empty_is_0():
    out = FeatureEncoder(_dataset(), VOCABS, STATS)(_raw())
    expected = [_fingerprint_bucket("u1", 50), 0, _fingerprint_bucket("u2", 50), _fingerprint_bucket("u1", 50)]
    np.testing.assert_array_equal(out["user_id"].numpy(), expected)
    assert all(1 <= v <= 50 for v in expected if v)


def test_multi_valued_ragged_is_truncated_and_padded_with_0():
    out = FeatureEncoder(_dataset(), VOCABS, STATS)(_raw())
    np.testing.assert_array_equal(out["tags"].numpy(), [[4, 2, 1], [0, 0, 0], [3, 0, 0], [2, 0, 0]])


def test_multi_valued_dense_padded_input_gives_the_same_ids_as_ragged():
    dense = tf.constant([["c", "a", "zz", "b"], ["", "", "", ""], ["b", "", "", ""], ["a", "", "", ""]])
    out = FeatureEncoder(_dataset(), VOCABS, STATS)(_raw(tags=dense))
    np.testing.assert_array_equal(out["tags"].numpy(), [[4, 2, 1], [0, 0, 0], [3, 0, 0], [2, 0, 0]])
    short = tf.constant([["c"], [""], ["b"], ["a"]])
    out = FeatureEncoder(_dataset(), VOCABS, STATS)(_raw(tags=short))
    np.testing.assert_array_equal(out["tags"].numpy(), [[4, 0, 0], [0, 0, 0], [3, 0, 0], [2, 0, 0]])


def test_bucketize_is_1_plus_bucket_on_boundaries_and_nan_is_0():
    enc = FeatureEncoder(_dataset(), VOCABS, STATS)
    out = enc(_raw())
    # boundaries [1, 2]: x < 1 → bucket 0, 1 <= x < 2 → 1, x >= 2 → 2; ids = 1 + bucket.
    np.testing.assert_array_equal(out["position"].numpy(), [1, 2, 3, 0])
    assert enc.vocab_sizes["position"] == 4


def test_normalize_is_x_minus_mean_over_std_and_nan_is_0():
    out = FeatureEncoder(_dataset(), VOCABS, STATS)(_raw())
    np.testing.assert_allclose(out["price"].numpy(), [(6.0 - 2.0) / 4.0, 0.0])
    assert out["price"].dtype == tf.float32


def test_unknown_category_maps_to_0_and_known_to_1_plus_line():
    enc = FeatureEncoder(_dataset(), VOCABS, STATS)
    out = enc(_raw())
    np.testing.assert_array_equal(out["category"].numpy(), [2, 0])
    assert enc.num_categories == 3
    assert enc.vocab_sizes == {"device": 4, "user_id": 51, "tags": 5, "position": 4, "category": 3}


def test_undeclared_keys_pass_through_unchanged():
    out = FeatureEncoder(_dataset(), VOCABS, STATS)(_raw())
    np.testing.assert_array_equal(out["label"].numpy(), [1, 0, 0, 1])


def test_encoder_runs_in_tf_data_and_after_config_round_trip():
    enc = FeatureEncoder(_dataset(), VOCABS, STATS)
    eager = enc(_raw())
    revived = keras.layers.deserialize(json.loads(json.dumps(keras.layers.serialize(enc))))
    in_graph = next(iter(tf.data.Dataset.from_tensors(_raw()).map(revived)))
    for key in eager:
        np.testing.assert_array_equal(eager[key].numpy(), in_graph[key].numpy())


def _write_data_dir(tmp_path, vocabs=VOCABS, stats=STATS):
    (tmp_path / "vocab").mkdir()
    for name, values in vocabs.items():
        (tmp_path / "vocab" / f"{name}.txt").write_text("\n".join(values) + "\n")
    if stats is not None:
        (tmp_path / "stats.json").write_text(json.dumps({**stats, "label": {"count": 4, "positives": 2}}))
    return str(tmp_path)


def test_from_data_dir_reads_vocab_and_stats_files(tmp_path):
    enc = FeatureEncoder.from_data_dir(_dataset(), _write_data_dir(tmp_path))
    np.testing.assert_array_equal(enc(_raw())["device"].numpy(), [3, 0, 1, 2])
    assert enc.vocab_sizes["tags"] == 5


def test_missing_vocabulary_file_names_the_file(tmp_path):
    data_dir = _write_data_dir(tmp_path, vocabs={"device": ["ios"], "category": ["shoes"]})
    with pytest.raises(DataError, match=r"vocab/tags\.txt: vocabulary file for feature 'tags' not found"):
        FeatureEncoder.from_data_dir(_dataset(), data_dir)


def test_missing_stats_file_and_missing_numeric_stats_are_data_errors(tmp_path):
    data_dir = _write_data_dir(tmp_path, stats=None)
    with pytest.raises(DataError, match=r"stats\.json: statistics file not found"):
        FeatureEncoder.from_data_dir(_dataset(), data_dir)
    (tmp_path / "stats.json").write_text(json.dumps({"position": {"boundaries": [1.0]}}))
    with pytest.raises(DataError, match=r"stats\.json: no statistics for numeric feature 'price'"):
        FeatureEncoder.from_data_dir(_dataset(), data_dir)


def test_missing_feature_in_input_is_a_data_error():
    raw = _raw()
    del raw["device"]
    with pytest.raises(DataError, match="input has no feature 'device'"):
        FeatureEncoder(_dataset(), VOCABS, STATS)(raw)
