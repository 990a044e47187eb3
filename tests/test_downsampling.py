"""Negative downsampling (`dataset.negative_sampling_rate`) and its recalibration (He et al. 2014).

The formula against a simulation with known CTRs; the Beam job's train split downsampled
(eval and valid untouched) with counts that add up; evaluate's CTRs recalibrated.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf
import yaml

from beam_jobs.transforms.join import keep_negative
from tests.beam_jobs import fixtures
from tfvctr import layout
from tfvctr.config import config_from_dict
from tfvctr.daily import recalibration
from tfvctr.errors import ConfigError


@pytest.mark.parametrize("true_ctr", [0.01, 0.05, 0.3])
@pytest.mark.parametrize("w", [0.05, 0.25])
def test_recalibrated_ctr_of_downsampled_traffic_matches_the_known_ctr(true_ctr, w):
    rng = np.random.default_rng(int(true_ctr * 1000 + w * 100))
    n = 400_000
    clicks = rng.random(n) < true_ctr
    # The job's own seeded draw decides which non-clicks stay.
    kept = np.array([c or keep_negative(3, (0, i, f"u{i}"), w) for i, c in enumerate(clicks)])
    observed = clicks[kept].mean()  # what a model trained on the downsampled split learns
    assert observed > true_ctr * 1.5  # the bias the recalibration removes is large
    q = recalibration.recalibrate(observed, w)
    # Delta method: std of q from the Bernoulli noise of the clicks and the kept negatives.
    std = math.sqrt(true_ctr * (1 - true_ctr) / n) * 1.2 + 1e-12
    assert abs(q - true_ctr) < 4 * std + 0.02 * true_ctr, (q, true_ctr)


def test_logit_shift_is_the_formula():
    p = np.linspace(0.001, 0.999, 101)
    for w in (0.01, 0.1, 0.5, 1.0):
        shifted = 1 / (1 + np.exp(-(np.log(p / (1 - p)) + recalibration.logit_offset(w))))
        np.testing.assert_allclose(shifted, recalibration.recalibrate(p, w), rtol=1e-12)
    assert recalibration.logit_offset(1.0) == 0.0
    with pytest.raises(ValueError, match=r"expected a value in \(0, 1\], received 0"):
        recalibration.logit_offset(0)


def test_keep_negative_keeps_the_configured_share_and_is_seeded():
    imps = [(0, 1, f"u{i}") for i in range(20_000)]
    share = np.mean([keep_negative(0, imp, 0.1) for imp in imps])
    assert abs(share - 0.1) < 0.01
    assert [keep_negative(0, imp, 0.1) for imp in imps[:500]] != [keep_negative(1, imp, 0.1) for imp in imps[:500]]


@pytest.mark.parametrize("rate", [0, 1.5, -0.1])
def test_config_refuses_a_rate_outside_0_1(rate):
    data = fixtures.config_dict()
    data["dataset"]["negative_sampling_rate"] = rate
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, "beam-test")
    assert str(info.value) == (f"beam-test: dataset.negative_sampling_rate: expected a value in (0, 1], "
                               f"received {float(rate)}")


# --------------------------------------------------------------------------- the job


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    from beam_jobs import build_tfrecords

    root = str(tmp_path_factory.mktemp("ds_raw"))
    ads, imps = fixtures.make_rows(num_ads=16, num_impressions=400, days=3, cold_ads=2)
    paths = fixtures.write_raw(root, ads, imps)
    out = {}
    for rate in (1.0, 0.3):
        data = fixtures.config_dict(k=4)
        data["dataset"]["validation"] = {"mode": "ads", "ads_share": 0.3}
        data["dataset"]["negative_sampling_rate"] = rate
        config = os.path.join(root, f"c{rate}.yaml")
        with open(config, "w") as f:
            yaml.safe_dump(data, f)
        d = str(tmp_path_factory.mktemp(f"ds_{rate}"))
        out[rate] = (d, build_tfrecords.run(["--config", config, "--ads", paths["ads"], "--impressions",
                                             paths["impressions"], "--out", d], verbose=False))
    return {"impressions": imps, "out": out}


def test_train_split_keeps_every_click_and_a_share_of_non_clicks(runs):
    full, sampled = runs["out"][1.0][1], runs["out"][0.3][1]
    ft, st = full["splits"]["train"], sampled["splits"]["train"]
    assert st["positives"] == ft["positives"] > 0
    negatives_full, negatives_kept = ft["impressions"] - ft["positives"], st["impressions"] - st["positives"]
    assert negatives_kept + sampled["downsampled_negatives"] == negatives_full
    assert 0.15 < negatives_kept / negatives_full < 0.45  # binomial around 0.3 at ~200 non-clicks
    assert sampled["negative_sampling_rate"] == 0.3 and full["negative_sampling_rate"] == 1.0
    assert full["downsampled_negatives"] == 0


def test_eval_and_valid_are_untouched(runs):
    full, sampled = runs["out"][1.0][1], runs["out"][0.3][1]
    for split in (layout.VALID, layout.EVAL):
        assert sampled["splits"][split] == full["splits"][split], split
        assert sampled["splits"][split]["impressions"] > 0


def test_manifest_counts_add_up_with_the_downsampled_negatives(runs):
    from beam_jobs.build_tfrecords import check_counts

    d, m = runs["out"][0.3]
    s = m["splits"]
    assert m["input"]["impressions"] == len(runs["impressions"]) == (
        sum(s[x]["impressions"] for x in layout.SPLITS) + m["dead_letter"]["impressions"] + m["downsampled_negatives"])
    with open(os.path.join(d, layout.AD_COUNTS)) as f:
        assert sum(json.loads(line)["downsampled_negatives"] for line in f) == m["downsampled_negatives"]
    broken = json.loads(json.dumps(m))
    broken["downsampled_negatives"] -= 1
    with pytest.raises(Exception, match="downsampled negatives"):
        check_counts(broken)
    assert recalibration.data_rate(d) == 0.3


# --------------------------------------------------------------------------- evaluate


def test_evaluator_scores_recalibrated_ctrs():
    from tfvctr.evaluation import Evaluator

    logits = tf.constant([-2.0, 0.0, 1.5])

    def model(inputs, training=False):
        return logits

    batch = ({"ad_index": tf.constant([0, 0, 0])}, tf.constant([0.0, 1.0, 0.0]),
             {"ad_id": tf.constant([b"a"]), "user_id": tf.constant([b"u", b"u", b"v"])})
    p = 1 / (1 + np.exp(-logits.numpy()))
    for w in (1.0, 0.1):
        out = Evaluator(model, logit_offset=recalibration.logit_offset(w)).eval_step(batch)
        np.testing.assert_allclose(out["probs"], recalibration.recalibrate(p, w), rtol=1e-5)


def test_model_dir_rate_defaults_to_no_sampling(tmp_path):
    assert recalibration.model_rate(str(tmp_path)) == 1.0
    recalibration.write_model_rate(str(tmp_path), 0.25, "data")
    assert recalibration.model_rate(str(tmp_path)) == 0.25


@pytest.mark.parametrize("module", ["tfvctr.daily.recalibration", "tfvctr.init_config", "tfvctr.daily.driver"])
def test_docstring_examples_of_the_daily_modules_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
