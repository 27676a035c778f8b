"""The lax engine's choices among its own algorithms: ``impl="lax"`` (:func:`choose`, never
XLA's conv) and its pick for ``impl="auto"`` on the CPU (:func:`auto`), where it is asked after
the oneDNN plugin and before XLA (:data:`jconv.select.AUTO_ORDER`); where it declines, XLA's
convolution runs. Every number these rules use is in :data:`THRESHOLDS`; the measurements behind
each are in docs/performance.md ("The auto rules"; which of its tables are generated from committed
results, and how to re-measure the others, is said beside each).
"""

from __future__ import annotations

import dataclasses

from jconv.geometry import dtype_kind
from jconv.impls.lax.contractions import LIMITS
from jconv.spec import ExecSpec


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """The rules' numbers (docs/performance.md, "The auto rules")."""

    #: ``mac`` for grouped convs with at most this many input channels per group
    mac_group_channels: int = 16
    #: ``im2col`` (not ``taps``) below this many input channels per group
    im2col_max_channels: int = 16
    #: ``taps`` for dense, undilated bfloat16 convs with at least this many input channels
    bf16_taps_min_channels: int = 128
    #: ``xla_fwd`` for dense, undilated convs from this many output pixels (28x28) on ...
    xla_fwd_min_out_pixels: int = 28 * 28
    #: ... and from this many output positions (N*Ho*Wo) on, with ``xla_fwd_min_channels`` to
    #: ``xla_fwd_max_channels`` input channels and at most that many output channels
    xla_fwd_min_positions: int = 4096
    xla_fwd_min_channels: int = 16
    xla_fwd_max_channels: int = 128


THRESHOLDS = Thresholds()


#: the floating dtypes the engine computes (its accumulators: :func:`jconv.impls.common.acc_dtype`)
FLOATS = ("float16", "bfloat16", "float32", "float64")


def supports_dtype(spec: ExecSpec) -> str | None:
    """Integer, complex and :data:`FLOATS` operands and results; booleans and the narrow float
    types (float8, float4) are XLA's (``impl='xla'``)."""
    for what, name in (("operands", spec.dtype), ("result", spec.out_dtype)):
        kind = dtype_kind(name)
        if kind == "bool" or (kind == "float" and name not in FLOATS):
            return (f"the lax engine computes integer, complex and {', '.join(FLOATS)} convolutions, not {name} "
                    f"{what}; impl='xla' runs them")
    return None


def mac_terms(spec: ExecSpec) -> int:
    return spec.group_in_channels * spec.kernel_size[0] * spec.kernel_size[1]


def supports_mac(spec: ExecSpec) -> str | None:
    if mac_terms(spec) > LIMITS.mac_max_terms:
        return (f"it unrolls C_in/groups*KH*KW (={mac_terms(spec)}) multiply-adds per output, more than "
                f"{LIMITS.mac_max_terms}; use 'taps' or 'im2col'")
    return None


def supports_depthwise(spec: ExecSpec) -> str | None:
    if not spec.is_depthwise:
        return f"it needs groups == C_in (got groups={spec.groups}, C_in={spec.in_channels})"
    return supports_mac(spec)


def _channels_first(name: str, why: str, spec: ExecSpec) -> tuple[str, str]:
    if spec.caller_layout == "NCHW" and name in ("mac", "depthwise"):
        return "mac_cf", why + "; channels-first for the NCHW input (the layout changes cancel)"
    return name, why


def choose(spec: ExecSpec, platform: str = "cpu") -> tuple[str, str]:
    """``(algorithm, reason)`` for ``impl="lax"``: never XLA's conv."""
    t = THRESHOLDS
    if spec.is_depthwise:
        name, why = "depthwise", "groups == C_in: per-tap multiply-accumulate, no matmul"
    elif spec.groups > 1 and spec.group_in_channels <= t.mac_group_channels and supports_mac(spec) is None:
        name, why = "mac", (f"grouped, {spec.group_in_channels} input channels per group: multiply-accumulate "
                            "on the vector unit")
    elif spec.group_in_channels < t.im2col_max_channels and not spec.is_pointwise:
        name, why = "im2col", "few input channels: one GEMM over the (chunked) patches, K = KH*KW*C_in"
    elif spec.lhs_dilation != (1, 1):
        name, why = "taps", "input dilation: per-phase tap GEMMs, inserted zeros skipped"
    else:
        name, why = "taps", "dense: one GEMM per kernel tap, accumulated"
    return _channels_first(name, why, spec)


def auto(spec: ExecSpec, platform: str) -> tuple[str, str] | None:
    """``impl="auto"`` on the CPU (None elsewhere, and None where XLA's conv is faster). In order:

    1. depthwise -> ``depthwise``; grouped with few channels per group -> ``mac`` (NCHW callers:
       ``mac_cf``): XLA's CPU conv runs these as generic grouped convs, slowly, above all backward.
    2. input dilation (transposed conv) -> ``xla_fwd``: XLA's forward, this engine's weight
       gradient (XLA's is a conv with a dilated Ho x Wo kernel).
    3. 1x1, channels-last caller -> ``taps`` (one GEMM each way); NCHW caller -> ``xla_fwd``.
    4. dense bfloat16, undilated, >= ``bf16_taps_min_channels`` input channels -> ``taps``: the
       GEMMs use the CPU's bfloat16 units, XLA's conv runs bfloat16 at float32 speed.
    5. dense, undilated, output >= ``xla_fwd_min_out_pixels`` -> ``xla_fwd``: XLA's weight
       gradient (a conv with an Ho x Wo "kernel") is the slow part there.
    6. dense, undilated, N*Ho*Wo >= ``xla_fwd_min_positions`` with 16-128 channels -> ``xla_fwd``.
    7. everything else (small outputs, dilated kernels): declined, XLA's conv runs.

    Integer and complex convolutions (measured in docs/conformance.md, benchmarks/dtype_auto.py):
    rule 1 holds for them (the engine's multiply-accumulate beats XLA's grouped convs there
    too), and a channels-last complex 1x1 runs ``taps``; the rest is declined. Booleans and the
    narrow float types: declined (the engine does not run them).
    """
    if platform != "cpu" or supports_dtype(spec) is not None:
        return None
    t = THRESHOLDS
    name, why = choose(spec, platform)
    if spec.is_depthwise or name in ("mac", "mac_cf"):
        return name, why
    kind = dtype_kind(spec.dtype)
    if kind == "complex" and spec.is_pointwise and spec.caller_layout == "NHWC":
        return "taps", "1x1 complex, channels-last: one complex GEMM forward and backward"
    if kind != "float":
        return None  # integer and other complex convs: XLA's (measured: docs/conformance.md)
    if spec.lhs_dilation != (1, 1):
        return "xla_fwd", ("input dilation: XLA's conv forward and input gradient, the weight gradient as "
                           "GEMMs (XLA's is a conv with a dilated Ho x Wo kernel)")
    if spec.is_pointwise and spec.caller_layout == "NHWC":
        return "taps", "1x1, channels-last: one GEMM forward and backward"
    if spec.is_pointwise:
        return "xla_fwd", "1x1, NCHW caller: XLA's conv forward (no layout change), the weight gradient as one GEMM"
    if spec.dilation != (1, 1):
        return None
    ho, wo = spec.out_size
    positions = spec.batch * ho * wo
    if spec.dtype == "bfloat16" and spec.group_in_channels >= t.bf16_taps_min_channels:
        return "taps", (f"dense bfloat16, {spec.group_in_channels} input channels: one bfloat16 GEMM per tap "
                        "(XLA's CPU conv computes bfloat16 at float32 speed)")
    if ho * wo >= t.xla_fwd_min_out_pixels:
        return "xla_fwd", (f"dense, {ho}x{wo} output: XLA's conv forward and input gradient, the weight "
                           "gradient as chunked patch GEMMs")
    if (positions >= t.xla_fwd_min_positions
            and t.xla_fwd_min_channels <= spec.group_in_channels
            and max(spec.group_in_channels, spec.out_channels) <= t.xla_fwd_max_channels):
        return "xla_fwd", (f"dense, {positions} output positions, {t.xla_fwd_min_channels}-"
                           f"{t.xla_fwd_max_channels} channels: XLA's conv forward and input gradient, the "
                           "weight gradient as chunked patch GEMMs")
    return None


def tune_candidates(spec: ExecSpec, platform: str, algorithms) -> list[str]:
    """The lax algorithms the tuner measures (CPU only: they are CPU formulations)."""
    if platform != "cpu":
        return []
    out = []
    for name, alg in algorithms.items():
        if name == "mac" and spec.is_depthwise:
            continue  # the same code as "depthwise"
        if name == "mac_cf" and not (spec.groups > 1 or spec.caller_layout == "NCHW"):
            continue  # a dense conv as per-channel multiply-adds: never close
        if alg.supports(spec) is None:
            out.append(f"lax:{name}")
    return out


__all__ = ["THRESHOLDS", "Thresholds", "choose", "auto", "tune_candidates", "supports_mac", "supports_depthwise"]
