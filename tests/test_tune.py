"""`tfvctr tune` (tfvctr.tuning): search-space validation, the study's resume, outputs, table.

Most tests inject a fake trial runner (a known function of the trial's values), so they run
in well under a second each; one test trains real tiny trials end to end.
"""

from __future__ import annotations

import csv
import math
import os
import shutil

import optuna
import pytest
import yaml

from tests import recordio_fixtures as rf
from tfvctr import layout
from tfvctr.cli import main
from tfvctr.config import config_from_dict, load_config
from tfvctr.errors import ConfigError, DataError, TfvctrError
from tfvctr.tuning import STUDY_NAME, _yaml_value, search_space, tune

PARAMS = {
    "training.learning_rate": {"low": 1.0e-4, "high": 1.0e-1, "log": True},
    "model.dropout": {"low": 0.0, "high": 0.5},
    "model.cross_layers": {"low": 1, "high": 4},
    "model.deep_layers": {"choices": [[8], [16, 8]]},
}


def _config(params=PARAMS, **tune_settings):
    d = rf.tiny_config_dict()
    d["tune"] = {"params": params, "steps_per_trial": 6, **tune_settings}
    return config_from_dict(d, "tiny.yaml")


def _score(config) -> float:
    """A known, smooth function of the trial's values: best near lr=0.01, dropout=0.2."""
    lr, dropout = config.training.learning_rate, config.model.dropout
    return 0.8 - 0.05 * (math.log10(lr) + 2) ** 2 - 0.3 * (dropout - 0.2) ** 2 + 0.001 * config.model.cross_layers


class FakeRunner:
    """Records every call; returns `train`'s selection contract (best metric, best step)."""

    def __init__(self, fail_on=(), interrupt_on=(), reports=None):
        self.calls = []
        self.fail_on, self.interrupt_on, self.reports = set(fail_on), set(interrupt_on), reports

    def __call__(self, config, data_dir, model_dir, report):
        n = len(self.calls)
        self.calls.append({"config": config, "model_dir": model_dir, "resumed": os.path.exists(os.path.join(model_dir, "ckpt"))})
        os.makedirs(model_dir, exist_ok=True)
        with open(os.path.join(model_dir, "ckpt"), "w") as f:
            f.write("half-trained")
        if n in self.interrupt_on:
            raise KeyboardInterrupt
        if n in self.fail_on:
            raise TfvctrError("loss is nan at step 3; training stopped")
        value = _score(config)
        if report is not None:
            for step, v in (self.reports or {}).get(n, [(2, value)]):
                report(step, v)
        return {"step": config.training.steps, "best_step": config.training.steps - 2, "best": {"valid_auc": value}}


def _run(config, out, runner, lines=None, **kw):
    return tune(config, "unused-data-dir", str(out), run_trial=runner, log=(lines.append if lines is not None else lambda s: None), **kw)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "params, message",
    [
        ({"model.dropuot": {"low": 0.0, "high": 0.5}}, "tune.params.model.dropuot: unknown key 'dropuot' in model; allowed keys: architecture"),
        ({"trainig.learning_rate": {"low": 0.1, "high": 0.2}}, "tune.params.trainig.learning_rate: unknown key 'trainig' in the config"),
        ({"model.dropout": {"low": 0.0, "high": 1.5}}, "tune.params.model.dropout=1.5: model.dropout: expected a value in [0, 1), received 1.5"),
        ({"model.cross_layers": {"low": 1.5, "high": 3}}, "tune.params.model.cross_layers.low: model.cross_layers is an integer"),
        ({"training.learning_rate": {"low": "tiny", "high": 0.1}}, "expected a number, received 'tiny'"),
        ({"training.learning_rate": {"low": 0.0, "high": 0.1, "log": True}}, "a log range needs low > 0"),
        ({"model.dropout": {"low": 0.3, "high": 0.1}}, "expected low < high, received low=0.3, high=0.1"),
        ({"model.dropout": {"low": 0.1}}, "tune.params.model.dropout.high: missing required key"),
        ({"model.dropout": {"low": 0.1, "high": 0.2, "lo": 0}}, "tune.params.model.dropout.lo: unknown key; allowed keys: low, high"),
        ({"model.deep_layers": {"low": 8, "high": 16}}, "model.deep_layers is not a number; give its values as {choices: [...]}"),
        ({"model.attention": {"choices": ["cscnn", "bogus"]}}, "tune.params.model.attention=bogus: model.attention: expected one of"),
        ({"model.attention": {"choices": []}}, "tune.params.model.attention.choices: expected a non-empty list"),
        ({"model": {"choices": [1]}}, "tune.params.model: model is a section, not a value"),
        ({"model.dropout.rate": {"low": 0.1, "high": 0.2}}, "model.dropout is a value, not a section"),
        ({"dataset.image_size": {"choices": [16, 32]}}, "dataset cannot be tuned (dataset settings are fixed by the preprocessed data)"),
        ({"training.steps": {"low": 2, "high": 8}}, "training.steps is set per trial by tune.steps_per_trial"),
        ({"model.dropout": [0.1, 0.2]}, "tune.params.model.dropout: expected a mapping {low, high[, log, step]} or {choices: [...]}"),
    ],
    ids=[
        "unknown_key", "unknown_section", "value_out_of_range", "float_range_for_int", "yaml_string_number", "log_of_zero",
        "low_above_high", "missing_high", "unknown_spec_key", "range_for_a_list", "bad_choice", "empty_choices", "a_section",
        "below_a_value", "dataset_fixed", "steps_via_steps_per_trial", "not_a_mapping",
    ],
)
def test_search_space_errors_name_the_key(params, message):
    with pytest.raises(ConfigError) as e:
        _config(params)
    assert str(e.value).startswith("tiny.yaml: tune.params.")
    assert message in str(e.value)


def test_search_space_parses_ranges_and_choices():
    space = {p.path: p for p in search_space(_config())}
    assert space["training.learning_rate"].kind == "float" and space["training.learning_rate"].log
    assert space["model.cross_layers"].kind == "int"
    assert space["model.deep_layers"].kind == "choice" and space["model.deep_layers"].choices == ([8], [16, 8])
    # Non-primitive choices travel through Optuna as YAML text and come back as lists.
    assert space["model.deep_layers"].labels == ["[8]", "[16, 8]"]
    assert space["model.deep_layers"].value_of("[16, 8]") == [16, 8]


@pytest.mark.parametrize("value", [1e-05, 0.001, 3, [16, 8], "cscnn", True])
def test_values_round_trip_through_yaml_overrides(value):
    assert yaml.safe_load(_yaml_value(value)) == value


def test_a_config_without_params_cannot_be_tuned(tmp_path):
    with pytest.raises(ConfigError, match="tune.params: no ranges declared"):
        _run(_config({}), tmp_path, FakeRunner())


# --------------------------------------------------------------------------- study


def test_trials_train_the_trial_values_for_steps_per_trial(tmp_path):
    runner = FakeRunner()
    result = _run(_config(), tmp_path, runner, trials=3)
    assert len(runner.calls) == 3 and result["ran"] == 3
    for call, row in zip(runner.calls, result["rows"], strict=True):
        c = call["config"]
        assert c.training.steps == 6  # tune.steps_per_trial
        assert c.training.learning_rate == row["params"]["training.learning_rate"]
        assert c.model.deep_layers == row["params"]["model.deep_layers"] and c.model.deep_layers in ([8], [16, 8])
        assert 1e-4 <= c.training.learning_rate <= 0.1 and 1 <= c.model.cross_layers <= 4
        assert call["model_dir"] == os.path.join(str(tmp_path), "trials", f"{row['number']:04d}")
        assert row["value"] == pytest.approx(_score(c)) and row["best_step"] == 4 and row["state"] == "complete"


def test_rerun_continues_the_study_and_runs_only_the_missing_trials(tmp_path):
    first = FakeRunner()
    _run(_config(), tmp_path, first, trials=2)
    second = FakeRunner()
    result = _run(_config(), tmp_path, second, trials=3)
    assert len(first.calls) == 2 and len(second.calls) == 1
    assert [r["number"] for r in result["rows"]] == [0, 1, 2] and all(r["state"] == "complete" for r in result["rows"])
    # Resumed runs draw new values (the sampler seed moves on with the study).
    lrs = [r["params"]["training.learning_rate"] for r in result["rows"]]
    assert len(set(lrs)) == 3
    third = FakeRunner()
    assert _run(_config(), tmp_path, third, trials=3)["ran"] == 0 and not third.calls


def test_an_interrupted_trial_is_marked_and_retried_with_its_values_and_checkpoints(tmp_path):
    runner = FakeRunner(interrupt_on={1})
    with pytest.raises(KeyboardInterrupt):
        _run(_config(), tmp_path, runner, trials=3)
    interrupted = runner.calls[1]
    again = FakeRunner()
    result = _run(_config(), tmp_path, again, trials=3)
    states = [r["state"] for r in result["rows"]]
    assert states == ["complete", "interrupted", "complete", "complete"]
    assert len(again.calls) == 2
    retry = again.calls[0]
    assert result["rows"][2]["retry_of"] == 1
    assert retry["config"].training.learning_rate == interrupted["config"].training.learning_rate
    assert retry["config"].model.deep_layers == interrupted["config"].model.deep_layers
    # The interrupted trial's folder moved to the retry, so training resumes from its checkpoints.
    assert retry["resumed"] and retry["model_dir"].endswith("0002") and not os.path.exists(interrupted["model_dir"])


@pytest.mark.parametrize(
    "error",
    [DataError("D/train/part-0.tfrecord: corrupted record at offset 0"), RuntimeError("a bug in the trainer")],
    ids=["data_error", "bug"],
)
def test_an_error_that_is_not_the_trials_fault_stops_the_study_and_the_trial_is_retried(tmp_path, error):
    class Broken(FakeRunner):
        def __call__(self, config, data_dir, model_dir, report):
            raise error

    with pytest.raises(type(error), match=str(error)):
        _run(_config(), tmp_path, Broken(), trials=3)
    result = _run(_config(), tmp_path, FakeRunner(), trials=1)
    assert [(r["state"], r["retry_of"]) for r in result["rows"]] == [("interrupted", None), ("complete", 0)]


def test_a_trial_left_running_by_a_killed_process_is_retried(tmp_path):
    _run(_config(), tmp_path, FakeRunner(), trials=1)
    # What SIGKILL leaves behind: a trial that is RUNNING in the database, with values.
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{tmp_path}/study.db")
    killed = study.ask()
    lr = killed.suggest_float("training.learning_rate", 1e-4, 1e-1, log=True)
    lines = []
    runner = FakeRunner()
    result = _run(_config(), tmp_path, runner, lines, trials=2)
    assert [r["state"] for r in result["rows"]] == ["complete", "interrupted", "complete"]
    assert runner.calls[0]["config"].training.learning_rate == lr
    assert "trial 1 was interrupted; it is marked failed and retried with the same values" in lines


def test_a_failing_trial_fails_alone_and_counts(tmp_path):
    runner = FakeRunner(fail_on={0})
    lines = []
    result = _run(_config(), tmp_path, runner, lines, trials=2)
    assert [r["state"] for r in result["rows"]] == ["fail", "complete"] and len(runner.calls) == 2
    assert "loss is nan at step 3" in result["rows"][0]["error"]
    assert "trial 0 fail: loss is nan at step 3; training stopped" in lines[-3]


def test_a_resumed_study_refuses_another_config(tmp_path):
    _run(_config(), tmp_path, FakeRunner(), trials=1)
    other = rf.tiny_config_dict()
    other["tune"] = {"params": PARAMS, "steps_per_trial": 6}
    other["model"]["visual_dim"] = 8
    with pytest.raises(ConfigError, match=r"study.db: this study was started with another config \(model.visual_dim: 4 then, 8 now\)"):
        _run(config_from_dict(other), tmp_path, FakeRunner(), trials=2)
    # The budget may change between runs.
    assert _run(_config(trials=7), tmp_path, FakeRunner(), trials=2, timeout_minutes=5)["ran"] == 1


def test_the_time_budget_stops_starting_trials(tmp_path):
    lines = []
    result = _run(_config(), tmp_path, FakeRunner(), lines, trials=5, timeout_minutes=1e-9)
    assert result["ran"] == 1  # the first trial starts; no second after the budget is used
    assert any("time budget of 1e-09 minutes used" in line for line in lines)


def test_the_median_pruner_stops_a_trial_worse_than_earlier_ones(tmp_path):
    # Trials 0-2 report 0.8 at step 2; trial 3 reports 0.5 there: below the median, pruned.
    reports = {0: [(2, 0.8)], 1: [(2, 0.8)], 2: [(2, 0.8)], 3: [(2, 0.5)]}
    result = _run(_config(pruner="median"), tmp_path, FakeRunner(reports=reports), trials=4)
    assert [r["state"] for r in result["rows"]] == ["complete", "complete", "complete", "pruned"]
    assert "worse than the median of earlier trials" in result["rows"][3]["error"]


@pytest.mark.parametrize(
    "steps, eval_every, prune_every, expected",
    [(600, 100, None, 200), (600, 200, None, 200), (600, 100, 150, 200), (600, 100, 50, 100), (8, 2, None, 2)],
    ids=["quarter_rounded_up", "one_interval", "rounded_up", "at_least_one_interval", "tiny"],
)
def test_pruning_stretches_end_on_validation_steps(steps, eval_every, prune_every, expected):
    from tfvctr.tuning import _prune_every

    config = config_from_dict(rf.tiny_config_dict(steps=steps, eval_every=eval_every))
    assert _prune_every(config, prune_every) == expected


def test_log_loss_is_minimised(tmp_path):
    class LogLoss(FakeRunner):
        def __call__(self, config, data_dir, model_dir, report):
            r = super().__call__(config, data_dir, model_dir, report)
            return {**r, "best": {"valid_logloss": r["best"]["valid_auc"]}}

    result = _run(_config(metric="valid_logloss"), tmp_path, LogLoss(), trials=3)
    assert result["direction"] == "minimize"
    assert result["best"]["value"] == min(r["value"] for r in result["rows"])


# --------------------------------------------------------------------------- outputs


def test_table_csv_and_best_config(tmp_path, repo_root):
    lines = []
    result = _run(_config(), tmp_path, FakeRunner(), lines, trials=3)
    best = max(result["rows"], key=lambda r: r["value"])
    assert result["best"]["number"] == best["number"]
    # A table after each trial (progress) and one at the end.
    tables = [line for line in lines if line.startswith("trial  state")]
    assert len(tables) == 3
    table = lines[-3].splitlines()
    assert table[0].split() == ["trial", "state", "valid_auc", "best", "step", "seconds", "learning_rate", "dropout",
                                "cross_layers", "deep_layers"]
    assert len(table) == 1 + 3 + 1
    starred = [row for row in table[1:4] if row.split()[0].endswith("*")]
    assert len(starred) == 1 and starred[0].split()[0] == f"{best['number']}*"
    assert f"{best['value']:.4f}" in starred[0]
    # trials.csv: one row per trial, values as YAML.
    with open(tmp_path / layout.TUNE_TRIALS_CSV) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["number"]) for r in rows] == [0, 1, 2]
    assert yaml.safe_load(rows[best["number"]]["model.deep_layers"]) == best["params"]["model.deep_layers"]
    assert float(rows[best["number"]]["valid_auc"]) == pytest.approx(best["value"])
    # best_config.yaml: a full config `tfvctr train` accepts, with the best values and the
    # base config's training.steps (not steps_per_trial).
    path = str(tmp_path / layout.TUNE_BEST_CONFIG)
    loaded = load_config(path)
    assert loaded.training.learning_rate == best["params"]["training.learning_rate"]
    assert loaded.model.dropout == best["params"]["model.dropout"]
    assert loaded.model.deep_layers == best["params"]["model.deep_layers"]
    assert loaded.training.steps == 4 and loaded.dataset == _config().dataset
    assert main(["validate-config", path]) == 0


def test_tune_help_and_a_config_error_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["tune", "--help"])
    assert e.value.code == 0
    assert "DIR/study.db" in capsys.readouterr().out
    path = tmp_path / "c.yaml"
    d = rf.tiny_config_dict()
    d["tune"] = {"params": {"model.dropuot": {"low": 0.0, "high": 0.5}}}
    path.write_text(yaml.safe_dump(d))
    assert main(["tune", "--config", str(path), "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "tune.params.model.dropuot: unknown key 'dropuot'" in err


def test_tune_refuses_a_multi_worker_cluster(tmp_path, capsys, monkeypatch):
    import json

    # Refused from TF_CONFIG before any strategy exists: no peer is waited for (none runs here).
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                                "task": {"type": "worker", "index": 0}}))  # fmt: skip
    path = tmp_path / "c.yaml"
    d = rf.tiny_config_dict()
    d["tune"] = {"params": PARAMS}
    path.write_text(yaml.safe_dump(d))
    assert main(["tune", "--config", str(path), "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "tune runs on one host: TF_CONFIG names several workers" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_tune_section_of_docs_tuning_md_is_valid(repo_root):
    text = (repo_root / "docs" / "tuning.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    d = rf.tiny_config_dict()
    d.update(yaml.safe_load(block))
    config = config_from_dict(d, "docs/tuning.md")
    assert config.tune.metric == "valid_cold_auc" and len(search_space(config)) == 5


def test_demo_config_declares_a_valid_search(repo_root):
    config = load_config(str(repo_root / "configs" / "demo.yaml"))
    assert len(search_space(config)) >= 3


# --------------------------------------------------------------------------- end to end


def test_metric_directions_match_the_trainers_selection_metrics():
    from tfvctr.evaluation import SELECTION_METRICS
    from tfvctr.tuning import METRIC_DIRECTIONS

    assert {m: d[:3] for m, d in METRIC_DIRECTIONS.items()} == SELECTION_METRICS


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("grouped"))
    rf.write_dataset(root, num_ads=16, num_shards=2)
    if not os.path.isdir(os.path.join(root, layout.VALID)):
        # Same records as eval: the trainer only needs a valid split to select on.
        shutil.copytree(os.path.join(root, layout.EVAL), os.path.join(root, layout.VALID))
    return root


def test_real_trials_train_score_on_valid_and_resume(data_dir, tmp_path, capsys):
    d = rf.tiny_config_dict(steps=4, eval_every=2, patience=0)
    # The median pruner makes each trial train in two stretches (steps 1-2, 3-4) and report
    # its validation history in between; with fewer than 3 trials nothing is pruned.
    d["tune"] = {
        "params": {"training.learning_rate": {"low": 1.0e-3, "high": 1.0e-1, "log": True}},
        "steps_per_trial": 4, "pruner": "median", "prune_every": 2,
    }
    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump(d))
    out = tmp_path / "study"
    argv = ["tune", "--config", str(config_path), "--data", data_dir, "--out", str(out), "--trials", "1"]
    assert main(argv) == 0
    assert main(argv[:-1] + ["2"]) == 0
    printed = capsys.readouterr().out
    assert "1 of 1 trials finished (1 in this run)" in printed and "2 of 2 trials finished (1 in this run)" in printed
    with open(out / layout.TUNE_TRIALS_CSV) as f:
        rows = list(csv.DictReader(f))
    assert [r["state"] for r in rows] == ["complete", "complete"]
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{out / layout.TUNE_STUDY}")
    for r in rows:
        trial_dir = out / "trials" / f"{int(r['number']):04d}"
        with open(trial_dir / layout.SELECTION) as f:
            selection = yaml.safe_load(f)
        # The trial's score is the trainer's validation metric at its selected step.
        assert float(r["valid_auc"]) == pytest.approx(selection["best"]["valid_auc"])
        assert int(r["best_step"]) == selection["best_step"]
        assert (trial_dir / layout.MODEL).exists()
        # What the pruner saw: the whole validation history, one value per evaluation step.
        reported = study.trials[int(r["number"])].intermediate_values
        assert reported == {h["step"]: pytest.approx(h["valid_auc"]) for h in selection["history"]}
        assert sorted(reported) == [2, 4]
    best = load_config(str(out / layout.TUNE_BEST_CONFIG))
    assert best.training.learning_rate in [pytest.approx(float(yaml.safe_load(r["training.learning_rate"]))) for r in rows]
