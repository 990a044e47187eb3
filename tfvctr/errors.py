"""User-facing errors.

Anything a user can cause (a bad config, a missing column, an unreadable file) raises a
subclass of `TfvctrError`. The CLI prints such errors as one line and exits non-zero;
`--debug` shows the traceback. Everything else is a bug and keeps its traceback.
"""


class TfvctrError(Exception):
    """An error caused by the user's input, reported as one line by the CLI."""


class ConfigError(TfvctrError):
    """The YAML config is invalid: the message names the file, the key and the problem."""


class DataError(TfvctrError):
    """An input table, image or record file is missing or malformed."""
