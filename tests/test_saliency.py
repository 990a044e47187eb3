"""`tfvctr saliency`: DeepCTR §6.3 saliency maps and CSCNN's spatial attention pictures."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from PIL import Image

from tfvctr import layout
from tfvctr.cli import main
from tfvctr.config import config_from_dict
from tfvctr.demo_data import images as demo_images
from tfvctr.demo_data import simulator
from tfvctr.saliency import choose_ads, mass_share, object_mask, pixel_saliency

# ----------------------------------------------------------------------------- Eqs. 9-11


def test_saliency_is_the_max_over_rgb_of_the_gradient_of_each_ads_mean_logit():
    # A planted model: logit of impression j of ad i = x_j * <W, U_i>, so z_i (the mean logit
    # of ad i's impressions) has the gradient mean(x_j of ad i) * W, and Eq. 11 gives
    # |mean x| * max_c |W(c)|. W is zero outside a known square, with other weights per channel.
    rng = np.random.default_rng(0)
    w = np.zeros((8, 8, 3), "float32")
    w[2:5, 3:7] = rng.normal(size=(3, 4, 3))
    images = rng.uniform(size=(3, 8, 8, 3)).astype("float32")
    ad_index = np.array([0, 0, 0, 1, 2, 2], "int32")
    x = np.array([1.0, 2.0, 6.0, -4.0, 0.5, 1.5], "float32")

    def model(inputs, training=False):
        assert training is False
        per_ad = tf.reduce_sum(inputs["image"] * w, axis=[1, 2, 3])
        return tf.gather(per_ad, inputs["ad_index"]) * inputs["x"]

    saliency = pixel_saliency(model, {"image": images, "ad_index": ad_index, "x": x})
    expected_scale = np.array([3.0, 4.0, 1.0])  # |mean x| per ad
    expected = expected_scale[:, None, None] * np.abs(w).max(axis=-1)[None]
    np.testing.assert_allclose(saliency, expected, rtol=1e-5)
    square = np.zeros((8, 8), bool)
    square[2:5, 3:7] = True
    assert all(mass_share(s, square) == pytest.approx(1.0) for s in saliency)


def test_highest_and_lowest_ads_per_category_each_shown_once():
    ads = {f"a{i}": {"category": "c" if i < 5 else "d", "predicted": p, "impressions": 1}
           for i, p in enumerate([0.1, 0.5, 0.3, 0.5, 0.2, 0.9, 0.4])}
    ads["never_shown"] = {"category": "c", "predicted": 1.0, "impressions": 0}
    assert choose_ads(ads, 2) == {"a1": "highest", "a3": "highest", "a0": "lowest", "a4": "lowest",
                                  "a5": "highest", "a6": "lowest"}
    assert choose_ads(ads, 3)["a2"] == "highest"  # with 2N > ads, the middle ad is shown once


@pytest.mark.parametrize("attention, sites", [("cscnn", 4), ("cbam", 4), ("se", 0), ("none", 0)])
def test_spatial_attention_is_the_first_attended_layers_ms(attention, sites):
    from tests.models.model_fixtures import NUM_CATEGORIES, VOCAB_SIZES, tiny_batch, tiny_config
    from tfvctr.layers.attention import spatial_module
    from tfvctr.models import build_model
    from tfvctr.saliency import attention_sites, spatial_attention, spatial_priors

    model = build_model(tiny_config(attention=attention), NUM_CATEGORIES, VOCAB_SIZES, seed=0)
    batch = tiny_batch()
    model(batch)
    assert len(attention_sites(model)) == sites  # CNN-F: conv2 ... conv5; channel-only SE has no map
    maps = spatial_attention(model, batch["image"].numpy(), batch["category"].numpy())
    if not sites:
        assert maps is None and spatial_priors(model) == []
        return
    first = attention_sites(model)[0]
    assert first.name == "conv2_attention"
    # The same map by hand: the feature map entering conv2's attention, then Eq. 11 on it.
    backbone = model.visual_tower.get_layer("cnnf_backbone")
    feature_map = keras.Model(backbone.input, first.input[0])(
        {"image": batch["image"], "category": batch["category"]}, training=False)
    _, expected = first(feature_map, batch["category"], return_attention=True)
    np.testing.assert_allclose(maps, np.asarray(expected["spatial"]), rtol=1e-5, atol=1e-6)
    assert maps.shape[:1] == (2,) and np.all((maps > 0) & (maps < 1))
    priors = spatial_priors(model)
    if attention == "cbam":  # self-attention: no category prior
        assert priors == []
    else:
        assert [name for name, _ in priors] == [site.name for site in attention_sites(model)]
        np.testing.assert_array_equal(priors[0][1], np.asarray(spatial_module(first).spatial_prior))
        assert priors[0][1].shape == (NUM_CATEGORIES, 7, 7)


# ----------------------------------------------------------------------------- what the simulator rewards

SIZE = 24


def _demo_images(category: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n demo images of `category` and the simulator's visual score of each (its rule)."""
    rng = np.random.default_rng(seed)
    visuals = simulator.sample_visuals(rng, n)
    images = np.stack([
        np.asarray(demo_images.render_ad(category, {k: v[i] for k, v in visuals.items()}, SIZE,
                                         np.random.default_rng(seed * 1000 + i)), "float32") / 255.0
        for i in range(n)
    ])
    return images, simulator.RULES[simulator.DEMO_RULES[category]].score(visuals).astype("float32")


def _saliency_on_object(category: str) -> float:
    """A tiny CNN trained on the category's visual score; its saliency share on the object ÷ the object's area."""
    images, score = _demo_images(category, 400, seed=1)
    keras.utils.set_random_seed(0)
    net = keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(1),
    ])
    net.compile(keras.optimizers.Adam(0.01), "mse")
    net.fit(images, score, epochs=30, batch_size=50, verbose=0)
    test_images, test_score = _demo_images(category, 40, seed=2)
    assert np.corrcoef(net.predict(test_images, verbose=0)[:, 0], test_score)[0, 1] > 0.7  # it learnt the rule

    def model(inputs, training=False):
        return tf.gather(net(inputs["image"], training=training)[:, 0], inputs["ad_index"])

    saliency = pixel_saliency(model, {"image": test_images, "ad_index": np.arange(40, dtype="int32")})
    masks = [object_mask(image) for image in test_images]
    return float(np.mean([mass_share(s, m) / m.mean() for s, m in zip(saliency, masks, strict=True)]))


def test_saliency_highlights_the_property_the_simulator_rewards():
    # shoes: a red *object* raises CTR, so the saliency concentrates on the object (more than
    # twice its area share); watches: a dark *background* raises CTR, so the background carries
    # the saliency as much as the object does (no concentration on the object).
    shoes, watches = _saliency_on_object("shoes"), _saliency_on_object("watches")
    assert shoes > 2.0, shoes
    assert watches < 1.4, watches
    assert shoes > 1.5 * watches


def test_object_mask_finds_the_rendered_object():
    images, _ = _demo_images("bags", 5, seed=3)
    areas = [object_mask(image).mean() for image in images]
    assert all(0.05 < a < 0.8 for a in areas), areas


# ----------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """Demo data at 16 px preprocessed, and a CSCNN-DCN model dir with seeded random weights."""
    from beam_jobs import build_tfrecords
    from tests.conftest import REPO
    from tests.export.conftest import tiny_config_dict, write_model_dir
    from tfvctr.demo_data.generate import generate

    root = tmp_path_factory.mktemp("saliency")
    raw, data, model_dir = (str(root / d) for d in ("raw", "data", "model"))
    generate(raw, num_ads=40, num_impressions=1200, image_size=16, formats=("csv",))
    config_dict = tiny_config_dict(REPO)
    config_path = str(root / "tiny.yaml")
    with open(config_path, "w") as f:
        yaml.safe_dump(config_dict, f)
    build_tfrecords.run(["--config", config_path, "--ads", os.path.join(raw, "ads.csv"),
                         "--impressions", os.path.join(raw, "impressions.csv"), "--out", data], verbose=False)
    write_model_dir(config_from_dict(config_dict, config_path), data, model_dir)
    return {"root": root, "data": data, "model": model_dir, "config": config_dict}


def test_saliency_command_writes_a_grid_per_category_and_the_priors(tiny_model, capsys):
    out = str(tiny_model["root"] / "pictures")
    assert main(["saliency", "--model-dir", tiny_model["model"], "--data", tiny_model["data"], "--out", out,
                 "--ads", "1"]) == 0
    assert capsys.readouterr().out.startswith("saliency: ")
    with open(os.path.join(out, layout.SALIENCY_INDEX)) as f:
        summary = json.load(f)
    assert summary["attention_site"] == "conv2_attention"  # CNN-F's first attended layer
    eval_ads = {json.loads(line)["ad_id"] for line in open(os.path.join(tiny_model["data"], layout.AD_COUNTS))
                if json.loads(line)["eval_impressions"]}
    assert summary["categories"]
    for category, c in summary["categories"].items():
        ranks = {a["rank"]: a for a in c["ads"]}
        assert set(ranks) <= {"highest", "lowest"} and "highest" in ranks
        if "lowest" in ranks:
            assert ranks["highest"]["predicted_ctr"] >= ranks["lowest"]["predicted_ctr"]
        assert {a["ad_id"] for a in c["ads"]} <= eval_ads
        assert all(0 <= a["saliency_on_object"] <= 1 and 0 < a["object_share"] < 1 for a in c["ads"])
        with Image.open(os.path.join(out, c["plot"])) as picture:  # rows = ads, 4 columns with attention
            assert c["plot"] == layout.saliency_plot(category)
            assert picture.width > 400 and picture.height > 100 * len(c["ads"])
    with Image.open(os.path.join(out, layout.SPATIAL_PRIORS_PLOT)) as picture:
        assert picture.height > picture.width  # one row per category (and the unknown one)


def test_saliency_of_a_model_without_images_is_a_user_error(tiny_model):
    from tfvctr.errors import TfvctrError
    from tfvctr.features import FeatureEncoder
    from tfvctr.models import build_model
    from tfvctr.saliency import explain

    config_dict = {**tiny_model["config"], "model": {**tiny_model["config"]["model"], "architecture": "dcn"}}
    config = config_from_dict(config_dict)
    encoder = FeatureEncoder.from_data_dir(config.dataset, tiny_model["data"])
    model = build_model(config, encoder.num_categories, encoder.vocab_sizes, seed=0)
    with pytest.raises(TfvctrError, match=r"^model 'tiny' \(dcn\) reads no image: there is no saliency to show$"):
        explain(model, config, encoder, tiny_model["data"])


def test_saliency_plot_names_are_file_safe():
    assert layout.saliency_plot("shoes") == "saliency_shoes.png"
    assert layout.saliency_plot("men's/shoes ü") == "saliency_men_s_shoes__.png"
