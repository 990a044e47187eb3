"""DeepCTR: Convnet + Basicnet + Combnet, category pre-training, weight transfer, ensemble."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.models.model_fixtures import NUM_CATEGORIES, VOCAB_SIZES, moved, tiny_batch, tiny_config, train_step
from tfvctr.errors import TfvctrError
from tfvctr.models import DeepCTR, EnsembleModel, build_category_pretrainer, build_model, transfer_visual_weights

LABELS = tf.constant([1.0, 0.0, 0.0, 1.0, 0.0])


def _config(**model):
    return tiny_config("deepctr", backbone="deepctr17", attention="none", **model)


@pytest.fixture(scope="module")
def deepctr():
    return build_model(_config(), NUM_CATEGORIES, VOCAB_SIZES, seed=0)


def test_forward_gives_logits_and_convnet_has_convnet_dim(deepctr):
    assert isinstance(deepctr, DeepCTR)
    assert deepctr(tiny_batch(), training=True).shape == (5,)
    assert deepctr.visual_tower.output.shape == (None, 4)  # deepctr.convnet_dim


def test_one_step_changes_convnet_and_basicnet(deepctr):
    old, _ = train_step(deepctr, tiny_batch(), LABELS)
    assert moved(deepctr, deepctr.visual_variables, old)
    assert moved(deepctr, deepctr.head.basicnet.trainable_variables, old)


def test_combnet_uses_batch_norm_statistics_in_training_only(deepctr):
    bn = deepctr.head.bn[0]
    before = bn.moving_mean.numpy().copy()
    deepctr(tiny_batch(), training=False)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), before)
    deepctr(tiny_batch(), training=True)
    assert not np.array_equal(bn.moving_mean.numpy(), before)


def test_keras_round_trip_gives_identical_logits(deepctr, tmp_path):
    path = os.path.join(tmp_path, "deepctr.keras")
    deepctr.save(path)
    batch = tiny_batch(seed=2)
    np.testing.assert_array_equal(keras.saving.load_model(path)(batch).numpy(), deepctr(batch).numpy())


def test_pretrainer_outputs_category_probabilities_and_transfers_its_convnet():
    config = _config()
    pretrainer = build_category_pretrainer(config, NUM_CATEGORIES, hidden_units=(8, 8), seed=5)
    image = tiny_batch()["image"]
    probs = pretrainer({"image": image}).numpy()
    assert probs.shape == (2, NUM_CATEGORIES)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    model = build_model(config, NUM_CATEGORIES, VOCAB_SIZES, seed=0)
    src = pretrainer.get_layer("visual_tower")
    inputs = {"image": image, "category": tf.constant([1, 2])}
    assert not np.allclose(src(inputs).numpy(), model.visual_tower(inputs).numpy())
    copied = transfer_visual_weights(src, model.visual_tower)
    assert "visual_projection" in copied
    np.testing.assert_allclose(src(inputs).numpy(), model.visual_tower(inputs).numpy(), atol=1e-6)


def test_transfer_between_unrelated_models_is_an_error():
    a = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="a")])
    b = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="b")])
    with pytest.raises(TfvctrError, match="no layer of .* matches"):
        transfer_visual_weights(a, b)


def test_ensemble_returns_logit_of_mean_probability(tmp_path):
    config = tiny_config("dcn")
    members = [build_model(config, NUM_CATEGORIES, VOCAB_SIZES, seed=s) for s in (0, 1, 2)]
    ensemble = EnsembleModel(members)
    batch = tiny_batch()
    expected = np.mean([tf.sigmoid(m(batch)).numpy() for m in members], axis=0)
    np.testing.assert_allclose(tf.sigmoid(ensemble(batch)).numpy(), expected, atol=1e-6)
    path = os.path.join(tmp_path, "ensemble.keras")
    ensemble.save(path)
    np.testing.assert_allclose(keras.saving.load_model(path)(batch).numpy(), ensemble(batch).numpy(), atol=1e-6)
