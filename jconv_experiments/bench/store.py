"""The result store: an append-only, crash-safe ``results.jsonl``.

Each row is written with one ``write``, then ``flush`` + ``fsync`` (:func:`jconv.files.append_line`);
opening the store drops a torn last line (a run killed mid-write), lines that do not parse and
duplicate keys, and rewrites the file atomically (:func:`jconv.files.atomic_write`), so a re-run
appends every missing row exactly once. Rows are keyed by ``key_fields``: for the comparison
:data:`KEY_FIELDS` ``(case, impl, pass, dtype, batch)``; other experiments give their own.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jconv.files import append_line, atomic_write

KEY_FIELDS = ("case", "impl", "pass", "dtype", "batch")


def row_key(row: dict, key_fields: Sequence[str] = KEY_FIELDS) -> tuple:
    return tuple(row[k] for k in key_fields)


def json_safe(v: Any) -> Any:
    """JSON without NaN/Infinity tokens: non-finite floats become the strings 'nan'/'inf'."""
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def as_float(v: Any) -> float | None:
    """A row's numeric field back as a float (None stays None; 'inf'/'nan' strings parsed)."""
    if v is None:
        return None
    return float(v)


class ResultStore:
    """``results.jsonl``: one JSON object per line, keyed by ``key_fields``.

    Opening it repairs what a crash can leave: a last line without its newline (a torn write)
    or any line that does not parse is dropped, and so is a second row with a key already seen.
    When something was dropped the file is rewritten atomically.
    """

    def __init__(self, path: str, key_fields: Sequence[str] = KEY_FIELDS):
        self.path = path
        self.key_fields = tuple(key_fields)
        self.dropped: list[str] = []
        self.rows: list[dict] = []
        self._keys: set[tuple] = set()
        self._load()

    def key(self, row: dict) -> tuple:
        return row_key(row, self.key_fields)

    def _load(self) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline; else a torn write
        if tail:
            self.dropped.append(tail.decode("utf-8", "replace"))
        for raw in lines:
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
                key = self.key(row)
            except (ValueError, KeyError, TypeError):
                self.dropped.append(raw.decode("utf-8", "replace"))
                continue
            if key in self._keys:
                self.dropped.append(raw.decode("utf-8", "replace"))
                continue
            self._keys.add(key)
            self.rows.append(row)
        if self.dropped:
            self._rewrite()

    def _rewrite(self) -> None:
        atomic_write(self.path, "".join(json.dumps(row) + "\n" for row in self.rows))

    def __contains__(self, key: tuple) -> bool:
        return tuple(key) in self._keys

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, row: dict) -> None:
        key = self.key(row)
        if key in self._keys:
            raise ValueError(f"ResultStore.append: row key {key} is already stored")
        line = json.dumps(json_safe(row))
        append_line(self.path, line)
        self._keys.add(key)
        self.rows.append(json.loads(line))

    def drop_where(self, pred: Callable[[dict], bool]) -> int:
        """Remove the rows for which ``pred`` holds (e.g. failed rows, to retry them)."""
        keep = [r for r in self.rows if not pred(r)]
        n = len(self.rows) - len(keep)
        if n:
            self.rows = keep
            self._keys = {self.key(r) for r in keep}
            self._rewrite()
        return n


def load_rows(path: str, key_fields: Sequence[str] = KEY_FIELDS) -> list[dict]:
    """The rows of a results.jsonl (repairing it as :class:`ResultStore` does)."""
    return list(ResultStore(path, key_fields).rows)


__all__ = ["ResultStore", "load_rows", "row_key", "json_safe", "as_float", "KEY_FIELDS"]
