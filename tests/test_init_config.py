"""`tfvctr init-config`: a starter config inferred from raw tables (tfvctr.init_config).

The demo tables train from the config it writes without edits (preprocess, a few steps);
every scenario's tables give a valid config; a list column, an ISO-date day column, a
high-cardinality column and a missing required column, each on a small hand-made table.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml
from PIL import Image

from tfvctr.config import load_config
from tfvctr.demo_data import generate
from tfvctr.demo_data.scenarios import SCENARIOS
from tfvctr.errors import DataError
from tfvctr.init_config import VOCAB_MAX, embedding_dim, hash_buckets, infer, infer_column


def _write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def _tables(tmp_path, n_ads=12, n_imps=200, day=lambda i: i % 3, ad_extra=None, imp_extra=None, drop=()):
    """A hand-made ads/impressions pair (JSON Lines) with 20-px PNG images."""
    os.makedirs(tmp_path / "images", exist_ok=True)
    rng = np.random.default_rng(0)
    ads = []
    for a in range(n_ads):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "images" / f"a{a}.png")
        row = {"ad_id": f"a{a}", "category": ["shoes", "bags"][a % 2], "image": f"images/a{a}.png"}
        row.update((ad_extra or (lambda a: {}))(a))
        ads.append({k: v for k, v in row.items() if k not in drop})
    imps = []
    for i in range(n_imps):
        row = {"ad_id": f"a{i % n_ads}", "label": int(i % 7 == 0), "day": day(i), "user_id": f"u{i % 9}"}
        row.update((imp_extra or (lambda i: {}))(i))
        imps.append({k: v for k, v in row.items() if k not in drop})
    return _write_jsonl(tmp_path / "ads.jsonl", ads), _write_jsonl(tmp_path / "impressions.jsonl", imps)


def _features(text):
    return {f["name"]: f for f in yaml.safe_load(text)["dataset"]["features"]}


def test_list_column_is_multi_valued_with_its_95th_percentile_length(tmp_path):
    ads, imps = _tables(tmp_path, imp_extra=lambda i: {"interests": ["x", "y", "z"][: 1 + i % 3]})
    f = _features(infer(ads, imps))["interests"]
    assert (f["kind"], f["vocabulary"], f["max_length"], f["source"]) == ("multi", "auto", 3, "impression")


def test_pipe_separated_csv_column_is_multi_valued():
    col = infer_column("tags", "ad", ["a|b", "c", "a|b|c|d", ""] * 10)
    assert (col.kind, col.values, col.max_length) == ("multi", {"a", "b", "c", "d"}, 4)


def test_iso_date_day_column_is_recognised(tmp_path):
    ads, imps = _tables(tmp_path, day=lambda i: f"2024-03-0{1 + i % 3}")
    text = infer(ads, imps)
    assert "day column: ISO dates, 2024-03-01..2024-03-03 in the sample; the last day is the eval split" in text
    assert yaml.safe_load(text)["dataset"]["eval_days"] == 1


def test_high_cardinality_column_is_hashed_and_small_one_gets_a_vocabulary(tmp_path):
    n = VOCAB_MAX + 200
    ads, imps = _tables(tmp_path, n_ads=12, n_imps=n,
                        imp_extra=lambda i: {"query": f"q{i}", "device": ["ios", "web"][i % 2], "price": 0.5 + i})
    f = _features(infer(ads, imps))
    assert "vocabulary" not in f["query"] and f["query"]["hash_buckets"] == hash_buckets(n) == 8192
    assert f["query"]["embedding_dim"] == embedding_dim(8192) == 16
    assert f["device"]["vocabulary"] == "auto" and f["device"]["embedding_dim"] == 4
    assert (f["price"]["kind"], f["price"]["transform"]) == ("numeric", "bucketize")


@pytest.mark.parametrize("drop, table, column", [("label", "impressions", "'label'"), ("image", "ads", "'image'"),
                                                 ("day", "impressions", "'day'")])
def test_missing_required_column_is_refused_in_one_line(tmp_path, drop, table, column):
    ads, imps = _tables(tmp_path, drop=(drop,))
    with pytest.raises(DataError) as info:
        infer(ads, imps)
    message = str(info.value)
    assert message.startswith(f"{ads if table == 'ads' else imps}: missing required column {column}: the {table} table")
    assert "\n" not in message


def test_cli_refuses_missing_column_with_exit_2(tmp_path, capsys):
    from tfvctr.cli import main

    ads, imps = _tables(tmp_path, drop=("ad_id",))
    assert main(["init-config", "--ads", ads, "--impressions", imps]) == 2
    assert "missing required column 'ad_id'" in capsys.readouterr().err


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_scenario_gives_a_valid_config_without_the_simulators_ctr_as_a_feature(tmp_path, scenario):
    generate(str(tmp_path), num_ads=30, num_impressions=300, days=3, image_size=16, formats=("csv",),
             scenario=scenario)
    text = infer(str(tmp_path / "ads.csv"), str(tmp_path / "impressions.csv"), name=scenario)
    path = tmp_path / "c.yaml"
    path.write_text(text)
    config = load_config(str(path))
    assert config.dataset.passthrough == ["true_ctr"]
    assert "true_ctr" not in {f.name for f in config.dataset.features}
    assert {"category", "brand", "price", "keywords"} <= {f.name for f in config.dataset.features}
    assert config.dataset.image_size == 16


def test_demo_tables_preprocess_and_train_from_the_written_config_without_edits(tmp_path):
    from beam_jobs import build_tfrecords
    from tfvctr.cli import main
    from tfvctr.training.trainer import train

    raw = tmp_path / "raw"
    generate(str(raw), num_ads=40, num_impressions=800, days=3, image_size=16, formats=("csv",))
    config_path = str(tmp_path / "init.yaml")
    assert main(["init-config", "--ads", str(raw / "ads.csv"), "--impressions", str(raw / "impressions.csv"),
                 "--out", config_path, "--name", "init"]) == 0
    data = str(tmp_path / "data")
    manifest = build_tfrecords.run(["--config", config_path, "--ads", str(raw / "ads.csv"), "--impressions",
                                    str(raw / "impressions.csv"), "--out", data], verbose=False)
    assert manifest["splits"]["train"]["impressions"] > 0 and manifest["dead_letter"]["impressions"] == 0
    result = train(load_config(config_path), data, str(tmp_path / "model"), steps=2, log=None)
    assert result["step"] == 2 and np.isfinite(result["loss"])
