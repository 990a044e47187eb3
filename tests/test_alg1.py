"""DeepCTR Alg. 1 sampling (`training.sampling: alg1`): n distinct ads per batch drawn by
impression count (Eq. 7), k impressions each with replacement from *all* the ad's chunks."""

import collections

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
    rf.write_dataset(root, num_ads=24, num_shards=2)
    return root


def _config(**training):
    return rf.tiny_config(sampling="alg1", augment={"random_crop": False, "flip": False}, **training)


def _chunks(root):
    """ad_id → its chunks, each a list of (user_id, label)."""
    out = collections.defaultdict(list)
    for path in data.list_shards(root, "train"):
        for r in tf.data.TFRecordDataset(path):
            ex = tf.train.SequenceExample.FromString(r.numpy())
            ad = ex.context.feature["ad_id"].bytes_list.value[0].decode()
            fl = ex.feature_lists.feature_list
            users = [f.bytes_list.value[0].decode() for f in fl["user_id"].feature]
            labels = [f.int64_list.value[0] for f in fl["label"].feature]
            out[ad].append(list(zip(users, labels, strict=True)))
    return out


def _impressions(root):
    return {ad: [i for chunk in chunks for i in chunk] for ad, chunks in _chunks(root).items()}


def test_load_ads_merges_every_chunk_of_an_ad(grouped):
    config = _config()
    ads = data.load_ads(data.list_shards(grouped, "train"), config.dataset)
    truth = _impressions(grouped)
    got = {a.decode(): n for a, n in zip(ads["ad_id"].numpy(), ads["impression_count"].numpy(), strict=True)}
    assert got == {a: len(v) for a, v in truth.items()}
    assert max(len(c) for c in _chunks(grouped).values()) > 1  # the fixture has ads of several chunks


def test_batches_hold_n_distinct_ads_with_k_impressions_from_all_chunks(grouped):
    config = _config(impressions_per_ad=40)
    enc = FeatureEncoder.from_data_dir(config.dataset, grouped)
    ds = data.make_dataset(config, grouped, "train", encoder=enc, batch_size=6, with_meta=True)
    truth, chunks = _impressions(grouped), _chunks(grouped)
    beyond_one_chunk = 0
    for inputs, labels, meta in ds.take(15):
        ads = [a.decode() for a in meta["ad_id"].numpy()]
        assert len(set(ads)) == len(ads) == 6  # n distinct ads
        ad_index = inputs["ad_index"].numpy()
        assert (np.bincount(ad_index, minlength=6) == 40).all()  # k each, k > K: with replacement
        users = [u.decode() for u in meta["user_id"].numpy()]
        for i, ad in enumerate(ads):
            drawn = [(u, int(y)) for u, y, j in zip(users, labels.numpy(), ad_index, strict=True) if j == i]
            assert set(drawn) <= set(truth[ad])
            beyond_one_chunk += all(not set(drawn) <= set(c) for c in chunks[ad])
    assert beyond_one_chunk > 0  # impressions of later chunks are drawn too


def test_ads_are_drawn_in_proportion_to_their_impressions():
    counts = tf.constant([1.0, 10.0, 100.0, 1000.0])
    freq = np.zeros(4)
    for step in range(400):
        ads, picks = data.alg1_draws(tf.constant(step, tf.int64), counts, 1, 3, seed=0)
        freq[ads.numpy()[0]] += 1
        assert picks.shape == (1, 3) and (picks.numpy() < counts.numpy()[ads.numpy()[0]]).all()
    np.testing.assert_allclose(freq / freq.sum(), counts.numpy() / counts.numpy().sum(), atol=0.05)
    ads, _ = data.alg1_draws(tf.constant(0, tf.int64), counts, 4, 2, seed=0)
    assert sorted(ads.numpy().tolist()) == [0, 1, 2, 3]  # n = all ads: each once


def test_same_seed_same_batches_and_more_ads_than_exist_is_an_error(grouped):
    config = _config(impressions_per_ad=3)
    enc = FeatureEncoder.from_data_dir(config.dataset, grouped)

    def first():
        return next(iter(data.make_dataset(config, grouped, "train", encoder=enc, batch_size=5, with_meta=True)))

    a, b = first(), first()
    np.testing.assert_array_equal(a[2]["ad_id"].numpy(), b[2]["ad_id"].numpy())
    np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
    with pytest.raises(DataError, match="draws 25 distinct ads per batch"):
        data.make_dataset(config, grouped, "train", encoder=enc, batch_size=25)
