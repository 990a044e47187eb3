"""Post-hoc Platt calibration on the valid split (`training.calibration: platt`, `tfvctr.calibration`).

The fit against simulated logits whose miscalibration is known; the fall-backs; the affine
map evaluate applies (and, with calibration off, exactly the old one). The export's graph
and a training run are tested in `tests/export/test_export_calibration.py`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from tests.beam_jobs import fixtures
from tfvctr import calibration
from tfvctr.config import config_from_dict
from tfvctr.daily import recalibration
from tfvctr.errors import ConfigError
from tfvctr.evaluation import Evaluator


def _clicks(z: np.ndarray, a: float, b: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(z.size) < 1 / (1 + np.exp(-(a * z + b)))).astype(np.float64)


@pytest.mark.parametrize("a,b", [(0.7, -0.4), (1.0, 0.0), (1.3, 0.5)], ids=["over_confident", "calibrated", "under"])
def test_fit_recovers_a_known_slope_and_intercept(a, b):
    z = np.random.default_rng(1).normal(-3.0, 1.0, 200_000)  # a CTR of a few percent
    fa, fb = calibration.fit_platt(_clicks(z, a, b), z)
    assert abs(fa - a) < 0.04 and abs(fb - b) < 0.12, (fa, fb)


def test_fit_lowers_the_log_loss_and_the_ece_of_over_confident_ctrs():
    from tfvctr import metrics

    z = np.random.default_rng(2).normal(-3.0, 1.2, 100_000)
    y = _clicks(z, 0.7, -0.8, seed=3)
    record = calibration.fit_record(y, z, min_clicks=100, step=600)
    assert record["method"] == "platt" and record["step"] == 600 and record["valid_clicks"] == int(y.sum())
    assert record["valid_logloss_after"] < record["valid_logloss_before"]
    served = 1 / (1 + np.exp(-(record["slope"] * z + record["intercept"])))
    assert metrics.calibration(y, served)["ece"] < 0.5 * metrics.calibration(y, 1 / (1 + np.exp(-z)))["ece"]


def test_too_few_clicks_falls_back_to_no_calibration_and_says_why():
    z = np.linspace(-4, 0, 1000)
    y = np.zeros(1000)
    y[[10, 500, 990]] = 1
    record = calibration.fit_record(y, z, min_clicks=100, step=5)
    assert record["method"] == "none" and record["requested"] == "platt"
    assert "3 clicks" in record["reason"] and "calibration_min_clicks = 100" in record["reason"]
    assert calibration.slope_intercept(record) is None
    assert calibration.affine(0.1, record) == (1.0, math.log(0.1))


def test_a_slope_that_would_reverse_the_ranking_is_refused():
    z = np.random.default_rng(4).normal(-2.0, 1.0, 20_000)
    record = calibration.fit_record(_clicks(z, -0.8, -2.0), z, min_clicks=10, step=1)
    assert record["method"] == "none" and "not positive" in record["reason"]


def test_separable_labels_do_not_converge_and_fall_back():
    z = np.linspace(-3, 3, 400)
    record = calibration.fit_record((z > 0).astype(float), z, min_clicks=10, step=1)
    assert record["method"] == "none" and "no convergence" in record["reason"]


def test_fit_platt_refuses_one_class():
    with pytest.raises(ValueError, match="expected clicks and non-clicks, received 0 clicks in 3"):
        calibration.fit_platt([0, 0, 0], [0.1, 0.2, 0.3])


def test_affine_composes_platt_with_the_recalibration():
    record = {"method": "platt", "slope": 0.8, "intercept": 0.3}
    scale, offset = calibration.affine(0.1, record)
    z = np.array([-4.0, -1.0, 2.0])
    np.testing.assert_allclose(scale * z + offset, 0.8 * (z + math.log(0.1)) + 0.3, rtol=1e-12)
    assert calibration.affine(1.0, None) == (1.0, 0.0)


def _batch(logits):
    def model(inputs, training=False):
        return logits

    batch = ({"ad_index": tf.constant([0, 0, 0])}, tf.constant([0.0, 1.0, 0.0]),
             {"ad_id": tf.constant([b"a"]), "user_id": tf.constant([b"u", b"u", b"v"])})
    return model, batch


def test_evaluator_applies_the_calibrated_map():
    logits = tf.constant([-2.0, 0.0, 1.5])
    model, batch = _batch(logits)
    scale, offset = calibration.affine(0.1, {"method": "platt", "slope": 0.8, "intercept": 0.3})
    out = Evaluator(model, logit_offset=offset, logit_scale=scale).eval_step(batch)
    expected = 1 / (1 + np.exp(-(0.8 * (logits.numpy() + math.log(0.1)) + 0.3)))
    np.testing.assert_allclose(out["probs"], expected, rtol=1e-6)
    raw = Evaluator(model, logit_offset=offset, logit_scale=scale, output="logit").eval_step(batch)
    np.testing.assert_allclose(raw["probs"], 0.8 * (logits.numpy() + math.log(0.1)) + 0.3, rtol=1e-6)


def test_without_calibration_the_evaluator_is_bit_identical_to_the_recalibration_alone():
    logits = tf.constant(np.random.default_rng(5).normal(-3, 2, 3).astype(np.float32))
    model, batch = _batch(logits)
    for w in (1.0, 0.1):
        scale, offset = calibration.affine(w, None)
        out = Evaluator(model, logit_offset=offset, logit_scale=scale).eval_step(batch)["probs"]
        before = tf.sigmoid(logits + recalibration.logit_offset(w)).numpy()  # the pre-calibration expression
        assert np.array_equal(out, before)


def test_model_dir_without_calibration_json_is_the_recalibration(tmp_path):
    recalibration.write_model_rate(str(tmp_path), 0.25, "data")
    assert calibration.read_calibration(str(tmp_path)) is None
    assert calibration.transform(str(tmp_path)) == (1.0, math.log(0.25))
    calibration.write_calibration(str(tmp_path), {"method": "platt", "slope": 0.5, "intercept": -0.1})
    assert calibration.transform(str(tmp_path)) == pytest.approx((0.5, 0.5 * math.log(0.25) - 0.1))


def test_config_default_is_none_and_bad_values_are_named():
    data = fixtures.config_dict()
    assert config_from_dict(data, "c.yaml").training.calibration == "none"
    data["training"] = {**data.get("training", {}), "calibration": "isotonic"}
    with pytest.raises(ConfigError, match="calibration"):
        config_from_dict(data, "c.yaml")
    data["training"].update(calibration="platt", calibration_min_clicks=0)
    with pytest.raises(ConfigError, match="training.calibration_min_clicks"):
        config_from_dict(data, "c.yaml")


def test_docstring_examples_run():
    import doctest

    result = doctest.testmod(calibration)
    assert result.attempted > 0 and result.failed == 0
