"""Accelerator targets: what a kernel is sized for, per GPU model and TPU generation.

A :class:`Target` holds the limits a Pallas kernel must fit: shared memory per block and
registers (GPU), VMEM per TensorCore (TPU), device memory (both), and for GPUs the compute
capability (Pallas' Triton path needs 8.0 or newer). Tile sizes (:mod:`jconv.impls.pallas.tiling`)
are derived from these numbers, and a layer that cannot fit raises a clear error naming the
target and the limit.

Where the numbers come from:

* GPUs: the ``GpuTargetConfigProto`` text files shipped in ``jconv/gpu_targets/`` (A100 80 GB
  and 40 GB, H100, L4, T4). The same files drive XLA's deviceless GPU compiler
  (:mod:`jconv.aot`), so the limits the tiles are sized for are the limits the compiler checks.
* TPUs: JAX's own table, ``pltpu.get_tpu_info_for_chip`` (VMEM and HBM per TensorCore).

Which target a trace is for (:func:`resolve`): a :func:`use` context, else the device kind of
the abstract mesh the input is sharded over (compile-only targets from
``jax.experimental.topologies`` carry it), else the first local device of that platform, else a
conservative default: an unknown GPU is sized for the smallest shared memory of the supported
GPUs here (L4's 99 KiB), an unknown TPU for the smallest VMEM (v4's 16 MiB).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import os
import re

_GPU_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_targets")

#: Pallas' Triton lowering refuses GPUs below this compute capability ("Triton support is only
#: enabled for Ampere GPUs (compute capability 8.0) and up"; checked with the T4 target).
TRITON_MIN_CAPABILITY = (8, 0)


@dataclasses.dataclass(frozen=True)
class Target:
    """One accelerator model. Sizes in bytes; ``None`` where a field does not apply."""

    name: str                                   # "h100", "v5e", ...
    platform: str                               # "cuda" | "tpu" | "cpu"
    device_kind: str                            # as ``jax.Device.device_kind`` reports it
    memory_bytes: int | None = None             # device memory (HBM) of one device
    # GPU
    compute_capability: tuple[int, int] | None = None
    smem_per_block: int | None = None           # opt-in maximum of shared memory per block
    registers_per_block: int | None = None
    sm_count: int | None = None
    # TPU
    vmem_bytes: int | None = None               # VMEM per TensorCore
    generation: int | None = None
    topology: str | None = None                 # libtpu compile-only topology name
    known: bool = True                          # False: a conservative stand-in for an unknown model

    @property
    def triton_ok(self) -> bool:
        cc = self.compute_capability
        return cc is None or tuple(cc) >= TRITON_MIN_CAPABILITY

    @property
    def config_path(self) -> str | None:
        """The GpuTargetConfigProto file of a shipped GPU target (None otherwise)."""
        path = os.path.join(_GPU_DIR, f"{self.name}.txtpb")
        return path if self.platform == "cuda" and os.path.exists(path) else None

    def describe(self) -> str:
        if self.platform == "cuda":
            cc = "?" if self.compute_capability is None else "%d.%d" % self.compute_capability
            return (f"{self.device_kind} (sm_{cc.replace('.', '')}, {self.smem_per_block // 1024} KiB shared memory "
                    f"per block{'' if self.known else '; unknown model, conservative limits'})")
        if self.platform == "tpu":
            return (f"{self.device_kind} ({self.vmem_bytes // 2**20} MiB VMEM per core"
                    f"{'' if self.known else '; unknown model, conservative limits'})")
        return self.device_kind


# --------------------------------------------------------------------------------------------
# GPUs: read from the shipped target configs
# --------------------------------------------------------------------------------------------


def _field(text: str, name: str, cast=int):
    m = re.search(rf"\b{name}:\s*([0-9.]+)", text)
    return None if m is None else cast(m.group(1))


def gpu_from_config(name: str, text: str) -> Target:
    """A :class:`Target` from a ``GpuTargetConfigProto`` in text form."""
    cc = re.search(r"cuda_compute_capability\s*\{([^}]*)\}", text)
    major = minor = 0
    if cc:
        major = _field(cc.group(1), "major") or 0
        minor = _field(cc.group(1), "minor") or 0
    kind = re.search(r'device_description_str:\s*"([^"]*)"', text)
    return Target(
        name=name, platform="cuda", device_kind=kind.group(1) if kind else name,
        memory_bytes=_field(text, "device_memory_size"), compute_capability=(major, minor),
        smem_per_block=_field(text, "shared_memory_per_block_optin"),
        registers_per_block=_field(text, "registers_per_block_limit"),
        sm_count=_field(text, "core_count"),
    )


@functools.lru_cache(maxsize=None)
def gpus() -> dict[str, Target]:
    """The shipped GPU targets by name (``jconv/gpu_targets/<name>.txtpb``)."""
    out = {}
    for fname in sorted(os.listdir(_GPU_DIR)):
        if fname.endswith(".txtpb"):
            with open(os.path.join(_GPU_DIR, fname)) as f:
                out[fname[:-6]] = gpu_from_config(fname[:-6], f.read())
    return out


# device kinds of other models that share a shipped target's per-SM limits (first match wins;
# an A100 whose kind does not say 80 GB gets the 40 GB target: a memory figure too large would
# size batch chunks the device cannot hold)
_GPU_ALIASES = (
    (r"\b(A100|A800)\b.*\b80\s?GB\b", "a100"),
    (r"\bA100\b|\bA800\b|\bA30\b", "a100_40gb"),
    (r"\bH100\b|\bH200\b|\bH800\b|\bGH200\b", "h100"),
    (r"\bL4\b", "l4"),
    (r"\bT4\b", "t4"),
)


# --------------------------------------------------------------------------------------------
# TPUs: JAX's table of chip facts
# --------------------------------------------------------------------------------------------

# name -> (device kind as JAX reports it, pltpu.ChipVersion value, TensorCores per device as the
# compile-only topology presents them (v4:2x2x1 has 8 single-core devices; v5p:2x2x1 4 megacore
# ones), libtpu compile-only topology). Memory limits are per device: the smaller reading is safe.
_TPU_CHIPS = {
    "v4": ("TPU v4", "v4", 1, "v4:2x2x1"),
    "v5e": ("TPU v5 lite", "v5e", 1, "v5e:2x2"),
    "v5p": ("TPU v5", "v5p", 2, "v5p:2x2x1"),
    "v6e": ("TPU v6 lite", "v6e", 1, "v6e:2x2"),
}
_TPU_KIND_ALIASES = {"TPU v5e": "v5e", "TPU v5p": "v5p", "TPU v6e": "v6e"}


@functools.lru_cache(maxsize=None)
def tpus() -> dict[str, Target]:
    """The TPU generations jconv sizes kernels for, from ``pltpu.get_tpu_info_for_chip``."""
    from jax.experimental.pallas import tpu as pltpu

    out = {}
    for name, (kind, chip, cores, topo) in _TPU_CHIPS.items():
        info = pltpu.get_tpu_info_for_chip(pltpu.ChipVersion(chip), cores)
        out[name] = Target(name=name, platform="tpu", device_kind=kind,
                           memory_bytes=int(info.hbm_capacity_bytes) * cores,
                           vmem_bytes=int(info.vmem_capacity_bytes), generation=int(info.generation),
                           topology=topo)
    return out


CPU = Target(name="cpu", platform="cpu", device_kind="cpu (Pallas interpreted)")


def all_targets() -> dict[str, Target]:
    return {**tpus(), **gpus()}


def get(name: str) -> Target:
    """A target by name (``"h100"``, ``"l4"``, ``"v5e"`` ...)."""
    known = all_targets()
    if not isinstance(name, str) or name not in known:
        raise ValueError(f"jconv.targets.get: name (={name!r}) must be one of {sorted(known)}")
    return known[name]


def _unknown_gpu(kind: str, cc: tuple[int, int] | None) -> Target:
    smallest = min((t for t in gpus().values() if t.triton_ok), key=lambda t: t.smem_per_block)
    return dataclasses.replace(smallest, name="cuda", device_kind=kind, compute_capability=cc,
                               memory_bytes=None, known=False)


def _unknown_tpu(kind: str) -> Target:
    smallest = min(tpus().values(), key=lambda t: t.vmem_bytes)
    return dataclasses.replace(smallest, name="tpu", device_kind=kind, memory_bytes=None,
                               topology=None, known=False)


def for_device_kind(platform: str, kind: str | None, compute_capability=None) -> Target:
    """The target for a device of ``platform`` and ``kind`` (a conservative stand-in when the
    model is not one of the shipped ones)."""
    if planning_platform(platform) == "gpu":
        cc = _parse_cc(compute_capability)
        for t in gpus().values():
            if kind == t.device_kind:
                return t
        for pattern, name in _GPU_ALIASES:
            if kind and re.search(pattern, kind):
                t = gpus()[name]
                return t if cc is None else dataclasses.replace(t, compute_capability=cc)
        return _unknown_gpu(kind or "unknown GPU", cc)
    if platform == "tpu":
        for t in tpus().values():
            if kind == t.device_kind:
                return t
        if kind in _TPU_KIND_ALIASES:
            return tpus()[_TPU_KIND_ALIASES[kind]]
        return _unknown_tpu(kind or "unknown TPU")
    return CPU


def _parse_cc(cc) -> tuple[int, int] | None:
    if cc is None:
        return None
    if isinstance(cc, (tuple, list)):
        return int(cc[0]), int(cc[1])
    parts = str(cc).split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------
# Which target a trace is for
# --------------------------------------------------------------------------------------------

_override: contextvars.ContextVar[Target | None] = contextvars.ContextVar("jconv_target", default=None)


@contextlib.contextmanager
def use(target: str | Target):
    """Within the block, kernels for ``target``'s platform are sized for ``target``::

        with jconv.targets.use("l4"):
            jax.export.export(jax.jit(f), platforms=["cuda"])(...)
    """
    t = get(target) if isinstance(target, str) else target
    if not isinstance(t, Target):
        raise TypeError(f"jconv.targets.use: target (={target!r}) must be a target name or a Target")
    token = _override.set(t)
    try:
        yield t
    finally:
        _override.reset(token)


# --------------------------------------------------------------------------------------------
# Platform names: JAX has two for a GPU. A device and a backend are "gpu" (jax.default_backend(),
# jax.devices("gpu")); a program is lowered for "cuda" or "rocm" (mlir, jax.export). jconv plans
# with the first (the tune cache, the auto order, tolerances) and sizes kernels with the second
# (Target.platform). These two functions are the only translation between them.
# --------------------------------------------------------------------------------------------


def planning_platform(name: str | None = None) -> str:
    """The backend name a program is planned for: "cpu", "gpu" or "tpu" ("cuda" and "rocm" are
    "gpu"); None: JAX's default backend."""
    if name is None:
        import jax

        name = jax.default_backend()
    return "gpu" if name in ("cuda", "rocm") else name


def lowering_platform(name: str | None) -> str | None:
    """The platform a program for backend ``name`` is lowered for ("gpu" is "cuda"); None for
    None or an unknown name."""
    return {"gpu": "cuda", "cuda": "cuda", "rocm": "rocm", "tpu": "tpu", "cpu": "cpu"}.get(name or "")


def mesh_device(aval_sharding) -> tuple[str | None, str | None]:
    """(platform, device kind) of the abstract mesh a value is sharded over, if it says."""
    mesh = getattr(aval_sharding, "mesh", None)
    dev = getattr(mesh, "abstract_device", None)
    if dev is None:
        return None, None
    return lowering_platform(getattr(dev, "platform", None)), getattr(dev, "device_kind", None)


def resolve(platform: str, aval_sharding=None) -> tuple[Target, bool]:
    """``(target, primary)`` for kernels lowered for ``platform`` ("cuda", "tpu", "cpu").

    ``primary`` is True when this trace is known to be for that platform (the input's mesh says
    so, or it is JAX's default backend): a kernel that cannot fit then raises while tracing.
    Otherwise the branch is one of several a portable program carries, and the error waits for
    lowering (see :mod:`jconv.impls.pallas.ops`).
    """
    import jax

    mesh_platform, mesh_kind = mesh_device(aval_sharding)
    primary_platform = mesh_platform or lowering_platform(jax.default_backend())
    primary = primary_platform == platform
    if platform == "cpu":
        return CPU, primary
    t = _override.get()
    if t is not None and t.platform == platform:
        return t, primary
    if mesh_platform == platform and mesh_kind:
        return for_device_kind(platform, mesh_kind), primary
    try:
        dev = jax.devices(planning_platform(platform))[0]
    except RuntimeError:
        dev = None
    if dev is not None:
        return for_device_kind(platform, dev.device_kind, getattr(dev, "compute_capability", None)), primary
    return for_device_kind(platform, None), primary


__all__ = ["Target", "CPU", "get", "gpus", "tpus", "all_targets", "for_device_kind", "gpu_from_config",
           "resolve", "use", "mesh_device", "planning_platform", "lowering_platform", "TRITON_MIN_CAPABILITY"]
