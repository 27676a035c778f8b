"""The one list of implementations: backends, their algorithms, and what each can run.

A **backend** (``"xla"``, ``"lax"``, ``"pallas"``, ``"onednn"``) is a module that calls
:func:`register` once with a :class:`Backend`: its algorithms, which algorithm ``impl="<name>"``
runs for a spec, its pick among its own algorithms for ``impl="auto"`` (or that it declines),
the platforms it lowers for, where it runs interpreted, and whether a batch-sharded input must be
split for it (custom calls XLA cannot partition). Which backend ``auto`` asks first is not a
backend's business: :data:`jconv.select.AUTO_ORDER` holds the order, one tuple per platform. A backend whose import fails registers itself with :func:`register_unavailable`
instead: it is absent, and asking for it says why and how to get it.

An **algorithm** is three functions of two arrays, the execute spec and the target (see
:class:`Algorithm`): the forward, the input gradient and the weight gradient. The convolution
primitive (:mod:`jconv.primitive`) makes every transformation out of these three.

Every list of implementations (the parser of ``impl=``, the plan, the tuner's candidates, the
experiments' harness and report) reads this registry. Adding a backend: one module under
``jconv/impls/`` that calls :func:`register`, imported by ``jconv/impls/__init__.py``, and its
name in the platforms' orders in :mod:`jconv.select` where ``auto`` should consider it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from jconv.geometry import fmt
from jconv.spec import ExecSpec

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
    ``forward_relu(x, w, b)``, optional: ``max(0, forward(x, w) + b)`` in one pass (the
    convolution's epilogue; :mod:`jconv.fused`); None where the algorithm has none (the
    bias and ReLU then follow the forward as XLA operations).
    """

    name: str
    forward: KernelFn
    input_grad: KernelFn
    weight_grad: KernelFn
    supports: Callable[[ExecSpec], str | None] = lambda spec: None
    summary: str = ""
    forward_relu: KernelFn | None = None


@dataclasses.dataclass(frozen=True)
class Choice:
    """What a rule picked: ``impl`` (a backend name), its ``algorithm``, and why."""

    impl: str
    algorithm: str
    reason: str


#: ``(spec, platform) -> (algorithm, reason)``: a backend's choice among its own algorithms.
#: ``platform`` is the one the program is planned for ("cpu", "gpu", "tpu"); the caller's layout
#: is ``spec.caller_layout``. An ``auto`` rule may return None: it declines, and the next backend
#: in :data:`jconv.select.AUTO_ORDER` is asked.
Rule = Callable[[ExecSpec, str], "tuple[str, str] | None"]


@dataclasses.dataclass(frozen=True)
class Backend:
    """A registered implementation (see the module docstring). It says what it can run and what
    it would choose among its own algorithms; which backend ``auto`` runs is decided by the
    order in :mod:`jconv.select`, never here."""

    name: str
    algorithms: Mapping[str, Algorithm]
    #: what ``impl="<name>"`` runs: ``(algorithm, reason)``
    choose: Rule
    #: its pick for ``impl="auto"`` on a platform, or None to decline (None: it is never auto's pick)
    auto: Rule | None = None
    #: ``(spec, platform) -> [impl strings]``: what the tuner measures from this backend
    tune_candidates: Callable[[ExecSpec, str], list[str]] | None = None
    #: lowering platforms it compiles for ("cpu", "cuda", "rocm", "tpu"); others are a clear error.
    platforms: tuple[str, ...] = ("cpu", "cuda", "rocm", "tpu")
    #: planning platforms ("cpu", "gpu", "tpu") where it runs interpreted: correct, not a speed.
    interpreted: tuple[str, ...] = ()
    #: a batch-sharded input is split with ``shard_map`` when the mesh is known while tracing
    #: (the backend's kernels are custom calls that XLA cannot partition by itself).
    split_batch: bool = False
    #: a native custom call: correct on this machine's CPU, not portable (``jax.export``).
    native: bool = False
    #: the array layouts its functions take (``ExecSpec.layout``): NHWC / HWIO always; a backend
    #: that also lists "NCHW" gets a channels-first caller's arrays without transposes
    #: (:func:`jconv.select.operand_layout` decides, where its algorithm supports the spec).
    layouts: tuple[str, ...] = ("NHWC",)
    summary: str = ""

    def algorithm(self, name: str) -> Algorithm:
        return self.algorithms[name]

    def why_not(self, algorithm: str, spec: ExecSpec) -> str | None:
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


__all__ = ["Algorithm", "Backend", "Rule", "register", "register_unavailable", "unregister", "names",
           "unavailable", "backends", "get", "parse_impl", "check_impl", "impl_names"]
