"""Subcommands of the `tfvctr` console script, one module each (see tfvctr/cli.py)."""

from __future__ import annotations

import argparse


def add_set_argument(parser: argparse.ArgumentParser, example: str = "model.architecture=dcn") -> None:
    """`--set KEY=VALUE` (repeatable): config overrides, applied by `load_config(path, overrides)`."""
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
        help=f"override a config value, e.g. --set {example} (repeatable)",
    )
