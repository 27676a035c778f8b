"""Strict test environment: CPU, 4 forced host devices, rank promotion raises.

On an accelerator (the notebook sets ``JAX_PLATFORMS=tpu,cpu`` or ``cuda,cpu`` and runs
``pytest -m device``): the files in DEVICE_FILES are the device selection; a test marked
``cpu_only`` (it asserts the CPU's ``auto`` choices, or runs interpret mode) is skipped there, and
one marked ``multi_device`` is skipped with fewer than 4 devices (a v5e-1 has one chip).
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=4").strip()

import jax  # noqa: E402
import sys  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

sys.path.insert(0, os.path.dirname(__file__))  # tests/oracle.py as `oracle`


_EARLY = []


def pytest_configure(config):
    """``JCONV_AOT_EARLY=1`` (``make test``): the pytest controller starts the compile-only
    checks of tests/aot_checks.py at once, in the background (tests/aot_helpers.py)."""
    if os.environ.get("JCONV_AOT_EARLY") == "1" and not hasattr(config, "workerinput"):
        import tempfile

        from aot_helpers import start_early

        _EARLY.extend(start_early(tempfile.mkdtemp(prefix="jconv_aot_")))


def pytest_unconfigure(config):
    import signal

    for proc in _EARLY:
        if proc.poll() is None:  # the shell and the aot_checks.py under it (its own session)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


import pytest  # noqa: E402


@pytest.fixture
def lax_rules():
    """auto planned by the lax/XLA rules alone (the oneDNN plugin's rule excluded), for tests
    that assert those rules' choices whether or not the plugin is installed."""
    from jconv import select

    with select.auto_excluded("onednn"):
        yield


def pytest_generate_tests(metafunc):
    """A conformance class (tests/conformance.py) runs every test for each impl in its IMPLS: the
    backend's own choice (``IMPLS[0]``) every test in ``make test``, each forced algorithm
    (``"lax:taps"``...) the tests named in its ``ALGORITHMS_QUICK`` in ``make test`` and the
    others in ``make test-all``."""
    impls = getattr(metafunc.cls, "IMPLS", None)
    if impls is not None and "impl" in metafunc.fixturenames:
        from grids import forced_algorithm, slow_unless

        quick = metafunc.function.__name__ in getattr(metafunc.cls, "ALGORITHMS_QUICK", ())
        metafunc.parametrize("impl", slow_unless(impls, lambda impl: quick or not forced_algorithm(impl)))


#: the device selection: correctness of every impl on the device's own compilers (Pallas compiled
#: by Mosaic or Triton), the arguments and errors, transformations and the Flax modules
DEVICE_FILES = {"test_geometry.py", "test_errors.py", "test_conv.py", "test_transforms.py", "test_backend_xla.py",
                "test_backend_auto.py",
                "test_backend_lax.py", "test_backend_pallas.py", "test_pallas.py", "test_linen.py", "test_nnx.py",
                "test_models.py"}


def pytest_collection_modifyitems(config, items):
    import pytest

    platform = jax.default_backend()
    devices = len(jax.devices())
    for item in items:
        cpu_only = item.get_closest_marker("cpu_only") is not None
        if os.path.basename(str(item.fspath)) in DEVICE_FILES and not cpu_only:
            item.add_marker(pytest.mark.device)
        if cpu_only and platform != "cpu":
            item.add_marker(pytest.mark.skip(reason=f"asserts CPU behaviour; this run is on {platform}"))
        if item.get_closest_marker("multi_device") is not None and devices < 4:
            item.add_marker(pytest.mark.skip(reason=f"needs 4 devices, this run has {devices}"))
