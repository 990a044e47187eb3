"""VBPR family (CSCNN Eq. 12): every variant builds, and its distinguishing property holds."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.models.model_fixtures import (
    FEATURES,
    NUM_CATEGORIES,
    VOCAB_SIZES,
    moved,
    tiny_batch,
    tiny_config,
    train_step,
)
from tfvctr.config import config_from_dict
from tfvctr.errors import ConfigError
from tfvctr.layers.attention import CSCNNAttention, SCAAttention
from tfvctr.models import VBPR, VBPRHead, bpr_loss, build_model, in_batch_pairs, pointwise_loss
from tfvctr.models.vbpr import VARIANTS

AD_FEATURES = FEATURES + [{"name": "ad_id", "source": "ad", "kind": "categorical", "hash_buckets": 5}]
LABELS = tf.constant([1.0, 0.0, 0.0, 1.0, 0.0])


def _config(variant, features=AD_FEATURES, **model):
    if variant != "vbpr":
        return tiny_config("vbpr", features=features, vbpr={"variant": variant}, **model)
    # VBPR's fixed features come from a pre-trained CNN (the trainer loads it; unused here).
    data = tiny_config("vbpr", features=features, vbpr={"variant": "dvbpr"}, **model).to_dict()
    data["model"]["vbpr"]["variant"] = "vbpr"
    data["training"]["pretrained_cnn"] = "/pretrained/model_dir"
    return config_from_dict(data)


def _model(variant, features=AD_FEATURES, **model):
    return build_model(_config(variant, features, **model), NUM_CATEGORIES, VOCAB_SIZES, seed=0)


def _batch(**kw):
    return tiny_batch(extra={"ad_id": tf.constant([2, 4], tf.int32)}, **kw)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v not in ("vbpr", "bpr_mf")])
def test_end_to_end_variants_train_cnn_and_factors(variant):
    model = _model(variant, attention="cscnn_channel")
    assert isinstance(model, VBPR) and model(_batch()).shape == (5,)
    old, _ = train_step(model, _batch(), LABELS)
    assert moved(model, model.visual_variables, old)
    assert moved(model, model.non_visual_variables, old)


def test_bpr_mf_has_no_tower_and_only_mf_terms():
    model = _model("bpr_mf")
    assert model.visual_tower is None and model.visual_variables == []
    batch = _batch()
    del batch["image"]
    head = model.head
    u = batch["user_id"].numpy()
    i = tf.gather(batch["ad_id"], batch["ad_index"]).numpy()
    head.gamma_u.assign(tf.random.stateless_normal(head.gamma_u.shape, (1, 2)))
    head.beta_i.assign(tf.random.stateless_normal(head.beta_i.shape, (3, 4)))
    expected = head.alpha.numpy() + head.beta_u.numpy()[u] + head.beta_i.numpy()[i]
    expected += np.sum(head.gamma_u.numpy()[u] * head.gamma_i.numpy()[i], axis=1)
    np.testing.assert_allclose(model(batch).numpy(), expected, atol=1e-6)


def test_vbpr_tower_is_frozen_and_gets_no_update():
    model = _model("vbpr")
    assert model.visual_variables == []
    tower_before = [w.numpy().copy() for w in model.visual_tower.weights]
    old, _ = train_step(model, _batch(), LABELS)
    assert moved(model, model.non_visual_variables, old)
    for before, w in zip(tower_before, model.visual_tower.weights, strict=True):
        np.testing.assert_array_equal(before, w.numpy())


def test_dvbpr_c_items_of_one_category_share_gamma_and_beta():
    model = _model("dvbpr_c")
    assert model.head.item_key == "category" and model.head.gamma_i.shape[0] == NUM_CATEGORIES
    head = model.head
    x_v = tf.ones((2, 4))
    feats = {"user_id": tf.constant([3, 3]), "ad_id": tf.constant([1, 4]), "category": tf.constant([2, 2])}
    y = head({"features": feats, "x_v": x_v}).numpy()
    assert y[0] == y[1]  # two ads, one category, same image feature → same score
    dvbpr = _model("dvbpr").head
    dvbpr.beta_i.assign(tf.constant([0.0, 1.0, 0.0, 0.0, -1.0, 0.0]))
    y = dvbpr({"features": feats, "x_v": x_v}).numpy()
    assert y[0] != y[1]  # dvbpr: the ads have their own β_a, γ_a


def test_sherlock_stacks_a_shared_and_a_category_specific_projection():
    head = _model("sherlock").head
    # visual_factors 3: 2 shared factors (E_0) and 1 category-specific (E_k).
    assert tuple(head.projection.shape) == (4, 2)
    assert tuple(head.category_projection.shape) == (NUM_CATEGORIES, 4, 1)
    feats = {"user_id": tf.constant([3, 3]), "ad_id": tf.constant([1, 1]), "category": tf.constant([1, 2])}
    x_v = tf.constant([[1.0, 2.0, 0.0, -1.0], [1.0, 2.0, 0.0, -1.0]])
    theta = np.arange(3, dtype="float32") + 1.0
    head.theta_u.assign(np.tile(theta, (head.theta_u.shape[0], 1)))
    y = head({"features": feats, "x_v": x_v}).numpy()
    base = head({"features": feats, "x_v": tf.zeros((2, 4))}).numpy()
    e0, ek, f = head.projection.numpy(), head.category_projection.numpy(), x_v.numpy()[0]
    expected = [theta @ np.concatenate([f @ e0, f @ ek[k]]) for k in (1, 2)]
    np.testing.assert_allclose(y - base, expected, atol=1e-5)


def test_sherlock_with_one_visual_factor_is_rejected():
    with pytest.raises(ValueError, match="Expected >= 2 for variant 'sherlock'"):
        VBPRHead("sherlock", num_users=3, num_items=3, item_key="ad_id", num_categories=2, visual_dim=4, visual_factors=1)


def test_deepstyle_subtracts_the_category_embedding():
    head = _model("deepstyle").head
    head.theta_u.assign(tf.ones_like(head.theta_u))
    feats = {"user_id": tf.constant([3, 3]), "ad_id": tf.constant([1, 1]), "category": tf.constant([1, 2])}
    y = head({"features": feats, "x_v": tf.zeros((2, 4))}).numpy()
    base = head.alpha.numpy() + head.beta_u.numpy()[3] + head.beta_i.numpy()[1]
    base += head.gamma_u.numpy()[3] @ head.gamma_i.numpy()[1]
    c = head.category_style.numpy()
    np.testing.assert_allclose(y, [base - c[1].sum(), base - c[2].sum()], atol=1e-5)


def test_without_ad_id_the_item_terms_are_keyed_by_category():
    assert _model("dvbpr", features=FEATURES).head.item_key == "category"


def _attention_layers(model):
    return [layer for layer in model.visual_tower.get_layer("cnnf_backbone").layers if layer.name.endswith("_attention")]


def test_dvbpr_sca_uses_sca_cnn_attention_and_differs_from_cscnn():
    sca, cscnn = _model("dvbpr_sca"), _model("cscnn")
    sca_layers, cscnn_layers = _attention_layers(sca), _attention_layers(cscnn)
    assert sca_layers and all(isinstance(layer, SCAAttention) for layer in sca_layers)
    assert cscnn_layers and all(isinstance(layer, CSCNNAttention) for layer in cscnn_layers)
    # Same sites, other modules: other parameter counts and other outputs.
    assert len(sca_layers) == len(cscnn_layers)
    assert sca.visual_tower.count_params() != cscnn.visual_tower.count_params()
    batch = _batch()
    assert not np.allclose(sca.visual_tower({"image": batch["image"], "category": batch["category"]}),
                           cscnn.visual_tower({"image": batch["image"], "category": batch["category"]}))


@pytest.mark.parametrize("attention, layer_name", [("cbam", "CBAMAttention"), ("se", "SEAttention"), ("cscnn", "CSCNNAttention")])
def test_variant_cscnn_uses_the_configured_attention(attention, layer_name):
    # CSCNN Tables 5 and 6 swap the attention of the same model.
    layers = _attention_layers(_model("cscnn", attention=attention))
    assert layers and all(type(layer).__name__ == layer_name for layer in layers)


def test_dvbpr_sca_ignores_the_configured_attention():
    assert all(isinstance(layer, SCAAttention) for layer in _attention_layers(_model("dvbpr_sca", attention="se")))


def test_vbpr_without_a_pretrained_cnn_is_refused():
    with pytest.raises(ConfigError, match="variant: vbpr needs fixed features of a pre-trained CNN; set training.pretrained_cnn"):
        tiny_config("vbpr", features=AD_FEATURES, vbpr={"variant": "vbpr"})


def test_vbpr_without_user_id_is_a_config_error():
    features = [f for f in FEATURES if f["name"] != "user_id"]
    with pytest.raises(ConfigError, match="need a categorical `user_id` feature"):
        _model("bpr_mf", features=features)


def test_keras_round_trip_gives_identical_logits(tmp_path):
    model = _model("sherlock")
    path = os.path.join(tmp_path, "sherlock.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(reloaded(_batch()).numpy(), model(_batch()).numpy())


def test_vbpr_head_rejects_a_visual_dim_for_bpr_mf():
    with pytest.raises(ValueError, match="Expected 0 exactly for variant 'bpr_mf'"):
        VBPRHead("bpr_mf", num_users=3, num_items=3, item_key="ad_id", num_categories=2, visual_dim=4)


# ---------------------------------------------------------------------- losses


def test_bpr_loss_equals_numpy():
    pos, neg = np.array([2.0, -1.0, 0.5], "float32"), np.array([1.0, 3.0, 0.5], "float32")
    expected = np.sum(-np.log(1.0 / (1.0 + np.exp(-(pos - neg)))))
    np.testing.assert_allclose(bpr_loss(pos, neg).numpy(), expected, rtol=1e-6)
    assert np.isfinite(bpr_loss(np.array([-100.0]), np.array([100.0])).numpy())


def test_pointwise_loss_is_summed_weighted_log_loss():
    labels, logits = np.array([1.0, 0.0, 1.0]), np.array([0.3, -2.0, 4.0], "float32")
    p = 1.0 / (1.0 + np.exp(-logits))
    per = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    np.testing.assert_allclose(pointwise_loss(labels, logits).numpy(), per.sum(), rtol=1e-6)
    np.testing.assert_allclose(pointwise_loss(labels, logits, [1.0, 2.0, 0.0]).numpy(), per[0] + 2 * per[1], rtol=1e-6)


def test_in_batch_pairs_pair_clicks_with_non_clicks_of_the_same_user():
    labels = tf.constant([1, 0, 0, 1, 0])
    users = tf.constant([7, 7, 8, 8, 7])
    pairs = sorted(map(tuple, in_batch_pairs(labels, users).numpy().tolist()))
    assert pairs == [(0, 1), (0, 4), (3, 2)]
