"""Subcommands of the `tfvctr` console script, one module each (see tfvctr/cli.py).

`tfvctr` imports every command module to build its parser, so a command module imports
TensorFlow, Keras or Beam only inside `run()`: at module level they would make `tfvctr
--help` and every command wait for all of them (on the 2-core build machine `import
tensorflow` alone takes 3-14 s, `apache_beam` 4 s). Cheap modules (argparse,
`tfvctr.errors`, `beam_jobs.flags`, and `tfvctr.config` with PyYAML, about 0.1 s) are
imported at the top.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from beam_jobs.flags import add_runner_help
from tfvctr.config import load_config


def add_set_argument(parser: argparse.ArgumentParser, example: str = "model.architecture=dcn") -> None:
    """`--set KEY=VALUE` (repeatable): config overrides, applied by `load_config(path, overrides)`."""
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
        help=f"override a config value, e.g. --set {example} (repeatable)",
    )


def add_command(
    sub: argparse._SubParsersAction, name: str, run: Callable[[argparse.Namespace], int], help: str, description: str,
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """Registers `tfvctr NAME`: `help` is its line in `tfvctr --help`, `description` its own
    `--help`, and `run(args)` runs it (its return value is the exit status)."""
    parser = sub.add_parser(name, help=help, description=description, **kwargs)
    parser.set_defaults(func=run)
    return parser


def add_beam_command(
    sub: argparse._SubParsersAction, name: str, run: Callable[[argparse.Namespace], int], help: str, description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
) -> argparse.ArgumentParser:
    """A Beam job's command: its own flags (`beam_jobs.flags`); every other flag goes on to
    Beam's `PipelineOptions` (`args.beam_args`, see tfvctr/cli.py)."""
    # No abbreviations: a prefix of one of Beam's flags must not be taken for one of ours.
    parser = add_command(sub, name, run, help, description, allow_abbrev=False)
    add_arguments(parser)
    add_runner_help(parser)
    parser.set_defaults(beam_passthrough=True)
    return parser


def add_training_arguments(parser: argparse.ArgumentParser, model_dir_help: str, set_example: str) -> None:
    """`--config`, `--data`, `--model-dir`, `--steps` and `--set` of `train` and `pretrain`."""
    parser.add_argument("--config", required=True, help="YAML config")
    parser.add_argument("--data", required=True, help="output folder of `tfvctr preprocess`")
    parser.add_argument("--model-dir", required=True, help=model_dir_help)
    parser.add_argument("--steps", type=int, default=None, help="total steps (default: training.steps)")
    add_set_argument(parser, set_example)


def run_training(args: argparse.Namespace, stage: str) -> dict:
    """Runs `tfvctr.training.trainer.<stage>` (`train` or `pretrain`) as `args` say."""
    # The strategy must exist before any other TensorFlow op (MultiWorkerMirroredStrategy).
    from tfvctr.training.strategy import make_strategy

    # The config first (no TensorFlow op): the strategy waits for peers training.peer_timeout_seconds.
    config = load_config(args.config, args.overrides)
    strategy = make_strategy(config.training.peer_timeout_seconds, command=f"tfvctr {stage}")
    from tfvctr.training import trainer

    return getattr(trainer, stage)(config, args.data, args.model_dir, steps=args.steps, strategy=strategy)
