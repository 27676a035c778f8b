"""How many XLA programs each device test compiles: the basis of the tests' time estimate.

    JAX_PLATFORMS=cpu python -m jconv_experiments.colab count-compiles [--out=docs/perf/devices/test_compiles.jsonl]

Runs the device selection of the test suite (``pytest -m device tests``) on this machine's CPU
with this module as a pytest plugin, which counts JAX's ``backend_compile`` events per test.
One row per test: ``test`` (node id), ``compiles``, ``compile_s`` and ``wall_s`` (here),
``outcome``; ``<out>.env.json`` records the machine. On an accelerator a test compiles the
same programs, so :mod:`jconv_experiments.colab_plan` estimates its time as its compiles times
the target's compile seconds of a small program.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

_EVENT = "/jax/core/compile/backend_compile_duration"
_VAR = "JCONV_COUNT_COMPILES_OUT"
_state = {"n": 0, "s": 0.0}
_rows: list[dict] = []
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "docs", "perf", "devices", "test_compiles.jsonl")


def _listen(event, duration_secs, **_):
    if event == _EVENT:
        _state["n"] += 1
        _state["s"] += duration_secs


def pytest_configure(config):
    from jax import monitoring

    monitoring.register_event_duration_secs_listener(_listen)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _state.update(n=0, s=0.0)
    t0 = time.perf_counter()
    yield
    _rows.append({"test": item.nodeid, "compiles": _state["n"], "compile_s": round(_state["s"], 3),
                  "wall_s": round(time.perf_counter() - t0, 3)})


_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report):
    """passed, failed (any phase) or skipped, per test."""
    if report.failed:
        _outcomes[report.nodeid] = "failed"
    elif report.skipped:
        _outcomes.setdefault(report.nodeid, "skipped")
    elif report.when == "call":
        _outcomes.setdefault(report.nodeid, "passed")


def pytest_sessionfinish(session):
    out = os.environ.get(_VAR)
    if not out:
        return
    with open(out, "w") as f:
        for r in _rows:
            r["outcome"] = _outcomes.get(r["test"], "?")
            f.write(json.dumps(r) + "\n")


def measure(out: str | None = None) -> int:
    """Run the device selection on the CPU with the counter; write the rows and the machine."""
    from jconv.files import atomic_write_json
    from jconv_experiments.bench.env import env_info

    out = os.path.abspath(out or DEFAULT_OUT)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, JAX_PLATFORMS="cpu", **{_VAR: out})
    cmd = [sys.executable, "-m", "pytest", "-m", "device", "tests", "-q", "-p", "no:cacheprovider",
           "-p", "jconv_experiments.colab_compiles"]
    rc = subprocess.run(cmd, cwd=root, env=env).returncode
    info = env_info()
    info["command"] = " ".join(cmd[1:])
    atomic_write_json(out[:-len(".jsonl")] + ".env.json", info, indent=2)
    with open(out) as f:
        rows = [json.loads(line) for line in f]
    print(f"count-compiles: {len(rows)} tests, {sum(r['compiles'] for r in rows)} compiles -> {out}")
    return rc


__all__ = ["measure", "DEFAULT_OUT"]
