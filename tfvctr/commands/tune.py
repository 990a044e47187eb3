"""`tfvctr tune --config C --data D --out DIR [--trials N] [--timeout-minutes M]`: hyperparameter search."""

from __future__ import annotations

import argparse

from tfvctr.commands import add_command, add_set_argument
from tfvctr.config import load_config
from tfvctr.errors import TfvctrError
from tfvctr.tuning import tune  # cheap: Optuna is imported when a study runs


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "tune", run, "search the hyperparameter ranges of the config's tune section (Optuna; resumable)",
        "Search the ranges declared under `tune.params` of CONFIG with Optuna: each trial trains "
        "the config with the trial's values for tune.steps_per_trial steps into DIR/trials/NNNN/ and is scored "
        "by the validation metric (tune.metric, default training.selection_metric) of its best step on DATA/valid. "
        "Trials run one after another. The study is kept in DIR/study.db: rerunning the same command continues "
        "it (finished trials are kept; an interrupted trial is retried). Prints a table of trials after each "
        "trial and writes DIR/trials.csv and DIR/best_config.yaml (a full config for `tfvctr train`). "
        "See docs/tuning.md.",
    )
    p.add_argument("--config", required=True, help="YAML config with a `tune:` section")
    p.add_argument("--data", required=True, help="output folder of `tfvctr preprocess` (with a valid split)")
    p.add_argument("--out", required=True, help="local folder for the study, the trials and the best config")
    p.add_argument("--trials", type=int, default=None, help="finished trials the study should hold (default: tune.trials)")
    p.add_argument(
        "--timeout-minutes", type=float, default=None,
        help="start no new trial after this many minutes of this run (default: tune.timeout_minutes)",
    )
    add_set_argument(p, example="tune.steps_per_trial=300")


def run(args: argparse.Namespace) -> int:
    # The config first: loading it runs no TensorFlow op, and a bad search space is then
    # reported before TensorFlow's import time.
    config = load_config(args.config, args.overrides)
    # The strategy must exist before any TensorFlow op (as in `tfvctr train`).
    from tfvctr.training.strategy import _cluster_size, _tf_config, make_strategy

    # Every worker would run its own study loop against one SQLite file; trials are short
    # and sequential by design (docs/tuning.md), so tune runs on one host. Checked from
    # TF_CONFIG before the strategy: a multi-worker strategy would first wait for its peers
    # (training.peer_timeout_seconds) only to be refused.
    if _cluster_size(_tf_config()) > 1:
        raise TfvctrError("tune runs on one host: TF_CONFIG names several workers; unset it (each trial uses this host's devices)")
    strategy = make_strategy()
    result = tune(
        config, args.data, args.out, trials=args.trials, timeout_minutes=args.timeout_minutes, strategy=strategy,
    )
    return 0 if result["best"] is not None else 1
