"""A tiny trained model, its data and its table, shared by the export tests (session scope).

Demo data at 16 px (40 ads, 7 days, the last one the eval day), a CSCNN-DCN a few widths
wide trained for a few steps, and its visual-embedding table in float32 (every ad).
"""

from __future__ import annotations

import os

import pytest
import yaml

from tfvctr.config import config_from_dict


def tiny_config_dict(repo) -> dict:
    with open(repo / "configs" / "demo.yaml") as f:
        data = yaml.safe_load(f)
    data["name"] = "tiny"
    data["dataset"]["image_size"] = 16
    data["dataset"]["num_shards"] = 1
    data["model"].update(backbone_width=0.0625, channel_prior_dim=4, spatial_prior_size=3, visual_dim=4,
                         deep_layers=[8], cross_layers=1)
    data["training"].update(steps=3, ads_per_batch=8, decay_steps=[], checkpoint_every=3, log_every=3,
                            shuffle_buffer=16)
    data["embed"] = {"coverage": 1.0, "dtype": "float32", "batch_size": 16}
    return data


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict:
    from beam_jobs import build_tfrecords, embed_ads
    from tests.conftest import REPO
    from tfvctr.demo_data.generate import generate
    from tfvctr.training.trainer import train

    root = tmp_path_factory.mktemp("export_tiny")
    raw, data, model_dir, table = (str(root / d) for d in ("raw", "data", "model", "table"))
    generate(raw, num_ads=40, num_impressions=1200, image_size=16, formats=("csv",))
    config_dict = tiny_config_dict(REPO)
    config_path = str(root / "tiny.yaml")
    with open(config_path, "w") as f:
        yaml.safe_dump(config_dict, f)
    config = config_from_dict(config_dict, config_path)
    build_tfrecords.run(["--config", config_path, "--ads", os.path.join(raw, "ads.csv"),
                         "--impressions", os.path.join(raw, "impressions.csv"), "--out", data], verbose=False)
    train(config, data, model_dir, log=None)
    embed_ads.run(["--model", model_dir, "--data", data, "--out", table, "--coverage", "1", "--dtype", "float32"],
                  verbose=False)
    return {"root": str(root), "raw": raw, "data": data, "model": model_dir, "table": table, "config": config,
            "config_path": config_path}
