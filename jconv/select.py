"""Plan: which implementation and algorithm run a :class:`ConvSpec`, and why.

An explicit ``impl`` is always honoured (never silently swapped): ``"xla"`` runs
``lax.conv_general_dilated``, ``"pallas"`` the Pallas kernel, ``"lax:<name>"`` that lax
algorithm (or a ValueError if it cannot run the spec), ``"lax"`` the best lax algorithm by the
rules below -- never XLA's conv. ``"auto"`` may pick any of them.

The rules are derived from measurements on the CPU (docs/performance.md has the table and the
command that regenerates it). A tune cache (:mod:`jconv.tuning`) overrides them for the exact
convolutions it measured on this device; ``plan_for`` says "auto: tuned" then.

``lax`` (no XLA conv): depthwise -> ``depthwise``; grouped with few channels per group ->
``mac``; fewer than 16 input channels (per group) -> ``im2col`` (a per-tap GEMM with K < 16
wastes the machine: the ResNet stem runs 6x slower with ``taps``); otherwise ``taps``.

For NCHW callers (``layout="NCHW"``) ``depthwise`` / ``mac`` become ``mac_cf``: the same
multiply-accumulate computed channels-first, so the caller's layout changes cancel instead of
being fused into the unrolled loop (2-7x faster on the NCHW suite layers).

``auto`` on the CPU (in order):

1. depthwise (``groups == C_in``, any multiplier)  -> ``lax:depthwise``: per-tap
   multiply-accumulate on the vector unit. XLA's CPU conv runs depthwise as a grouped conv
   and is 10-30x slower forward, 2-5x slower forward+backward.
2. grouped with few channels per group (1 < groups, ``C_in/groups <= MAC_GROUP_CHANNELS``)
   -> ``lax:mac``: XLA's grouped conv forward is 1-4x slower and its backward 50-100x.
3. input dilation (transposed conv, ``lhs_dilation > 1``) -> ``lax:xla_fwd``: XLA's forward is
   fast (faster than the phase-decomposed ``taps``), its backward is not (the weight gradient
   is a conv with a dilated Ho x Wo kernel: 5-30x slower than the per-phase GEMMs here).
4. dense 1x1, channels-last caller -> ``lax:taps``: one GEMM forward and backward; XLA's
   forward is 1.1-2x slower and its weight gradient (a conv with an Ho x Wo kernel) 2-3x.
   NCHW caller -> ``lax:xla_fwd`` (XLA's forward without a layout change, the GEMM weight
   gradient; not measured against ``taps`` with the transposes).
5. dense bfloat16, undilated, at least 128 input channels -> ``lax:taps``: one bfloat16 GEMM
   per tap. XLA's CPU conv runs bfloat16 no faster than float32; the GEMMs use the CPU's
   bfloat16 units: forward 2-3.6x and fwd+bwd 1.8-2.8x faster than XLA on the ResNet-50 and
   VGG-16 3x3 layers with 128-512 channels (one exception measured: VGG conv3_2 fwd+bwd, 1.8x
   against ``xla_fwd``'s 2.6x). With 64 channels or fewer ``taps`` was slower (0.07-0.6x fwd).
6. dense, undilated, output of at least 28x28 pixels -> ``lax:xla_fwd``: XLA's forward and
   input gradient (both convs it does well), the weight gradient as patch GEMMs walked over
   row chunks. XLA computes that gradient as a conv whose "kernel" is the Ho x Wo output: at
   28x28 and up that is 1.2-2.6x slower fwd+bwd (ResNet-50 3x3 1.6-1.9x, VGG-16 1.3-2.6x,
   U-Net 2.6x); at 14x14 and below, or with a dilated kernel, it is as fast or faster.
7. dense, undilated, smaller output but many output positions (``N*Ho*Wo >= 4096``) and
   16-128 channels in, at most 128 out -> ``lax:xla_fwd`` too: XLA's weight-gradient conv is slow
   there as well (the seed's MNIST conv2 at batch 128: 1.9x fwd+bwd; 64-128 channels at 14x14,
   batch 32-64: 1.3-2.5x); with 256-512 channels at 7x7-14x14 XLA's stays faster (0.5-0.85x),
   and below 4096 positions it is a tie or XLA's (MNIST conv2 at batch 32: 0.86x). With fewer
   than 16 input channels XLA's gradient is cheap (MNIST conv1, C_in = 1, batch 32: 0.6x).
8. everything else (dense) -> ``xla``.

``auto`` on GPU / TPU: ``xla``. cuDNN (GPU) and the TPU convolution emitter are the
vendor-tuned paths; the lax algorithms are CPU formulations (the ``mac`` unrolling in
particular is built for a CPU's vector unit) and jconv has no measurements showing them ahead
there. The Pallas kernel (``impl="pallas"``) is selectable explicitly; ``auto`` will pick it
only once measurements on the accelerator show it ahead (then this docstring changes).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable

from jconv.geometry import ConvSpec

log = logging.getLogger("jconv.select")

#: ``auto`` uses ``mac`` for grouped convs with at most this many input channels per group.
MAC_GROUP_CHANNELS = 16
#: ``auto`` runs a dense, undilated conv as ``xla_fwd`` from this many output pixels (28x28) on.
XLA_FWD_MIN_OUT_PIXELS = 28 * 28
#: ... and from this many output positions (N*Ho*Wo) on, when it has ``XLA_FWD_MIN_CHANNELS``
#: to ``XLA_FWD_MAX_CHANNELS`` input channels and at most that many output channels.
XLA_FWD_MIN_POSITIONS = 4096
XLA_FWD_MIN_CHANNELS = 16
XLA_FWD_MAX_CHANNELS = 128
#: ``auto`` runs a dense, undilated bfloat16 conv with this many input channels or more as ``taps``.
BF16_TAPS_MIN_CHANNELS = 128


@dataclasses.dataclass(frozen=True)
class Plan:
    impl: str          # "xla" | "lax" | "pallas"
    algorithm: str     # e.g. "im2col", "taps", "depthwise", "mac", "xla", "pallas"
    fn: Callable
    reason: str

    @property
    def explicit(self) -> str:
        """The impl string that names this plan exactly ("xla", "pallas", "lax:<algorithm>")."""
        return self.impl if self.impl != "lax" else f"lax:{self.algorithm}"


def _lax_rule(spec: ConvSpec) -> tuple[str, str]:
    """The lax algorithm for ``spec`` (used by ``impl="lax"`` and by ``auto`` on the CPU)."""
    if spec.is_depthwise:
        return "depthwise", "groups == C_in: per-tap multiply-accumulate, no matmul"
    if spec.groups > 1 and spec.group_in_channels <= MAC_GROUP_CHANNELS:
        from jconv.impls.lax_conv import supports

        if supports("mac", spec):
            return "mac", (f"grouped, {spec.group_in_channels} input channels per group: "
                           "multiply-accumulate on the vector unit")
    if spec.group_in_channels < 16 and not spec.is_pointwise:
        return "im2col", "few input channels: one GEMM over the (chunked) patches, K = KH*KW*C_in"
    if spec.lhs_dilation != (1, 1):
        return "taps", "input dilation: per-phase tap GEMMs, inserted zeros skipped"
    return "taps", "dense: one GEMM per kernel tap, accumulated"


def _auto_rule(spec: ConvSpec, platform: str, layout: str = "NHWC") -> tuple[str, str]:
    """``(algorithm, reason)`` where algorithm ``"xla"`` means XLA's conv."""
    if platform != "cpu":
        return "xla", (f"{platform}: XLA's convolution (cuDNN / TPU emitter) is the tuned path; "
                       "the lax algorithms are CPU formulations")
    name, why = _lax_rule(spec)
    if spec.is_depthwise or name == "mac":
        return name, why
    if spec.lhs_dilation != (1, 1):
        return "xla_fwd", ("input dilation: XLA's conv forward and input gradient, the weight "
                           "gradient per phase as GEMMs (XLA's is 5-30x slower)")
    if spec.is_pointwise and layout == "NHWC":
        return "taps", ("1x1, channels-last: a plain GEMM forward and backward (XLA's forward is "
                        "1.1-2x slower, its weight gradient a conv with an Ho x Wo kernel)")
    if spec.is_pointwise:
        return "xla_fwd", ("1x1, NCHW caller: XLA's conv forward (no layout change), the weight "
                           "gradient as one GEMM (XLA's is a conv with an Ho x Wo kernel, 2-3x slower)")
    if spec.dilation == (1, 1):
        ho, wo = spec.out_size
        positions = spec.batch * ho * wo
        if spec.dtype == "bfloat16" and spec.group_in_channels >= BF16_TAPS_MIN_CHANNELS:
            return "taps", (f"dense bfloat16, {spec.group_in_channels} input channels: one bfloat16 GEMM "
                            "per tap (XLA's CPU conv computes bfloat16 at float32 speed: fwd 2-3.6x, "
                            "fwd+bwd 1.8-2.8x slower here)")
        if ho * wo >= XLA_FWD_MIN_OUT_PIXELS:
            return "xla_fwd", (f"dense, {ho}x{wo} output: XLA's conv forward and input gradient, the "
                               "weight gradient as chunked patch GEMMs (XLA's: 1.2-2.6x slower there)")
        if (positions >= XLA_FWD_MIN_POSITIONS
                and XLA_FWD_MIN_CHANNELS <= spec.group_in_channels
                and max(spec.group_in_channels, spec.out_channels) <= XLA_FWD_MAX_CHANNELS):
            return "xla_fwd", (f"dense, {positions} output positions, "
                               f"{XLA_FWD_MIN_CHANNELS}-{XLA_FWD_MAX_CHANNELS} channels: "
                               "XLA's conv forward and input gradient, the weight gradient as chunked "
                               "patch GEMMs (XLA's: 1.3-2.5x slower there)")
    return "xla", ("dense, small output or dilated kernel: XLA's CPU convolution, forward and "
                   "backward (its weight gradient is as fast as the patch GEMMs there)")


def _channels_first(name: str, why: str, layout: str) -> tuple[str, str]:
    if layout == "NCHW" and name in ("mac", "depthwise"):
        return "mac_cf", why + "; channels-first for the NCHW input (layout changes cancel)"
    return name, why


@functools.lru_cache(maxsize=None)
def _warn_stale(fn: str, impl: str, why: str) -> None:
    """Once per process and entry: a plan is made on every call, a warning need not be."""
    log.warning("%s: ignoring the tune cache entry %s for this convolution (%s); the rules apply", fn, impl, why)


def _tuned(spec: ConvSpec, platform: str, layout: str, fn: str) -> Plan | None:
    """The plan a tune cache entry names for ``spec`` on this device (see jconv.tuning), if any."""
    from jconv import tuning
    from jconv.geometry import check_impl

    entry = tuning.lookup(spec, layout, platform)
    if entry is None:
        return None
    impl = entry.get("impl")
    try:
        if check_impl(fn, impl) in ("auto", "lax"):
            raise ValueError("not an explicit implementation")
        p = plan(spec, impl, fn=fn, platform=platform, layout=layout)
    except (TypeError, ValueError) as e:
        _warn_stale(fn, repr(impl), str(e))
        return None
    ms = tuning.format_times(entry.get("times_ms", {}), limit=3)
    return dataclasses.replace(p, reason=f"auto: tuned ({entry.get('objective')}: {ms})")


def resolve(spec: ConvSpec, impl: str, *, fn: str = "conv2d", layout: str = "NHWC",
            use_cache: bool = True) -> str:
    """``impl`` with ``auto`` / ``lax`` replaced by the explicit impl the plan runs (the key a
    jit cache must see, so that a later tune re-traces instead of reusing the old choice)."""
    return plan(spec, impl, fn=fn, layout=layout, use_cache=use_cache).explicit


def plan(spec: ConvSpec, impl: str, *, fn: str = "conv2d", platform: str | None = None,
         layout: str = "NHWC", use_cache: bool = True) -> Plan:
    """Choose the implementation for ``spec``. ``impl`` was checked by geometry.check_impl.

    ``platform`` ("cpu", "gpu", "tpu") is the target; by default JAX's default backend.
    ``layout`` is the caller's layout (``spec`` itself is the NHWC execute spec): for NCHW
    callers the ``mac`` family runs channels-first (``mac_cf``). ``use_cache=False``: the rules
    alone, whatever a tune cache says.
    """
    base, _, algo = impl.partition(":")
    from jconv.impls.xla import conv_xla

    if base == "xla":
        return Plan("xla", "xla", conv_xla, "requested")
    if base == "pallas":
        from jconv.impls.pallas import conv_pallas

        return Plan("pallas", "pallas", conv_pallas, "requested")
    from jconv.impls import lax_conv

    if algo:
        if not lax_conv.supports(algo, spec):
            raise ValueError(
                f"{fn}: impl (={impl!r}) cannot run this convolution (groups={spec.groups}, "
                f"C_in={spec.in_channels}, kernel={spec.kernel_size}); use impl='lax' to let "
                "jconv choose"
            )
        return Plan("lax", algo, lax_conv.ALGORITHMS[algo], "requested")
    if base == "lax":
        name, why = _channels_first(*_lax_rule(spec), layout)
        return Plan("lax", name, lax_conv.ALGORITHMS[name], why)
    import jax

    if platform is None:
        platform = jax.default_backend()
    tuned = _tuned(spec, platform, layout, fn) if use_cache else None
    if tuned is not None:
        return tuned
    name, why = _channels_first(*_auto_rule(spec, platform, layout), layout)
    if name == "xla":
        return Plan("xla", "xla", conv_xla, f"auto: {why}")
    return Plan("lax", name, lax_conv.ALGORITHMS[name], f"auto: {why}")
