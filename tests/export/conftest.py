"""A tiny model dir, its data and its table, shared by the export tests (session scope).

Demo data at 16 px (40 ads, 7 days, the last one the eval day), a CSCNN-DCN a few widths
wide with seeded random weights written as `tfvctr train` writes its model dir (the
export reads only the files; training is the demo's job), its visual-embedding table
in float32 (every ad), and one export of it.
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


def write_model_dir(config, data: str, model_dir: str) -> None:
    """config.yaml, data_dir.txt, model.keras, visual_tower.keras (docs/formats.md §3)."""
    import keras

    from tfvctr import data as data_lib
    from tfvctr import layout
    from tfvctr.config import save_config
    from tfvctr.features import FeatureEncoder
    from tfvctr.models.factory import build_model

    os.makedirs(model_dir, exist_ok=True)
    encoder = FeatureEncoder.from_data_dir(config.dataset, data)
    keras.utils.set_random_seed(0)
    model = build_model(config, encoder.num_categories, encoder.vocab_sizes, seed=0)
    inputs, _ = next(iter(data_lib.make_dataset(config, data, "eval", training=False, encoder=encoder)))
    model(inputs)
    # Random x_v is small next to the other features; scaled up, a wrong x_v (a fallback
    # row where the image was expected, another ad's row) moves the logit well past 1e-5.
    projection = model.visual_tower.get_layer("visual_projection")
    projection.kernel.assign(projection.kernel * 50.0)
    save_config(config, os.path.join(model_dir, layout.CONFIG))
    with open(os.path.join(model_dir, layout.DATA_DIR_POINTER), "w") as f:
        f.write(data)
    model.visual_tower.save(os.path.join(model_dir, layout.VISUAL_TOWER))
    model.save(os.path.join(model_dir, layout.MODEL))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict:
    from beam_jobs import build_tfrecords, embed_ads
    from tests.conftest import REPO
    from tfvctr.demo_data.generate import generate

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
    write_model_dir(config, data, model_dir)
    embed_ads.run(["--model", model_dir, "--ads", os.path.join(raw, "ads.csv"), "--out", table, "--coverage", "1",
                   "--dtype", "float32"], verbose=False)
    return {"root": str(root), "raw": raw, "data": data, "model": model_dir, "table": table, "config": config,
            "config_path": config_path}


@pytest.fixture(scope="session")
def exported(tiny) -> dict:
    """One export of the tiny model (version 1), checked by the exporter itself."""
    from tfvctr.export import export_model

    info = export_model(tiny["model"], tiny["table"], os.path.join(tiny["root"], "serving"))
    return info
