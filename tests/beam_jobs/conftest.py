"""Shared, session-scoped runs of the Beam jobs: each costs seconds, several tests read each."""

from __future__ import annotations

import glob
import io
import os

import numpy as np
import pytest
from PIL import Image

from tests.beam_jobs import fixtures


def read_records(out: str, split: str) -> list[bytes]:
    """Every record of a split, sorted (the order across shards is the runner's)."""
    import tensorflow as tf

    records = []
    for path in sorted(glob.glob(os.path.join(out, split, "*.tfrecord*"))):
        compression = "GZIP" if path.endswith(".gz") else ""
        records += [bytes(r.numpy()) for r in tf.data.TFRecordDataset(path, compression_type=compression)]
    return sorted(records)


def parse(record: bytes):
    import tensorflow as tf

    return tf.train.SequenceExample.FromString(record)


@pytest.fixture(scope="session")
def demo_raw(tmp_path_factory) -> dict:
    """The demo simulator at test size: 40 ads, 1,500 impressions over 7 days, 16 px."""
    from tfvctr.demo_data.generate import generate

    root = str(tmp_path_factory.mktemp("demo_raw"))
    generate(root, num_ads=40, num_impressions=1500, image_size=16, formats=("csv", "jsonl", "parquet"))
    config_path = os.path.join(root, "demo16.yaml")
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "demo.yaml")) as f:
        # The split tests count by the `ads` mode's rules (demo.yaml's own is ads_and_temporal).
        text = f.read().replace("image_size: 64", "image_size: 16").replace("mode: ads_and_temporal", "mode: ads")
    with open(config_path, "w") as f:
        f.write(text)
    return {"root": root, "config": config_path, "ads": os.path.join(root, "ads.csv"),
            "impressions": os.path.join(root, "impressions.csv")}


@pytest.fixture(scope="session")
def demo_runs(demo_raw, tmp_path_factory) -> dict:
    """The same demo data preprocessed twice: in one process, and with 2 processes."""
    from beam_jobs import build_tfrecords

    outs, manifests = {}, {}
    for name, extra in (("in_memory", []), ("two_processes", ["--direct_num_workers", "2"])):
        out = str(tmp_path_factory.mktemp(f"demo_{name}"))
        manifests[name] = build_tfrecords.run(
            ["--config", demo_raw["config"], "--ads", demo_raw["ads"], "--impressions", demo_raw["impressions"],
             "--out", out, *extra], verbose=False)
        outs[name] = out
    return {"out": outs, "manifest": manifests}


def _jpeg(size: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 100, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def faulty_run(tmp_path_factory) -> dict:
    """Tiny tables with one of each fault; the job must succeed and dead-letter each one."""
    from beam_jobs import build_tfrecords

    root = str(tmp_path_factory.mktemp("faulty_raw"))
    ads, imps = fixtures.make_rows(num_ads=8, num_impressions=60, days=3)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    # ad05: a JPEG cut in half; ad06: no file; an extra ad07-sized image of 80x80 over the 64*64 pixel limit.
    with open(os.path.join(root, "images", "ad05.png"), "wb") as f:
        f.write(_jpeg(20)[:200])
    ads[6]["_no_image"] = True
    ads.append({"ad_id": "big", "category": "hats", "image": "images/big.png", "brand": "brand0", "price": 1.0})
    with open(os.path.join(root, "images", "big.png"), "wb") as f:
        f.write(fixtures.png_bytes(80, 50))
    imps.append({**imps[0], "ad_id": "big"})
    imps.append({**imps[0], "ad_id": "no_such_ad"})
    imps.append({**imps[0], "label": "yes"})
    paths = fixtures.write_raw(root, ads, imps)
    config_path = fixtures.write_config(os.path.join(root, "config.yaml"), k=4, max_image_pixels=64 * 64)
    out = str(tmp_path_factory.mktemp("faulty_out"))
    argv = ["--config", config_path, "--ads", paths["ads"], "--impressions", paths["impressions"], "--out", out]
    manifest = build_tfrecords.run(argv, verbose=False)
    return {"root": root, "out": out, "argv": argv, "manifest": manifest, "ads": ads, "impressions": imps,
            "config": config_path}


@pytest.fixture
def cli_main(monkeypatch):
    """`tfvctr.cli.main` with the Beam commands registered (the lead adds them to COMMANDS)."""
    from tfvctr import cli

    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, *(c for c in ("preprocess", "embed") if c not in cli.COMMANDS)])
    return cli.main
