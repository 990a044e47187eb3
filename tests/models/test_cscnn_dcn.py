"""CSCNN-DCN and the DCN baseline: shapes, grouped forward pass, variable split, saving."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.models.model_fixtures import NUM_CATEGORIES, VOCAB_SIZES, moved, tiny_batch, tiny_config, train_step
from tfvctr.models import CSCNNDCN, DCNHead, build_model

LABELS = tf.constant([1.0, 0.0, 0.0, 1.0, 0.0])


@pytest.fixture(scope="module")
def cscnn_dcn():
    return build_model(tiny_config("cscnn_dcn"), NUM_CATEGORIES, VOCAB_SIZES, seed=0)


def test_forward_gives_one_logit_per_impression(cscnn_dcn):
    logits = cscnn_dcn(tiny_batch(), training=False)
    assert logits.shape == (5,)
    assert isinstance(cscnn_dcn, CSCNNDCN)
    assert cscnn_dcn.visual_tower.output.shape == (None, 4)


def test_visual_and_non_visual_variables_partition_trainable_variables(cscnn_dcn):
    visual = {id(v) for v in cscnn_dcn.visual_variables}
    non_visual = {id(v) for v in cscnn_dcn.non_visual_variables}
    assert visual and non_visual and not visual & non_visual
    assert visual | non_visual == {id(v) for v in cscnn_dcn.trainable_variables}


def test_one_step_changes_visual_and_non_visual_variables():
    model = build_model(tiny_config("cscnn_dcn"), NUM_CATEGORIES, VOCAB_SIZES, seed=1)
    old, grads = train_step(model, tiny_batch(), LABELS)
    assert moved(model, model.visual_variables, old)
    assert moved(model, model.non_visual_variables, old)


def test_tower_runs_once_per_ad_and_image_gradient_sums_over_impressions(cscnn_dcn):
    # The same ad with 3 identical impressions vs once: the tower sees one image either
    # way, and d(sum logits)/d(image) is 3 times the single-impression gradient (Eq. 6).
    one = tiny_batch(ad_index=(0,))
    three = {k: v for k, v in one.items()}
    three["ad_index"] = tf.constant([0, 0, 0], tf.int32)
    for key in ("user_id", "device", "tags"):
        three[key] = tf.repeat(one[key], 3, axis=0)
    calls = []
    tower_call = cscnn_dcn.visual_tower.call

    def counting_call(inputs, *args, **kwargs):
        calls.append(int(inputs["image"].shape[0]))
        return tower_call(inputs, *args, **kwargs)

    grads = []
    cscnn_dcn.visual_tower.call = counting_call
    try:
        for batch in (one, three):
            image = tf.Variable(batch["image"])
            with tf.GradientTape() as tape:
                y = tf.reduce_sum(cscnn_dcn({**batch, "image": image}, training=False))
            grads.append(tape.gradient(y, image).numpy())
    finally:
        del cscnn_dcn.visual_tower.call
    assert calls == [1, 1]
    np.testing.assert_allclose(grads[1], 3.0 * grads[0], rtol=1e-4, atol=1e-7)


def test_ad_features_are_gathered_to_impressions(cscnn_dcn):
    batch = tiny_batch()
    features = cscnn_dcn.gather_features(batch)
    np.testing.assert_array_equal(features["price"].numpy(), tf.gather(batch["price"], batch["ad_index"]).numpy())
    np.testing.assert_array_equal(features["category"].numpy(), tf.gather(batch["category"], batch["ad_index"]).numpy())
    assert features["device"].shape == (5,)


def test_head_alone_matches_the_model_given_the_tower_output(cscnn_dcn):
    batch = tiny_batch()
    x_v = tf.gather(cscnn_dcn.visual_tower({"image": batch["image"], "category": batch["category"]}), batch["ad_index"])
    head_logits = cscnn_dcn.head({"features": cscnn_dcn.gather_features(batch), "x_v": x_v})
    np.testing.assert_allclose(head_logits.numpy(), cscnn_dcn(batch).numpy(), atol=1e-6)


def test_keras_round_trip_gives_identical_logits(cscnn_dcn, tmp_path):
    path = os.path.join(tmp_path, "model.keras")
    cscnn_dcn.save(path)
    reloaded = keras.saving.load_model(path)
    batch = tiny_batch(seed=3)
    np.testing.assert_array_equal(reloaded(batch).numpy(), cscnn_dcn(batch).numpy())
    assert len(reloaded.visual_variables) == len(cscnn_dcn.visual_variables)


def test_dcn_has_no_tower_and_needs_no_image(tmp_path):
    model = build_model(tiny_config("dcn"), NUM_CATEGORIES, VOCAB_SIZES, seed=0)
    assert model.visual_tower is None and model.visual_variables == []
    batch = tiny_batch()
    del batch["image"]
    assert model(batch).shape == (5,)
    old, _ = train_step(model, batch, LABELS)
    assert moved(model, model.non_visual_variables, old)
    path = os.path.join(tmp_path, "dcn.keras")
    model.save(path)
    np.testing.assert_array_equal(keras.saving.load_model(path)(batch).numpy(), model(batch).numpy())


def test_cross_v2_with_projection_builds_and_saves(tmp_path):
    model = build_model(tiny_config("dcn", cross_type="v2", projection_dim=2), NUM_CATEGORIES, VOCAB_SIZES, seed=0)
    batch = tiny_batch()
    path = os.path.join(tmp_path, "v2.keras")
    model.save(path)
    np.testing.assert_array_equal(keras.saving.load_model(path)(batch).numpy(), model(batch).numpy())


def test_head_matches_eqs_3_to_6_by_hand():
    # One categorical field with a fixed table, 1 deep layer, 1 cross layer; recompute in NumPy.
    head = DCNHead([{"name": "d", "kind": "categorical", "embedding_dim": 2}], {"d": 3}, visual_dim=1,
                   deep_layers=[2], cross_layers=1, seed=0)
    head.build(None)
    ids, x_v = np.array([2, 1], "int32"), np.array([[0.5], [-1.0]], "float32")
    out = head({"features": {"d": ids}, "x_v": x_v}).numpy()
    table = head.embedding.tables["d"].numpy()
    x_nv = table[ids]
    w1, b1 = head.deep[0].kernel.numpy(), head.deep[0].bias.numpy()
    h = np.concatenate([x_v, np.maximum(x_nv @ w1 + b1, 0)], axis=1)  # Eq. 3
    w, b = head.cross.kernels[0].numpy(), head.cross.biases[0].numpy()
    z = x_nv * (x_nv @ w)[:, None] + b + x_nv  # Eq. 5
    wo, bo = head.out.kernel.numpy(), head.out.bias.numpy()
    np.testing.assert_allclose(out, (np.concatenate([h, z], axis=1) @ wo + bo)[:, 0], atol=1e-5)  # Eq. 6 logit


def test_head_layer_contract():
    from tests.layer_testing import run_layer_test

    features = [{"name": "d", "kind": "categorical", "embedding_dim": 2}, {"name": "p", "kind": "numeric", "transform": "normalize"}]
    run_layer_test(
        DCNHead,
        {"features": features, "vocab_sizes": {"d": 4}, "visual_dim": 3, "deep_layers": [4, 2], "cross_layers": 1, "seed": 0},
        {"features": {"d": np.array([1, 3], "int32"), "p": np.array([0.5, -1.0], "float32")}, "x_v": np.ones((2, 3), "float32")},
        expected_output_shape=(2,),
        expected_num_trainable_weights=1 + 4 + 2 + 2,
    )
