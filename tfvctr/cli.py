"""The `tfvctr` console script: one subcommand per stage.

Each subcommand lives in `tfvctr/commands/<name>.py` with `add_parser(subparsers)` (which
registers its flags and `--help`) and `run(args) -> int`. User errors (`TfvctrError`)
print one line and exit 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from tfvctr.errors import TfvctrError

# Order is the order of the pipeline, and of `tfvctr --help`.
COMMANDS = ["demo_data", "validate_config", "init_config", "preprocess", "pretrain", "train", "tune", "evaluate", "saliency", "embed", "export", "serve", "daily", "reproduce"]


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
    except Exception as e:
        line = environment_error(e)
        if line is None or debug:
            raise
        print(f"tfvctr {args.command}: error: {line} (--debug shows the traceback)", file=sys.stderr)
        return 2


# The machine, not the code: no space, no permission, a path that is not there. Reported as
# one line like a user error; anything else is a bug and keeps its traceback.
_ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENOENT,
                       errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOTEMPTY}
_TF_ENVIRONMENT_ERRORS = {"PermissionDeniedError", "NotFoundError", "ResourceExhaustedError", "AlreadyExistsError",
                          "FailedPreconditionError"}


def environment_error(e: BaseException) -> str | None:
    """One line for an error of the environment (an `OSError` such as permission denied or
    disk full, or TensorFlow's file-system errors), else None."""
    from tfvctr.errors import readable

    if isinstance(e, OSError) and e.errno in _ENVIRONMENT_ERRNOS:
        where = e.filename if e.filename is not None else ""
        return f"{where}: {e.strerror}" if where else (e.strerror or readable(str(e)))
    if type(e).__name__ in _TF_ENVIRONMENT_ERRORS and type(e).__module__.startswith("tensorflow"):
        return readable(getattr(e, "message", None) or str(e))
    return None


if __name__ == "__main__":
    sys.exit(main())
