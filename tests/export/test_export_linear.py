"""The export of a model with `model.linear: prefit`: its fixed linear part reaches the serving signatures."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from tests.export.conftest import write_model_dir
from tfvctr import layout


def test_export_of_a_prefit_model_matches_keras_with_the_linear_part(tiny, tmp_path):
    import keras

    from beam_jobs import embed_ads
    from tfvctr.export import export_model

    config = tiny["config"]
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, linear="prefit"))
    model_dir, table = str(tmp_path / "model"), str(tmp_path / "table")
    write_model_dir(config, tiny["data"], model_dir)
    # Large fitted weights and a non-zero deep output: a serving path that dropped either
    # part would miss the Keras logit by far more than the check's 1e-5.
    model = keras.saving.load_model(os.path.join(model_dir, layout.MODEL), compile=False)
    rng = np.random.default_rng(0)
    linear = model.linear_part
    linear.set_fitted({s["name"]: rng.normal(size=linear.rows(s["name"])) for s in linear.features}, bias=-2.0)
    model.head.out.kernel.assign(rng.normal(size=model.head.out.kernel.shape).astype("float32"))
    model.save(os.path.join(model_dir, layout.MODEL))
    embed_ads.run(["--model", model_dir, "--ads", os.path.join(tiny["raw"], "ads.csv"), "--out", table,
                   "--coverage", "1", "--dtype", "float32"], verbose=False)  # fmt: skip
    info = export_model(model_dir, table, str(tmp_path / "serving"))
    check = info["check"]
    assert check["max_abs_diff_logit"] <= 1e-5 and check["max_abs_diff_ctr"] <= 1e-5
    # The check compared the served logits with this Keras model's; they match only if the export
    # carries the linear part, since it moves the logits by far more than 1e-5:
    from tfvctr import data as data_lib
    from tfvctr.features import FeatureEncoder

    encoder = FeatureEncoder.from_data_dir(config.dataset, tiny["data"])
    inputs, _ = next(iter(data_lib.make_dataset(config, tiny["data"], "eval", training=False, encoder=encoder)))
    part = model.linear_part(model.gather_features(inputs)).numpy()
    assert np.abs(part).min() > 1e-2
