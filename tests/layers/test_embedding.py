"""NonVisualEmbedding: per-field lookups, pooling without padding, sparse FC == one-hot matmul."""

import numpy as np
import pytest

from tests.layer_testing import run_layer_test
from tfvctr.layers.embedding import NonVisualEmbedding

FEATURES = [
    {"name": "device", "kind": "categorical", "embedding_dim": 2},
    {"name": "tags_sum", "kind": "multi", "embedding_dim": 3, "combiner": "sum"},
    {"name": "tags_mean", "kind": "multi", "embedding_dim": 3, "combiner": "mean"},
    {"name": "price", "kind": "numeric", "transform": "normalize"},
    {"name": "position", "kind": "numeric", "transform": "bucketize", "embedding_dim": 2},
]
SIZES = {"device": 4, "tags_sum": 6, "tags_mean": 6, "position": 5}
INPUTS = {
    "device": np.array([3, 0, 1], "int32"),
    "tags_sum": np.array([[1, 2, 0], [0, 0, 0], [5, 5, 3]], "int32"),
    "tags_mean": np.array([[1, 2, 0], [0, 0, 0], [5, 5, 3]], "int32"),
    "price": np.array([0.5, -1.0, 2.0], "float32"),
    "position": np.array([1, 4, 0], "int32"),
}


def _reference(layer, inputs):
    tables = {name: np.asarray(w) for name, w in layer.tables.items()}
    parts = []
    for spec in FEATURES:
        x = inputs[spec["name"]]
        if spec["kind"] == "numeric" and spec["transform"] == "normalize":
            parts.append(x[:, None])
        elif spec["kind"] == "multi":
            rows = []
            for ids in x:
                vals = [tables[spec["name"]][i] for i in ids if i != 0]
                total = np.sum(vals, axis=0) if vals else np.zeros(spec["embedding_dim"])
                rows.append(total / max(len(vals), 1) if spec["combiner"] == "mean" else total)
            parts.append(np.stack(rows))
        else:
            parts.append(tables[spec["name"]][x])
    return np.concatenate(parts, axis=1)


def test_layer_contract():
    run_layer_test(
        NonVisualEmbedding,
        {"features": FEATURES, "vocab_sizes": SIZES, "merge": "concat", "seed": 3},
        INPUTS,
        expected_output_shape=(3, 2 + 3 + 3 + 1 + 2),
        expected_num_trainable_weights=4,
    )


def test_concat_matches_numpy_sum_and_mean_pooling_ignoring_padding():
    layer = NonVisualEmbedding(FEATURES, SIZES, seed=0)
    out = np.asarray(layer(INPUTS))
    np.testing.assert_allclose(out, _reference(layer, INPUTS), atol=1e-6)
    # An all-padding list pools to zeros; the padding row itself is never read.
    np.testing.assert_array_equal(out[1, 2:8], np.zeros(6))


def test_sum_merge_equals_dense_one_hot_matmul():
    # DeepCTR Eq. 4: Y = V W with V the one-hot (multi: counts / mean weights) basic features.
    feats = [
        {"name": "device", "kind": "categorical"},
        {"name": "tags", "kind": "multi", "combiner": "sum"},
        {"name": "price", "kind": "numeric", "transform": "normalize"},
    ]
    sizes = {"device": 4, "tags": 6}
    layer = NonVisualEmbedding(feats, sizes, merge="sum", embedding_dim=5, seed=1)
    inputs = {"device": INPUTS["device"], "tags": INPUTS["tags_sum"], "price": INPUTS["price"]}
    out = np.asarray(layer(inputs))
    w = np.concatenate([np.asarray(layer.tables["device"]), np.asarray(layer.tables["tags"]), np.asarray(layer.tables["price"])])
    v = np.zeros((3, 4 + 6 + 1), "float32")
    for n in range(3):
        v[n, inputs["device"][n]] = 1.0
        for t in inputs["tags"][n]:
            if t:
                v[n, 4 + t] += 1.0
        v[n, 10] = inputs["price"][n]
    np.testing.assert_allclose(out, v @ w, atol=1e-6)
    assert layer.output_dim == 5


def test_gradient_reaches_only_looked_up_rows():
    import tensorflow as tf

    layer = NonVisualEmbedding([{"name": "device", "kind": "categorical"}], {"device": 100}, seed=0)
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(layer({"device": np.array([3, 3, 7], "int32")}))
    grad = tape.gradient(y, layer.tables["device"])
    assert isinstance(grad, tf.IndexedSlices)  # sparse update, DeepCTR Eq. 5
    dense = tf.convert_to_tensor(grad).numpy()
    assert set(np.nonzero(dense.any(axis=1))[0]) == {3, 7}


def test_missing_vocab_size_is_rejected():
    with pytest.raises(ValueError, match="Expected a size for feature 'device'"):
        NonVisualEmbedding([{"name": "device", "kind": "categorical"}], {})


def test_sum_merge_with_mixed_widths_is_rejected():
    with pytest.raises(ValueError, match=r"Expected one width for merge='sum'"):
        NonVisualEmbedding(FEATURES, SIZES, merge="sum")


def test_invalid_merge_is_rejected():
    with pytest.raises(ValueError, match=r"Received: merge='max'"):
        NonVisualEmbedding(FEATURES, SIZES, merge="max")
