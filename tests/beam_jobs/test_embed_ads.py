"""Job-level tests of `beam_jobs.embed_ads` on the fault run's catalog and preprocess output, with a tiny tower."""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from beam_jobs import embed_ads, images
from beam_jobs.transforms.embed import coverage_threshold
from tests.beam_jobs import fixtures

VALID_ADS = ["ad00", "ad01", "ad02", "ad03", "ad04", "ad07"]  # ad05 (cut JPEG), ad06 (no file), big: dead letter


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
    with open(os.path.join(path, "data_dir.txt"), "w") as f:
        f.write(faulty_run["out"])  # as `tfvctr train` writes it: --data defaults to it
    keras.backend.clear_session()
    return path


def _load_table(out: str) -> dict:
    with open(os.path.join(out, "index.json")) as f:
        index = json.load(f)
    parts = [np.load(os.path.join(out, name)) for name in index["shards"]]
    table = {key: np.concatenate([p[key] for p in parts]) for key in ("ad_id", "category", "impressions", "vectors")}
    return {"index": index, **table}


def _dead_letters(out: str) -> list[dict]:
    dead = []
    for name in os.listdir(os.path.join(out, "dead_letter")):
        with open(os.path.join(out, "dead_letter", name)) as f:
            dead += [json.loads(line) for line in f]
    return dead


def _ad_counts(data: str) -> dict[str, dict]:
    with open(os.path.join(data, "ad_counts.jsonl")) as f:
        return {r["ad_id"]: r for r in map(json.loads, f)}


def _reference(model_dir: str, data: str, ads: list[dict], root: str) -> dict[str, np.ndarray]:
    """x_v computed directly: the tower on the prepared image, category id from the vocabulary."""
    import keras

    import tfvctr.layers  # noqa: F401

    ds = fixtures.config().dataset
    tower = keras.saving.load_model(os.path.join(model_dir, "visual_tower.keras"), compile=False)
    with open(os.path.join(data, "vocab", "category.txt")) as f:
        ids = {c: i + 1 for i, c in enumerate(f.read().splitlines())}
    pixels = np.stack([images.decode_image(images.load_image(os.path.join(root, r["image"]), ds.image_size,
                                                             ds.image_format)) for r in ads])
    cats = np.array([ids.get(r["category"], 0) for r in ads], np.int32)
    vectors = np.asarray(tower({"image": pixels, "category": cats}, training=False))
    return {r["ad_id"]: v for r, v in zip(ads, vectors, strict=True)}


def _catalog(faulty_run, tmp_path, extra: list[dict]) -> str:
    """The fault run's ads table plus `extra` rows, next to its images (paths are relative)."""
    rows = [{k: v for k, v in ad.items() if not k.startswith("_")} for ad in faulty_run["ads"]] + extra
    path = os.path.join(faulty_run["root"], f"catalog_{tmp_path.name}.csv")
    fixtures.write_table(path, rows)
    return path


def test_embed_covers_every_catalog_ad_by_default_and_matches_the_tower(faulty_run, model_dir, tmp_path):
    """Default coverage 1: every valid catalog ad, whatever its traffic; the counts add up."""
    out = str(tmp_path / "table")
    ads_table = os.path.join(faulty_run["root"], "ads.csv")
    index = embed_ads.run(["--model", model_dir, "--ads", ads_table, "--out", out, "--dtype", "float32",
                           "--batch-size", "2"], verbose=False)
    table = _load_table(out)
    assert sorted(table["ad_id"].tolist()) == VALID_ADS and index["rows"] == 6
    assert index["ads_input"] == 9 == index["rows"] + index["ads_below_coverage"] + index["dead_letter_ads"]
    assert index["dead_letter_ads"] == 3 and index["new_ads"] == 0 and index["requested_coverage"] == 1.0
    assert index["impressions_field"] == "eval_impressions"  # the fault run has an eval day
    counts = _ad_counts(faulty_run["out"])
    assert table["impressions"].tolist() == [counts[a]["eval_impressions"] for a in table["ad_id"]]
    assert index["size_bytes"] == sum(os.path.getsize(os.path.join(out, s)) for s in index["shards"])
    by_id = {ad["ad_id"]: ad for ad in faulty_run["ads"]}
    reference = _reference(model_dir, faulty_run["out"], [by_id[a] for a in VALID_ADS], faulty_run["root"])
    for ad_id, vector in zip(table["ad_id"], table["vectors"], strict=True):
        np.testing.assert_allclose(vector, reference[ad_id], rtol=1e-5, atol=1e-6)
    assert sorted(d["row"]["ad_id"] for d in _dead_letters(out)) == ["ad05", "ad06", "big"]


def test_coverage_keeps_the_recent_traffic_plus_every_ad_newer_than_the_data(faulty_run, model_dir, tmp_path):
    new = [{"ad_id": f"new{i}", "category": "hats", "image": "images/ad00.png", "brand": "brand9", "price": 3.0}
           for i in range(2)]
    catalog = _catalog(faulty_run, tmp_path, new)
    counts = _ad_counts(faulty_run["out"])
    recent = [counts[a]["eval_impressions"] for a in VALID_ADS]
    threshold = coverage_threshold({c: recent.count(c) for c in set(recent)}, 0.6)
    kept = sorted([a for a in VALID_ADS if counts[a]["eval_impressions"] >= threshold] + ["new0", "new1"])
    assert 2 < len(kept) < len(VALID_ADS) + 2  # the cut removes someone, and the new ads stay

    out = str(tmp_path / "table")
    index = embed_ads.run(["--model", model_dir, "--data", faulty_run["out"], "--ads", catalog, "--out", out,
                           "--coverage", "0.6"], verbose=False)
    table = _load_table(out)
    assert sorted(table["ad_id"].tolist()) == kept
    assert index["new_ads"] == 2 and index["ads_below_coverage"] == len(VALID_ADS) + 2 - len(kept)
    assert index["ads_input"] == 11 == index["rows"] + index["ads_below_coverage"] + index["dead_letter_ads"]
    covered = sum(counts[a]["eval_impressions"] for a in kept if a in counts)
    assert index["covered_impressions"] == covered and index["total_impressions"] == sum(recent)
    assert index["coverage"] >= 0.6


def test_embed_cli_float16_category_means_and_duplicates_to_the_dead_letter(faulty_run, model_dir, tmp_path,
                                                                            cli_main):
    twin = [{"ad_id": "ad01", "category": "bags", "image": "images/ad01.png", "brand": "brand1", "price": 11.0}]
    catalog = _catalog(faulty_run, tmp_path, twin)
    out = str(tmp_path / "table")
    assert cli_main(["embed", "--model", model_dir, "--ads", catalog, "--out", out, "--coverage", "1",
                     "--dtype", "float16"]) == 0
    table = _load_table(out)
    assert sorted(table["ad_id"].tolist()) == [a for a in VALID_ADS if a != "ad01"]
    assert table["vectors"].dtype == np.float16 and table["index"]["dtype"] == "float16"
    dead = _dead_letters(out)
    assert sorted(d["row"]["ad_id"] for d in dead) == ["ad01", "ad01", "ad05", "ad06", "big"]
    assert all("appears 2 times" in d["reason"] for d in dead if d["row"]["ad_id"] == "ad01")
    means = np.load(os.path.join(out, "category_means.npz"))
    vectors = table["vectors"].astype(np.float64)
    for category, mean in zip(means["category"], means["vectors"], strict=True):
        np.testing.assert_allclose(mean, vectors[table["category"] == category].mean(axis=0), rtol=2e-3, atol=2e-3)
    assert sorted(means["category"].tolist()) == sorted(set(table["category"].tolist()))


def test_embed_without_a_data_dir_says_what_to_pass(faulty_run, model_dir, tmp_path, cli_main, capsys):
    bare = str(tmp_path / "bare_model")
    shutil.copytree(model_dir, bare)
    os.remove(os.path.join(bare, "data_dir.txt"))
    assert cli_main(["embed", "--model", bare, "--ads", os.path.join(faulty_run["root"], "ads.csv"),
                     "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"tfvctr embed: error: {bare}/data_dir.txt: not found; pass --data (the preprocess output the "
                   f"model was trained on)")


def test_without_a_catalog_the_ads_preprocess_wrote_are_embedded(faulty_run, model_dir, tmp_path):
    out = str(tmp_path / "table")
    index = embed_ads.run(["--model", model_dir, "--out", out, "--coverage", "0.6"], verbose=False)
    counts = _ad_counts(faulty_run["out"])
    recent = [counts[a]["eval_impressions"] for a in VALID_ADS]
    threshold = coverage_threshold({c: recent.count(c) for c in set(recent)}, 0.6)
    kept = sorted(a for a in VALID_ADS if counts[a]["eval_impressions"] >= threshold)
    assert sorted(_load_table(out)["ad_id"].tolist()) == kept and index["new_ads"] == 0
    assert index["ads_input"] == len(counts) == index["rows"] + index["ads_below_coverage"] + index["dead_letter_ads"]


@pytest.mark.parametrize("image_format", ["jpeg", "png"])
def test_the_jobs_batch_decoder_gives_the_trainers_pixels(image_format):
    """`decode_batch` (decode_jpeg/png, one float conversion a batch) = `tfvctr.data.decode_image`, bit for bit."""
    import tensorflow as tf

    from beam_jobs.transforms.embed import decode_batch
    from tfvctr.data import decode_image

    rng = np.random.default_rng(3)
    raw = []
    for i in range(6):  # textured colour images of odd sizes: resizing, chroma subsampling and rounding all act
        size = 20 + 3 * i
        base = np.linspace(0, 255, size * size * 3).reshape(size, size, 3)
        raw.append(Image.fromarray(np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)))
    prepared = []
    for img in raw:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        prepared.append(images.prepare_image(buf.getvalue(), 16, image_format))
    batch = np.array(prepared, dtype=object)
    job = tf.function(lambda b: decode_batch(b, 16, image_format))(batch).numpy()
    trainer = np.stack([decode_image(tf.constant(b), 16).numpy() for b in prepared])
    assert job.dtype == np.float32 and job.shape == (6, 16, 16, 3)
    np.testing.assert_array_equal(job, trainer)
    # A JPEG not at the prepared size fails the batch (its ads go to the dead letter), not padded.
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.function(lambda b: decode_batch(b, 12, image_format))(batch)


def test_the_table_does_not_depend_on_how_ads_are_batched_or_sharded(faulty_run, model_dir, tmp_path):
    """Batches of 1 and of 4 over 3 shards: the same rows in the same shards and order, the same means."""
    tables = {}
    for batch_size in (1, 4):
        out = str(tmp_path / f"table{batch_size}")
        embed_ads.run(["--model", model_dir, "--ads", os.path.join(faulty_run["root"], "ads.csv"), "--out", out,
                       "--dtype", "float32", "--batch-size", str(batch_size), "--rows-per-shard", "2"], verbose=False)
        shards = {name: np.load(os.path.join(out, name)) for name in sorted(os.listdir(out)) if name.endswith(".npz")}
        tables[batch_size] = shards
    assert sorted(tables[1]) == sorted(tables[4]) and len(tables[1]) == 4  # 3 shards + category_means.npz
    for name, one in tables[1].items():
        four = tables[4][name]
        for key in one.files:
            if one[key].dtype.kind == "f":
                np.testing.assert_allclose(one[key], four[key], rtol=1e-5, atol=1e-6)
            else:
                np.testing.assert_array_equal(one[key], four[key])
    ad_ids = [a for name, shard in tables[4].items() if name.startswith("part-") for a in shard["ad_id"].tolist()]
    assert sorted(ad_ids) == VALID_ADS
    assert all(list(s["ad_id"]) == sorted(s["ad_id"]) for n, s in tables[4].items() if n.startswith("part-"))


def test_two_worker_processes_give_the_same_table_and_dead_letter(faulty_run, model_dir, tmp_path):
    """`--direct_num_workers 2` (docs/beam_jobs.md, embed fifth round: both cores busy): each worker loads the
    tower in `setup`; the table is the one-process table bit for bit, and every bad ad is still dead-lettered."""
    outs = {}
    for name, flags in (("one", []), ("two", ["--direct_num_workers", "2"])):
        outs[name] = str(tmp_path / name)
        index = embed_ads.run(["--model", model_dir, "--ads", os.path.join(faulty_run["root"], "ads.csv"),
                               "--out", outs[name], "--dtype", "float16", "--batch-size", "4", *flags], verbose=False)
        assert index["rows"] == 6 and index["dead_letter_ads"] == 3  # the counts of both modes add up
    names = sorted(n for n in os.listdir(outs["one"]) if n.endswith(".npz"))
    assert names == sorted(n for n in os.listdir(outs["two"]) if n.endswith(".npz")) and len(names) >= 2
    for name in names:
        one, two = np.load(os.path.join(outs["one"], name)), np.load(os.path.join(outs["two"], name))
        assert sorted(one.files) == sorted(two.files)
        for key in one.files:
            np.testing.assert_array_equal(one[key], two[key])
    assert sorted(d["row"]["ad_id"] for d in _dead_letters(outs["two"])) == ["ad05", "ad06", "big"]
