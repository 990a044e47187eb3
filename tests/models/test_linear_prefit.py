"""`model.linear: prefit`: the `LinearLogit` layer, the DCN head's fixed linear part, the L-BFGS fit, the config keys."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import scipy.sparse as sp
import tensorflow as tf

from tests.layer_testing import run_layer_test
from tests.models.model_fixtures import NUM_CATEGORIES, VOCAB_SIZES, tiny_batch, tiny_config, train_step
from tfvctr.config import config_from_dict
from tfvctr.errors import ConfigError
from tfvctr.layers import LinearLogit
from tfvctr.models import DCNHead, build_model
from tfvctr.training.linear_prefit import fit_logistic

SPECS = [
    {"name": "device", "kind": "categorical"},
    {"name": "tags", "kind": "multi"},
    {"name": "price", "kind": "numeric", "transform": "normalize"},
    {"name": "age", "kind": "numeric", "transform": "bucketize"},
]
SIZES = {"device": 4, "tags": 5, "age": 3}
INPUTS = {
    "device": np.array([0, 3, 2], "int32"),
    "tags": np.array([[1, 4, 0], [0, 0, 0], [2, 2, 3]], "int32"),  # padding 0; a token listed twice counts twice
    "price": np.array([0.5, -2.0, 1.0], "float32"),
    "age": np.array([1, 0, 2], "int32"),
}


def _fitted(layer: LinearLogit, seed: int = 0) -> tuple[dict, float]:
    rng = np.random.default_rng(seed)
    weights = {s["name"]: rng.normal(size=layer.rows(s["name"])) for s in layer.features}
    layer.set_fitted(weights, bias=-1.5)
    return weights, -1.5


def test_linear_logit_layer_contract():
    # No training step: the weights start at zero, so the helper's sum-of-squares loss has no
    # gradient, and in a model the layer is frozen (its weights come from the pre-fit).
    run_layer_test(LinearLogit, {"features": SPECS, "vocab_sizes": SIZES}, INPUTS, expected_output_shape=(3,),
                   expected_num_trainable_weights=5, expected_num_non_trainable_weights=0,
                   run_training_step=False)  # fmt: skip


def test_linear_logit_is_a_one_hot_regression():
    layer = LinearLogit(SPECS, SIZES)
    weights, bias = _fitted(layer)
    # The NumPy reference: the one-hot (token-count) matrix times the weights, plus the bias.
    expected = np.full(3, bias)
    for i in range(3):
        expected[i] += weights["device"][INPUTS["device"][i]] + weights["age"][INPUTS["age"][i]]
        expected[i] += sum(weights["tags"][t] for t in INPUTS["tags"][i] if t != 0)
        expected[i] += weights["price"][0] * INPUTS["price"][i]
    np.testing.assert_allclose(layer(INPUTS).numpy(), expected, rtol=1e-5, atol=1e-5)
    assert layer(INPUTS).numpy()[1] == pytest.approx(bias + weights["device"][3] + weights["age"][0]
                                                     - 2.0 * weights["price"][0], abs=1e-5)  # fmt: skip


def test_linear_logit_refuses_weights_of_the_wrong_shape():
    layer = LinearLogit(SPECS, SIZES)
    weights, _ = _fitted(layer)
    with pytest.raises(ValueError, match=r"Expected shape \(4,\) for 'device'. Received: \(3,\)"):
        layer.set_fitted({**weights, "device": np.zeros(3)}, 0.0)
    with pytest.raises(ValueError, match=r"Expected a positive size for feature 'tags'"):
        LinearLogit(SPECS, {"device": 4, "age": 3})


@pytest.mark.parametrize("architecture", ["dcn", "cscnn_dcn"])
def test_prefit_head_starts_as_the_regression_holds_it_fixed_and_round_trips(architecture, tmp_path):
    config = tiny_config(architecture, linear="prefit")
    model = build_model(config, NUM_CATEGORIES, VOCAB_SIZES, seed=0)
    batch = tiny_batch()
    model(batch)
    linear = model.linear_part
    assert isinstance(linear, LinearLogit) and not linear.trainable
    assert not np.any(model.head.out.kernel.numpy()) and not np.any(model.head.out.bias.numpy())
    _fitted(linear, seed=1)
    features = model.gather_features(batch)
    np.testing.assert_allclose(model(batch).numpy(), linear(features).numpy(), atol=1e-6)  # step 0 is the regression
    trained = {id(v) for v in model.non_visual_variables} | {id(v) for v in model.visual_variables}
    assert not trained & {id(v) for v in linear.weights}
    before = [v.numpy().copy() for v in linear.weights]
    train_step(model, batch, tf.constant([1.0, 0.0, 0.0, 1.0, 0.0]))
    train_step(model, batch, tf.constant([1.0, 0.0, 0.0, 1.0, 0.0]))
    for old, v in zip(before, linear.weights, strict=True):
        np.testing.assert_array_equal(old, v.numpy())
    deep = model(batch).numpy() - linear(features).numpy()
    assert np.abs(deep).max() > 1e-4  # the deep part learned a residual
    path = os.path.join(str(tmp_path), "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(loaded(batch).numpy(), model(batch).numpy(), atol=1e-6)
    np.testing.assert_array_equal(loaded.linear_part.bias.numpy(), linear.bias.numpy())


def test_without_prefit_the_head_has_no_linear_part():
    model = build_model(tiny_config("dcn"), NUM_CATEGORIES, VOCAB_SIZES, seed=0)
    assert model.linear_part is None
    with pytest.raises(ValueError, match=r"Expected 'none' or 'prefit'. Received: linear=wide"):
        DCNHead([{"name": "device", "kind": "categorical"}], {"device": 5}, visual_dim=0, deep_layers=[4], linear="wide")


def _problem():
    rng = np.random.default_rng(0)
    rows, cols = 400, 30
    x = sp.random(rows, cols, density=0.15, random_state=1, data_rvs=lambda k: np.ones(k), format="csr")
    y = (rng.uniform(size=rows) < 1 / (1 + np.exp(-(x @ rng.normal(size=cols) - 1.0)))).astype(float)
    return x, y


def test_fit_logistic_with_a_tiny_tolerance_reaches_the_exact_l2_optimum():
    from sklearn.linear_model import LogisticRegression

    x, y = _problem()
    theta, info = fit_logistic(x, y, l2=2.0, tolerance=1e-10)
    reference = LogisticRegression(C=0.5, tol=1e-12, max_iter=10_000).fit(x, y)  # C = 1 / lambda
    assert info["converged"]
    np.testing.assert_allclose(theta[:-1], reference.coef_[0], atol=1e-5)
    assert theta[-1] == pytest.approx(reference.intercept_[0], abs=1e-5)


def test_fit_logistic_stops_where_scikit_learn_stops_the_floor():
    from sklearn.linear_model import LogisticRegression

    x, y = _problem()
    theta, info = fit_logistic(x, y, l2=0.01)  # weak L2: the early stop matters
    exact, _ = fit_logistic(x, y, l2=0.01, tolerance=1e-10)
    reference = LogisticRegression(C=100.0, max_iter=1000).fit(x, y)  # the floor's fit: tol 1e-4
    assert info["iterations"] == int(reference.n_iter_[0])
    np.testing.assert_allclose(theta[:-1], reference.coef_[0], atol=1e-6)
    assert np.abs(exact[:-1] - theta[:-1]).max() > 1e-3  # and that is not the exact optimum


@pytest.mark.parametrize(
    "model, message",
    [
        ({"linear_l2_grid": []}, r"model.linear_l2_grid: expected a non-empty list of numbers > 0, received \[\]"),
        ({"linear_l2_grid": [1.0, -3.0]}, r"model.linear_l2_grid: expected a non-empty list of numbers > 0"),
        ({"linear": "prefit", "architecture": "deepctr"}, r"model.linear: prefit applies to architectures 'dcn' and "
                                                          r"'cscnn_dcn' .*received architecture 'deepctr'"),
        ({"linear": "yes"}, r"model.linear: expected one of 'none', 'prefit', received 'yes'"),
        ({"linear_tolerance": 0}, r"model.linear_tolerance: expected a value > 0, received 0"),
    ],
    ids=["empty_grid", "negative_l2", "not_a_dcn_head", "unknown_value", "zero_tolerance"],
)
def test_config_refuses_bad_linear_settings(model, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"dataset": {"features": []}, "model": model})
