"""Regularisation knobs: embedding L2 (exact penalty and update), weight decay that spares
embedding tables, the CNN's own weight decay, dropout on x_v, config validation."""

import keras
import numpy as np
import pytest

from tests import recordio_fixtures as rf
from tfvctr.config import config_from_dict
from tfvctr.errors import ConfigError
from tfvctr.training import train
from tfvctr.training.optimizers import make_optimizers


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("grouped"))
    rf.write_dataset(root, num_ads=8, num_shards=1)
    return root


def _config(model=None, **training):
    d = rf.tiny_config_dict(**training)
    d["model"].update({"architecture": "dcn", **(model or {})})
    return config_from_dict(d)


def _fresh_and_trained(config, data_dir, tmp_path):
    from tfvctr import data
    from tfvctr.features import FeatureEncoder
    from tfvctr.models import build_model

    enc = FeatureEncoder.from_data_dir(config.dataset, data_dir)
    fresh = build_model(config, enc.num_categories, enc.vocab_sizes, seed=config.training.seed)
    fresh(next(iter(data.make_dataset(config, data_dir, encoder=enc)))[0])
    trained = train(config, data_dir, str(tmp_path), encoder=enc, log=None)["model"]
    return fresh, trained


def _table(model, name):
    return model.head.embedding.tables[name].numpy()


def test_embedding_l2_is_lambda_times_the_sum_of_squares_of_every_table(data_dir):
    from tfvctr.features import FeatureEncoder
    from tfvctr.models import build_model

    config = _config({"embedding_l2": 0.01})
    enc = FeatureEncoder.from_data_dir(config.dataset, data_dir)
    model = build_model(config, enc.num_categories, enc.vocab_sizes, seed=0)
    tables = model.head.embedding.tables
    assert set(tables) == {"device", "user_id", "interests", "brand", "price"}  # the declared x_nv fields
    expected = 0.01 * sum(float((t.numpy() ** 2).sum()) for t in tables.values())
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-5)
    assert not build_model(_config({"embedding_l2": 0.0}), enc.num_categories, enc.vocab_sizes, seed=0).losses


def test_embedding_l2_shrinks_unseen_rows_by_one_minus_two_lr_lambda_in_one_sgd_step(data_dir, tmp_path):
    lam, lr = 0.05, 0.1
    config = _config({"embedding_l2": lam}, steps=1, optimizer="sgd", learning_rate=lr)
    fresh, trained = _fresh_and_trained(config, data_dir, tmp_path)
    before, after = _table(fresh, "user_id"), _table(trained, "user_id")
    # 50 hash buckets, at most 6 users in the data: the other rows see only the penalty's
    # gradient 2*lambda*W, and SGD's first step (momentum still zero) is -lr * gradient.
    shrunk = np.all(np.isclose(after, before * (1 - 2 * lr * lam), rtol=1e-5, atol=1e-8), axis=1)
    assert shrunk.sum() >= 44 and not np.allclose(after, before)


def test_weight_decay_spares_embedding_tables(data_dir, tmp_path):
    config = _config({"embedding_l2": 0.0}, steps=1, optimizer="sgd", learning_rate=0.1, weight_decay=0.5)
    fresh, trained = _fresh_and_trained(config, data_dir, tmp_path)
    before, after = _table(fresh, "user_id"), _table(trained, "user_id")
    unchanged = np.all(after == before, axis=1)
    assert unchanged.sum() >= 44  # decay would have scaled every row by 1 - 0.1 * 0.5
    # The dense layers do decay: a kernel whose gradient is zero-free still moves more than
    # without decay, so compare against a run without it.
    plain = _fresh_and_trained(_config({"embedding_l2": 0.0}, steps=1, optimizer="sgd", learning_rate=0.1),
                               data_dir, tmp_path / "plain")[1]
    k_decay, k_plain = trained.head.deep[0].kernel.numpy(), plain.head.deep[0].kernel.numpy()
    k0 = fresh.head.deep[0].kernel.numpy()
    # Keras applies decoupled decay before the gradient step: w - lr*wd*w - lr*g.
    np.testing.assert_allclose(k_decay, k_plain - 0.1 * 0.5 * k0, rtol=1e-4, atol=1e-6)


def test_the_cnn_has_its_own_weight_decay():
    cnn, rest = make_optimizers(_config(weight_decay=0.01, cnn_weight_decay=0.1).training)
    assert cnn.weight_decay == pytest.approx(0.1) and rest.weight_decay == pytest.approx(0.01)
    cnn, rest = make_optimizers(_config(weight_decay=0.01).training)
    assert cnn.weight_decay == pytest.approx(0.01)


def test_visual_dropout_acts_in_training_only():
    from tfvctr.models import DCNHead

    features = [{"name": "d", "kind": "categorical", "embedding_dim": 2}]
    ids = np.array([1, 2, 3, 1, 2, 3, 1, 2], "int32")
    x_v = np.ones((8, 16), "float32")
    inputs = {"features": {"d": ids}, "x_v": x_v}

    def head(rate):
        return DCNHead(features, {"d": 5}, visual_dim=16, deep_layers=[4], cross_layers=1, seed=3, visual_dropout=rate)

    dropped, plain = head(0.5), head(0.0)
    np.testing.assert_allclose(dropped(inputs, training=False), plain(inputs, training=False), rtol=1e-6)
    assert not np.allclose(dropped(inputs, training=True), plain(inputs, training=True))
    again = keras.layers.deserialize(keras.layers.serialize(dropped))
    assert again.visual_dropout == 0.5 and again.embedding_l2 == 0.0


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("model", "visual_dropout", 1.0, r"model.visual_dropout: expected a value in \[0, 1\), received 1.0"),
        ("model", "embedding_l2", -0.1, r"model.embedding_l2: expected a value >= 0, received -0.1"),
        ("training", "patience", -1, r"training.patience: expected an integer >= 0, received -1"),
        ("training", "eval_every", 0, r"training.eval_every: expected a value >= 1, received 0"),
        ("training", "min_delta", -0.01, r"training.min_delta: expected a value >= 0, received -0.01"),
        ("training", "cnn_weight_decay", -1.0, r"training.cnn_weight_decay: expected a value >= 0, received -1.0"),
        ("training", "selection_metric", "auc", r"training.selection_metric: expected one of 'valid_auc'"),
    ],
    ids=["visual_dropout", "embedding_l2", "patience", "eval_every", "min_delta", "cnn_weight_decay", "selection_metric"],
)
def test_bad_regularisation_and_selection_settings_are_config_errors(section, key, value, message):
    d = rf.tiny_config_dict()
    d.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError, match=message):
        config_from_dict(d)
