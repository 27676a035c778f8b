"""Compile-only targets: the real TPU and GPU compilers, without a TPU or a GPU.

* TPU: libtpu's compile-only topologies (``pip install "jconv[tpu]"``): ``v4:2x2x1``,
  ``v5e:2x2``, ``v5p:2x2x1``, ``v6e:2x2``; Mosaic compiles the Pallas kernels and rejects what
  does not fit VMEM; XLA plans the program's HBM.
* CUDA: the CUDA PJRT plugin compiles deviceless for a GPU described by a target config
  (``pip install "jconv[cuda]"``; the configs ship in ``jconv/gpu_targets/``): XLA's GPU
  pipeline, Triton, PTX and ptxas run for that GPU and reject what does not fit (shared
  memory, registers).

Both work with ``JAX_PLATFORMS=cpu``. :func:`compile_for` lowers and compiles a function for a
:class:`~jconv.targets.Target` on ShapeDtypeStructs placed on one device of its topology, and
returns what the compiler said: success or its error, compile seconds, Pallas kernels and XLA
convolutions in the program, ``cost_analysis()`` and ``memory_analysis()``. The compile matrix
experiment (``configs/compile.py``, :mod:`jconv_experiments.programs`) and the tests use it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import re
import time
from collections.abc import Callable

import jax
import numpy as np

from jconv import targets
from jconv.timing import memory_stats
from jconv.impls.pallas.tiling import KernelFitError
from jconv.targets import Target

#: custom-call targets that are Pallas kernels, per platform
KERNEL_MARKERS = {"tpu": ('custom_call_target="tpu_custom_call"',),
                  "cuda": ('custom_call_target="__gpu$xla.gpu.triton"',)}
#: what an XLA convolution looks like in compiled HLO (TPU: the op; GPU: cuDNN calls or the op)
_CONV_PATTERN = re.compile(r"(?:=\s*\S+\s+convolution\()|(?:custom_call_target=\"__cudnn\$conv)")


def compiler_available(platform: str) -> str | None:
    """None when the compile-only compiler for ``platform`` is installed, else how to get it."""
    if platform == "tpu":
        if importlib.util.find_spec("libtpu") is None:
            return 'libtpu is not installed: pip install "jconv[tpu]" (jax[tpu] at jax\'s version)'
        return None
    if platform == "cuda":
        if importlib.util.find_spec("jax_plugins.xla_cuda12") is None and importlib.util.find_spec(
                "jax_cuda12_plugin") is None:
            return 'the CUDA plugin is not installed: pip install "jconv[cuda]" (jax[cuda12] at jax\'s version)'
        return None
    return f"no compile-only compiler for platform {platform!r}"


@functools.lru_cache(maxsize=None)
def topology(target: Target):
    """The compile-only topology description of ``target`` (cached per process)."""
    from jax.experimental import topologies

    if target.platform == "tpu":
        if not target.topology:
            raise ValueError(f"aot.topology: target (={target.name}) has no libtpu topology")
        return topologies.get_topology_desc(target.topology, platform="tpu")
    if target.platform == "cuda":
        if target.config_path is None:
            raise ValueError(f"aot.topology: target (={target.name}) has no GPU target config")
        with open(target.config_path) as f:
            return topologies.get_topology_desc("", "cuda", target_config=f.read(), topology="1x1x1")
    raise ValueError(f"aot.topology: target (={target.name}) is not a TPU or CUDA target")


def one_device_sharding(target: Target):
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    topo = topology(target)
    return NamedSharding(Mesh(np.array(topo.devices[:1]), ("d",)), PartitionSpec())


def shape_struct(shape, dtype, target: Target) -> jax.ShapeDtypeStruct:
    """A ShapeDtypeStruct on one device of ``target``'s topology."""
    return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=one_device_sharding(target))


def count_kernels(hlo: str, platform: str) -> int:
    return sum(hlo.count(m) for m in KERNEL_MARKERS.get(platform, ()))


def count_convolutions(hlo: str) -> int:
    return len(_CONV_PATTERN.findall(hlo))


def _cost(compiled) -> dict:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return {}
    if isinstance(cost, list):
        cost = cost[0] if cost else {}
    if not cost:
        return {}
    out = {}
    for key, name in (("flops", "flops"), ("bytes accessed", "bytes_accessed"),
                      ("optimal_seconds", "optimal_seconds"), ("transcendentals", "transcendentals")):
        if key in cost:
            out[name] = float(cost[key])
    return out


def first_line(e: BaseException, limit: int = 600) -> str:
    """``Type: message`` on one line, the message's first informative line (compiler errors
    often start with a blank or a generic line)."""
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    msg = lines[0] if lines else ""
    for ln in lines:
        if any(k in ln for k in ("RESOURCE_EXHAUSTED", "exceed", "limit", "cannot", "Mosaic", "Triton")):
            msg = ln
            break
    return f"{type(e).__name__}: {msg}"[:limit]


def compile_for(target: Target, fn: Callable, *args: jax.ShapeDtypeStruct) -> dict:
    """Lower and compile ``fn(*args)`` for ``target`` (args from :func:`shape_struct`).

    Returns ``compiled`` (bool), ``error`` (None or the first informative line of the
    compiler's or jconv's error), ``error_kind`` ("jconv" when jconv refused at trace time with
    a clear error, "compiler" otherwise), ``compile_s``, ``pallas_kernels``, ``xla_convolutions``,
    and the compiler's ``cost_analysis()`` / ``memory_analysis()`` figures where present.
    """
    t0 = time.perf_counter()
    row: dict = {"compiled": False, "error": None, "error_kind": None}
    try:
        lowered = jax.jit(fn).lower(*args)
        compiled = lowered.compile()
    except (KernelFitError, NotImplementedError, ValueError, TypeError) as e:
        if isinstance(e, KernelFitError) or str(e).startswith("conv2d:"):
            row.update(error=first_line(e), error_kind="jconv", compile_s=time.perf_counter() - t0)
            return row
        row.update(error=first_line(e), error_kind="compiler", compile_s=time.perf_counter() - t0)
        return row
    except Exception as e:  # noqa: BLE001 - the compiler's error is the result
        row.update(error=first_line(e), error_kind="compiler", compile_s=time.perf_counter() - t0)
        return row
    row["compile_s"] = time.perf_counter() - t0
    hlo = compiled.as_text() or ""
    row.update(compiled=True, pallas_kernels=count_kernels(hlo, target.platform),
               xla_convolutions=count_convolutions(hlo))
    row.update(_cost(compiled))
    row.update(memory_stats(compiled))
    return row


@functools.lru_cache(maxsize=None)
def _probe_topology(base_name: str):
    from jax.experimental import topologies

    with open(targets.get(base_name).config_path) as f:
        text = f.read()
    text = re.sub(r"shared_memory_per_block_optin:\s*\d+", f"shared_memory_per_block_optin: {PROBE_SMEM}", text)
    return topologies.get_topology_desc("", "cuda", target_config=text, topology="1x1x1")


#: the opt-in shared memory of the probe GPU: every kernel exceeds it, so ptxas reports its need
PROBE_SMEM = 1024


def probe_smem(fn: Callable, *shapes: tuple, base: str = "h100") -> int | str:
    """Shared memory bytes the kernel(s) of ``fn`` request on ``base``'s GPU: compiled for a copy
    of its target config whose opt-in shared memory is 1 KiB, the compiler's refusal names the
    bytes requested (0: nothing needed more; a string: another error). ``shapes``: (shape,
    dtype) pairs. Used to fit :func:`jconv.impls.pallas.tiling.smem_bytes`."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    topo = _probe_topology(base)
    sharding = NamedSharding(Mesh(np.array(topo.devices[:1]), ("d",)), PartitionSpec())
    args = [jax.ShapeDtypeStruct(tuple(s), d, sharding=sharding) for s, d in shapes]
    try:
        jax.jit(fn).lower(*args).compile()
    except Exception as e:  # noqa: BLE001 - the refusal is the measurement
        m = re.search(r"requested (\d+)", str(e))
        return int(m.group(1)) if m else first_line(e)
    return 0


__all__ = ["compile_for", "probe_smem", "compiler_available", "topology", "shape_struct", "one_device_sharding",
           "count_kernels", "count_convolutions", "first_line", "KERNEL_MARKERS"]
