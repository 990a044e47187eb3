"""Tests of tfvctr.models.visual_tower: image + category -> x_v, saved and reloaded as .keras."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfvctr.config import ModelConfig
from tfvctr.models.visual_tower import build_visual_tower

NUM_CATEGORIES = 4


def _config(**overrides) -> ModelConfig:
    return ModelConfig(
        **{"backbone": "resnet18", "backbone_width": 1 / 16, "visual_dim": 6, "spatial_prior_size": 3, **overrides}
    )


def _batch(categories) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    n = len(categories)
    return {"image": rng.uniform(size=(n, 16, 16, 3)).astype("float32"), "category": np.array(categories, "int32")}


@pytest.mark.parametrize("backbone", ["cnnf", "deepctr17"])
def test_tower_maps_images_to_visual_dim(backbone):
    tower = build_visual_tower(
        _config(backbone=backbone, visual_dim=7), image_size=16, num_categories=NUM_CATEGORIES, seed=0
    )
    out = tower(_batch([1, 2, 3]))
    assert tuple(out.shape) == (3, 7)
    assert set(tower.input) == {"image", "category"}
    assert tower.get_layer(f"{backbone}_backbone") is not None


def test_tower_follows_the_attention_settings_of_the_config():
    tower = build_visual_tower(
        _config(attention="cbam", attention_layers=2), image_size=16, num_categories=NUM_CATEGORIES
    )
    backbone = tower.get_layer("resnet18_backbone")
    assert [layer.name for layer in backbone.layers if layer.name.endswith("_attention")] == [
        "conv5_block2_1_attention",
        "conv5_block2_2_attention",
    ]


def test_keras_save_and_load_gives_identical_outputs_for_known_and_unknown_categories(tmp_path):
    tower = build_visual_tower(_config(attention="cscnn"), image_size=16, num_categories=NUM_CATEGORIES, seed=2)
    batch = _batch([0, 1, 3, 99, -5])  # 99 and -5 are out of range: the unknown row
    batch["image"][:] = batch["image"][0]
    before = keras.ops.convert_to_numpy(tower(batch))
    path = os.path.join(tmp_path, "tower.keras")
    tower.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(reloaded(batch)), before)
    np.testing.assert_allclose(before[3], before[0], atol=1e-6)
    np.testing.assert_allclose(before[4], before[0], atol=1e-6)


def test_category_changes_the_visual_feature_of_the_same_image():
    tower = build_visual_tower(_config(attention="cscnn"), image_size=16, num_categories=NUM_CATEGORIES, seed=3)
    batch = _batch([1, 2])
    batch["image"][1] = batch["image"][0]
    out = keras.ops.convert_to_numpy(tower(batch))
    assert np.max(np.abs(out[0] - out[1])) > 1e-5


def test_training_step_reaches_the_category_priors_of_every_attended_layer():
    tower = build_visual_tower(
        _config(attention="cscnn", attention_layers=4), image_size=16, num_categories=NUM_CATEGORIES, seed=4
    )
    batch = _batch([1, 2])
    priors = [w for w in tower.trainable_weights if "prior" in w.path]
    assert len(priors) == 2 * 4  # a channel and a spatial prior per attended layer
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(tower(batch, training=True)))
    grads = tape.gradient(loss, priors)
    for prior, grad in zip(priors, grads, strict=True):
        assert np.abs(tf.convert_to_tensor(grad).numpy()).sum() > 0, prior.path
