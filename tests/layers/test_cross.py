"""CrossNetwork: DCN-v1 against a NumPy Eq. 5; DCN-v2 (keras-rs FeatureCross) with low rank."""

import numpy as np
import pytest

from tests.layer_testing import run_layer_test
from tfvctr.layers.cross import CrossNetwork


def _numpy_v1(x0, kernels, biases):
    z = x0
    for w, b in zip(kernels, biases, strict=True):
        z = x0 * (z @ w)[:, None] + b + z  # z_{l+1} = z0 (z_l^T w_l) + b_l + z_l
    return z


def test_v1_matches_numpy_eq5():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6)).astype("float32")
    layer = CrossNetwork(num_layers=3, bias_initializer="random_normal", seed=5)
    out = np.asarray(layer(x))
    ref = _numpy_v1(x, [np.asarray(k) for k in layer.kernels], [np.asarray(b) for b in layer.biases])
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_v1_with_ones_kernel_gives_hand_computed_value():
    # x = [1, 2]: z1 = x * (1 + 2) + 0 + x = [4, 8].
    out = np.asarray(CrossNetwork(num_layers=1, kernel_initializer="ones")(np.array([[1.0, 2.0]], "float32")))
    np.testing.assert_allclose(out, [[4.0, 8.0]])


def test_v1_layers_get_distinct_kernels_when_seeded():
    layer = CrossNetwork(num_layers=2, seed=1)
    layer(np.ones((1, 4), "float32"))
    assert not np.allclose(np.asarray(layer.kernels[0]), np.asarray(layer.kernels[1]))


def test_zero_layers_is_identity():
    x = np.arange(6, dtype="float32").reshape(2, 3)
    np.testing.assert_array_equal(np.asarray(CrossNetwork(num_layers=0)(x)), x)


def test_v1_layer_contract():
    run_layer_test(
        CrossNetwork, {"num_layers": 2, "kind": "v1", "seed": 0}, np.ones((3, 5), "float32"),
        expected_output_shape=(3, 5), expected_num_trainable_weights=4,
    )


def test_v2_low_rank_layer_contract():
    # Each FeatureCross with projection_dim has U, V and a bias.
    run_layer_test(
        CrossNetwork, {"num_layers": 2, "kind": "v2", "projection_dim": 2, "seed": 0},
        np.random.default_rng(0).normal(size=(3, 5)).astype("float32"),
        expected_output_shape=(3, 5), expected_num_trainable_weights=6,
    )


def test_projection_dim_with_v1_is_rejected():
    with pytest.raises(ValueError, match=r"Expected None for kind='v1'.*Received: projection_dim=2"):
        CrossNetwork(num_layers=1, kind="v1", projection_dim=2)


def test_invalid_kind_is_rejected():
    with pytest.raises(ValueError, match=r"Received: kind='v3'"):
        CrossNetwork(kind="v3")
