"""The one list of implementations: backends, their algorithms, and what each can run.

A **backend** (``"xla"``, ``"lax"``, ``"pallas"``, ``"onednn"``) is a module that calls
:func:`register` once with a :class:`Backend`: its algorithms, which algorithm ``impl="<name>"``
runs for a spec, its rule for ``impl="auto"`` (if it has one), the platforms it lowers for, where
it runs interpreted, and whether a batch-sharded input must be split for it (custom calls XLA
cannot partition). A backend whose import fails registers itself with :func:`register_unavailable`
instead: it is absent, and asking for it says why and how to get it.

An **algorithm** is three functions of two arrays, the execute spec and the target (see
:class:`Algorithm`): the forward, the input gradient and the weight gradient. The convolution
primitive (:mod:`jconv.primitive`) makes every transformation out of these three.

Every list of implementations in jconv (the parser of ``impl=``, the plan, the tuner's candidates,
the harness, the experiment runner, the report) reads this registry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

from jconv.geometry import ConvSpec, fmt

#: ``fn(a, b, spec, target) -> array``; ``spec`` is the execute spec of the *forward*
#: convolution (whatever the function computes), ``target`` a :class:`jconv.targets.Target`.
KernelFn = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """One way to compute a convolution, as three functions of ``(a, b, spec, target)``:

    * ``forward(x, w)``: ``y`` (N, Ho, Wo, C_out) in ``spec.out_dtype``; ``x`` NHWC with the zero
      padding and input dilation of ``spec`` still to do, ``w`` HWIO (already flipped);
    * ``input_grad(dy, w)``: ``dx`` (N, H, W, C_in) in ``spec.dtype`` (``dy`` may be in
      ``spec.out_dtype``);
    * ``weight_grad(x, dy)``: ``dw`` (KH, KW, C_in/groups, C_out) in ``spec.dtype``.

    ``supports(spec)`` returns None when the algorithm can run ``spec``, else the reason.
    """

    name: str
    forward: KernelFn
    input_grad: KernelFn
    weight_grad: KernelFn
    supports: Callable[[ConvSpec], str | None] = lambda spec: None
    summary: str = ""


@dataclasses.dataclass(frozen=True)
class Choice:
    """What a rule picked: ``impl`` (a backend name), its ``algorithm``, and why."""

    impl: str
    algorithm: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Backend:
    """A registered implementation (see the module docstring)."""

    name: str
    algorithms: Mapping[str, Algorithm]
    #: ``(spec, layout) -> (algorithm, reason)``: what ``impl="<name>"`` runs (``layout`` is the
    #: caller's, "NHWC" or "NCHW"; ``spec`` the execute spec).
    default: Callable[[ConvSpec, str], tuple[str, str]]
    #: ``(spec, platform, layout) -> Choice | None``: this backend's say in ``impl="auto"``;
    #: rules are asked in decreasing ``auto_priority`` and the first Choice wins.
    auto: Callable[[ConvSpec, str, str], Choice | None] | None = None
    auto_priority: int = 0
    #: ``(spec, layout, platform) -> [impl strings]``: what the tuner measures from this backend.
    tune_candidates: Callable[[ConvSpec, str, str], list[str]] | None = None
    #: platforms it lowers for ("cpu", "cuda", "rocm", "tpu"); others are a clear error.
    platforms: tuple[str, ...] = ("cpu", "cuda", "rocm", "tpu")
    #: platforms where it runs interpreted: correct, but not a speed measurement.
    interpreted: tuple[str, ...] = ()
    #: a batch-sharded input is split with ``shard_map`` when the mesh is known while tracing
    #: (the backend's kernels are custom calls that XLA cannot partition by itself).
    split_batch: bool = False
    #: a native custom call: correct on this machine's CPU, not portable (``jax.export``).
    native: bool = False
    summary: str = ""

    def algorithm(self, name: str) -> Algorithm:
        return self.algorithms[name]

    def why_not(self, algorithm: str, spec: ConvSpec) -> str | None:
        """None when ``algorithm`` can run ``spec``, else the reason."""
        if algorithm not in self.algorithms:
            return f"{self.name} has no algorithm {algorithm!r}; known: {', '.join(self.algorithms)}"
        return self.algorithms[algorithm].supports(spec)


_BACKENDS: dict[str, Backend] = {}
_UNAVAILABLE: dict[str, str] = {}


def register(backend: Backend) -> Backend:
    """Add a backend (once per name; a second registration replaces the first)."""
    if not backend.algorithms:
        raise ValueError(f"register: backend {backend.name!r} has no algorithms")
    if ":" in backend.name or backend.name == "auto":
        raise ValueError(f"register: backend name (={backend.name!r}) must not be 'auto' or contain ':'")
    _UNAVAILABLE.pop(backend.name, None)
    _BACKENDS[backend.name] = backend
    return backend


def register_unavailable(name: str, reason: str) -> None:
    """Record that optional backend ``name`` is absent, and why (for the error message)."""
    if name not in _BACKENDS:
        _UNAVAILABLE[name] = reason


def unregister(name: str) -> None:
    """Remove a backend (tests)."""
    _BACKENDS.pop(name, None)
    _UNAVAILABLE.pop(name, None)


def names() -> list[str]:
    """The available backends, in registration order."""
    return list(_BACKENDS)


def unavailable() -> dict[str, str]:
    """Optional backends that could not load, with the reason."""
    return dict(_UNAVAILABLE)


def backends() -> list[Backend]:
    return list(_BACKENDS.values())


def get(name: str, fn: str = "conv2d") -> Backend:
    """The backend called ``name``, or a ValueError saying why it is not there."""
    if name in _BACKENDS:
        return _BACKENDS[name]
    if name in _UNAVAILABLE:
        raise ValueError(f"{fn}: impl (={name!r}) is not available here: {_UNAVAILABLE[name]}")
    raise ValueError(f"{fn}: impl (={name!r}) must be one of {impl_names()}")


def impl_names() -> str:
    known = ["'auto'"] + [repr(n) for n in _BACKENDS] + [repr(n) + " (unavailable)" for n in _UNAVAILABLE]
    return ", ".join(known) + " or '<backend>:<algorithm>'"


def parse_impl(fn: str, impl: Any) -> tuple[str, str]:
    """``impl`` -> ``(backend, algorithm)``; ``("auto", "")``, ``(name, "")`` (the backend picks)
    or ``(name, algorithm)``. Raises TypeError / ValueError naming ``impl`` and its value."""
    if not isinstance(impl, str):
        raise TypeError(f"{fn}: impl (={fmt(impl)}) must be a string")
    base, sep, algo = impl.partition(":")
    if base == "auto":
        if sep:
            raise ValueError(f"{fn}: impl (={impl!r}) must be one of {impl_names()}")
        return "auto", ""
    backend = get(base, fn)
    if sep and algo not in backend.algorithms:
        raise ValueError(f"{fn}: impl (={impl!r}) names an unknown {base} algorithm; known: "
                         f"{', '.join(sorted(backend.algorithms))}")
    return base, algo


def check_impl(fn: str, impl: Any) -> str:
    """``impl`` itself, once :func:`parse_impl` accepts it."""
    parse_impl(fn, impl)
    return impl


_NO_AUTO: list[str] = []


@contextlib.contextmanager
def auto_excluded(*names: str):
    """Within the block, ``impl="auto"`` ignores these backends' rules (they stay callable by
    name): what auto plans without them, e.g. without the oneDNN plugin. The environment
    variable ``JCONV_AUTO_EXCLUDE=onednn,...`` does the same for a whole process."""
    _NO_AUTO.extend(names)
    try:
        yield
    finally:
        for n in names:
            _NO_AUTO.remove(n)


def auto_rules() -> list[Backend]:
    """Backends with an ``auto`` rule, highest priority first (less the excluded ones)."""
    excluded = set(_NO_AUTO) | {n.strip() for n in os.environ.get("JCONV_AUTO_EXCLUDE", "").split(",") if n.strip()}
    return sorted((b for b in _BACKENDS.values() if b.auto is not None and b.name not in excluded),
                  key=lambda b: -b.auto_priority)


__all__ = ["Algorithm", "Backend", "Choice", "register", "register_unavailable", "unregister", "names",
           "unavailable", "backends", "get", "parse_impl", "check_impl", "auto_rules", "auto_excluded", "impl_names"]
