"""The `tfvctr` console script: one subcommand per stage.

Each subcommand lives in `tfvctr/commands/<name>.py` with `add_parser(subparsers)` (which
registers its flags and `--help`) and `run(args) -> int`. User errors (`TfvctrError`)
print one line and exit 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from tfvctr.errors import TfvctrError

# Order is the order of the pipeline, and of `tfvctr --help`.
COMMANDS = ["demo_data", "validate_config", "preprocess", "pretrain", "train", "tune", "evaluate", "embed", "export", "serve"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfvctr",
        description="Visual-aware CTR prediction (DeepCTR 2016, CSCNN KDD 2020): data, training, evaluation.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"tfvctr.commands.{name}")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug may come before or after the subcommand.
    debug = "--debug" in argv
    if debug:
        argv = [a for a in argv if a != "--debug"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter hides our output
    parser = build_parser()
    # Beam commands (preprocess, embed) pass flags they do not own on to PipelineOptions.
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "beam_passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.beam_args = extra
    args.debug = debug
    try:
        return int(args.func(args) or 0)
    except TfvctrError as e:
        if debug:
            raise
        print(f"tfvctr {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tfvctr {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
