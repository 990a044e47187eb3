"""Opens local and remote (gs://, s3://...) paths with one API.

Local paths use the standard library, so commands that only read a config or a table do
not pay TensorFlow's import time; remote URIs go through `tf.io.gfile` (tensorflow-io is
not used: its native libraries fail to load on TF 2.21, see README).
"""

from __future__ import annotations

import contextlib
import glob as _glob
import json
import math
import os
import shutil
import uuid
from typing import IO, Any, Iterator


def is_remote(path: str) -> bool:
    return "://" in path


def exists(path: str) -> bool:
    if is_remote(path):
        import tensorflow as tf

        return tf.io.gfile.exists(path)
    return os.path.exists(path)


def open(path: str, mode: str = "r") -> IO:  # noqa: A001 - mirrors builtins.open
    if is_remote(path):
        import tensorflow as tf

        return tf.io.gfile.GFile(path, mode)
    if "w" in mode or "a" in mode:
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
    import builtins

    return builtins.open(path, mode)


def read_json(path: str, error: type[Exception]) -> Any:
    """The JSON document at `path`; `error` (a one-line user error class) when it is not JSON."""
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise error(f"{path}: not valid JSON ({e})") from None


def read_json_if_exists(path: str) -> Any:
    """The JSON document at `path`, or None when there is no such file (an optional record of a stage)."""
    if not exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def json_finite(value: Any) -> Any:
    """`value` with every NaN or infinite float (nested in dicts and lists) replaced by None.

    JSON has no NaN or Infinity (`json.dumps` would write them anyway), and undefined
    figures (an AUC over one class) are NaN: written as null, every reader can parse them.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_finite(v) for v in value]
    return value


def glob(pattern: str) -> list[str]:
    if is_remote(pattern):
        import tensorflow as tf

        return sorted(tf.io.gfile.glob(pattern))
    return sorted(_glob.glob(pattern))


def makedirs(path: str) -> None:
    if is_remote(path):
        import tensorflow as tf

        tf.io.gfile.makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def join(*parts: str) -> str:
    if parts and is_remote(parts[0]):
        return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts))
    return os.path.join(*parts)


def dirname(path: str) -> str:
    """The folder of `path` (`gs://b/x/t.csv` → `gs://b/x`)."""
    if is_remote(path):
        return path.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(path.rstrip(os.sep) or path)


def basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] if is_remote(path) else os.path.basename(path.rstrip(os.sep))


def rmtree(path: str) -> None:
    """Deletes a folder and everything in it; a missing folder is fine."""
    if is_remote(path):
        import tensorflow as tf

        if tf.io.gfile.exists(path):
            tf.io.gfile.rmtree(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def check_writable(path: str, what: str = "output folder") -> None:
    """Refuses (one line) a local output path that cannot be written: a file where a
    folder is expected, or a read-only parent. Remote paths are checked by their writes."""
    from tfvctr.errors import DataError

    if is_remote(path):
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise DataError(f"{path}: is a file; expected an {what}")
    ancestor = os.path.abspath(path)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise DataError(f"{path}: cannot create the {what}: {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise DataError(f"{path}: cannot write the {what}: permission denied on {ancestor}")


def staging_path(path: str, kind: str = "tmp") -> str:
    """A unique sibling of `path` (`DIR/.NAME.tmp-<random>`): same filesystem, so a rename
    moves it into place; hidden, so a glob of the parent folder does not pick it up."""
    if not is_remote(path):
        path = os.path.abspath(path)  # Beam workers in other processes write there too
    return join(dirname(path), f".{basename(path)}.{kind}-{uuid.uuid4().hex[:12]}")


def write_atomic(path: str, data: str | bytes) -> None:
    """Writes a whole file so a reader sees the old content or the new, never half a file.

    Local: written beside `path` and renamed over it (a rename is atomic on POSIX).
    Remote: object stores publish an object only when its upload completes.
    """
    mode = "wb" if isinstance(data, bytes) else "w"
    if is_remote(path):
        with open(path, mode) as f:
            f.write(data)
        return
    tmp = staging_path(path)
    try:
        with open(tmp, mode) as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _replace_dir(staged: str, path: str) -> None:
    if is_remote(path):
        # Object stores have no folder rename: the old files go first, then the new ones
        # are moved file by file (not atomic, but only ever after the new output is complete).
        import tensorflow as tf

        rmtree(path)
        for folder, _, files in tf.io.gfile.walk(staged):
            rel = folder[len(staged):].strip("/")
            for name in files:
                target = join(path, rel, name) if rel else join(path, name)
                tf.io.gfile.makedirs(dirname(target))
                tf.io.gfile.rename(join(folder, name), target, overwrite=True)
        rmtree(staged)
        return
    old = None
    if os.path.exists(path):
        old = staging_path(path, "old")
        os.rename(path, old)
    os.rename(staged, path)
    if old:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Yields a fresh staging folder beside `path`; moves it into place when the block ends
    without an exception, else deletes it (debris included: Beam's `beam-temp-*` folders
    live inside their output folder). Either way `path` holds a complete output: the
    previous one or the new one.

    Example:
        with atomic_dir(out) as staged:
            write_everything_into(staged)
    """
    path = path.rstrip("/") if is_remote(path) else os.path.abspath(path)
    check_writable(path)
    staged = staging_path(path)
    makedirs(staged)
    try:
        yield staged
    except BaseException:
        rmtree(staged)
        raise
    _replace_dir(staged, path)
