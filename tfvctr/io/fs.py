"""Opens local and remote (gs://, s3://...) paths with one API.

Local paths use the standard library, so commands that only read a config or a table do
not pay TensorFlow's import time; remote URIs go through `tf.io.gfile` (tensorflow-io is
not used: its native libraries fail to load on TF 2.21, see README).
"""

from __future__ import annotations

import glob as _glob
import os
from typing import IO


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
