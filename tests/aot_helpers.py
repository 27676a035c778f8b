"""Running tests/aot_checks.py in a subprocess, and the switch that makes a missing compiler fail."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRE = {"tpu": "JCONV_REQUIRE_LIBTPU", "cuda": "JCONV_REQUIRE_CUDA"}


def require_compiler(platform: str) -> None:
    """Skip without the compile-only compiler, or fail when the REQUIRE variable is 1 (CI)."""
    from jconv import aot

    missing = aot.compiler_available(platform)
    if missing:
        if os.environ.get(REQUIRE[platform]) == "1":
            pytest.fail(f"{missing} and {REQUIRE[platform]}=1")
        pytest.skip(missing)


def run_checks(platform: str) -> list[dict]:
    require_compiler(platform)
    env = dict(os.environ, JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "aot_checks.py"), platform],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
