"""SCAAttention: SCA-CNN's channel-wise then spatial attention with a category embedding
as the state (Chen et al. 2017; CSCNN §4.4's DVBPR-SCA baseline)."""

import numpy as np
import pytest
import tensorflow as tf

from tests.layer_testing import run_layer_test
from tfvctr.layers.attention import ATTENTION_NAMES, SCAAttention, make_attention

B, H, W, C, E, NUM_CATEGORIES = 2, 4, 5, 8, 3, 4


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, H, W, C)).astype("float32"), np.array([1, 3], "int32")


def test_layer_contract_holds():
    run_layer_test(
        SCAAttention, {"num_categories": NUM_CATEGORIES, "embedding_dim": E, "reduction": 2, "seed": 1},
        _inputs(), (B, H, W, C), 11, 0,
    )


def test_layer_contract_holds_when_returning_attention_maps():
    expected = ((B, H, W, C), {"channel": (B, C), "spatial": (B, H, W)})
    run_layer_test(
        SCAAttention, {"num_categories": NUM_CATEGORIES, "embedding_dim": E, "seed": 1},
        _inputs(), expected, 11, 0, call_kwargs={"return_attention": True},
    )


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_matches_a_numpy_reference_of_the_sca_cnn_equations():
    layer = SCAAttention(num_categories=NUM_CATEGORIES, embedding_dim=E, reduction=2, seed=3)
    v, cats = _inputs(1)
    layer(v, cats)
    rng = np.random.default_rng(7)
    for w in layer.weights:  # non-zero biases too, so every term is checked
        w.assign(rng.normal(scale=0.5, size=w.shape).astype("float32"))
    out, maps = layer(v, cats, return_attention=True)
    g = {w.name: w.numpy() for w in layer.weights}
    h = g["category_embedding"][cats]  # [B, E]
    # Channel-wise (SCA-CNN Eq. 5): b = tanh((W_c ⊗ v + b_c) ⊕ W_hc h), beta = softmax(W_i' b + b_i').
    mean = v.mean(axis=(1, 2))  # [B, C]
    b = np.tanh(mean[:, :, None] * g["channel_kernel"] + g["channel_bias"] + (h @ g["channel_state_kernel"])[:, None, :])
    beta = _softmax(b @ g["channel_output_kernel"] + g["channel_output_bias"])
    vc = v * beta[:, None, None, :]
    # Spatial (Eq. 3) on the channel-weighted map: a = tanh((W_s V' + b_s) ⊕ W_hs h), alpha = softmax over H·W.
    a = np.tanh(vc @ g["spatial_kernel"] + g["spatial_bias"] + (h @ g["spatial_state_kernel"])[:, None, None, :])
    scores = a @ g["spatial_output_kernel"] + g["spatial_output_bias"]
    alpha = _softmax(scores.reshape(B, -1)).reshape(B, H, W)
    np.testing.assert_allclose(maps["channel"].numpy(), beta, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps["spatial"].numpy(), alpha, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.numpy(), vc * alpha[..., None], rtol=1e-5, atol=1e-7)
    # Softmaxes: the weights sum to one over channels and over locations (CSCNN's are sigmoid gates).
    np.testing.assert_allclose(maps["channel"].numpy().sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(maps["spatial"].numpy().sum((1, 2)), 1.0, rtol=1e-5)


def test_the_category_changes_the_output_and_unknown_ids_use_row_zero():
    layer = SCAAttention(num_categories=NUM_CATEGORIES, embedding_dim=E, seed=0, prior_initializer="random_normal")
    v, _ = _inputs()
    same = np.stack([v[0], v[0]])
    out = layer(same, np.array([1, 2])).numpy()
    assert not np.allclose(out[0], out[1])
    unknown = layer(same, np.array([0, 99])).numpy()
    np.testing.assert_allclose(unknown[0], unknown[1], rtol=1e-6)


def test_needs_category_ids_and_valid_arguments():
    with pytest.raises(ValueError, match="needs `category_ids`"):
        SCAAttention(num_categories=3)(np.ones((1, 2, 2, 4), "float32"))
    with pytest.raises(ValueError, match="Expected an integer >= 1. Received: embedding_dim=0"):
        SCAAttention(num_categories=3, embedding_dim=0)


def test_make_attention_builds_it_under_the_name_sca():
    assert "sca" in ATTENTION_NAMES
    layer = make_attention("sca", num_categories=5, channel_prior_dim=6, reduction=2, seed=0)
    layer(*_inputs())
    assert isinstance(layer, SCAAttention) and tuple(layer.category_embedding.shape) == (5, 6)
    assert tuple(layer.spatial_kernel.shape) == (C, C // 2)
    grads_ok = tf.reduce_all([tf.reduce_all(tf.math.is_finite(w)) for w in layer.weights])
    assert bool(grads_ok)
