"""`tfvctr tune`: a hyperparameter search over the ranges of `tune.params`, scored on the valid split.

Built on Optuna (docs/tuning.md says why, not KerasTuner): each trial is one ordinary
`tfvctr.training.train` run into `OUT/trials/NNNN/`, with the trial's values written into
the config through `apply_overrides` and checked by `config_from_dict`, and scored by the
validation metric of the step the trainer selected (`result["best"][metric]`). The study
lives in `OUT/study.db` (SQLite), so re-running the same command continues it: finished
trials are kept, and a trial that was interrupted (Ctrl-C, SIGKILL, a reboot) is marked
failed and retried with the same values, resuming from its checkpoints.

Trials run one after another in this process: on 2 CPU cores two trials at once would each
run at half speed and finish no sooner.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import io
import json
import math
import os
import shutil
import time
import types
import typing
from typing import Any, Callable, Iterator, Optional

import yaml

from tfvctr import layout
from tfvctr.config import _SCIENTIFIC, Config, apply_overrides, config_from_dict
from tfvctr.errors import ConfigError, DataError, TfvctrError

# Validation metrics the trainer reports (selection.json) and which way is better: the same as
# tfvctr.evaluation.SELECTION_METRICS (a test checks), not imported from there because this
# module is imported when a config loads, and tfvctr.evaluation imports TensorFlow.
METRIC_DIRECTIONS = {"valid_auc": "maximize", "valid_cold_auc": "maximize", "valid_logloss": "minimize"}
STUDY_NAME = "tfvctr-tune"
SPEC_KEYS = ("low", "high", "log", "step", "choices")
# Top-level sections a trial may not change: the dataset is fixed by the preprocessed data
# (image size, vocabularies, splits), and `tune` would change the search itself.
FIXED_SECTIONS = ("dataset", "tune", "name")

# A trial runner: (trial config, data dir, trial model dir, report) -> the `train` result.
# `report(step, value)` feeds the pruner and raises optuna.TrialPruned to stop the trial;
# it is None when no pruner is configured.
TrialRunner = Callable[[Config, str, str, Optional[Callable[[int, float], None]]], dict]


# --------------------------------------------------------------------------- search space


@dataclasses.dataclass(frozen=True)
class Param:
    """One tuned config value: a float/int range or a list of choices."""

    path: str  # config key path, e.g. "training.learning_rate"
    kind: str  # "float", "int" or "choice"
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: tuple = ()

    @property
    def labels(self) -> list:
        """Optuna's categorical values: primitives as they are, anything else (lists) as YAML text."""
        return [c if _primitive(c) else _yaml_value(c) for c in self.choices]

    def suggest(self, trial: Any) -> Any:
        """The trial's value for this parameter (a config value, lists included)."""
        if self.kind == "float":
            return trial.suggest_float(self.path, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.path, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        label = trial.suggest_categorical(self.path, self.labels)
        return self.value_of(label)

    def value_of(self, stored: Any) -> Any:
        """Maps a value as Optuna stores it back to the config value."""
        if self.kind != "choice":
            return stored
        return self.choices[self.labels.index(stored)]


def _primitive(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _yaml_value(value: Any) -> str:
    """`value` as one line of YAML that reads back as the same value.

    Not json.dumps: PyYAML reads JSON's `1e-05` as a string (YAML 1.1 wants `1.0e-05`).
    """
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip()
    return text.removesuffix("...").strip()


def _unwrap_optional(tp: Any) -> Any:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def _field_type(path: str, where: str) -> Any:
    """The type hint of the config value at `path`; ConfigError naming the key if there is none."""
    parts = path.split(".")
    if any(not p for p in parts):
        raise ConfigError(f"{where}: expected a config key path such as training.learning_rate")
    if parts[0] in FIXED_SECTIONS:
        why = {
            "dataset": "dataset settings are fixed by the preprocessed data",
            "tune": "the search cannot tune itself",
            "name": "the name is not a hyperparameter",
        }[parts[0]]
        raise ConfigError(f"{where}: {parts[0]} cannot be tuned ({why}); tunable sections: model, training, embed")
    if path == "training.steps":
        raise ConfigError(f"{where}: training.steps is set per trial by tune.steps_per_trial; tune it there")
    cls: Any = Config
    tp: Any = None
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"{where}: {'.'.join(parts[:i])} is a value, not a section")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            section = ".".join(parts[:i]) or "the config"
            raise ConfigError(f"{where}: unknown key {part!r} in {section}; allowed keys: {', '.join(names)}")
        tp = hints[part]
        cls = _unwrap_optional(tp)
    if dataclasses.is_dataclass(cls):
        names = ", ".join(f.name for f in dataclasses.fields(cls))
        raise ConfigError(f"{where}: {path} is a section, not a value; name one of its keys: {names}")
    return cls


def _number(value: Any, key: str, where: str) -> float:
    if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads `1e-4` as text; the config accepts it, so do we
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}.{key}: expected a number, received {value!r}")
    return value


def _parse_spec(path: str, spec: Any, tp: Any, where: str) -> Param:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping {{low, high[, log, step]}} or {{choices: [...]}}, received {spec!r}")
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key; allowed keys: {', '.join(SPEC_KEYS)}")
    if "choices" in spec:
        extra = [k for k in ("low", "high", "log", "step") if k in spec]
        if extra:
            raise ConfigError(f"{where}: give either choices or a range (low, high), not both; received {', '.join(extra)} too")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}.choices: expected a non-empty list, received {choices!r}")
        param = Param(path, "choice", choices=tuple(choices))
        if len(set(map(str, param.labels))) != len(choices):
            raise ConfigError(f"{where}.choices: expected distinct values, received {choices!r}")
        return param
    for key in ("low", "high"):
        if key not in spec:
            raise ConfigError(f"{where}.{key}: missing required key (a range needs low and high; or give choices)")
    if tp not in (int, float):
        raise ConfigError(f"{where}: {path} is not a number; give its values as {{choices: [...]}}")
    low, high = _number(spec["low"], "low", where), _number(spec["high"], "high", where)
    step = _number(spec["step"], "step", where) if spec.get("step") is not None else None
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log: expected true or false, received {log!r}")
    if tp is int:
        for key, value in (("low", low), ("high", high), ("step", step)):
            if value is not None and not isinstance(value, int):
                raise ConfigError(f"{where}.{key}: {path} is an integer; expected an integer, received {value!r}")
    if not low < high:
        raise ConfigError(f"{where}: expected low < high, received low={low}, high={high}")
    if log and low <= 0:
        raise ConfigError(f"{where}.low: a log range needs low > 0, received {low}")
    if step is not None and (step <= 0 or log):
        raise ConfigError(f"{where}.step: expected a positive step and no log scale, received step={step}, log={log}")
    return Param(path, "int" if tp is int else "float", low=low, high=high, log=log, step=step)


def base_data(config: Config) -> dict:
    """The config as plain data without its `tune` section: what every trial starts from."""
    data = config.to_dict()
    data.pop("tune", None)
    return data


def config_with(data: dict, values: dict[str, Any], *, steps: Optional[int] = None, source: str = "tune") -> Config:
    """A validated config: `data` with `values` ({key path: value}) and `training.steps` set."""
    overrides = [f"{path}={_yaml_value(value)}" for path, value in values.items()]
    if steps is not None:
        overrides.append(f"training.steps={steps}")
    return config_from_dict(apply_overrides(_copy(data), overrides, source), source)


def _copy(data: Any) -> Any:
    return copy.deepcopy(data)


def search_space(config: Config, where: str = "tune") -> list[Param]:
    """Parses and checks `config.tune.params`: every path names a config value, and both ends
    of every range (every choice) make a valid config. Raises ConfigError naming the key."""
    params = config.tune.params
    if not isinstance(params, dict):
        raise ConfigError(f"{where}.params: expected a mapping of config key paths to ranges, received {params!r}")
    space = []
    data = base_data(config) if params else {}
    for path, spec in params.items():
        at = f"{where}.params.{path}"
        if not isinstance(path, str):
            raise ConfigError(f"{at}: expected a config key path such as training.learning_rate")
        param = _parse_spec(path, spec, _field_type(path, at), at)
        ends = param.choices if param.kind == "choice" else (param.low, param.high)
        for value in ends:
            value = int(value) if param.kind == "int" else value
            try:
                config_with(data, {path: value}, source=f"{at}={_yaml_value(value)}")
            except ConfigError as e:
                raise ConfigError(str(e)) from None
        space.append(param)
    return space


# --------------------------------------------------------------------------- the study


def metric_of(config: Config) -> str:
    """`tune.metric`, or the trainer's `training.selection_metric`, or valid_auc."""
    metric = config.tune.metric or getattr(config.training, "selection_metric", None) or "valid_auc"
    if metric not in METRIC_DIRECTIONS:
        raise ConfigError(f"tune.metric: expected one of {', '.join(METRIC_DIRECTIONS)}, received {metric!r}")
    return metric


def _fingerprint(config: Config) -> dict:
    """What must not change between runs of one study: everything but the budget."""
    data = config.to_dict()
    data["tune"] = {k: v for k, v in data["tune"].items() if k not in ("trials", "timeout_minutes")}
    return _copy(data)


def _first_difference(old: Any, new: Any, path: str = "") -> Optional[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            found = _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    return None if old == new else (path, old, new)


@contextlib.contextmanager
def _exclusive(out_dir: str) -> Iterator[None]:
    """One `tfvctr tune` per study: a second would take the first one's running trial for stale."""
    import fcntl

    with open(os.path.join(out_dir, ".tune.lock"), "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise TfvctrError(f"{out_dir}: another `tfvctr tune` is running on this study") from None
        yield


def _sampler(tune_config: Any, seed_offset: int):
    import optuna

    # Offset the seed by the trials already in the study: a resumed run with the sampler's
    # original seed would draw the first trials' values again.
    seed = tune_config.seed + seed_offset
    if tune_config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # 10 random start-up trials (Optuna's default) would be the whole of a 2-core budget.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(3, tune_config.trials // 3)))


def _pruner(tune_config: Any):
    import optuna

    if tune_config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def _counted(trial: Any) -> bool:
    """Finished trials count against `tune.trials`; interrupted ones are retried instead."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and not trial.user_attrs.get("interrupted")


def _interrupt(study: Any, storage: Any, trial: Any) -> None:
    """Marks a running trial failed (interrupted) and queues its values for a retry."""
    from optuna.trial import TrialState

    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(STUDY_NAME), trial.number)
    storage.set_trial_user_attr(trial_id, "interrupted", True)
    study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})


def _interrupt_running(study: Any, storage: Any, trial: Any, t0: float) -> None:
    """Ends the running `trial` as interrupted: not its fault (Ctrl-C, unreadable data that
    would fail every trial, a bug), so the study stops and retries it on the next run."""
    trial.set_user_attr("seconds", round(time.monotonic() - t0, 1))
    _interrupt(study, storage, study.get_trials(deepcopy=False)[trial.number])


def tune(
    config: Config,
    data_dir: str,
    out_dir: str,
    *,
    trials: Optional[int] = None,
    timeout_minutes: Optional[float] = None,
    run_trial: Optional[TrialRunner] = None,
    strategy: Any = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Runs (or continues) the study of `config.tune` in `out_dir`.

    Args:
        config: the base config; `config.tune` declares the search.
        data_dir: the output of `tfvctr preprocess`, with a `valid` split.
        out_dir: a local folder: `study.db`, `trials/NNNN/`, `trials.csv`, `best_config.yaml`.
        trials: overrides `tune.trials` (finished trials the study should hold).
        timeout_minutes: overrides `tune.timeout_minutes`.
        run_trial: `(config, data_dir, model_dir, report) -> train result` (default: `train_trial`).
        strategy: passed to `tfvctr.training.train` by the default runner.
        log: progress lines and the tables.

    Returns:
        {"metric", "direction", "rows" (one dict per trial), "best" (a row or None),
        "ran" (trials run by this call)}.
    """
    import optuna
    from optuna.trial import TrialState

    from tfvctr.io import fs

    tc = dataclasses.replace(
        config.tune,
        trials=trials if trials is not None else config.tune.trials,
        timeout_minutes=timeout_minutes if timeout_minutes is not None else config.tune.timeout_minutes,
    )
    if tc.trials < 1:
        raise ConfigError(f"--trials: expected a positive number, received {tc.trials}")
    if tc.timeout_minutes is not None and tc.timeout_minutes <= 0:
        raise ConfigError(f"--timeout-minutes: expected a positive number, received {tc.timeout_minutes}")
    space = search_space(config)
    if not space:
        raise ConfigError(
            "tune.params: no ranges declared; add e.g. `tune: {params: {training.learning_rate: "
            "{low: 1.0e-4, high: 1.0e-2, log: true}}}` (docs/tuning.md)"
        )
    if fs.is_remote(out_dir):
        raise ConfigError(f"--out {out_dir}: the study is a local SQLite file; give a local folder")
    metric = metric_of(config)
    direction = METRIC_DIRECTIONS[metric]
    steps = tc.steps_per_trial or config.training.steps
    if run_trial is None:
        run_trial = default_runner(config, data_dir, metric, prune_every=tc.prune_every, strategy=strategy, log=log)
    os.makedirs(os.path.join(out_dir, layout.TUNE_TRIALS_DIR), exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our table reports the trials
    with _exclusive(out_dir):
        db = os.path.join(os.path.abspath(out_dir), layout.TUNE_STUDY)
        storage = optuna.storages.RDBStorage(f"sqlite:///{db}", engine_kwargs={"connect_args": {"timeout": 30}})
        names = {s.study_name for s in storage.get_all_studies()}
        before = len(storage.get_all_trials(storage.get_study_id_from_name(STUDY_NAME))) if STUDY_NAME in names else 0
        study = optuna.create_study(
            storage=storage, study_name=STUDY_NAME, direction=direction, load_if_exists=True,
            sampler=_sampler(tc, before), pruner=_pruner(tc),
        )
        _check_same_config(study, config, db)
        for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            log(f"trial {stale.number} was interrupted; it is marked failed and retried with the same values")
            _interrupt(study, storage, stale)
        data = base_data(config)
        start, ran = time.monotonic(), 0
        while sum(map(_counted, study.get_trials(deepcopy=False))) < tc.trials:
            # The first trial always starts: a run that trains nothing would be no progress.
            if ran and tc.timeout_minutes is not None and time.monotonic() - start >= tc.timeout_minutes * 60:
                log(f"time budget of {tc.timeout_minutes:g} minutes used; re-run the command to continue the study")
                break
            trial = study.ask()
            _run_one(study, storage, trial, space, data, steps, data_dir, out_dir, metric, run_trial, tc, log)
            ran += 1
            rows = trial_rows(study, space, metric)
            write_outputs(out_dir, config, space, rows, metric, direction, steps)
            log(format_table(rows, space, metric, direction))
        rows = trial_rows(study, space, metric)
        best = write_outputs(out_dir, config, space, rows, metric, direction, steps)
    if not ran:
        log(format_table(rows, space, metric, direction))
    done = sum(map(_counted, study.get_trials(deepcopy=False)))
    log(f"{done} of {tc.trials} trials finished ({ran} in this run); study: {db}")
    if best is not None:
        log(f"best: trial {best['number']}, {metric} {best['value']:.4f}; config: {os.path.join(out_dir, layout.TUNE_BEST_CONFIG)}")
    return {"metric": metric, "direction": direction, "rows": rows, "best": best, "ran": ran}


def _check_same_config(study: Any, config: Config, db: str) -> None:
    new = _fingerprint(config)
    old = study.user_attrs.get("config")
    if old is None:
        study.set_user_attr("config", new)
        return
    diff = _first_difference(old, new)
    if diff:
        key, was, now = diff
        raise ConfigError(
            f"{db}: this study was started with another config ({key}: {was!r} then, {now!r} now); "
            f"run with the same config (--trials and --timeout-minutes may change) or use a new --out"
        )


def _run_one(study, storage, trial, space, data, steps, data_dir, out_dir, metric, run_trial, tc, log) -> None:
    import optuna
    from optuna.trial import TrialState

    values = {p.path: p.suggest(trial) for p in space}
    model_dir = os.path.join(out_dir, layout.TUNE_TRIALS_DIR, f"{trial.number:04d}")
    retry_of = trial.user_attrs.get("retry_of")
    if retry_of is not None:
        # Same values, same seed: the interrupted trial's checkpoints are this trial's, so it resumes.
        old = os.path.join(out_dir, layout.TUNE_TRIALS_DIR, f"{retry_of:04d}")
        if os.path.isdir(old) and not os.path.exists(model_dir):
            shutil.move(old, model_dir)
    trial.set_user_attr("model_dir", model_dir)
    shown = ", ".join(f"{p.path}={_show(values[p.path])}" for p in space)
    log(f"trial {trial.number}: {shown}")
    report = None
    if tc.pruner != "none":
        def report(step: int, value: float) -> None:
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"{metric} {value:.4f} at step {step} is worse than the median of earlier trials")

    t0 = time.monotonic()
    try:
        trial_config = config_with(data, values, steps=steps, source=f"trial {trial.number}")
        result = run_trial(trial_config, data_dir, model_dir, report)
        best = (result.get("best") or {}).get(metric)
        if best is None or not math.isfinite(float(best)):
            raise TfvctrError(
                f"training returned no finite {metric} (result['best'] = {result.get('best')!r}); "
                f"does the data have a valid split?"
            )
    except optuna.TrialPruned as e:
        trial.set_user_attr("seconds", round(time.monotonic() - t0, 1))
        trial.set_user_attr("error", str(e))
        study.tell(trial, state=TrialState.PRUNED)
        return
    except DataError:
        _interrupt_running(study, storage, trial, t0)
        raise
    except TfvctrError as e:
        # A diverging learning rate or an impossible combination fails this trial, not the study.
        trial.set_user_attr("seconds", round(time.monotonic() - t0, 1))
        trial.set_user_attr("error", str(e).splitlines()[0])
        study.tell(trial, state=TrialState.FAIL)
        log(f"trial {trial.number} failed: {str(e).splitlines()[0]}")
        return
    except BaseException:
        _interrupt_running(study, storage, trial, t0)
        raise
    trial.set_user_attr("seconds", round(time.monotonic() - t0, 1))
    if result.get("best_step") is not None:
        trial.set_user_attr("best_step", int(result["best_step"]))
    study.tell(trial, float(best))


# --------------------------------------------------------------------------- the default runner


def default_runner(
    config: Config,
    data_dir: str,
    metric: str,
    *,
    prune_every: Optional[int] = None,
    strategy: Any = None,
    log: Optional[Callable[[str], None]] = print,
) -> TrialRunner:
    """`tfvctr.training.train` as a trial runner; checks first that `data_dir` has a valid split."""
    from tfvctr import data as data_lib

    data_lib.list_shards(data_dir, layout.VALID)

    def run(trial_config: Config, data_dir: str, model_dir: str, report) -> dict:
        return train_trial(
            trial_config, data_dir, model_dir, metric=metric, report=report, prune_every=prune_every,
            strategy=strategy, log=log,
        )

    return run


def train_trial(
    config: Config,
    data_dir: str,
    model_dir: str,
    *,
    metric: str,
    report: Optional[Callable[[int, float], None]] = None,
    prune_every: Optional[int] = None,
    strategy: Any = None,
    log: Optional[Callable[[str], None]] = print,
) -> dict:
    """Trains one trial; with `report`, in stretches of `prune_every` steps, reporting the
    validation history (selection.json) after each so the pruner can stop a poor trial early.

    Stretches, not a hook into the loop: `train` resumes (weights, optimizer, data position,
    best-so-far, patience count) from the checkpoint each stretch ends with, as a resumed
    `tfvctr train` does, at the cost of rebuilding the model once per stretch. Stretches end
    on validation steps, so the trial is evaluated at the same steps as without pruning.
    """
    from tfvctr.io import fs
    from tfvctr.training import train

    total = config.training.steps
    if report is None:
        stops = [total]
    else:
        every = _prune_every(config, prune_every)
        stops = list(range(every, total, every)) + [total]
    reported = -1
    for stop in stops:
        result = train(config, data_dir, model_dir, steps=stop, strategy=strategy, log=log)
        if report is not None:
            path = fs.join(model_dir, layout.SELECTION)
            if fs.exists(path):
                with fs.open(path) as f:
                    history = json.load(f).get("history") or []
                for entry in history:
                    if entry.get("step", -1) > reported and entry.get(metric) is not None:
                        reported = entry["step"]
                        report(int(entry["step"]), float(entry[metric]))
        if result.get("stopped_early") or int(result.get("step", stop)) < stop:
            break  # training.patience ran out: the trial is over
    return result


def _prune_every(config: Config, prune_every: Optional[int]) -> int:
    """`prune_every` (default: a quarter of the trial) rounded up to whole validation intervals:
    the pruner sees the metric only where the trainer evaluates it, and `train` also evaluates
    at the last step of each call, so a stretch ending elsewhere would add an evaluation."""
    eval_every = getattr(config.training, "eval_every", None) or 1
    every = prune_every or config.training.steps / 4
    return max(1, math.ceil(every / eval_every)) * eval_every


# --------------------------------------------------------------------------- outputs


def trial_rows(study: Any, space: list[Param], metric: str) -> list[dict]:
    """One dict per trial: number, state, value, best_step, seconds, params, error, model_dir."""
    rows = []
    by_path = {p.path: p for p in space}
    for t in study.get_trials(deepcopy=False):
        params = {path: by_path[path].value_of(v) if path in by_path else v for path, v in t.params.items()}
        state = t.state.name.lower()
        if state == "fail" and t.user_attrs.get("interrupted"):
            state = "interrupted"
        rows.append({
            "number": t.number, "state": state, "value": t.value if t.values else None,
            "best_step": t.user_attrs.get("best_step"), "seconds": t.user_attrs.get("seconds"),
            "params": params, "error": t.user_attrs.get("error", ""), "model_dir": t.user_attrs.get("model_dir", ""),
            "retry_of": t.user_attrs.get("retry_of"),
        })
    return rows


def best_row(rows: list[dict], direction: str) -> Optional[dict]:
    done = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    if not done:
        return None
    sign = -1.0 if direction == "maximize" else 1.0
    return min(done, key=lambda r: (sign * r["value"], r["number"]))  # ties: the earlier trial


def _short_names(space: list[Param]) -> dict[str, str]:
    """Column names: the last part of each key path, unless two params share it."""
    last = [p.path.rsplit(".", 1)[-1] for p in space]
    return {p.path: (n if last.count(n) == 1 else p.path) for p, n in zip(space, last, strict=True)}


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return _yaml_value(value) if not isinstance(value, str) else value


def format_table(rows: list[dict], space: list[Param], metric: str, direction: str) -> str:
    """The trials as a text table; the best trial is marked with `*`."""
    best = best_row(rows, direction)
    names = _short_names(space)
    header = ["trial", "state", metric, "best step", "seconds"] + [names[p.path] for p in space]
    lines = [header]
    for r in rows:
        mark = "*" if best is not None and r["number"] == best["number"] else " "
        lines.append([
            f"{r['number']}{mark}", r["state"],
            f"{r['value']:.4f}" if r["value"] is not None else "-",
            str(r["best_step"]) if r["best_step"] is not None else "-",
            f"{r['seconds']:.0f}" if r["seconds"] is not None else "-",
        ] + [_show(r["params"][p.path]) if p.path in r["params"] else "-" for p in space])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.rjust(w) if i in (0, 2, 3, 4) else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))).rstrip()
            for line in lines]
    notes = [f"trial {r['number']} {r['state']}: {r['error']}" for r in rows if r["error"]]
    better = "higher" if direction == "maximize" else "lower"
    return "\n".join(text + [f"({metric} at the trial's best step on the valid split; {better} is better; * = best)"] + notes)


def write_outputs(
    out_dir: str, config: Config, space: list[Param], rows: list[dict], metric: str, direction: str, steps: int
) -> Optional[dict]:
    """Writes `trials.csv` and, once a trial has completed, `best_config.yaml`; returns the best row."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["number", "state", metric, "best_step", "seconds"] + [p.path for p in space] + ["error"])
    for r in rows:
        writer.writerow(
            [r["number"], r["state"], "" if r["value"] is None else r["value"], "" if r["best_step"] is None else r["best_step"],
             "" if r["seconds"] is None else r["seconds"]]
            + [_yaml_value(r["params"][p.path]) if p.path in r["params"] else "" for p in space] + [r["error"]]
        )
    _write_atomic(os.path.join(out_dir, layout.TUNE_TRIALS_CSV), buf.getvalue())
    best = best_row(rows, direction)
    if best is not None:
        best_config = best_config_of(config, best["params"])
        head = [
            f"# tfvctr tune: the best of {sum(r['state'] == 'complete' for r in rows)} completed trials: trial {best['number']},",
            f"# {metric} {best['value']:.4f} on the valid split at step {best['best_step']} of {steps} per trial",
            f"# (its model: {best['model_dir']}). Tuned values:",
        ] + [f"#   {p.path}: {_yaml_value(best['params'][p.path])}" for p in space] + [
            f"# training.steps is the base config's ({config.training.steps}); train with",
            f"#   tfvctr train --config {os.path.join(out_dir, layout.TUNE_BEST_CONFIG)} --data D --model-dir M",
        ]
        _write_atomic(os.path.join(out_dir, layout.TUNE_BEST_CONFIG), "\n".join(head) + "\n" + best_config.to_yaml())
    return best


def best_config_of(config: Config, params: dict[str, Any]) -> Config:
    """The base config (its training.steps and tune section included) with `params` applied."""
    data = config.to_dict()
    overrides = [f"{path}={_yaml_value(value)}" for path, value in params.items()]
    return config_from_dict(apply_overrides(_copy(data), overrides, "best trial"), "best trial")


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
