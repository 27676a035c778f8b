"""Running tests/aot_checks.py in a subprocess, and the switch that makes a missing compiler fail."""

import json
import os
import subprocess
import sys
import time

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


def _env() -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XLA_FLAGS", None)
    return env


#: the directory where start_early() puts each platform's output (set for the xdist workers too)
EARLY_DIR = "JCONV_AOT_EARLY_DIR"
TIMEOUT_S = 1800


def start_early(directory: str) -> list[subprocess.Popen]:
    """Start both platforms' checks now, in the background (``make test`` does, from the pytest
    controller before the workers start), so their compiles overlap the rest of the suite
    instead of running last; ``run_checks`` then waits for the result files."""
    from jconv import aot

    procs = []
    for platform in REQUIRE:
        if aot.compiler_available(platform):
            continue  # run_checks skips or fails with the reason
        out = os.path.join(directory, platform)
        cmd = (f'"{sys.executable}" "{os.path.join(ROOT, "tests", "aot_checks.py")}" {platform} '
               f'> "{out}.jsonl" 2> "{out}.err"; echo $? > "{out}.rc.tmp" && mv "{out}.rc.tmp" "{out}.rc"')
        # its own process group: pytest's exit stops the shell and the checks under it together
        procs.append(subprocess.Popen(["sh", "-c", cmd], env=_env(), cwd=ROOT, start_new_session=True))
    os.environ[EARLY_DIR] = directory
    return procs


def _read(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def run_checks(platform: str) -> list[dict]:
    require_compiler(platform)
    early = os.environ.get(EARLY_DIR)
    if early and os.path.exists(os.path.join(early, f"{platform}.err")):
        base = os.path.join(early, platform)
        deadline = time.monotonic() + TIMEOUT_S
        while not os.path.exists(base + ".rc"):
            assert time.monotonic() < deadline, f"aot_checks.py {platform} did not finish in {TIMEOUT_S} s"
            time.sleep(2)
        with open(base + ".rc") as f:
            rc = int(f.read().strip() or 1)
        with open(base + ".err") as f:
            err = f.read()
        assert rc == 0, err[-4000:]
        with open(base + ".jsonl") as f:
            return _read(f.read())
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "aot_checks.py"), platform],
                          capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return _read(proc.stdout)
