"""The tune cache: what :func:`jconv.tune` measured, read by ``impl="auto"``.

A JSON file keyed by platform, device kind and the execute spec (shapes, stride, padding,
groups, dtypes, precision, the caller's layout: :meth:`jconv.spec.ExecSpec.key`, an explicit,
versioned key); an entry names the impl that won. Only an exact match is used. A file of another
format (an older jconv's) is ignored with a warning, never misread. This module only loads, looks up and stores entries; the measuring is :mod:`jconv.tuning`,
which sits above the plan. Writes replace the file atomically (:mod:`jconv.files`), merged with
what another process may have written meanwhile.

    JCONV_TUNE_CACHE=tune.json python train.py     # or jconv.use_tune_cache("tune.json")
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

from jconv.files import atomic_write_json
from jconv.targets import planning_platform
from jconv.spec import KEY_VERSION, ExecSpec

log = logging.getLogger("jconv.tune_cache")

ENV_VAR = "JCONV_TUNE_CACHE"
#: the file format follows the spec key's version (format 1 keyed on ``repr`` of the spec)
FORMAT = KEY_VERSION

_lock = threading.Lock()
_state: dict[str, Any] = {"path": None, "entries": None, "env_read": False}


def cache_key(spec: ExecSpec, platform: str, device_kind: str) -> str:
    """The cache key of an execute spec on a device (as :func:`jconv.select.plan` sees it)."""
    return f"{platform}|{device_kind}|{spec.key()}"


def read(path: str) -> dict:
    """The entries of the cache file at ``path`` ({} when it does not exist)."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"tune cache {path!r} cannot be read as JSON: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict) or not isinstance(
            data.get("format"), int):
        raise ValueError(f"tune cache {path!r} is not a jconv tune cache (format {FORMAT})")
    if data["format"] != FORMAT:
        log.warning("tune cache %r has format %s, this jconv reads format %s: its %d entries are ignored "
                    "(tune again to rebuild it)", path, data["format"], FORMAT, len(data["entries"]))
        return {}
    return data["entries"]


def use_tune_cache(path: str | os.PathLike | None) -> None:
    """Make ``auto`` read the tune cache at ``path`` (None: stop using any cache)."""
    with _lock:
        _state["env_read"] = True  # an explicit choice overrides the environment variable
        if path is None:
            _state["path"], _state["entries"] = None, None
            return
        path = os.fspath(path)
        _state["path"], _state["entries"] = path, read(path)


def _load_env_locked() -> None:
    """Once per process (unless use_tune_cache chose): the cache named by $JCONV_TUNE_CACHE."""
    if not _state["env_read"]:
        _state["env_read"] = True
        path = os.environ.get(ENV_VAR)
        if path:
            _state["path"], _state["entries"] = path, read(path)


def _active() -> dict | None:
    with _lock:
        _load_env_locked()
        return _state["entries"]


def device_key(spec: ExecSpec, platform: str | None = None) -> str | None:
    """:func:`cache_key` on this process's first device of ``platform`` (default: JAX's default
    backend); None when the process has no device of that platform."""
    import jax

    platform = planning_platform(platform)
    try:
        kind = jax.devices(platform)[0].device_kind
    except RuntimeError:
        return None
    return cache_key(spec, platform, kind)


def lookup(spec: ExecSpec, platform: str | None = None) -> dict | None:
    """The cache entry for this execute spec on this device, or None."""
    entries = _active()
    if not entries:
        return None
    key = device_key(spec, platform)
    return None if key is None else entries.get(key)


def store(key: str, entry: dict, path: str | None) -> str | None:
    """Add ``entry`` under ``key`` (to the cache at ``path``, or the active one); returns the
    file written, or None when the cache lives in this process only."""
    with _lock:
        _load_env_locked()  # a tune without cache= writes to the environment's cache file
        if path is not None and path != _state["path"]:
            _state["path"], _state["entries"] = path, read(path)
        if _state["entries"] is None:
            _state["entries"] = {}
        path = _state["path"]
        if path is not None:  # merge with what another process may have written meanwhile
            merged = read(path)
            merged.update(_state["entries"])
            _state["entries"] = merged
        _state["entries"][key] = entry
        if path is not None:
            atomic_write_json(path, {"format": FORMAT, "entries": _state["entries"]}, sort_keys=True)
        return path


def format_times(times_ms: dict[str, float], limit: int | None = None) -> str:
    """``"a 1.00 ms, b 2.00 ms"``, fastest first (the first ``limit`` only, if given)."""
    ranked = sorted(times_ms.items(), key=lambda kv: kv[1])[:limit]
    return ", ".join(f"{k} {v:.2f} ms" for k, v in ranked)


__all__ = ["cache_key", "device_key", "lookup", "store", "read", "use_tune_cache", "format_times", "ENV_VAR"]
