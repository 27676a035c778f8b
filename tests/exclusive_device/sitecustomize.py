"""A TPU's one-process rule, emulated on any JAX backend (tests only).

With ``JCONV_EMULATE_EXCLUSIVE_DEVICE=<lock file>`` set and this directory on ``PYTHONPATH``,
every Python process that initialises a JAX backend first takes an exclusive, non-blocking
``flock`` on the lock file and holds it until it exits, as libtpu does with the TPU. A second
process that initialises a backend while the first lives fails the way a second process fails
on a TPU VM::

    RuntimeError: Unable to initialize backend 'cpu': ABORTED: The TPU is already in use by
    process with pid 1234. Not attempting to load libtpu.so in this process. ...

(JAX adds the ``Unable to initialize backend`` prefix itself, as it does for libtpu's error.)
Importing jax is free; only backend initialisation takes the lock. Without the variable
nothing changes. tests/test_notebook.py runs the Colab notebook under it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

_VAR = "JCONV_EMULATE_EXCLUSIVE_DEVICE"
_MODULE = "jax._src.xla_bridge"
_held: list = []  # the open lock file of this process, once taken


def acquire(path: str) -> None:
    """Take the device for this process, or raise like libtpu when another process has it."""
    import fcntl

    if _held:
        return
    f = open(path, "a+")  # noqa: SIM115 - held for the life of the process (closed on exec)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise RuntimeError(f"ABORTED: The TPU is already in use by process with pid {pid}. Not attempting to "
                           f"load libtpu.so in this process. [emulated: {_VAR}={path}]") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    _held.append(f)


def _patch(module) -> None:
    original = module._init_backend

    def _init_backend(platform):
        acquire(os.environ[_VAR])
        return original(platform)

    module._init_backend = _init_backend


class _Finder(importlib.abc.MetaPathFinder):
    """Patches ``jax._src.xla_bridge._init_backend`` right after the module is executed."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _MODULE:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if os.environ.get(_VAR):
    sys.meta_path.insert(0, _Finder())
