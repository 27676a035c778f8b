"""Writing files so that a crash or a kill never leaves a torn one (one helper for all of jconv).

:func:`atomic_write` writes a temporary file in the same folder, flushes and fsyncs it, then
renames it over the target: a reader sees the old file or the new one, never half of either.
Append-only logs (``results.jsonl``) use :func:`append_line` instead: one ``write`` per line,
flushed and fsynced; a reader drops a torn last line (see :class:`jconv_experiments.bench.store.ResultStore`).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def atomic_write(path: str | os.PathLike, data: str | bytes) -> str:
    """Replace ``path`` with ``data`` atomically; returns the path."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any, **dump_kw) -> str:
    return atomic_write(path, json.dumps(obj, **{"indent": 1, **dump_kw}) + "\n")


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line (``line`` without its newline) with a single write, flushed and fsynced."""
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
