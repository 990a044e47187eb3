"""User-facing errors.

Anything a user can cause (a bad config, a missing column, an unreadable file) raises a
subclass of `TfvctrError`. The CLI prints such errors as one line and exits non-zero;
`--debug` shows the traceback. Everything else is a bug and keeps its traceback.
"""

import re


class TfvctrError(Exception):
    """An error caused by the user's input, reported as one line by the CLI."""


class ConfigError(TfvctrError):
    """The YAML config is invalid: the message names the file, the key and the problem."""


class DataError(TfvctrError):
    """An input table, image or record file is missing or malformed."""

# "<_io.BytesIO object at 0x7f3a...>", as Pillow and default reprs print objects.
_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def readable(text: str) -> str:
    """The first line of `text`, without object reprs (`<_io.BytesIO object at 0x7f..>`).

    Dead-letter reasons and error lines are read by people; an address means nothing to
    them and makes two identical failures look different.
    """
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return _REPR.sub("", lines[0] if lines else "").strip()


def readable_failure(exc_type: object, exc_repr: str) -> str:
    """`ValueError: message` from Beam's `(type, repr(exception), traceback)` failure triple."""
    name = getattr(exc_type, "__name__", None) or str(exc_type)
    text = str(exc_repr)
    # repr(ValueError('x')) is "ValueError('x')": keep the message only.
    if text.startswith(f"{name}(") and text.endswith(")"):
        inner = text[len(name) + 1 : -1]
        if len(inner) >= 2 and inner[0] == inner[-1] and inner[0] in "'\"":
            inner = inner[1:-1]
        text = inner
    return f"{name}: {readable(text) or '(no message)'}"
