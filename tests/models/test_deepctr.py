"""DeepCTR: Convnet + Basicnet + Combnet, category pre-training, weight transfer, ensemble."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.models.model_fixtures import NUM_CATEGORIES, VOCAB_SIZES, moved, tiny_batch, tiny_config, train_step
from tfvctr.errors import TfvctrError
from tfvctr.models import (
    DeepCTR,
    DeepCTRHead,
    EnsembleModel,
    build_category_pretrainer,
    build_model,
    transfer_visual_weights,
)

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
    for bn in (deepctr.head.convnet_bn, deepctr.head.basicnet_bn):
        before = bn.moving_mean.numpy().copy()
        deepctr(tiny_batch(), training=False)
        np.testing.assert_array_equal(bn.moving_mean.numpy(), before)
        deepctr(tiny_batch(), training=True)
        assert not np.array_equal(bn.moving_mean.numpy(), before)


def test_combnet_is_two_fc_layers_over_batch_normed_convnet_and_basicnet_outputs():
    head = DeepCTRHead(
        [{"name": "device", "kind": "categorical"}], {"device": 5}, convnet_dim=3, basicnet_dim=4,
        combnet_layers=[6], dropout=0.0, seed=0,
    )
    feats = {"device": np.array([1, 4, 2], "int32")}
    x_v = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 5.0], [2.0, 2.0, 2.0]], "float32")
    z = head({"features": feats, "x_v": x_v}, training=True).numpy()
    kernels = [w for w in head.weights if w.name == "kernel"]
    assert [tuple(k.shape) for k in kernels] == [(7, 6), (6, 1)]  # FC_1 and the FC producing z (Fig. 3)
    # NumPy: batch statistics (training) normalise each stream before the concatenation (Fig. 7).
    def bn(x, layer):
        mean, var = x.mean(0), x.var(0)
        return layer.gamma.numpy() * (x - mean) / np.sqrt(var + layer.epsilon) + layer.beta.numpy()

    table = head.basicnet.weights[0].numpy()
    basic = np.maximum(table[feats["device"]] + head.basicnet_bias.numpy(), 0.0)
    h = np.concatenate([bn(x_v, head.convnet_bn), bn(basic, head.basicnet_bn)], axis=1)
    fc1, out = head.fc[0], head.out
    hidden = np.maximum(h @ fc1.kernel.numpy() + fc1.bias.numpy(), 0.0)
    np.testing.assert_allclose(z, (hidden @ out.kernel.numpy() + out.bias.numpy())[:, 0], rtol=1e-4, atol=1e-5)


def test_eq6_mean_divides_each_images_gradient_by_its_impression_count():
    batch = tiny_batch(ad_index=(0, 0, 1, 1, 1))  # k = 2 and 3
    grads, outputs = {}, {}
    for mode in ("sum", "mean"):
        model = build_model(_config(deepctr={"image_gradient": mode}), NUM_CATEGORIES, VOCAB_SIZES, seed=0)
        x = model.visual_tower({"image": batch["image"], "category": batch["category"]}, training=False)
        with tf.GradientTape() as tape:
            tape.watch(batch["image"])
            logits = model(batch, training=False)
            loss = tf.reduce_sum(logits)
        outputs[mode] = logits.numpy()
        grads[mode] = tape.gradient(loss, batch["image"]).numpy()
        assert x.shape[0] == 2
    np.testing.assert_allclose(outputs["sum"], outputs["mean"], rtol=1e-6)  # forward unchanged
    np.testing.assert_allclose(grads["mean"][0], grads["sum"][0] / 2, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(grads["mean"][1], grads["sum"][1] / 3, rtol=1e-4, atol=1e-9)


def test_shipped_deepctr_config_is_the_paper_setup():
    from tfvctr.config import load_config

    config = load_config(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "deepctr.yaml"))
    m, tr = config.model, config.training
    assert (m.architecture, m.backbone, m.attention) == ("deepctr", "deepctr17", "none")
    assert len(m.deepctr.combnet_layers) == 1 and m.deepctr.convnet_dim == 128
    assert tr.optimizer == "sgd" and tr.learning_rate == 0.1 and tr.cnn_learning_rate == 0.001
    assert tr.pretrained_cnn  # pre-training then fine-tuning


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
