"""VBPR fed from a `tfvctr embed` table end to end: demo data → category pre-training →
`beam_jobs.embed_ads` over the catalog → VBPR trained on the table's vectors by ad_id
(`model.vbpr.features_table`), cold ads included."""

from __future__ import annotations

import os

import numpy as np
import pytest
import yaml


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    from beam_jobs import build_tfrecords, embed_ads
    from tests.conftest import REPO
    from tests.export.conftest import tiny_config_dict
    from tfvctr.config import config_from_dict
    from tfvctr.demo_data.generate import generate
    from tfvctr.training import trainer

    root = tmp_path_factory.mktemp("vbpr_table")
    raw, data, pre, table = (str(root / d) for d in ("raw", "data", "pretrain", "table"))
    generate(raw, num_ads=24, num_impressions=500, image_size=16, formats=("csv",))
    base = tiny_config_dict(REPO)
    base["model"]["attention"] = "none"
    base_path = str(root / "base.yaml")
    with open(base_path, "w") as f:
        yaml.safe_dump(base, f)
    build_tfrecords.run(["--config", base_path, "--ads", os.path.join(raw, "ads.csv"),
                         "--impressions", os.path.join(raw, "impressions.csv"), "--out", data], verbose=False)
    trainer.pretrain(config_from_dict(base, base_path), data, pre, steps=2, log=None)
    embed_ads.run(["--model", pre, "--ads", os.path.join(raw, "ads.csv"), "--out", table, "--coverage", "1",
                   "--dtype", "float32"], verbose=False)
    return {"root": root, "raw": raw, "data": data, "pretrain": pre, "table": table, "base": base}


@pytest.mark.slow
def test_vbpr_trains_on_an_embed_tables_vectors_and_cold_ads_get_their_own(embedded, tmp_path):
    import keras

    from tfvctr import layout
    from tfvctr.config import config_from_dict
    from tfvctr.evaluation import read_cold_ads
    from tfvctr.export.table import load_table
    from tfvctr.features import read_vocabulary
    from tfvctr.models.vbpr import write_table_vocabulary
    from tfvctr.training import trainer

    vocabulary = str(tmp_path / "ad_ids.txt")
    assert write_table_vocabulary(embedded["table"], vocabulary) == 24  # every catalog ad, cold ones included
    data = {**embedded["base"]}
    data["dataset"] = {**data["dataset"], "features": [
        {"name": "user_id", "source": "impression", "kind": "categorical", "hash_buckets": 500, "embedding_dim": 4},
        {"name": "ad_id", "source": "ad", "kind": "categorical", "vocabulary": vocabulary, "embedding_dim": 4},
        *data["dataset"]["features"]]}
    data["model"] = {**data["model"], "architecture": "vbpr",
                     "vbpr": {"variant": "vbpr", "factors": 3, "visual_factors": 3, "features_table": embedded["table"]}}
    config = config_from_dict(data)
    model_dir = str(tmp_path / "model")
    result = trainer.train(config, embedded["data"], model_dir, steps=3, log=None)
    assert np.isfinite(result["loss"])
    model = keras.saving.load_model(os.path.join(model_dir, layout.MODEL), compile=False)
    assert model.visual_tower is None
    table = load_table(embedded["table"], [], 4)
    by_ad = dict(zip(table.ad_ids.tolist(), table.vectors, strict=True))
    ads = read_vocabulary(vocabulary)
    features = model.fixed_features.table.numpy()
    cold = read_cold_ads(embedded["data"])
    assert cold  # eval-day ads never shown in training: VBPR's visual term is all they have
    for line, ad in enumerate(ads):
        np.testing.assert_array_equal(features[2 + line], by_ad[ad])
    # The vectors are the pre-trained tower's (the embed job ran it): not a random or mean row.
    assert len({tuple(np.round(features[2 + ads.index(a)], 5)) for a in cold}) == len(cold)
