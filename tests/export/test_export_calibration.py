"""`training.calibration: platt` end to end: the trainer fits and records a and b on the valid split,
`tfvctr evaluate` and the exported graph (checked through the TF1 loader) serve the same calibrated CTRs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tfvctr import calibration, evaluation, layout
from tfvctr.daily import recalibration
from tfvctr.export import check_export, export_model
from tfvctr.export.signature import DEFAULT_SIGNATURE, input_specs
from tfvctr.export.warmup import sample_rows

PLATT = {"method": "platt", "slope": 0.8, "intercept": 0.3, "step": 3}


@pytest.fixture(scope="module")
def calibrated(tiny, tmp_path_factory) -> dict:
    """The tiny model dir trained at w = 0.1 (as recorded) with a known Platt map, and its export."""
    root = tmp_path_factory.mktemp("calibrated")
    model_dir = str(root / "model")
    shutil.copytree(tiny["model"], model_dir)
    recalibration.write_model_rate(model_dir, 0.1, tiny["data"])
    calibration.write_calibration(model_dir, PLATT)
    info = export_model(model_dir, tiny["table"], str(root / "serving"))
    return {"model": model_dir, "info": info}


def test_export_serves_the_calibrated_ctrs_evaluate_scores(tiny, calibrated):
    import keras

    import tfvctr.models  # noqa: F401
    from tfvctr import data as data_lib
    from tfvctr.features import FeatureEncoder

    info = calibrated["info"]
    # The exporter's own fresh-process check (TF1 loader) compared against the same map, and records it.
    assert info["check"]["max_abs_diff_ctr"] <= 1e-5 and info["calibration"]["slope"] == 0.8
    model = keras.saving.load_model(os.path.join(calibrated["model"], layout.MODEL), compile=False)
    encoder = FeatureEncoder.from_data_dir(tiny["config"].dataset, tiny["data"])
    dataset = data_lib.make_dataset(tiny["config"], tiny["data"], "eval", training=False, encoder=encoder,
                                    with_meta=True)
    scale, offset = calibration.transform(calibrated["model"])
    batch = next(iter(dataset))
    scored = evaluation.Evaluator(model, logit_offset=offset, logit_scale=scale).eval_step(batch)["probs"]
    raw = np.asarray(model(batch[0], training=False), np.float64)
    np.testing.assert_allclose(scored, 1 / (1 + np.exp(-(0.8 * (raw + math.log(0.1)) + 0.3))), atol=1e-6, rtol=0)
    rows = sample_rows(tiny["config"], tiny["data"], len(scored))  # the same eval rows, in the same order
    fn = tf.saved_model.load(info["path"]).signatures[DEFAULT_SIGNATURE]
    served = fn(**{k: tf.constant(rows[k]) for k in input_specs(tiny["config"])})
    np.testing.assert_allclose(served["ctr"].numpy(), scored, atol=1e-5, rtol=0)
    # --check re-runs the TF1 comparison from the info file's record of the map.
    assert check_export(info["path"])["max_abs_diff_ctr"] <= 1e-5
    metrics = evaluation.evaluate(calibrated["model"], tiny["data"], write=False)
    assert metrics["platt"] == {"slope": 0.8, "intercept": 0.3} and metrics["negative_sampling_rate"] == 0.1


def test_without_calibration_the_export_records_no_map(exported):
    assert "calibration" not in exported


def test_trainer_fits_the_map_on_the_valid_split_and_a_run_without_it_removes_it(tiny, tmp_path):
    from tfvctr.training.trainer import train

    training = dataclasses.replace(tiny["config"].training, steps=3, eval_every=3, checkpoint_every=3,
                                   calibration="platt", calibration_min_clicks=1)
    config = dataclasses.replace(tiny["config"], training=training)
    model_dir = str(tmp_path / "m")
    lines: list[str] = []
    result = train(config, tiny["data"], model_dir, log=lines.append)
    record = calibration.read_calibration(model_dir)
    assert record == result["calibration"] and record["step"] == result["best_step"] == 3
    with open(os.path.join(model_dir, layout.SELECTION)) as f:
        assert json.load(f)["calibration"] == record
    # a and b fitted (the valid split has 13 clicks here); its log loss cannot rise: the identity is a candidate.
    assert record["method"] == "platt" and record["valid_clicks"] > 0 and record["slope"] > 0
    assert record["valid_logloss_after"] <= record["valid_logloss_before"] + 1e-12
    assert any(line.startswith("calibration (platt") for line in lines)
    assert evaluation.evaluate(model_dir, tiny["data"], write=False)["platt"]["slope"] == record["slope"]
    # The same dir resumed with calibration off (nothing left to train): the map goes.
    off = dataclasses.replace(config, training=dataclasses.replace(training, calibration="none"))
    train(off, tiny["data"], model_dir, log=None)
    assert calibration.read_calibration(model_dir) is None
    assert "platt" not in evaluation.evaluate(model_dir, tiny["data"], write=False)
