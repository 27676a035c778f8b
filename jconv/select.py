"""Plan: which backend and algorithm run an :class:`~jconv.spec.ExecSpec`, and why.

Every choice between backends is made here:

* An explicit ``impl`` is always honoured (never silently swapped): ``"<backend>"`` runs the
  algorithm that backend chooses (``"lax"``: the best lax algorithm, never XLA's conv),
  ``"<backend>:<algorithm>"`` that algorithm, or an error saying why it cannot run this spec.
* ``"auto"``: a tune cache entry (:mod:`jconv.tune_cache`) for this exact convolution on this
  device, if any (``plan_for`` then says "auto: tuned"); else the backends of
  :data:`AUTO_ORDER` for the platform, in order: the first whose ``auto`` rule picks one of its
  algorithms that can run the spec wins. A backend's rule only speaks for itself (it picks among
  its own algorithms, or declines); the order between backends is this table.

The rules and the measurements behind them: each backend's module (the lax engine's thresholds
in :mod:`jconv.impls.lax.rules`, the plugin's in :mod:`jconv.impls.onednn`) and
docs/performance.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os

from jconv import targets, tune_cache
from jconv.impls import registry
from jconv.spec import ExecSpec

log = logging.getLogger("jconv.select")

#: ``impl="auto"``: the backends asked, in order, on each planning platform. A backend that is
#: not registered here (an optional plugin that is not installed) is skipped; the last entry
#: takes everything (XLA's convolution runs every valid spec).
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cpu": ("onednn", "lax", "xla"),
    "gpu": ("xla",),
    "tpu": ("xla",),
}
#: the order for a platform missing from :data:`AUTO_ORDER`
DEFAULT_ORDER: tuple[str, ...] = ("xla",)
#: ``JCONV_AUTO_EXCLUDE=onednn,...``: backends ``auto`` skips for a whole process
EXCLUDE_ENV = "JCONV_AUTO_EXCLUDE"


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


_EXCLUDED: list[str] = []


@contextlib.contextmanager
def auto_excluded(*names: str):
    """Within the block, ``impl="auto"`` skips these backends (they stay callable by name):
    what auto plans without them, e.g. without the oneDNN plugin. ``$JCONV_AUTO_EXCLUDE`` does
    the same for a whole process."""
    _EXCLUDED.extend(names)
    try:
        yield
    finally:
        for n in names:
            _EXCLUDED.remove(n)


def auto_order(platform: str) -> tuple[str, ...]:
    """The registered backends ``auto`` asks on ``platform``, in order, less the excluded ones."""
    excluded = set(_EXCLUDED) | {n.strip() for n in os.environ.get(EXCLUDE_ENV, "").split(",") if n.strip()}
    order = AUTO_ORDER.get(targets.planning_platform(platform), DEFAULT_ORDER)
    return tuple(n for n in order if n in registry.names() and n not in excluded)


@functools.lru_cache(maxsize=None)
def _warn_stale(fn: str, impl: str, why: str) -> None:
    """Once per process and entry: a plan is made on every call, a warning need not be."""
    log.warning("%s: ignoring the tune cache entry %s for this convolution (%s); the rules apply", fn, impl, why)


@functools.lru_cache(maxsize=None)
def _note_interpreted(impl: str, platform: str) -> None:
    """Once per process and backend: an explicitly requested backend that runs interpreted here."""
    log.warning("impl=%r runs interpreted on the %s: correct, but slow (not a speed measurement); it compiles "
                "on %s", impl, platform, ", ".join(p for p in registry.get(impl).platforms if p != platform))


def _tuned(spec: ExecSpec, platform: str, fn: str) -> Plan | None:
    """The plan a tune cache entry names for ``spec`` on this device, if any."""
    entry = tune_cache.lookup(spec, platform)
    if entry is None:
        return None
    impl = entry.get("impl")
    try:
        base, _ = registry.parse_impl(fn, impl)
        if base == "auto":
            raise ValueError("not an explicit implementation")
        p = plan(spec, impl, fn=fn, platform=platform)
    except (TypeError, ValueError, NotImplementedError) as e:
        _warn_stale(fn, repr(impl), str(e))
        return None
    ms = tune_cache.format_times(entry.get("times_ms", {}), limit=3)
    return dataclasses.replace(p, reason=f"auto: tuned ({entry.get('objective')}: {ms})")


def _checked(fn: str, impl: str, plan_: Plan, spec: ExecSpec) -> Plan:
    why = registry.get(plan_.impl, fn).why_not(plan_.algorithm, spec)
    if why is not None:
        # an algorithm named explicitly is a wrong choice of argument (ValueError); a backend
        # that cannot run a valid convolution is a limit of jconv (NotImplementedError)
        error = ValueError if ":" in impl else NotImplementedError
        hint = f"; use impl='{plan_.impl}' to let jconv choose" if ":" in impl else ""
        raise error(f"{fn}: impl (={impl!r}) cannot run this convolution (groups={spec.groups}, "
                    f"C_in={spec.in_channels}, kernel={spec.kernel_size}, {spec.dtype}): {why}{hint}")
    return plan_


def operand_layout(spec: ExecSpec, impl: str, algorithm: str) -> ExecSpec:
    """The execute spec in the layout the arrays reach the planned backend in: the caller's
    (``spec.caller_layout``) when the backend takes it (``Backend.layouts``) and its algorithm
    runs the spec so, else ``spec`` as planned (NHWC / HWIO: :func:`jconv.conv2d` transposes
    around the convolution). The one place that decides the operand layout."""
    backend = registry.get(impl)
    if spec.caller_layout == spec.layout or spec.caller_layout not in backend.layouts:
        return spec
    native = dataclasses.replace(spec, layout=spec.caller_layout)
    return native if backend.why_not(algorithm, native) is None else spec


def plan(spec: ExecSpec, impl: str, *, fn: str = "conv2d", platform: str | None = None,
         use_cache: bool = True) -> Plan:
    """Choose the backend and algorithm for ``spec`` (checked before any tracing).

    ``platform`` ("cpu", "gpu", "tpu"; "cuda"/"rocm" are read as "gpu") is the one the program
    is planned for; by default JAX's default backend. ``use_cache=False``: the rules alone,
    whatever a tune cache says.
    """
    base, algo = registry.parse_impl(fn, impl)
    platform = targets.planning_platform(platform)
    if base != "auto":
        backend = registry.get(base, fn)
        if platform in backend.interpreted:
            _note_interpreted(base, platform)
        if algo:
            return _checked(fn, impl, Plan(base, algo, "requested"), spec)
        name, why = backend.choose(spec, platform)
        return _checked(fn, impl, Plan(base, name, why), spec)
    tuned = _tuned(spec, platform, fn) if use_cache else None
    if tuned is not None:
        return tuned
    for name in auto_order(platform):
        backend = registry.get(name)
        pick = backend.auto(spec, platform) if backend.auto is not None else None
        if pick is not None and backend.why_not(pick[0], spec) is None:
            return Plan(name, pick[0], f"auto: {pick[1]}")
    raise NotImplementedError(f"{fn}: no implementation can run this convolution on {platform} "
                              f"(asked, in order: {', '.join(auto_order(platform)) or 'none'})")


__all__ = ["Plan", "plan", "operand_layout", "AUTO_ORDER", "DEFAULT_ORDER", "auto_order", "auto_excluded"]
