"""Plan: which implementation and algorithm run a :class:`ConvSpec`, and why.

An explicit ``impl`` is always honoured (never silently swapped); ``"auto"`` applies the rules
below. The rules are documented in docs/performance.md with the measurements behind them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from jconv.geometry import ConvSpec


@dataclasses.dataclass(frozen=True)
class Plan:
    impl: str          # "xla" | "lax" | "pallas"
    algorithm: str     # e.g. "im2col", "taps", "depthwise", "xla", "pallas"
    fn: Callable
    reason: str


def _lax_rule(spec: ConvSpec) -> tuple[str, str]:
    if spec.is_depthwise:
        return "depthwise", "groups == C_in: per-tap multiply-accumulate, no matmul"
    taps = spec.kernel_size[0] * spec.kernel_size[1]
    if taps == 1:
        return "taps", "1x1 kernel: a single GEMM"
    return "im2col", "dense/grouped kernel: patches + one grouped GEMM"


def plan(spec: ConvSpec, impl: str, *, fn: str = "conv2d") -> Plan:
    """Choose the implementation for ``spec``. ``impl`` was checked by geometry.check_impl."""
    base, _, algo = impl.partition(":")
    if base == "xla":
        from jconv.impls.xla import conv_xla

        return Plan("xla", "xla", conv_xla, "requested")
    if base == "pallas":
        from jconv.impls.pallas import conv_pallas

        return Plan("pallas", "pallas", conv_pallas, "requested")
    from jconv.impls import lax_conv

    if algo:
        if not lax_conv.supports(algo, spec):
            raise ValueError(
                f"{fn}: impl (={impl!r}) cannot run this convolution (groups={spec.groups}, "
                f"C_in={spec.in_channels}); use impl='lax' to let jconv choose"
            )
        return Plan("lax", algo, lax_conv.ALGORITHMS[algo], "requested")
    name, why = _lax_rule(spec)
    return Plan("lax", name, lax_conv.ALGORITHMS[name], why if base == "lax" else f"auto: {why}")
