"""Job-level tests of `beam_jobs.embed_ads` on the fault run's preprocess output and a tiny tower."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from beam_jobs import embed_ads, images
from beam_jobs.embed_ads import coverage_threshold
from tests.beam_jobs import fixtures


@pytest.fixture(scope="module")
def model_dir(faulty_run, tmp_path_factory) -> str:
    import keras

    import tfvctr.layers  # noqa: F401
    from tfvctr.models.visual_tower import build_visual_tower

    with open(os.path.join(faulty_run["out"], "vocab", "category.txt")) as f:
        num_categories = len(f.read().splitlines()) + 1
    config = fixtures.config()
    path = str(tmp_path_factory.mktemp("model"))
    tower = build_visual_tower(config.model, config.dataset.image_size, num_categories, seed=0)
    tower.save(os.path.join(path, "visual_tower.keras"))
    fixtures.write_config(os.path.join(path, "config.yaml"), max_image_pixels=64 * 64)  # as the fault run
    keras.backend.clear_session()
    return path


def _load_table(out: str) -> dict:
    with open(os.path.join(out, "index.json")) as f:
        index = json.load(f)
    parts = [np.load(os.path.join(out, name)) for name in index["shards"]]
    table = {key: np.concatenate([p[key] for p in parts]) for key in ("ad_id", "category", "impressions", "vectors")}
    return {"index": index, **table}


def _reference(model_dir: str, data: str, ad_counts: list[dict]) -> dict[str, np.ndarray]:
    """x_v computed directly: the tower on the prepared image, category id from the vocabulary."""
    import keras

    import tfvctr.layers  # noqa: F401

    ds = fixtures.config().dataset
    tower = keras.saving.load_model(os.path.join(model_dir, "visual_tower.keras"), compile=False)
    with open(os.path.join(data, "vocab", "category.txt")) as f:
        ids = {c: i + 1 for i, c in enumerate(f.read().splitlines())}
    pixels = np.stack([images.decode_image(images.load_image(r["image"], ds.image_size, ds.image_format))
                       for r in ad_counts])
    cats = np.array([ids.get(r["category"], 0) for r in ad_counts], np.int32)
    vectors = np.asarray(tower({"image": pixels, "category": cats}, training=False))
    return {r["ad_id"]: v for r, v in zip(ad_counts, vectors, strict=True)}


def test_embed_keeps_most_impressed_ads_and_matches_the_tower(faulty_run, model_dir, tmp_path):
    data, out = faulty_run["out"], str(tmp_path / "table")
    with open(os.path.join(data, "ad_counts.jsonl")) as f:
        ad_counts = [json.loads(line) for line in f]
    counts = [r["train_impressions"] for r in ad_counts]
    histogram = {c: counts.count(c) for c in set(counts)}
    threshold = coverage_threshold(histogram, 0.6)
    expected = sorted(r["ad_id"] for r in ad_counts if r["train_impressions"] >= threshold)
    assert 0 < len(expected) < len(ad_counts)  # the cut removes someone (the cold ad at least)

    index = embed_ads.run(["--model", model_dir, "--data", data, "--out", out, "--coverage", "0.6",
                           "--dtype", "float32", "--batch-size", "2"], verbose=False)
    table = _load_table(out)
    assert sorted(table["ad_id"].tolist()) == expected and index["rows"] == len(expected)
    covered = sum(r["train_impressions"] for r in ad_counts if r["ad_id"] in expected)
    assert index["covered_impressions"] == covered and index["total_impressions"] == sum(counts)
    assert index["coverage"] == pytest.approx(covered / sum(counts)) and index["coverage"] >= 0.6
    assert index["dim"] == 4 and table["vectors"].dtype == np.float32
    assert index["size_bytes"] == sum(os.path.getsize(os.path.join(out, s)) for s in index["shards"])
    reference = _reference(model_dir, data, [r for r in ad_counts if r["ad_id"] in expected])
    for ad_id, vector in zip(table["ad_id"], table["vectors"], strict=True):
        np.testing.assert_allclose(vector, reference[ad_id], rtol=1e-5, atol=1e-6)
    by_id = {r["ad_id"]: r for r in ad_counts}
    assert table["impressions"].tolist() == [by_id[a]["train_impressions"] for a in table["ad_id"]]


def test_embed_cli_from_a_raw_table_float16_dead_letters_bad_images_and_writes_category_means(
        faulty_run, model_dir, tmp_path, cli_main):
    data, out = faulty_run["out"], str(tmp_path / "table")
    ads_table = os.path.join(faulty_run["root"], "ads.csv")
    assert cli_main(["embed", "--model", model_dir, "--data", data, "--out", out, "--ads", ads_table,
                     "--coverage", "1", "--dtype", "float16"]) == 0
    table = _load_table(out)
    # Every ad of the table with a usable image, including ads without train impressions.
    assert sorted(table["ad_id"].tolist()) == ["ad00", "ad01", "ad02", "ad03", "ad04", "ad07"]
    assert table["vectors"].dtype == np.float16 and table["index"]["dtype"] == "float16"
    dead = []
    for name in os.listdir(os.path.join(out, "dead_letter")):
        with open(os.path.join(out, "dead_letter", name)) as f:
            dead += [json.loads(line) for line in f]
    assert sorted(d["row"]["ad_id"] for d in dead) == ["ad05", "ad06", "big"]
    assert table["index"]["dead_letter_ads"] == 3
    means = np.load(os.path.join(out, "category_means.npz"))
    vectors = table["vectors"].astype(np.float64)
    for category, mean in zip(means["category"], means["vectors"], strict=True):
        np.testing.assert_allclose(mean, vectors[table["category"] == category].mean(axis=0), rtol=2e-3, atol=2e-3)
    assert sorted(means["category"].tolist()) == sorted(set(table["category"].tolist()))
