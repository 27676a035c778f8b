"""Plan: which backend and algorithm run a :class:`ConvSpec`, and why.

An explicit ``impl`` is always honoured (never silently swapped): ``"<backend>"`` runs the
algorithm that backend's own rule picks (``"lax"``: the best lax algorithm, never XLA's conv),
``"<backend>:<algorithm>"`` that algorithm, or an error saying why it cannot run this spec.
``"auto"`` asks the backends' ``auto`` rules (:mod:`jconv.impls.registry`) in priority order on
the target platform; a tune cache entry (:mod:`jconv.tune_cache`) for this exact convolution on
this device overrides them (``plan_for`` then says "auto: tuned").

The rules and the measurements behind them: each backend module (``jconv.impls.lax_conv``'s
``auto_rule`` on the CPU; on GPU and TPU, XLA's conv) and docs/performance.md.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

from jconv import tune_cache
from jconv.geometry import ConvSpec
from jconv.impls import registry

log = logging.getLogger("jconv.select")


@dataclasses.dataclass(frozen=True)
class Plan:
    impl: str          # a backend name: "xla", "lax", "pallas", ...
    algorithm: str     # one of its algorithms
    reason: str

    @property
    def explicit(self) -> str:
        """The impl string that names this plan exactly (``"xla"``, ``"pallas"``,
        ``"lax:<algorithm>"``: the backend alone when it has one algorithm)."""
        backend = registry.get(self.impl)
        return self.impl if len(backend.algorithms) == 1 else f"{self.impl}:{self.algorithm}"

    @property
    def interpreted_on(self) -> tuple[str, ...]:
        return registry.get(self.impl).interpreted


@functools.lru_cache(maxsize=None)
def _warn_stale(fn: str, impl: str, why: str) -> None:
    """Once per process and entry: a plan is made on every call, a warning need not be."""
    log.warning("%s: ignoring the tune cache entry %s for this convolution (%s); the rules apply", fn, impl, why)


def _tuned(spec: ConvSpec, platform: str, layout: str, fn: str) -> Plan | None:
    """The plan a tune cache entry names for ``spec`` on this device, if any."""
    entry = tune_cache.lookup(spec, layout, platform)
    if entry is None:
        return None
    impl = entry.get("impl")
    try:
        base, _ = registry.parse_impl(fn, impl)
        if base == "auto":
            raise ValueError("not an explicit implementation")
        p = plan(spec, impl, fn=fn, platform=platform, layout=layout)
    except (TypeError, ValueError, NotImplementedError) as e:
        _warn_stale(fn, repr(impl), str(e))
        return None
    ms = tune_cache.format_times(entry.get("times_ms", {}), limit=3)
    return dataclasses.replace(p, reason=f"auto: tuned ({entry.get('objective')}: {ms})")


def _checked(fn: str, impl: str, choice: registry.Choice | tuple[str, str, str], spec: ConvSpec) -> Plan:
    name, algorithm, reason = (choice.impl, choice.algorithm, choice.reason) if isinstance(
        choice, registry.Choice) else choice
    why = registry.get(name, fn).why_not(algorithm, spec)
    if why is not None:
        # an algorithm named explicitly is a wrong choice of argument (ValueError); a backend
        # that cannot run a valid convolution is a limit of jconv (NotImplementedError)
        error = ValueError if ":" in impl else NotImplementedError
        hint = f"; use impl='{name}' to let jconv choose" if ":" in impl else ""
        raise error(f"{fn}: impl (={impl!r}) cannot run this convolution (groups={spec.groups}, "
                    f"C_in={spec.in_channels}, kernel={spec.kernel_size}, {spec.dtype}): {why}{hint}")
    return Plan(name, algorithm, reason)


def plan(spec: ConvSpec, impl: str, *, fn: str = "conv2d", platform: str | None = None,
         layout: str = "NHWC", use_cache: bool = True) -> Plan:
    """Choose the backend and algorithm for execute spec ``spec``.

    ``platform`` ("cpu", "gpu", "tpu") is the target; by default JAX's default backend.
    ``layout`` is the caller's layout (``spec`` itself is NHWC): backends may choose differently
    for NCHW callers. ``use_cache=False``: the rules alone, whatever a tune cache says.
    """
    base, algo = registry.parse_impl(fn, impl)
    if base != "auto":
        backend = registry.get(base, fn)
        if algo:
            return _checked(fn, impl, (base, algo, "requested"), spec)
        name, why = backend.default(spec, layout)
        return _checked(fn, impl, (base, name, why), spec)
    if platform is None:
        import jax

        platform = jax.default_backend()
    tuned = _tuned(spec, platform, layout, fn) if use_cache else None
    if tuned is not None:
        return tuned
    for backend in registry.auto_rules():
        choice = backend.auto(spec, platform, layout)
        if choice is None:
            continue
        if registry.get(choice.impl).why_not(choice.algorithm, spec) is None:
            return Plan(choice.impl, choice.algorithm, f"auto: {choice.reason}")
    raise NotImplementedError(f"{fn}: no implementation can run this convolution on {platform}")  # pragma: no cover


def resolve(spec: ConvSpec, impl: str, *, fn: str = "conv2d", layout: str = "NHWC",
            use_cache: bool = True, platform: str | None = None) -> Plan:
    """The plan ``conv2d`` runs (checked before any tracing; an explicit plan, so that a jit
    cache keyed on it re-traces after a new tune instead of reusing the old choice)."""
    return plan(spec, impl, fn=fn, layout=layout, use_cache=use_cache, platform=platform)


__all__ = ["Plan", "plan", "resolve"]
