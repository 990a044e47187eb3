"""Tests of tfvctr.layers.attention: the CSCNN modules (Eq. 8-11) and their baselines."""

import typing

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.layer_testing import run_layer_test
from tfvctr.config import ModelConfig
from tfvctr.layers.attention import (
    CategoryChannelAttention,
    CategorySEAttention,
    CategorySpatialAttention,
    CBAMAttention,
    CBAMChannelAttention,
    CBAMSpatialAttention,
    CSCNNAttention,
    SEAttention,
    category_index,
    make_attention,
)

B, H, W, C = 2, 5, 5, 8
NUM_CATEGORIES = 6

# (layer class, constructor arguments, trainable weights, attention maps returned)
CASES = {
    "se": (SEAttention, {"reduction": 2}, 4, ("channel",)),
    "category_se": (CategorySEAttention, {"num_categories": NUM_CATEGORIES, "prior_dim": 3}, 5, ("channel",)),
    "cbam_channel": (CBAMChannelAttention, {"reduction": 4}, 4, ("channel",)),
    "category_channel": (CategoryChannelAttention, {"num_categories": NUM_CATEGORIES, "prior_dim": 3}, 5, ("channel",)),
    "cbam_spatial": (CBAMSpatialAttention, {"kernel_size": 3}, 2, ("spatial",)),
    "category_spatial": (
        CategorySpatialAttention,
        {"num_categories": NUM_CATEGORIES, "prior_size": 3},
        3,
        ("spatial",),
    ),
    "cbam": (CBAMAttention, {"reduction": 2}, 6, ("channel", "spatial")),
    "cscnn": (
        CSCNNAttention,
        {"num_categories": NUM_CATEGORIES, "channel_prior_dim": 3, "spatial_prior_size": 4},
        8,
        ("channel", "spatial"),
    ),
}
CATEGORY_SPECIFIC = ("category_se", "category_channel", "category_spatial", "cscnn")
SELF_ATTENTION = ("se", "cbam_channel", "cbam_spatial", "cbam")
MAP_SHAPES = {"channel": (B, C), "spatial": (B, H, W)}


def _inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, H, W, C)).astype("float32"), np.array([1, 4], "int32")


def _make(case: str, **extra):
    cls, kwargs, _, _ = CASES[case]
    return cls(**kwargs, seed=3, **extra)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_contract_holds(case):
    cls, kwargs, trainable, _ = CASES[case]
    run_layer_test(cls, {**kwargs, "seed": 1}, _inputs(), (B, H, W, C), trainable, 0)


@pytest.mark.parametrize("case", ["cscnn", "cbam"])
def test_layer_contract_holds_when_returning_attention_maps(case):
    cls, kwargs, trainable, names = CASES[case]
    expected = ((B, H, W, C), {name: MAP_SHAPES[name] for name in names})
    run_layer_test(cls, kwargs, _inputs(), expected, trainable, 0, call_kwargs={"return_attention": True})


@pytest.mark.parametrize("case", sorted(CASES))
def test_attention_maps_lie_strictly_between_zero_and_one(case):
    feature_map, ids = _inputs()
    _, maps = _make(case)(feature_map, ids, return_attention=True)
    assert sorted(maps) == sorted(CASES[case][3])
    for name, weights in maps.items():
        weights = keras.ops.convert_to_numpy(weights)
        assert weights.shape == MAP_SHAPES[name]
        assert np.all(weights > 0.0) and np.all(weights < 1.0), name


@pytest.mark.parametrize("case", CATEGORY_SPECIFIC)
def test_different_categories_give_different_outputs_for_the_same_image(case):
    feature_map, _ = _inputs()
    image = np.repeat(feature_map[:1], 2, axis=0)
    out = keras.ops.convert_to_numpy(_make(case)(image, np.array([1, 2])))
    assert np.max(np.abs(out[0] - out[1])) > 1e-4


@pytest.mark.parametrize("case", SELF_ATTENTION)
def test_self_attention_ignores_the_category(case):
    feature_map, _ = _inputs()
    image = np.repeat(feature_map[:1], 2, axis=0)
    out = keras.ops.convert_to_numpy(_make(case)(image, np.array([1, 2])))
    # Not bit-equal: oneDNN's convolution may round batch rows differently.
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)


@pytest.mark.parametrize("case", CATEGORY_SPECIFIC)
def test_category_prior_gets_a_nonzero_gradient_only_on_the_rows_used(case):
    layer = _make(case)
    feature_map, ids = _inputs()
    layer(feature_map, ids)
    priors = [w for w in layer.trainable_weights if "prior" in w.path]
    assert priors, "no prior table found"
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(layer(feature_map, ids)))
    for prior, grad in zip(priors, tape.gradient(loss, priors), strict=True):
        grad = tf.convert_to_tensor(grad).numpy().reshape(NUM_CATEGORIES, -1)
        row_norms = np.abs(grad).sum(axis=1)
        assert np.all(row_norms[ids] > 0), prior.path
        assert np.all(np.delete(row_norms, ids) == 0), prior.path


def test_category_index_maps_out_of_range_ids_to_the_unknown_row():
    ids = np.array([0, 1, 5, 6, 1000, -1], "int64")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(category_index(ids, 6)), [0, 1, 5, 0, 0, 0])


@pytest.mark.parametrize("case", CATEGORY_SPECIFIC)
def test_unknown_and_out_of_range_categories_use_the_reserved_unknown_prior(case):
    layer = _make(case)
    feature_map, _ = _inputs()
    image = np.repeat(feature_map[:1], 5, axis=0)
    out = keras.ops.convert_to_numpy(layer(image, np.array([0, NUM_CATEGORIES, 10**6, -7, 1])))
    for row in (1, 2, 3):
        np.testing.assert_allclose(out[row], out[0], atol=1e-6)
    assert np.max(np.abs(out[4] - out[0])) > 1e-4  # a known category is not the unknown one


def test_category_channel_attention_matches_numpy_eq10():
    rng = np.random.default_rng(7)
    prior_dim, reduction = 3, 4
    layer = CategoryChannelAttention(num_categories=NUM_CATEGORIES, prior_dim=prior_dim, reduction=reduction)
    feature_map, ids = _inputs(1)
    layer(feature_map, ids)
    hidden = C // reduction
    w1 = rng.normal(size=(C + prior_dim, hidden)).astype("float32")
    b1 = rng.normal(size=hidden).astype("float32")
    w2 = rng.normal(size=(hidden, C)).astype("float32")
    b2 = rng.normal(size=C).astype("float32")
    prior = rng.normal(size=(NUM_CATEGORIES, prior_dim)).astype("float32")
    for variable, value in zip(
        (layer.hidden_kernel, layer.hidden_bias, layer.output_kernel, layer.output_bias, layer.channel_prior),
        (w1, b1, w2, b2, prior),
        strict=True,
    ):
        variable.assign(value)

    def mlp(x):
        return np.maximum(x @ w1 + b1, 0.0) @ w2 + b2

    a_k = prior[ids]
    avg = feature_map.mean(axis=(1, 2))
    mx = feature_map.max(axis=(1, 2))
    m_c = _sigmoid(mlp(np.concatenate([avg, a_k], -1)) + mlp(np.concatenate([mx, a_k], -1)))
    out, maps = layer(feature_map, ids, return_attention=True)
    np.testing.assert_allclose(maps["channel"], m_c, atol=1e-5)
    np.testing.assert_allclose(out, feature_map * m_c[:, None, None, :], atol=1e-5)


def _conv_same(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Cross-correlation with 'same' zero padding, x [B, H, W, Cin], kernel [k, k, Cin, 1]."""
    k = kernel.shape[0]
    pad = k // 2
    padded = np.pad(x, ((0, 0), (pad, k - 1 - pad), (pad, k - 1 - pad), (0, 0)))
    out = np.zeros(x.shape[:3] + (1,), "float64")
    for i in range(x.shape[1]):
        for j in range(x.shape[2]):
            window = padded[:, i : i + k, j : j + k, :]
            out[:, i, j, 0] = np.einsum("bhwc,hwc->b", window, kernel[..., 0])
    return out + bias


def test_category_spatial_attention_matches_numpy_eq11():
    rng = np.random.default_rng(11)
    # H' = H, so the bilinear resize is the identity and the reference needs no resize
    # (the resize itself is tested against tf.image.resize below).
    layer = CategorySpatialAttention(num_categories=NUM_CATEGORIES, prior_size=H, kernel_size=7)
    feature_map, ids = _inputs(2)
    layer(feature_map, ids)
    kernel = rng.normal(size=(7, 7, 3, 1)).astype("float32") * 0.3
    bias = rng.normal(size=1).astype("float32")
    prior = rng.normal(size=(NUM_CATEGORIES, H, W)).astype("float32")
    layer.kernel.assign(kernel)
    layer.bias.assign(bias)
    layer.spatial_prior.assign(prior)

    stacked = np.concatenate(
        [feature_map.max(-1, keepdims=True), feature_map.mean(-1, keepdims=True), prior[ids][..., None]], axis=-1
    )
    m_s = _sigmoid(_conv_same(stacked, kernel, bias))
    out, maps = layer(feature_map, ids, return_attention=True)
    np.testing.assert_allclose(maps["spatial"], m_s[..., 0], atol=1e-5)
    np.testing.assert_allclose(out, feature_map * m_s, atol=1e-5)


@pytest.mark.parametrize("size", [(12, 12), (3, 3), (10, 4)])
def test_spatial_prior_is_the_bilinear_resize_of_the_small_prior(size):
    layer = CategorySpatialAttention(num_categories=NUM_CATEGORIES, prior_size=6, seed=0)
    ids = np.array([2, 0, 5], "int32")
    layer(np.ones((3,) + size + (4,), "float32"), ids)
    expected = tf.image.resize(tf.gather(layer.spatial_prior, ids)[..., None], size, "bilinear")
    np.testing.assert_allclose(layer.resized_prior(ids, size), expected, atol=1e-6)
    assert layer.resized_prior(ids, size).shape == (3,) + size + (1,)


def test_cscnn_applies_channel_then_spatial_attention():
    layer = _make("cscnn")
    feature_map, ids = _inputs(3)
    out = layer(feature_map, ids)
    expected = layer.spatial(layer.channel(feature_map, ids), ids)
    np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("case", ["se", "cscnn"])
def test_wrong_feature_map_rank_is_rejected_with_a_clear_message(case):
    with pytest.raises(ValueError, match=r"expects `feature_map` of rank 4 \[batch, height, width, channels\]"):
        _make(case)(np.ones((2, 5, 8), "float32"), np.array([1, 2]))


def test_category_specific_layer_without_category_ids_is_rejected():
    layer = CategoryChannelAttention(num_categories=NUM_CATEGORIES)
    with pytest.raises(ValueError, match="needs `category_ids`"):
        layer(np.ones((2, 4, 4, 8), "float32"))


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (
            SEAttention,
            {"reduction": 0},
            "Invalid value received for argument `reduction`. Expected an integer >= 1. Received: reduction=0",
        ),
        (
            CategoryChannelAttention,
            {"num_categories": 0},
            "argument `num_categories`. Expected an integer >= 1. Received: num_categories=0",
        ),
        (
            CategorySpatialAttention,
            {"num_categories": 3, "prior_size": 0},
            "argument `prior_size`. Expected an integer >= 1. Received: prior_size=0",
        ),
        (
            CSCNNAttention,
            {"num_categories": 3, "channel_prior_dim": 2.5},
            "argument `channel_prior_dim`. Expected an integer >= 1. Received: channel_prior_dim=2.5",
        ),
        (CBAMAttention, {"seed": "x"}, "argument `seed`. Expected an integer or None. Received: seed='x'"),
    ],
)
def test_invalid_constructor_arguments_are_rejected(cls, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(".", r"\.")):
        cls(**kwargs)


EXPECTED_LAYER = {
    "none": None,
    "se": SEAttention,
    "cbam_channel": CBAMChannelAttention,
    "cbam": CBAMAttention,
    "cscnn": CSCNNAttention,
    "se_cscnn": CategorySEAttention,
    "cbam_channel_cscnn": CategoryChannelAttention,
    "cscnn_channel": CategoryChannelAttention,
    "cscnn_spatial": CategorySpatialAttention,
}


def test_every_config_attention_name_maps_to_its_layer():
    config_names = typing.get_args(typing.get_type_hints(ModelConfig)["attention"])
    assert sorted(config_names) == sorted(EXPECTED_LAYER)
    for name in config_names:
        layer = make_attention(
            name, num_categories=NUM_CATEGORIES, channel_prior_dim=3, spatial_prior_size=4, reduction=2, seed=0
        )
        expected = EXPECTED_LAYER[name]
        if expected is None:
            assert layer is None
            continue
        assert type(layer) is expected, name
        out = layer(*_inputs())
        assert tuple(out.shape) == (B, H, W, C), name


def test_make_attention_passes_the_prior_sizes_through():
    layer = make_attention("cscnn", num_categories=9, channel_prior_dim=5, spatial_prior_size=6, reduction=2)
    layer(*_inputs())
    assert tuple(layer.channel.channel_prior.shape) == (9, 5)
    assert tuple(layer.spatial.spatial_prior.shape) == (9, 6, 6)
    assert tuple(layer.channel.hidden_kernel.shape) == (C + 5, C // 2)


def test_make_attention_rejects_an_unknown_name():
    with pytest.raises(ValueError, match="Expected one of none, se, .*Received: name='cbam_all'"):
        make_attention("cbam_all", num_categories=3)



@pytest.mark.parametrize("height, width", [(1, 1), (3, 3), (7, 12), (16, 16)])
def test_cscnn_keeps_the_shape_of_feature_maps_of_any_size(height, width):
    layer = CSCNNAttention(num_categories=NUM_CATEGORIES, channel_prior_dim=3, spatial_prior_size=6, seed=0)
    feature_map = np.random.default_rng(0).normal(size=(2, height, width, 4)).astype("float32")
    out, maps = layer(feature_map, np.array([1, 2]), return_attention=True)
    assert tuple(out.shape) == (2, height, width, 4)
    assert tuple(maps["spatial"].shape) == (2, height, width)
    assert tuple(maps["channel"].shape) == (2, 4)
