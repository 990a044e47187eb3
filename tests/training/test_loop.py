"""The training loop in one process: exact step/checkpoint/summary counts (orbit
controller_test style), learning rates, global-count loss, clipping, NaN stop, pretrain."""

import collections
import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from tests import recordio_fixtures as rf
from tfvctr import metrics
from tfvctr.config import config_from_dict
from tfvctr.errors import TfvctrError
from tfvctr.training import SUMMARY_TAGS, histogram_auc, pretrain, train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("grouped"))
    rf.write_dataset(root, num_ads=16, num_shards=2)
    return root


def _config(model=None, **training):
    d = rf.tiny_config_dict(**training)
    d["model"].update(model or {})
    return config_from_dict(d)


def _summary_steps(model_dir, name="train"):
    steps = collections.defaultdict(list)
    for path in glob.glob(os.path.join(model_dir, "tensorboard", name, "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                steps[value.tag].append(event.step)
    return dict(steps)


def _ckpt_steps(folder, prefix):
    return sorted(int(p.split("-")[-1].split(".")[0]) for p in glob.glob(os.path.join(folder, f"{prefix}-*.index")))


def test_blocks_checkpoints_and_summaries_fall_on_exact_steps(data_dir, tmp_path):
    lines = []
    config = _config(steps=7, checkpoint_every=2, log_every=3, keep_checkpoints=2)
    result = train(config, data_dir, str(tmp_path), log=lines.append)
    # A block ends at every log point (3, 6) and every checkpoint point (2, 4, 6) and at 7.
    assert [h["step"] for h in result["history"]] == [2, 3, 4, 6, 7]
    # No valid split in this data: one warning, then one progress line per block.
    assert lines[0].startswith("WARNING: ") and "model selection is off" in lines[0]
    assert len(lines) == 6 and lines[-1].startswith("[####################] step 7/7")
    assert _summary_steps(str(tmp_path)) == {tag: [2, 3, 4, 6, 7] for tag in SUMMARY_TAGS}
    # Saved at 2, 4, 6, 7; the manager keeps the last 2, the data checkpoints one more.
    assert _ckpt_steps(tmp_path / "checkpoints", "ckpt") == [6, 7]
    assert _ckpt_steps(tmp_path / "checkpoints" / "data" / "worker-0", "data") == [4, 6, 7]
    assert result["step"] == 7 and result["batches_consumed"] == 7
    for name in ("config.yaml", "data_dir.txt", "model.keras", "visual_tower.keras"):
        assert (tmp_path / name).exists(), name
    assert (tmp_path / "data_dir.txt").read_text() == os.path.abspath(data_dir)

    # Run again: it resumes at 7 and trains nothing; with more steps it continues from 7.
    lines.clear()
    again = train(config, data_dir, str(tmp_path), log=lines.append)
    assert again["step"] == 7 and "already at step 7 of 7" in lines[-1]
    more = train(config, data_dir, str(tmp_path), steps=9, log=lines.append)
    assert [h["step"] for h in more["history"]] == [8, 9] and more["batches_consumed"] == 9


def test_learning_rates_decay_per_part_at_the_configured_step(data_dir, tmp_path):
    config = _config(steps=3, log_every=1, checkpoint_every=10, learning_rate=0.1, cnn_learning_rate=0.01,
                     decay_steps=[2], decay_factor=0.1)
    history = train(config, data_dir, str(tmp_path), log=None)["history"]
    np.testing.assert_allclose([h["learning_rate"] for h in history], [0.1, 0.1, 0.01], rtol=1e-6)
    np.testing.assert_allclose([h["cnn_learning_rate"] for h in history], [0.01, 0.01, 0.001], rtol=1e-6)


def test_step_loss_is_summed_loss_over_the_global_impression_count(data_dir, tmp_path):
    from tfvctr import data
    from tfvctr.features import FeatureEncoder
    from tfvctr.models import build_model, pointwise_loss

    config = _config(steps=1, augment={"random_crop": False, "flip": False})
    enc = FeatureEncoder.from_data_dir(config.dataset, data_dir)
    inputs, labels = next(iter(data.make_dataset(config, data_dir, encoder=enc)))
    model = build_model(config, enc.num_categories, enc.vocab_sizes, seed=config.training.seed)
    expected = float(pointwise_loss(labels, model(inputs, training=True))) / labels.shape[0]
    result = train(config, data_dir, str(tmp_path), encoder=enc, log=None)
    assert result["loss"] == pytest.approx(expected, rel=1e-5)
    assert result["impressions"] == labels.shape[0] and result["images"] == 4


def test_clipping_bounds_the_norm_of_the_first_sgd_update(data_dir, tmp_path):
    from tfvctr import data
    from tfvctr.features import FeatureEncoder
    from tfvctr.models import build_model

    config = _config(steps=1, optimizer="sgd", learning_rate=0.1, clip_norm=0.01)
    enc = FeatureEncoder.from_data_dir(config.dataset, data_dir)
    # The trained model starts from the weights of a fresh model with the same seed.
    fresh = build_model(config, enc.num_categories, enc.vocab_sizes, seed=config.training.seed)
    fresh(next(iter(data.make_dataset(config, data_dir, encoder=enc)))[0])
    model = train(config, data_dir, str(tmp_path), encoder=enc, log=None)["model"]
    delta = [a.numpy() - b.numpy() for a, b in zip(model.trainable_variables, fresh.trainable_variables, strict=True)]
    # First SGD step with momentum: update = -lr * clipped gradient, whose norm is clip_norm.
    norm = np.sqrt(sum(float((d**2).sum()) for d in delta))
    assert norm == pytest.approx(0.1 * 0.01, rel=1e-3)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    from tfvctr.models import pointwise_loss

    calls = tf.Variable(0)

    def poisoned(labels, logits):
        calls.assign_add(1)
        loss = pointwise_loss(labels, logits)
        return tf.where(calls > 2, tf.constant(float("nan")), loss)

    config = _config(steps=6, checkpoint_every=2, log_every=1)
    with pytest.raises(TfvctrError, match=r"^loss is nan at step 3; training stopped \(the last good checkpoint is kept\)$"):
        train(config, data_dir, str(tmp_path), loss_fn=poisoned, log=None)
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-2")
    assert not (tmp_path / "model.keras").exists()


def test_histogram_auc_matches_exact_auc_when_scores_fall_in_distinct_bins():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300), 3)
    bins = np.clip((scores * 1000).astype(int), 0, 999)
    pos = np.bincount(bins, weights=labels, minlength=1000)
    neg = np.bincount(bins, weights=1 - labels, minlength=1000)
    assert histogram_auc(pos, neg) == pytest.approx(metrics.auc(labels, scores), abs=1e-3)


def test_pretrained_frozen_cnn_is_copied_and_kept_fixed(data_dir, tmp_path):
    pre_dir, ctr_dir = str(tmp_path / "pre"), str(tmp_path / "ctr")
    config = _config(steps=2, checkpoint_every=2)
    pre = pretrain(config, data_dir, pre_dir, log=None)
    assert "accuracy" in pre and os.path.exists(os.path.join(pre_dir, "visual_tower.keras"))
    assert set(_summary_steps(pre_dir, "pretrain")) == {
        "loss", "accuracy", "learning_rate/cnn", "learning_rate/rest", "images_per_sec", "impressions_per_sec"
    }
    tower = pre["model"].get_layer("visual_tower")
    frozen = _config(steps=2, checkpoint_every=2, pretrained_cnn=pre_dir, freeze_cnn=True)
    model = train(frozen, data_dir, ctr_dir, log=None)["model"]
    for a, b in zip(tower.weights, model.visual_tower.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_freezing_without_a_pretrained_cnn_is_a_config_error(data_dir, tmp_path):
    with pytest.raises(TfvctrError, match="training.freeze_cnn: a frozen CNN needs training.pretrained_cnn"):
        train(_config(freeze_cnn=True), data_dir, str(tmp_path), log=None)


def test_train_command_trains_and_reports_the_final_step(data_dir, tmp_path, capsys):
    import argparse

    from tfvctr.commands import train as command

    config_path = tmp_path / "c.yaml"
    config_path.write_text(_config(steps=2, checkpoint_every=2).to_yaml())
    args = argparse.Namespace(config=str(config_path), data=data_dir, model_dir=str(tmp_path / "m"), steps=None, overrides=[])
    assert command.run(args) == 0
    out = capsys.readouterr().out
    assert "step 2/2" in out and f"trained to step 2; model dir: {tmp_path / 'm'}" in out


def test_bad_data_dirs_fail_before_training_with_one_line(data_dir, tmp_path):
    from tfvctr.errors import DataError

    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "vocab").mkdir()
    for name in os.listdir(os.path.join(data_dir, "vocab")):
        (tmp_path / "empty" / "vocab" / name).write_text(open(os.path.join(data_dir, "vocab", name)).read())
    with pytest.raises(DataError, match=r"empty/train: no TFRecord shards"):
        train(_config(), str(tmp_path / "empty"), str(tmp_path / "m1"), log=None)
    d = rf.tiny_config_dict()
    d["dataset"]["features"][0]["name"] = "platform"  # no vocab/platform.txt in the data
    with pytest.raises(DataError, match=r"vocab: no vocabulary file for feature\(s\) platform; the config does not match"):
        train(config_from_dict(d), data_dir, str(tmp_path / "m2"), log=None)
