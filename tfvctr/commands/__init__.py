"""Subcommands of the `tfvctr` console script, one module each (see tfvctr/cli.py).

`tfvctr` imports every command module to build its parser, so a command module imports
TensorFlow, Keras or Beam only inside `run()`: at module level they would make `tfvctr
--help` and every command wait for all of them (on the 2-core build machine `import
tensorflow` alone takes 3-14 s, `apache_beam` 4 s; `tfvctr --help` takes under a second).
Cheap modules (argparse, `tfvctr.config`, `tfvctr.errors`, `beam_jobs.flags`) are imported
at the top.
"""

from __future__ import annotations

import argparse


def add_set_argument(parser: argparse.ArgumentParser, example: str = "model.architecture=dcn") -> None:
    """`--set KEY=VALUE` (repeatable): config overrides, applied by `load_config(path, overrides)`."""
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
        help=f"override a config value, e.g. --set {example} (repeatable)",
    )
