"""Strict test environment: CPU, 4 forced host devices, rank promotion raises."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=4").strip()

import jax  # noqa: E402
import sys  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

sys.path.insert(0, os.path.dirname(__file__))  # tests/oracle.py as `oracle`


def pytest_generate_tests(metafunc):
    """A conformance class (tests/conformance.py) runs every test for each impl in its IMPLS."""
    impls = getattr(metafunc.cls, "IMPLS", None)
    if impls is not None and "impl" in metafunc.fixturenames:
        metafunc.parametrize("impl", impls)
