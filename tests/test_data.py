"""The tf.data pipeline over grouped TFRecords (docs/formats.md §2)."""

import collections
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tests import recordio_fixtures as rf
from tfvctr import data
from tfvctr.errors import DataError
from tfvctr.features import FeatureEncoder


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("grouped"))
    summary = rf.write_dataset(root, num_ads=24, num_shards=2)
    return root, summary


def _config(**training):
    return rf.tiny_config(**training)


def _encoder(config, root):
    return FeatureEncoder.from_data_dir(config.dataset, root)


def _records(root, split):
    """(ad_id, labels) per chunk, straight from the files."""
    out = []
    for path in data.list_shards(root, split):
        for r in tf.data.TFRecordDataset(path):
            ex = tf.train.SequenceExample.FromString(r.numpy())
            ad = ex.context.feature["ad_id"].bytes_list.value[0].decode()
            labels = [f.int64_list.value[0] for f in ex.feature_lists.feature_list["label"].feature]
            out.append((ad, labels))
    return out


def test_eval_batches_hold_every_impression_once_with_ad_index(grouped):
    root, summary = grouped
    config = _config()
    ds = data.make_dataset(config, root, "eval", training=False, encoder=_encoder(config, root), batch_size=4, with_meta=True)
    seen = []
    for inputs, labels, meta in ds:
        n = inputs["image"].shape[0]
        assert inputs["image"].shape[1:] == (16, 16, 3)
        assert inputs["category"].shape == (n,) and inputs["brand"].shape == (n,)
        ad_index = inputs["ad_index"].numpy()
        assert inputs["device"].shape == labels.shape == ad_index.shape
        assert inputs["interests"].shape == (labels.shape[0], 3)
        assert float(tf.reduce_min(inputs["image"])) >= 0 and float(tf.reduce_max(inputs["image"])) <= 1
        ads = meta["ad_id"].numpy()
        for i in range(n):
            seen.append((ads[i].decode(), labels.numpy()[ad_index == i].astype(int).tolist()))
    assert sum(len(labels) for _, labels in seen) == summary["impressions"]["eval"] == 46
    assert sorted(seen) == sorted(_records(root, "eval"))


def test_grouped_training_reads_every_chunk_once_per_epoch(grouped):
    root, summary = grouped
    config = _config(augment={"random_crop": False, "flip": False})
    ds = data.make_dataset(config, root, "train", training=True, encoder=_encoder(config, root), batch_size=1, with_meta=True)
    epoch = []
    for _, labels, meta in ds.take(summary["chunks"]["train"]):
        epoch.append((meta["ad_id"].numpy()[0].decode(), labels.numpy().astype(int).tolist()))
    assert sorted(epoch) == sorted(_records(root, "train"))


def test_alg1_draws_k_impressions_of_ads_in_proportion_to_impressions(grouped):
    root, _ = grouped
    config = _config(sampling="alg1", impressions_per_ad=3, augment={"random_crop": False, "flip": False})
    ds = data.make_dataset(config, root, "train", encoder=_encoder(config, root), batch_size=5, with_meta=True)
    draws = collections.Counter()
    for inputs, _, meta in ds.take(200):  # n distinct ads per batch: n <= the number of ads
        counts = np.bincount(inputs["ad_index"].numpy(), minlength=5)
        assert (counts == 3).all()  # k impressions per ad, with replacement
        draws.update(a.decode() for a in meta["ad_id"].numpy())
    impressions = collections.Counter()
    for ad, labels in _records(root, "train"):
        impressions[ad] += len(labels)
    ads = sorted(impressions)
    expected = np.array([impressions[a] for a in ads], float)
    observed = np.array([draws[a] for a in ads], float)
    expected *= observed.sum() / expected.sum()
    assert np.corrcoef(expected, observed)[0, 1] > 0.9


def test_ungrouped_batches_carry_one_image_per_impression(grouped):
    root, _ = grouped
    config = _config()
    ds = data.make_dataset(config, root, "train", encoder=_encoder(config, root), batch_size=6, sampling="ungrouped")
    inputs, labels = next(iter(ds))
    assert inputs["image"].shape[0] == labels.shape[0] == 6
    np.testing.assert_array_equal(inputs["ad_index"].numpy(), np.arange(6))


def test_augmentation_is_seeded_and_changes_pixels(grouped):
    root, _ = grouped
    plain = _config(augment={"random_crop": False, "flip": False})
    aug = _config(augment={"random_crop": True, "crop_padding": 4, "flip": True})
    enc = _encoder(plain, root)

    def first(config):
        return next(iter(data.make_dataset(config, root, "train", encoder=enc, batch_size=4)))[0]["image"].numpy()

    a, b, p = first(aug), first(aug), first(plain)
    np.testing.assert_array_equal(a, b)
    assert a.shape == p.shape == (4, 16, 16, 3)
    assert not np.array_equal(a, p)
    # Zero padding + crop shows black borders somewhere in the batch.
    assert (a == 0).all(axis=-1).any()


def test_restored_iterator_continues_with_the_same_batch(grouped, tmp_path):
    root, _ = grouped
    config = _config()
    it = iter(data.make_dataset(config, root, "train", encoder=_encoder(config, root), batch_size=3))
    next(it)
    ckpt = tf.train.Checkpoint(iterator=it)
    path = ckpt.save(str(tmp_path / "it"))
    expected = [next(it)[1].numpy() for _ in range(3)]
    ckpt.restore(path)
    got = [next(it)[1].numpy() for _ in range(3)]
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_array_equal(e, g)


def test_workers_read_disjoint_files():
    files = [f"part-{i}" for i in range(5)]
    assert data.shard_files(files, 2, 0) == ["part-0", "part-2", "part-4"]
    assert data.shard_files(files, 2, 1) == ["part-1", "part-3"]
    with pytest.raises(DataError, match="2 shard\\(s\\) for 3 workers"):
        data.shard_files(files[:2], 3, 0)


def test_no_shards_is_a_one_line_error(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match=r"train: no TFRecord shards \(\*\.tfrecord or \*\.tfrecord\.gz\)"):
        data.list_shards(str(tmp_path), "train")


def test_corrupt_shard_error_names_the_file(grouped, tmp_path):
    root, _ = grouped
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    bad = sorted((copy / "train").iterdir())[1]
    raw = bad.read_bytes()
    bad.write_bytes(raw[:40] + b"\x00garbage\x00" + raw[50:])
    config = _config()
    ds = data.make_dataset(config, str(copy), "eval", training=False, encoder=_encoder(config, str(copy)),
                           files=data.list_shards(str(copy), "train"))
    with pytest.raises(DataError, match=f"{bad.name}: corrupt TFRecord shard"):
        with data.data_errors(data.list_shards(str(copy), "train")):
            for _ in ds:
                pass


def test_records_without_a_configured_feature_are_a_data_error(grouped):
    root, _ = grouped
    d = rf.tiny_config_dict()
    d["dataset"]["features"].append({"name": "os", "source": "impression", "kind": "categorical", "hash_buckets": 5})
    from tfvctr.config import config_from_dict

    config = config_from_dict(d)
    files = data.list_shards(root, "eval")
    ds = data.make_dataset(config, root, "eval", training=False, encoder=FeatureEncoder.from_data_dir(config.dataset, root))
    with pytest.raises(DataError, match="records do not match the config: .*os"):
        with data.data_errors(files):
            next(iter(ds))


def test_missing_vocabulary_file_is_a_data_error(grouped):
    root, _ = grouped
    d = rf.tiny_config_dict()
    d["dataset"]["features"].append({"name": "color", "source": "ad", "kind": "categorical", "vocabulary": "auto"})
    from tfvctr.config import config_from_dict

    config = config_from_dict(d)
    with pytest.raises(DataError, match="no vocabulary file for feature\\(s\\) color"):
        data.check_vocabularies(config.dataset, root)
