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


# ---------------------------------------------------------------------- VBPR from a `tfvctr embed` table


def _write_table(root, ad_ids, categories, vectors):
    """A table in the layout of docs/formats.md §4 (what `tfvctr embed` writes)."""
    import json

    os.makedirs(root, exist_ok=True)
    np.savez(os.path.join(root, "part-00000.npz"), ad_id=np.array(ad_ids), category=np.array(categories),
             impressions=np.zeros(len(ad_ids), np.int64), vectors=np.asarray(vectors, np.float32))
    index = {"dim": int(np.shape(vectors)[1]), "dtype": "float32", "rows": len(ad_ids), "shards": ["part-00000.npz"]}
    with open(os.path.join(root, "index.json"), "w") as f:
        json.dump(index, f)
    return root


def _table_config(table, vocabulary, **vbpr):
    features = FEATURES + [{"name": "ad_id", "source": "ad", "kind": "categorical", "vocabulary": vocabulary}]
    data = tiny_config("vbpr", features=features, vbpr={"variant": "dvbpr"}).to_dict()
    data["model"]["vbpr"].update(variant="vbpr", features_table=table, **vbpr)
    return config_from_dict(data)


@pytest.fixture
def embedded(tmp_path):
    """The pre-trained-tower VBPR, a table of that tower's vectors for the batch's two ads, and the vocabulary."""
    tower_model = _model("vbpr")
    batch = _batch()  # ads with ad_id ids 2 and 4: lines 0 and 2 of the vocabulary
    vectors = tower_model.visual_tower({"image": batch["image"], "category": batch["category"]}).numpy()
    table = _write_table(str(tmp_path / "table"), ["adA", "adB"], ["c1", "c2"], vectors)
    vocabulary = tmp_path / "ad_ids.txt"
    vocabulary.write_text("adA\nadX\nadB\nadY\n")  # adX, adY: catalog ads the table does not hold
    return tower_model, table, str(vocabulary), vectors


def test_vbpr_from_an_embed_table_scores_as_the_tower_the_table_came_from(embedded):
    tower_model, table, vocabulary, vectors = embedded
    model = build_model(_table_config(table, vocabulary), NUM_CATEGORIES, VOCAB_SIZES, seed=0)
    assert model.visual_tower is None and model.fixed_features is not None and model.visual_variables == []
    features = model.fixed_features.table.numpy()
    np.testing.assert_array_equal(features[[2, 4]], vectors)  # ad_id id 2 + line → its table row
    np.testing.assert_allclose(features[[0, 1, 3, 5]], np.tile(vectors.mean(axis=0), (4, 1)), rtol=1e-6)
    model.head.set_weights(tower_model.head.get_weights())
    batch = _batch()
    del batch["image"]  # the table replaces the images
    np.testing.assert_allclose(model(batch).numpy(), tower_model(_batch()).numpy(), rtol=1e-5, atol=1e-6)


def test_vbpr_table_features_stay_fixed_in_training_and_survive_a_round_trip(embedded, tmp_path):
    _, table, vocabulary, _ = embedded
    model = build_model(_table_config(table, vocabulary), NUM_CATEGORIES, VOCAB_SIZES, seed=0)
    fixed = model.fixed_features.table.numpy().copy()
    assert all(v is not model.fixed_features.table for v in model.trainable_variables)
    old, _ = train_step(model, _batch(), LABELS)
    assert moved(model, model.non_visual_variables, old)
    np.testing.assert_array_equal(model.fixed_features.table.numpy(), fixed)
    path = str(tmp_path / "vbpr_table.keras")
    model.save(path)
    np.testing.assert_array_equal(keras.saving.load_model(path)(_batch()).numpy(), model(_batch()).numpy())


@pytest.mark.parametrize(
    "change, message",
    [
        ({"pretrained_cnn": "/pretrained/model_dir"}, "set one source of VBPR's fixed features"),
        ({"vocabulary": "auto"}, r"the table is read by ad_id; declare the feature \{name: ad_id"),
        ({"variant": "dvbpr"}, "fixed features apply to architecture 'vbpr' with variant 'vbpr' only"),
    ],
    ids=["table_and_pretrained_cnn", "auto_vocabulary", "another_variant"],
)
def test_a_features_table_the_model_cannot_use_is_refused(change, message):
    data = _table_config("/some/table", "/some/ad_ids.txt").to_dict()
    if "pretrained_cnn" in change:
        data["training"]["pretrained_cnn"] = change["pretrained_cnn"]
    if "vocabulary" in change:
        data["dataset"]["features"][-1]["vocabulary"] = change["vocabulary"]
    if "variant" in change:
        data["model"]["vbpr"]["variant"] = change["variant"]
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_vbpr_with_neither_source_names_both(tmp_path):
    with pytest.raises(ConfigError, match="or model.vbpr.features_table to a `tfvctr embed` table"):
        tiny_config("vbpr", features=AD_FEATURES, vbpr={"variant": "vbpr"})


def test_a_missing_table_or_a_table_of_another_catalog_is_a_data_error(embedded, tmp_path):
    from tfvctr.errors import DataError

    _, table, _, _ = embedded
    with pytest.raises(DataError, match="names no `tfvctr embed` table"):
        build_model(_table_config(str(tmp_path / "nowhere"), str(tmp_path / "v.txt")), NUM_CATEGORIES, VOCAB_SIZES, seed=0)
    other = tmp_path / "other.txt"
    other.write_text("z1\nz2\nz3\nz4\n")
    with pytest.raises(DataError, match="none of the 4 ad ids"):
        build_model(_table_config(table, str(other)), NUM_CATEGORIES, VOCAB_SIZES, seed=0)


def test_write_table_vocabulary_lists_the_tables_ads(embedded, tmp_path):
    from tfvctr.models.vbpr import write_table_vocabulary

    _, table, _, _ = embedded
    path = tmp_path / "vocab.txt"
    assert write_table_vocabulary(table, str(path)) == 2
    assert path.read_text().split() == ["adA", "adB"]
