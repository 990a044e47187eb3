"""`train` with `model.linear: prefit`: the fit and its record, step 0 as a selection candidate,
model.keras and a resumed run keep the fitted weights, no valid split to choose on."""

from __future__ import annotations

import json
import os
import shutil

import keras
import numpy as np
import pytest

from tests import recordio_fixtures as rf
from tfvctr import layout
from tfvctr.config import config_from_dict
from tfvctr.errors import ConfigError
from tfvctr.features import FeatureEncoder
from tfvctr.metrics import auc
from tfvctr.training import train
from tfvctr.training.linear_prefit import design_matrix

GRID = [30.0, 3.0, 0.3]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("linear"))
    rf.write_dataset(root, num_ads=16, num_shards=2)
    shutil.copytree(os.path.join(root, "eval"), os.path.join(root, "valid"))  # a valid split, cold ads included
    return root


def _config(grid=GRID, **training):
    d = rf.tiny_config_dict(**{"steps": 4, "eval_every": 2, **training})
    d["model"].update(architecture="dcn", linear="prefit", linear_l2_grid=grid)
    return config_from_dict(d)


def _linear_weights(model) -> list[np.ndarray]:
    return [v.numpy().copy() for v in model.linear_part.weights]


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("model"))
    lines: list[str] = []
    result = train(_config(), data_dir, model_dir, log=lines.append)
    return {"dir": model_dir, "result": result, "lines": lines}


def test_prefit_fits_every_l2_and_keeps_the_best_on_valid(trained, data_dir):
    with open(os.path.join(trained["dir"], layout.LINEAR_PREFIT)) as f:
        record = json.load(f)
    assert [t["l2"] for t in record["grid"]] == GRID and all(t["converged"] for t in record["grid"])
    best = max(record["grid"], key=lambda t: t["valid_auc"])
    assert record["l2"] == best["l2"] and record["valid_auc"] == best["valid_auc"]
    # The layer holds that fit: its own logits over the valid split score the recorded AUC.
    model = trained["result"]["model"]
    config = _config()
    encoder = FeatureEncoder.from_data_dir(config.dataset, data_dir)
    x, y = design_matrix(config, data_dir, layout.VALID, encoder, model.linear_part)
    assert record["valid_impressions"] == y.size
    theta = np.concatenate([w.reshape(-1) for w in _linear_weights(model)[:-1]])
    assert auc(y, x @ theta + float(model.linear_part.bias.numpy())) == pytest.approx(record["valid_auc"], abs=1e-6)
    assert any(line.startswith("linear part pre-fitted on ") for line in trained["lines"])


def test_step_0_is_scored_and_selection_keeps_it_unless_a_later_step_beats_it(trained):
    with open(os.path.join(trained["dir"], layout.SELECTION)) as f:
        selection = json.load(f)
    steps = [h["step"] for h in selection["history"]]
    assert steps == [0, 2, 4]
    record = trained["result"]["linear_prefit"]
    # At step 0 the deep part's logit is 0, so the model is the regression: same valid AUC.
    assert selection["history"][0]["valid_auc"] == pytest.approx(record["valid_auc"], abs=1e-6)
    best = max(selection["history"], key=lambda h: h["valid_auc"])  # first of equals, as ModelSelection
    assert selection["best_step"] == best["step"]


def test_model_keras_and_a_resumed_run_keep_the_fitted_linear_part(trained, data_dir, tmp_path):
    fitted = _linear_weights(trained["result"]["model"])
    assert any(np.abs(w).max() > 0 for w in fitted)
    loaded = keras.saving.load_model(os.path.join(trained["dir"], layout.MODEL), compile=False)
    for a, b in zip(fitted, _linear_weights(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
    # A second run in the same dir resumes from the step-4 checkpoint (no pre-fit): the
    # linear weights must come back from that checkpoint, not stay at their zero init.
    model_dir = str(tmp_path / "resumed")
    shutil.copytree(trained["dir"], model_dir)
    lines: list[str] = []
    result = train(_config(), data_dir, model_dir, steps=6, log=lines.append)
    assert any("resumed from" in line for line in lines)
    assert not any(line.startswith("linear part pre-fitted") for line in lines)
    for a, b in zip(fitted, _linear_weights(result["model"]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_grid_without_a_valid_split_to_choose_on_is_refused(data_dir, tmp_path):
    bare = str(tmp_path / "data")
    shutil.copytree(data_dir, bare, ignore=shutil.ignore_patterns("valid"))
    with pytest.raises(ConfigError, match=r"model.linear_l2_grid: 3 values but .*valid holds no valid split"):
        train(_config(), bare, str(tmp_path / "model"), log=None)
