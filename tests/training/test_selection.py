"""Model selection in one process: the decision rule, a planted divergence that stops at the
expected evaluation, model.keras = the best checkpoint, resume keeps the best-so-far, no
valid split → one warning."""

import collections
import glob
import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import recordio_fixtures as rf
from tfvctr import evaluation
from tfvctr.config import config_from_dict
from tfvctr.errors import ConfigError
from tfvctr.training import SUMMARY_TAGS, VALID_SUMMARY_TAGS, ModelSelection, train
from tfvctr.training.checkpoints import weights_checkpoint


def add_valid_split(root: str) -> None:
    """A valid split in the eval format: a copy of the fixture's eval shards (cold ads included)."""
    shutil.copytree(os.path.join(root, "eval"), os.path.join(root, "valid"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("grouped"))
    rf.write_dataset(root, num_ads=16, num_shards=2)
    add_valid_split(root)
    return root


def _config(**training):
    d = rf.tiny_config_dict(**training)
    d["model"]["architecture"] = "dcn"  # no CNN: the selection logic is what is tested here
    return config_from_dict(d)


# ------------------------------------------------------------------ the decision rule


@pytest.mark.parametrize(
    "metric, values, patience, min_delta, best_step, stop_step",
    [
        ("valid_auc", [0.60, 0.62, 0.61, 0.615, 0.60], 3, 0.0, 2, 5),
        ("valid_auc", [0.60, 0.605, 0.608, 0.609], 2, 0.01, 1, 3),  # +0.005 steps are no improvement
        ("valid_logloss", [0.30, 0.28, 0.29, 0.27, 0.275], 2, 0.0, 4, None),
        ("valid_auc", [0.6, 0.5, 0.5, 0.5], 0, 0.0, 1, None),  # patience 0: never stops
    ],
    ids=["auc_patience_3", "auc_min_delta", "logloss_lower_is_better", "patience_0"],
)
def test_selection_keeps_the_best_and_stops_after_patience_evaluations(metric, values, patience, min_delta, best_step,
                                                                      stop_step):
    selection = ModelSelection(metric, patience, min_delta)
    stopped_at = None
    for step, value in enumerate(values, 1):
        figures = {"valid_auc": 0.5, "valid_cold_auc": None, "valid_logloss": 0.5, metric: value}
        improved, stop = selection.update(step, figures)
        assert improved == (selection.best_step == step)
        if stop:
            stopped_at = step
            break
    assert selection.best_step == best_step and stopped_at == stop_step
    assert selection.stopped_early == (stop_step is not None)
    # The state survives a round trip (it is saved with every checkpoint).
    again = ModelSelection(metric, patience, min_delta)
    again.load(selection.state())
    assert again.summary(9) == selection.summary(9)


@pytest.mark.parametrize(
    "metric, values, tolerance, patience, best_step, stop_step",
    [
        # A lucky first evaluation (0.62) and later ones within 0.005 of it: the last of those is kept.
        ("valid_auc", [0.62, 0.60, 0.616, 0.617, 0.61], 0.005, 5, 4, None),
        # Patience counts from the peak, not from the kept step: 3 evaluations under 0.62 stop the run.
        ("valid_auc", [0.62, 0.617, 0.618, 0.619], 0.005, 3, 4, 4),
        ("valid_auc", [0.62, 0.60, 0.616, 0.617, 0.61], 0.0, 5, 1, None),  # tolerance 0: the peak's own step
        ("valid_logloss", [0.30, 0.28, 0.283, 0.29], 0.004, 5, 3, None),  # lower is better: within +0.004
    ],
    ids=["auc_later_within_tolerance", "patience_from_the_peak", "tolerance_0", "logloss_within_tolerance"],
)
def test_tolerance_keeps_the_latest_step_within_noise_of_the_peak(metric, values, tolerance, patience, best_step,
                                                                  stop_step):
    selection = ModelSelection(metric, patience, 0.0, tolerance)
    stopped_at = None
    for step, value in enumerate(values, 1):
        improved, stop = selection.update(step, {"valid_auc": 0.5, "valid_cold_auc": None, "valid_logloss": 0.5,
                                                 metric: value})  # fmt: skip
        assert improved == (selection.best_step == step)
        if stop:
            stopped_at = step
            break
    assert (selection.best_step, stopped_at) == (best_step, stop_step)
    assert selection.best[metric] == values[best_step - 1]
    again = ModelSelection(metric, patience, 0.0, tolerance)
    again.load(selection.state())  # the peak survives a resume
    assert again.peak == selection.peak and again.summary(9) == selection.summary(9)
    assert again.update(99, {"valid_auc": 0.5, "valid_cold_auc": None, "valid_logloss": 0.5, metric: values[0]}) == \
        selection.update(99, {"valid_auc": 0.5, "valid_cold_auc": None, "valid_logloss": 0.5, metric: values[0]})


def test_a_negative_tolerance_is_refused():
    with pytest.raises(ValueError, match="tolerance"):
        ModelSelection("valid_auc", 2, 0.0, -0.01)
    with pytest.raises(ConfigError, match="selection_tolerance: expected a value >= 0"):
        _config(selection_tolerance=-0.01)


def test_an_undefined_cold_auc_falls_back_to_valid_auc_with_a_warning():
    selection = ModelSelection("valid_cold_auc", 2)
    improved, _ = selection.update(2, {"valid_auc": 0.6, "valid_cold_auc": None, "valid_logloss": 0.3})
    assert improved and selection.metric == "valid_auc" and selection.notes[0].startswith("WARNING: valid_cold_auc")
    assert selection.summary(2)["mode"] == "max"


def test_unknown_metric_is_refused():
    with pytest.raises(ValueError, match=r"Expected one of .*Received: metric='auc'"):
        ModelSelection("auc", 2)


# ------------------------------------------------------------------ the trainer


def _summary_steps(model_dir):
    steps = collections.defaultdict(list)
    for path in glob.glob(os.path.join(model_dir, "tensorboard", "train", "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                steps[value.tag].append(event.step)
    return dict(steps)


def _weights_from(checkpoint_path, like_model_file):
    """The weights a best checkpoint holds, read into a copy of model.keras."""
    model = keras.saving.load_model(like_model_file, compile=False)
    weights_checkpoint(model).read(checkpoint_path).assert_consumed()
    return model.get_weights()


@pytest.fixture(scope="module")
def planted(data_dir, tmp_path_factory):
    """A learning rate that blows up after step 2 (x100: 0.01 → 1): with eval_every 2 and
    patience 2, the best is step 2 and training stops at the 2nd evaluation after it, step 6
    of 20."""
    model_dir = str(tmp_path_factory.mktemp("planted"))
    config = _config(steps=20, eval_every=2, patience=2, checkpoint_every=100, log_every=100, keep_checkpoints=1,
                     selection_metric="valid_logloss", learning_rate=0.01, decay_steps=[2], decay_factor=100.0)
    lines = []
    result = train(config, data_dir, model_dir, log=lines.append)
    return config, model_dir, result, lines


def test_planted_divergence_stops_at_the_expected_evaluation(planted, data_dir):
    config, model_dir, result, lines = planted
    assert result["best_step"] == 2 and result["last_step"] == 6 and result["stopped_early"]
    assert [h["step"] for h in result["valid_history"]] == [2, 4, 6]
    losses = [h["valid_logloss"] for h in result["valid_history"]]
    assert losses[0] < losses[1] and losses[0] < losses[2]
    assert result["best"]["valid_logloss"] == losses[0] and result["metric"] == "valid_logloss" and result["mode"] == "min"
    # Cold ads of the valid split (no train impressions): their AUC is reported.
    assert all(h["valid_cold_auc"] is not None for h in result["valid_history"])
    with open(os.path.join(model_dir, "selection.json")) as f:
        assert json.load(f) == result["selection"]
    assert set(result["selection"]) == {"metric", "mode", "best_step", "best", "history", "stopped_early", "last_step"}
    # Progress lines carry the valid figures, the new best marked; then the stop and the choice.
    assert any(line.startswith("[") and "step 2/20" in line and "valid auc" in line and line.endswith(" *") for line in lines)
    assert any(line.startswith("[") and "step 4/20" in line and "valid auc" in line and not line.endswith(" *")
               for line in lines)
    assert any(line.startswith("early stop at step 6: valid_logloss did not improve for 2 evaluations; best step 2")
               for line in lines)
    assert lines[-1].startswith("model.keras holds the best step 2 by valid_logloss")
    # TensorBoard: the valid figures at every evaluation, the training ones at every block.
    steps = _summary_steps(model_dir)
    assert {tag: steps[tag] for tag in VALID_SUMMARY_TAGS.values()} == {tag: [2, 4, 6] for tag in VALID_SUMMARY_TAGS.values()}
    assert all(steps[tag] == [2, 4, 6] for tag in SUMMARY_TAGS)
    # The valid figures are the ones `tfvctr evaluate` computes on that split with the model of the best step.
    scored = evaluation.evaluate(model_dir, data_dir, split="valid", write=False)
    assert scored["log_loss"] == pytest.approx(result["best"]["valid_logloss"], rel=1e-5)
    assert scored["cold"]["auc"] == pytest.approx(result["best"]["valid_cold_auc"], rel=1e-6)
    assert scored["best_step"] == 2 and scored["selection"]["metric"] == "valid_logloss"


def test_model_keras_holds_the_best_checkpoint_not_the_last_step(planted):
    _, model_dir, result, _ = planted
    model_file = os.path.join(model_dir, "model.keras")
    saved = keras.saving.load_model(model_file, compile=False).get_weights()
    best = _weights_from(os.path.join(model_dir, "checkpoints", "best", "best-2"), model_file)
    for a, b in zip(saved, best, strict=True):
        np.testing.assert_array_equal(a, b)
    # The model checkpoint of the last step (6) holds other weights (the DCN's trainable
    # weights are saved there through the optimizer, in the model's order).
    last = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    assert last.endswith("ckpt-6")
    reader = tf.train.load_checkpoint(last)
    trainable = [v.numpy() for v in keras.saving.load_model(model_file, compile=False).trainable_variables]
    at_last = [reader.get_tensor(f"optimizer/_trainable_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE") for i in range(len(trainable))]
    assert [a.shape for a in at_last] == [a.shape for a in trainable]
    assert not any(np.allclose(a, b) for a, b in zip(at_last, trainable, strict=True))
    for a, b in zip(saved, result["model"].get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # Only the best is kept in its folder, and `keep_checkpoints: 1` rotation did not touch it.
    assert sorted(os.listdir(os.path.join(model_dir, "checkpoints", "best"))) == [
        "best-2.data-00000-of-00001", "best-2.index"]


def test_rerunning_a_stopped_run_trains_nothing_and_keeps_the_best(planted, data_dir):
    config, model_dir, result, _ = planted
    lines = []
    again = train(config, data_dir, model_dir, log=lines.append)
    assert "already stopped early at step 6" in lines[-2]
    assert again["best_step"] == 2 and again["valid_history"] == result["valid_history"]
    for a, b in zip(again["model"].get_weights(), result["model"].get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_resume_keeps_the_best_so_far(planted, data_dir, tmp_path):
    config, _, reference, _ = planted
    # The first run ends right after the checkpoint of step 4 (one evaluation past the best),
    # as a run killed there would.
    first = train(config, data_dir, str(tmp_path), steps=4, log=None)
    assert first["best_step"] == 2 and not first["stopped_early"]
    lines = []
    resumed = train(config, data_dir, str(tmp_path), log=lines.append)
    assert "resumed from" in lines[0] and "at step 4" in lines[0]
    assert resumed["best_step"] == 2 and resumed["last_step"] == 6 and resumed["stopped_early"]
    assert [h["step"] for h in resumed["valid_history"]] == [2, 4, 6]  # each evaluation once
    for got, want in zip(resumed["valid_history"], reference["valid_history"], strict=True):
        assert got["valid_logloss"] == pytest.approx(want["valid_logloss"], rel=1e-4)
    for a, b in zip(resumed["model"].get_weights(), reference["model"].get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_a_kill_between_the_best_and_its_checkpoint_resumes_with_the_previous_best(data_dir, tmp_path):
    config = _config(steps=6, eval_every=2, patience=0, checkpoint_every=100, log_every=100,
                     selection_metric="valid_logloss", learning_rate=0.05)
    first = train(config, data_dir, str(tmp_path), steps=4, log=None)
    # As if the process died after writing best-6 but before the model checkpoint of step 6:
    # on disk a best-6 (here: garbage weights) that no checkpoint names.
    best_dir = tmp_path / "checkpoints" / "best"
    for p in list(best_dir.iterdir()):
        shutil.copy(p, best_dir / p.name.replace(f"best-{first['best_step']}", "best-6"))
    result = train(config, data_dir, str(tmp_path), log=None)
    assert result["last_step"] == 6 and [h["step"] for h in result["valid_history"]] == [2, 4, 6]
    assert sorted(p.name.split(".")[0] for p in best_dir.iterdir()) == [f"best-{result['best_step']}"] * 2


def test_without_a_valid_split_one_warning_and_the_last_weights(tmp_path):
    root = str(tmp_path / "data")
    rf.write_dataset(root, num_ads=8, num_shards=1)
    lines = []
    result = train(_config(steps=2, eval_every=1), root, str(tmp_path / "m"), log=lines.append)
    warnings = [line for line in lines if line.startswith("WARNING:")]
    assert len(warnings) == 1 and "no valid split, so model selection is off" in warnings[0]
    assert "best_step" not in result and result["step"] == 2
    assert not (tmp_path / "m" / "selection.json").exists()
    assert evaluation.evaluate(str(tmp_path / "m"), root, write=False)["best_step"] is None


def test_evaluate_command_says_which_step_model_keras_holds(planted, data_dir, capsys):
    import argparse

    from tfvctr.commands import evaluate as command

    _, model_dir, result, _ = planted
    args = argparse.Namespace(model_dir=model_dir, data=data_dir, baseline=None, split="valid")
    assert command.run(args) == 0
    best = result["best"]["valid_logloss"]
    assert f"model of step 2 (best valid_logloss {best:.4f} of the valid split; trained to step 6, stopped early)" in (
        capsys.readouterr().out)
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["best_step"] == 2 and metrics["split"] == "valid"
    assert metrics["log_loss"] == pytest.approx(best, rel=1e-5)


def test_train_command_says_which_step_the_model_dir_keeps(planted, data_dir, tmp_path, capsys):
    import argparse

    from tfvctr.commands import train as command

    config, _, result, _ = planted
    config_path = tmp_path / "c.yaml"
    config_path.write_text(config.to_yaml())
    args = argparse.Namespace(config=str(config_path), data=data_dir, model_dir=str(tmp_path / "m"), steps=None, overrides=[])
    assert command.run(args) == 0
    out = capsys.readouterr().out
    best = result["best"]["valid_logloss"]
    assert f"trained to step 6; model dir: {tmp_path / 'm'}" in out
    assert f"model.keras holds step 2: best valid_logloss {best:.4f} on the valid split (stopped early)" in out
