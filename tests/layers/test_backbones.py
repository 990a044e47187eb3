"""Tests of tfvctr.layers.backbones: every backbone builds tiny, attention goes where asked."""

import keras
import numpy as np
import pytest

from tfvctr.layers.attention import CBAMAttention, CSCNNAttention
from tfvctr.layers.backbones import ATTENTION_SITES, BACKBONES, build_backbone

WIDTH = 1 / 16
# Feature size F at width 1/16: CNN-F fc7 4096, ResNet-18 512, GoogLeNet 1024, DeepCTR 256.
FEATURES = {"cnnf": 256, "resnet18": 32, "inception_v1": 64, "deepctr17": 16}


def _batch(n: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.uniform(size=(n, size, size, 3)).astype("float32"),
        "category": np.arange(n, dtype="int32") % 5,
    }


def _attention_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if layer.name.endswith("_attention")]


@pytest.mark.parametrize("attention", ["none", "cscnn"])
@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_builds_tiny_and_outputs_a_feature_vector(name, attention):
    model = build_backbone(name, image_size=16, num_categories=5, attention=attention, width=WIDTH, seed=0)
    out = model(_batch(3, 16))
    assert tuple(out.shape) == (3, FEATURES[name])
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(out)))
    expected_sites = 0 if attention == "none" else ATTENTION_SITES[name]
    assert len(_attention_layers(model)) == expected_sites
    assert all(isinstance(layer, CSCNNAttention) for layer in _attention_layers(model))


@pytest.mark.parametrize("size", [16, 24, 40])
def test_resnet18_accepts_several_image_sizes(size):
    model = build_backbone("resnet18", image_size=size, num_categories=3, attention="cscnn", width=WIDTH, seed=0)
    assert tuple(model(_batch(2, size)).shape) == (2, 32)


def test_attention_goes_after_the_last_attention_layers_sites():
    model = build_backbone(
        "resnet18", image_size=16, num_categories=3, attention="cbam", attention_layers=3, width=WIDTH
    )
    names = [layer.name for layer in _attention_layers(model)]
    assert names == ["conv5_block1_2_attention", "conv5_block2_1_attention", "conv5_block2_2_attention"]
    assert all(isinstance(layer, CBAMAttention) for layer in _attention_layers(model))


def test_cnnf_attention_sites_are_conv2_to_conv5():
    model = build_backbone("cnnf", image_size=16, num_categories=3, attention="se", width=WIDTH)
    assert [layer.name for layer in _attention_layers(model)] == [f"conv{i}_attention" for i in range(2, 6)]


def test_category_changes_the_features_of_a_cscnn_backbone():
    model = build_backbone("deepctr17", image_size=16, num_categories=5, attention="cscnn", width=WIDTH, seed=1)
    batch = _batch(1, 16)
    image = np.repeat(batch["image"], 2, axis=0)
    # training=True: BatchNorm normalizes with batch statistics; in inference mode an
    # untrained plain network with 16 sigmoid gates shrinks the features to ~1e-15.
    out = keras.ops.convert_to_numpy(model({"image": image, "category": np.array([1, 3], "int32")}, training=True))
    assert np.max(np.abs(out[0] - out[1])) > 1e-3 * np.max(np.abs(out))


def test_same_seed_builds_the_same_backbone():
    batch = _batch(2, 16)
    a = build_backbone("resnet18", image_size=16, num_categories=3, attention="cscnn", width=WIDTH, seed=5)
    b = build_backbone("resnet18", image_size=16, num_categories=3, attention="cscnn", width=WIDTH, seed=5)
    np.testing.assert_array_equal(a(batch), b(batch))


def test_width_scales_the_parameter_count():
    small = build_backbone("deepctr17", image_size=16, num_categories=3, width=1 / 16).count_params()
    larger = build_backbone("deepctr17", image_size=16, num_categories=3, width=1 / 8).count_params()
    # Conv kernels dominate and grow with width^2.
    assert 3.0 < larger / small < 4.5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"name": "vgg16"},
            "argument `name`. Expected one of cnnf, resnet18, inception_v1, deepctr17. Received: name='vgg16'",
        ),
        ({"attention": "cbam_all"}, "argument `attention`. Expected one of none, se, "),
        (
            {"attention_layers": 17},
            r"argument `attention_layers`. Expected an integer in \[0, 16\] \(resnet18 has 16 attention sites",
        ),
        ({"attention_layers": -1}, "Received: attention_layers=-1"),
        ({"image_size": 4}, "argument `image_size`. Expected an integer >= 8. Received: image_size=4"),
        ({"width": 0.0}, "argument `width`. Expected a positive number. Received: width=0.0"),
        ({"num_categories": 0}, "argument `num_categories`. Expected an integer >= 1. Received: num_categories=0"),
    ],
)
def test_invalid_arguments_are_rejected_with_a_clear_message(kwargs, message):
    args = {"name": "resnet18", "image_size": 16, "num_categories": 3, "width": WIDTH, **kwargs}
    name = args.pop("name")
    with pytest.raises(ValueError, match=message):
        build_backbone(name, **args)
