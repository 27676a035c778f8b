"""The environment of a measurement: device, platform, versions, CPU model, cores, commit.

Every experiment writes it to ``env.json`` beside its rows; the CPU model is there because
speed rules measured on one CPU family must be checked on another.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import time

import flax
import jax
import jaxlib


#: CPU features that decide which kernels a native library (oneDNN) and XLA can use
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "avx512_fp16")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(cwd: str | None = None) -> str | None:
    cwd = cwd or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def env_info() -> dict:
    """Device, platform, versions, CPU model, core count and commit, for env.json."""
    dev = jax.devices()[0]
    return {
        "platform": jax.default_backend(),
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "torch": _version("torch"),  # the installed peer's version, without importing it
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_isa": [f for f in ISA_FLAGS if f in cpu_flags()],
        "lscpu": lscpu(),
        "hostname": platform.node(),
        "commit": git_commit(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_flags() -> list[str]:
    """The CPU's feature flags (``/proc/cpuinfo``), for the ISA a native kernel may use."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line.split(":", 1)[1].split()
    except OSError:
        pass
    return []


def lscpu() -> str | None:
    """``lscpu``'s output (every measurement records the CPU it ran on), or None."""
    try:
        return subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


__all__ = ["env_info", "cpu_model", "git_commit", "cpu_flags", "lscpu", "ISA_FLAGS"]
