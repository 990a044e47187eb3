"""`tfvctr daily` (tfvctr.daily.driver): days arriving one at a time, a dev server answering throughout.

One tiny rehearsal (module fixture): three days of demo data, new ads every day and one ad
whose image changes on day 1; a dev server started after the first day serves every
version while clients keep asking. Day 2 is trained with a learning rate that ruins the
model: promotion must refuse it and the old version must keep serving. Vocabularies grow (`daily.vocabulary: grow`): from day 1 on
a few ads carry a brand never seen before, which must get its own embedding row and be served.
"""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from tests.serving.conftest import DevServer
from tfvctr.daily import recalibration
from tfvctr.daily.driver import load_state, promotion, run_day
from tfvctr.daily.rehearsal import first_days, write_catalog
from tfvctr.demo_data import generate
from tfvctr.errors import TfvctrError
from tfvctr.io import tables

CONFIG = """
name: tiny
dataset:
  image_size: 16
  impressions_per_chunk: 8
  passthrough: [true_ctr]
  negative_sampling_rate: 0.5
  validation: {mode: ads, ads_share: 0.2}
  features:
    - {name: device, source: impression, kind: categorical, vocabulary: auto}
    - {name: hour, source: impression, kind: categorical, hash_buckets: 32}
    - {name: user_interests, source: impression, kind: multi, vocabulary: auto, max_length: 3}
    - {name: category, source: ad, kind: categorical, vocabulary: auto}
    - {name: brand, source: ad, kind: categorical, vocabulary: auto}
    - {name: price, source: ad, kind: numeric, transform: normalize}
model: {architecture: cscnn_dcn, backbone: cnnf, backbone_width: 0.0625, attention: cscnn, visual_dim: 4,
        deep_layers: [8], cross_layers: 1}
training: {steps: 6, ads_per_batch: 8, eval_every: 6, checkpoint_every: 6, log_every: 6}
embed: {dtype: float32}
daily: {window_days: 2, warm_steps: 6, freeze_cnn: true, promote_metric: log_loss, promote_margin: 0.05,
        vocabulary: grow}
"""
FRESH = "fresh-brand"  # the brand of a few ads from day 1 on: a value the first day's vocabulary lacks


def test_promotion_rule():
    assert promotion({"auc": 0.7}, None, "auc", 0.0) == (True, "no model serves yet")
    assert promotion({"auc": 0.699}, {"auc": 0.7}, "auc", 0.002)[0]
    ok, why = promotion({"auc": 0.69}, {"auc": 0.7}, "auc", 0.002)
    assert not ok and "worse than the served model's 0.7000 by 0.0100 > promote_margin 0.002" in why
    assert not promotion({"log_loss": 0.40}, {"log_loss": 0.30}, "log_loss", 0.05)[0]
    assert promotion({"log_loss": 0.33}, {"log_loss": 0.30}, "log_loss", 0.05)[0]


def test_calibration_fit_finds_over_confidence_and_a_wrong_shift():
    """`recalibration.calibration_fit` on CTRs whose miss is known: the click logit is a + b · logit(p)."""
    rng = np.random.default_rng(0)
    z = rng.normal(-2.5, 1.0, 200_000)
    served = 1 / (1 + np.exp(-z))

    def clicks(a: float, b: float) -> np.ndarray:
        return (rng.random(z.size) < 1 / (1 + np.exp(-(a + b * z)))).astype(np.float64)

    calibrated = recalibration.calibration_fit(clicks(0.0, 1.0), served)
    assert abs(calibrated["calibration_slope"] - 1.0) < 0.03 and abs(calibrated["calibration_intercept"]) < 0.08
    assert abs(calibrated["best_shift"]) < 0.03 and calibrated["ece_best_shift"] < 0.005
    # Over-confident (b = 0.7): the slope says so, and no constant shift repairs the ECE.
    over = recalibration.calibration_fit(clicks(-0.75, 0.7), served)
    assert abs(over["calibration_slope"] - 0.7) < 0.03 and abs(over["calibration_intercept"] + 0.75) < 0.08
    assert over["ece_best_shift"] > 0.01
    # Only shifted (a log w off by log 2): the best shift finds −log 2 and then the ECE is small.
    shifted = recalibration.calibration_fit(clicks(-np.log(2.0), 1.0), served)
    assert abs(shifted["best_shift"] + np.log(2.0)) < 0.03 and shifted["ece_best_shift"] < 0.005
    assert shifted["mean_ctr_over_observed"] > 1.6


def test_driver_docstring_examples_run():
    import doctest

    from tfvctr.daily import driver

    result = doctest.testmod(driver)
    assert result.attempted >= 4 and result.failed == 0


def _request_rows(raw: str, n: int = 4) -> list[dict]:
    from tfvctr.io import tables

    ads = {r["ad_id"]: r for r in tables.iter_rows(os.path.join(raw, "ads.csv"))}
    rows = []
    for imp in tables.iter_rows(os.path.join(raw, "impressions.csv")):
        ad = ads[imp["ad_id"]]
        rows.append({"ad_id": ad["ad_id"], "category": ad["category"], "brand": ad["brand"],
                     "price": float(ad["price"]), "device": imp["device"], "hour": imp["hour"],
                     "user_interests": (imp["user_interests"].split("|") + ["", "", ""])[:3]})
        if len(rows) == n:
            return rows
    return rows


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    from serving.client import ServingClient, ServingError

    root = tmp_path_factory.mktemp("daily")
    raw = str(root / "raw")
    generate(raw, num_ads=48, num_impressions=1500, days=3, image_size=16, formats=("csv",))
    config = str(root / "tiny.yaml")
    with open(config, "w") as f:
        f.write(CONFIG)
    work = str(root / "W")
    first = first_days(os.path.join(raw, "impressions.csv"))
    impressions = os.path.join(raw, "impressions.csv")
    reports, catalogs = [], []

    shown_on_1 = {str(r["ad_id"]) for r in tables.iter_rows(impressions) if str(r["day"]) == "1"}
    fresh = sorted(a for a, f in first.items() if f == 0 and a in shown_on_1)[:6]

    def day(d: int, overrides=()):
        catalog = str(root / f"ads-{d}.jsonl")
        catalogs.append(write_catalog(os.path.join(raw, "ads.csv"), first, d, catalog))
        if d >= 1:  # some old ads change brand to one the vocabulary has never seen (vocabulary: grow)
            rows = [json.loads(line) for line in open(catalog)]
            with open(catalog, "w") as f:
                for r in rows:
                    f.write(json.dumps({**r, "brand": FRESH} if str(r["ad_id"]) in fresh else r) + "\n")
        if d == 1:  # one old ad gets a new image: it must go through the CNN again
            changed = min(a for a, f in first.items() if f == 0)
            Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(os.path.join(raw, "images", f"{changed}.jpg"))
        reports.append(run_day(config, work, str(d), catalog, impressions, overrides=list(overrides), log=None))

    day(0)
    server = DevServer(["--model-base", os.path.join(work, "serving"), "--model-name", "tiny", "--poll-seconds", "0.2"])
    rows = _request_rows(raw)
    stop, answered, failures, versions = threading.Event(), [0], [], set()

    def load():
        client = ServingClient(server.url, "tiny", timeout=30, retries=0)  # any failure counts
        while not stop.is_set():
            try:
                assert len(client.predict(rows)) == len(rows)
                answered[0] += 1
                versions.add(max(int(s["version"]) for s in client.status()["model_version_status"]))
            except (ServingError, OSError) as e:
                failures.append(str(e))
            time.sleep(0.05)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        day(1)
        deadline = time.monotonic() + 60
        while 2 not in versions and time.monotonic() < deadline:
            time.sleep(0.2)
        v2 = ServingClient(server.url, "tiny", version=2, timeout=30)
        v2.wait_until_available(120)  # the status lists a version while it still loads
        served = {b: v2.predict([{**r, "brand": b} for r in rows]) for b in (FRESH, "never-seen-brand")}
        # Day 2: a learning rate that ruins the model; the served version must stay.
        day(2, ["training.learning_rate=200", "daily.promote_margin=0.0"])
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join()
        server.stop()
    return {"work": work, "reports": reports, "catalogs": catalogs, "answered": answered[0], "failures": failures,
            "versions": versions, "first": first, "config": config, "raw": raw, "served": served}


def test_each_promoted_day_exports_the_next_version_and_the_server_answers_every_request(loop):
    assert [r["served_version"] for r in loop["reports"]] == [1, 2, 2]
    assert loop["failures"] == [] and loop["answered"] > 10
    assert loop["versions"] == {1, 2}
    assert sorted(os.listdir(os.path.join(loop["work"], "serving", "tiny"))) == ["1", "2"]


def test_worse_model_is_not_promoted_and_the_reason_is_recorded(loop):
    r = loop["reports"][2]
    assert r["promotion"]["promoted"] is False
    assert "is worse than the served model's" in r["promotion"]["reason"]
    assert r["promotion"]["new"]["log_loss"] > r["promotion"]["served"]["log_loss"]
    state = load_state(loop["work"])
    assert state["promoted"]["day"] == "1" and state["promoted"]["version"] == 2
    assert state["history"][-1]["promoted"] is False
    assert not os.path.exists(os.path.join(loop["work"], "models", "2"))  # never served, not kept
    assert "embed" not in r and "export" not in r


def test_frozen_cnn_embeds_only_new_or_changed_ads_and_reuses_the_rest(loop):
    reports, catalogs = loop["reports"], loop["catalogs"]
    assert reports[0]["embed"]["mode"] == "rebuilt" and reports[0]["embed"]["embedded"] == catalogs[0]
    e = reports[1]["embed"]
    new_ads = catalogs[1] - catalogs[0]
    assert new_ads > 0  # new ads did arrive
    assert e["mode"] == "incremental"
    assert (e["embedded"], e["reused"]) == (new_ads + 1, catalogs[0] - 1)  # + the ad whose image changed
    with open(os.path.join(e["table"], "index.json")) as f:
        assert json.load(f)["rows"] == e["rows"] == catalogs[1]
    assert not os.path.exists(reports[0]["embed"]["table"])  # the replaced table is gone (the export keeps its rows)


def test_window_keeps_the_last_days_and_vocabularies_grow_by_appending(loop):
    work = loop["work"]
    assert sorted(os.listdir(os.path.join(work, "data"))) == ["1", "2"]  # window_days 2: day 0 deleted
    assert loop["reports"][1]["window"] == ["0", "1"] and loop["reports"][2]["window"] == ["1", "2"]
    added = loop["reports"][1]["vocabulary"]["added"]["brand"]  # the fresh brand, and brands of ads new to train
    window1 = open(os.path.join(work, "window", "1", "vocab", "brand.txt")).read().split()
    assert FRESH in window1[-added:] and FRESH not in window1[:-added]  # appended after the first day's values
    assert open(os.path.join(work, "frozen", "vocab", "brand.txt")).read().split()[: len(window1)] == window1
    manifest = json.load(open(os.path.join(work, "window", "1", "manifest.json")))
    assert manifest["window"]["days"] == ["0", "1"]
    one = json.load(open(os.path.join(work, "data", "1", "manifest.json")))["splits"]["train"]["impressions"]
    assert manifest["splits"]["train"]["impressions"] > one  # two days of train impressions


def test_grown_vocabulary_warm_start_keeps_old_rows_and_the_new_value_is_served(loop, tmp_path):
    import keras

    from tfvctr.config import load_config
    from tfvctr.daily.driver import widen_warm_start

    work = loop["work"]

    def brand_rows(model_dir):
        model = keras.saving.load_model(os.path.join(model_dir, "model.keras"), compile=False)
        return next(np.array(w.numpy()) for w in model.weights if w.name == "brand_embeddings")

    old = brand_rows(os.path.join(work, "models", "0"))
    out = widen_warm_start(load_config(os.path.join(work, "configs", "1.yaml")), os.path.join(work, "window", "1"),
                           os.path.join(work, "models", "0"), str(tmp_path / "warm"), lambda line: None)
    wide = brand_rows(out)
    added = loop["reports"][1]["vocabulary"]["added"]["brand"]
    assert wide.shape == (old.shape[0] + added, old.shape[1])  # a row per appended brand
    np.testing.assert_array_equal(wide[: old.shape[0]], old)  # the old ids keep their trained rows
    new_rows = wide[old.shape[0]:]
    assert np.abs(new_rows).sum(axis=1).min() > 0  # the layer's initialisation, not zeros or a copy of row 1 (OOV)
    assert not any(np.array_equal(row, old[1]) for row in new_rows)
    # Served: the fresh brand has its own row, so it scores unlike an unknown brand (both would be OOV id 1).
    fresh, unknown = (np.array([p["ctr"] for p in loop["served"][b]]) for b in (FRESH, "never-seen-brand"))
    assert not np.allclose(fresh, unknown, rtol=0, atol=1e-7)


def test_downsampled_model_is_served_recalibrated(loop):
    export = os.path.join(loop["work"], "serving", "tiny", "2")
    with open(os.path.join(export, "assets.extra", "tfvctr_export.json")) as f:
        info = json.load(f)
    assert info["negative_sampling_rate"] == 0.5
    assert recalibration.model_rate(info["model_dir"]) == 0.5
    assert loop["reports"][0]["preprocess"]["downsampled_negatives"] > 0


def test_days_must_arrive_in_order(loop):
    with pytest.raises(TfvctrError, match="days arrive in order"):
        run_day(loop["config"], loop["work"], "1", os.path.join(loop["raw"], "ads.csv"),
                os.path.join(loop["raw"], "impressions.csv"), log=None)
