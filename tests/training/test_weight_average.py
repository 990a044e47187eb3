"""`training.ema_decay`: the moving average of the weights is what selection scores and model.keras
holds; the trained weights go on training; a resumed run continues the same average."""

import doctest
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import recordio_fixtures as rf
from tests.training import test_selection
from tfvctr.config import config_from_dict
from tfvctr.errors import ConfigError
from tfvctr.training import averaging, train


def test_the_docstring_example_runs():
    finder = doctest.DocTestFinder(recurse=False)
    (case,) = finder.find(averaging.WeightAverage, "WeightAverage", module=averaging, globs=dict(vars(averaging)))
    result = doctest.DocTestRunner().run(case)
    assert result.attempted >= 6 and result.failed == 0


def test_the_average_follows_the_formula_with_its_warm_up_under_a_mirrored_strategy():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        w = tf.Variable([1.0, -2.0])
        avg = averaging.WeightAverage([w], decay=0.5)
    avg.reset()
    values = [np.array([3.0, 0.0]), np.array([-1.0, 4.0]), np.array([2.0, 2.0]), np.array([0.5, 1.0])]

    @tf.function
    def step(value):  # as in the trainer: the update runs in cross-replica context, in the step's function
        w.assign(value)
        avg.update()

    expected = np.array([1.0, -2.0])
    for n, value in enumerate(values, 1):
        step(tf.constant(value, tf.float32))
        d = min(0.5, (1 + n) / (10 + n))  # 0.18, 0.25, 0.31, 0.36: the warm-up, below 0.5
        expected = d * expected + (1 - d) * value
        np.testing.assert_allclose(avg.shadows[0].numpy(), expected, rtol=1e-6)
    assert int(avg.updates.numpy()) == 4
    avg.swap()
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(avg.shadows[0].numpy(), values[-1])
    avg.swap()
    np.testing.assert_allclose(w.numpy(), values[-1])
    avg.copy_to_weights()
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("decay", [-0.1, 1.0, float("nan")])
def test_a_decay_outside_0_1_is_refused(decay):
    d = rf.tiny_config_dict(ema_decay=decay)
    with pytest.raises(ConfigError, match=r"training\.ema_decay: expected a value in \[0, 1\)"):
        config_from_dict(d)
    with pytest.raises(ValueError, match="decay"):
        averaging.WeightAverage([tf.Variable(0.0)], decay)


# The selection tests' data (16 ads, a valid split with cold ads) and their DCN config: no
# CNN, the averaging is what is tested here.
data_dir = test_selection.data_dir
_config = test_selection._config


SETTINGS = dict(steps=6, eval_every=3, patience=0, checkpoint_every=100, log_every=100, keep_checkpoints=1,
                learning_rate=0.05, selection_metric="valid_logloss")  # the loss falls: step 6 is the best


@pytest.fixture(scope="module")
def averaged(data_dir, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("ema"))
    result = train(_config(ema_decay=0.9, **SETTINGS), data_dir, model_dir, log=None)
    return model_dir, result


def test_model_keras_holds_the_average_and_the_checkpoint_both(averaged):
    model_dir, result = averaged
    model_file = os.path.join(model_dir, "model.keras")
    trainable = [v.numpy() for v in keras.saving.load_model(model_file, compile=False).trainable_variables]
    last = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    assert last.endswith("ckpt-6")
    reader = tf.train.load_checkpoint(last)
    n = len(trainable)
    trained = [reader.get_tensor(f"optimizer/_trainable_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE") for i in range(n)]
    shadows = [reader.get_tensor(f"weight_average/shadows/{i}/.ATTRIBUTES/VARIABLE_VALUE") for i in range(n)]
    assert int(reader.get_tensor("weight_average/updates/.ATTRIBUTES/VARIABLE_VALUE")) == 6
    # The checkpoint keeps the trained weights as trained (the swap for validation was undone) ...
    assert not all(np.allclose(t, s) for t, s in zip(trained, shadows, strict=True))
    # ... and model.keras holds the average of the step selection kept.
    assert result["best_step"] == 6
    for got, want in zip(trainable, shadows, strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_valid_figures_are_those_of_the_average(averaged, data_dir):
    from tfvctr import evaluation

    model_dir, result = averaged
    scored = evaluation.evaluate(model_dir, data_dir, split="valid", write=False)
    assert scored["log_loss"] == pytest.approx(result["best"]["valid_logloss"], rel=1e-4)


def test_a_resumed_run_continues_the_same_average(averaged, data_dir, tmp_path):
    _, reference = averaged
    resumed_dir = str(tmp_path / "resumed")
    config = _config(ema_decay=0.9, **SETTINGS)
    train(config, data_dir, resumed_dir, steps=3, log=None)  # killed right after step 3's checkpoint
    resumed = train(config, data_dir, resumed_dir, log=None)
    assert [h["step"] for h in resumed["valid_history"]] == [3, 6]
    for got, want in zip(resumed["valid_history"], reference["valid_history"], strict=True):
        assert got["valid_logloss"] == pytest.approx(want["valid_logloss"], rel=1e-4)
    for a, b in zip(resumed["model"].get_weights(), reference["model"].get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
