"""The learning-rate schedules (step, cosine over the run) and the logit bias started at the
train split's click log-odds (`training.output_bias`)."""

import json
import math
import os
import shutil

import keras
import numpy as np
import pytest

from tests import recordio_fixtures as rf
from tfvctr.config import config_from_dict
from tfvctr.errors import ConfigError
from tfvctr.training import train
from tfvctr.training.optimizers import learning_rate_schedule, make_optimizers
from tfvctr.training.trainer import base_rate_logit


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("grouped"))
    rf.write_dataset(root, num_ads=8, num_shards=1)
    return root


def _config(model=None, **training):
    d = rf.tiny_config_dict(**training)
    d["model"].update({"architecture": "dcn", **(model or {})})
    return config_from_dict(d)


def _with_clicks(data_dir, tmp_path, positives, count):
    """A copy of the fixture whose stats.json says `positives` of `count` train impressions were clicked."""
    root = str(tmp_path / "data")
    shutil.copytree(data_dir, root)
    path = os.path.join(root, "stats.json")
    with open(path) as f:
        stats = json.load(f)
    stats["label"] = {"count": count, "positives": positives}
    with open(path, "w") as f:
        json.dump(stats, f)
    return root


def _value(schedule, step):
    return float(keras.ops.convert_to_numpy(schedule(step))) if callable(schedule) else float(schedule)


def test_cosine_runs_from_the_rate_to_final_ratio_over_the_run():
    schedule = learning_rate_schedule(0.01, [], 0.1, "cosine", total_steps=100, final_ratio=0.1)
    assert _value(schedule, 0) == pytest.approx(0.01)
    assert _value(schedule, 50) == pytest.approx(0.01 * (0.1 + 0.9 * 0.5), rel=1e-5)  # halfway down the cosine
    assert _value(schedule, 100) == pytest.approx(0.001, rel=1e-5)
    assert _value(schedule, 400) == pytest.approx(0.001, rel=1e-5)  # past the end it stays at the floor


def test_step_schedule_is_unchanged_by_the_new_arguments():
    schedule = learning_rate_schedule(0.01, [10, 20], 0.5, "step", total_steps=100)
    assert [_value(schedule, s) for s in (0, 10, 11, 21)] == pytest.approx([0.01, 0.01, 0.005, 0.0025])
    assert learning_rate_schedule(0.01, [], 0.1) == 0.01


def test_make_optimizers_spans_the_cosine_over_the_steps_the_run_takes():
    config = _config(steps=1000, lr_schedule="cosine", learning_rate=0.02, cnn_learning_rate=0.2)
    cnn, rest = make_optimizers(config.training, total_steps=10)  # _learning_rate: the schedule itself
    assert _value(cnn._learning_rate, 10) == pytest.approx(0.0, abs=1e-9)
    assert _value(rest._learning_rate, 5) == pytest.approx(0.01, rel=1e-5)
    cnn, _ = make_optimizers(config.training)  # default: training.steps
    assert _value(cnn._learning_rate, 500) == pytest.approx(0.1, rel=1e-5)


def test_the_cnn_gets_its_own_optimizer_kind_and_momentum_sgd_the_rest():
    config = _config(optimizer="sgd", cnn_optimizer="adam", learning_rate=0.5, cnn_learning_rate=0.001)
    cnn, rest = make_optimizers(config.training)
    assert isinstance(cnn, keras.optimizers.Adam) and _value(cnn._learning_rate, 0) == pytest.approx(0.001)
    assert isinstance(rest, keras.optimizers.SGD) and rest.momentum == pytest.approx(0.9)
    cnn, rest = make_optimizers(_config(optimizer="sgd").training)  # default: the CNN's is `optimizer`
    assert isinstance(cnn, keras.optimizers.SGD) and isinstance(rest, keras.optimizers.SGD)


@pytest.mark.parametrize(
    "training, message",
    [
        ({"lr_schedule": "cosine", "decay_steps": [5]}, "decay_steps: a cosine lr_schedule"),
        ({"final_lr_ratio": 1.5}, "final_lr_ratio: expected a value in [0, 1]"),
        ({"lr_schedule": "linear"}, "lr_schedule"),
        ({"output_bias": "mean"}, "output_bias"),
        ({"cnn_optimizer": "rmsprop"}, "cnn_optimizer: expected one of 'adam', 'sgd', 'adagrad'"),
    ],
)
def test_bad_schedule_and_bias_settings_are_refused(training, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _config(**training)


def test_base_rate_logit_reads_the_train_clicks(data_dir, tmp_path):
    assert base_rate_logit(_with_clicks(data_dir, tmp_path, 5, 100)) == pytest.approx(math.log(5 / 95))
    assert base_rate_logit(data_dir) is None  # the fixture has no clicks: nothing to start from
    assert base_rate_logit(str(tmp_path / "nowhere")) is None


@pytest.mark.parametrize("output_bias, expected", [("base_rate", math.log(0.04 / 0.96)), ("zero", 0.0)])
def test_the_logit_bias_starts_at_the_click_log_odds(data_dir, tmp_path, output_bias, expected):
    root = _with_clicks(data_dir, tmp_path, 4, 100)
    # One step at a negligible rate: the bias is where initialisation put it.
    config = _config(steps=1, optimizer="sgd", learning_rate=1e-12, output_bias=output_bias)
    model = train(config, root, str(tmp_path / "m"), log=None)["model"]
    bias = np.asarray(model.output_bias.numpy())
    assert bias.shape == (1,)
    assert float(bias[0]) == pytest.approx(expected, abs=1e-6)
