"""The ``lax`` backend: Conv2D built from lax primitives (no ``lax.conv*`` but in ``xla_fwd``).

Every algorithm runs on one engine, split by concern:

* :mod:`.taps`: the convolution enumerated as *taps* (kernel positions) grouped into *phases*
  (output sub-lattices). Phases make input dilation (transposed convolution) cost no more than
  an ordinary conv: each phase is an ordinary strided conv of the *undilated* input with a
  sub-kernel, and no inserted zero is ever multiplied.
* :mod:`.contractions`: how a phase's taps are combined (the forward): ``taps``, ``im2col``,
  ``mac``/``depthwise``, ``mac_cf``, and ``xla_fwd`` (XLA's conv forward).
* :mod:`.weight_grad`: the two weight-gradient schemes (chunked patch GEMMs; multiply-reduce).
* :mod:`.rules`: what ``impl="lax"`` and ``impl="auto"`` choose, with their thresholds.

Gradients: the input gradient of a conv with (stride s, input dilation l) is the conv of ``dy``
with the flipped, in/out-swapped kernel with (stride l, input dilation s)
(:meth:`~jconv.spec.ExecSpec.input_grad_spec`) -- the same engine again, so the transposed
problem also skips every zero. Each algorithm is these three functions of a spec; the
convolution primitive (:mod:`jconv.primitive`) turns them into every transformation.
"""

from __future__ import annotations

from jax import lax

from jconv.impls import registry
from jconv.impls.common import transpose_kernel
from jconv.impls.lax import contractions, rules
from jconv.impls.lax.weight_grad import weight_grad as _weight_grad
from jconv.spec import ExecSpec


def _kernels(mode: str):
    def forward(x, w, spec: ExecSpec, target=None):
        return contractions.forward(x, w, spec, mode, target)

    def input_grad(dy, w, spec: ExecSpec, target=None):
        # the same engine on the transposed problem (every inserted zero skipped again). The
        # transposed kernel is materialised once: fused into mac's unrolled loop every output
        # element re-gathered it (slower); a GEMM or XLA conv reads a materialised kernel anyway
        wt = lax.optimization_barrier(transpose_kernel(w, spec.groups))
        return contractions.forward(dy.astype(w.dtype), wt, spec.input_grad_spec(), mode, target).astype(spec.dtype)

    def weight_grad(x, dy, spec: ExecSpec, target=None):
        return _weight_grad(x, dy, spec, mode).astype(spec.dtype)

    return forward, input_grad, weight_grad


_SUMMARIES = {
    "im2col": "patches (chunked) and one grouped GEMM per phase",
    "taps": "one GEMM per kernel tap (per phase), accumulated",
    "depthwise": "per-tap multiply-accumulate on the vector unit, groups == C_in",
    "mac": "per-tap, per-channel multiply-accumulate (grouped, few channels per group)",
    "mac_cf": "mac computed channels-first (NCHW callers: the layout changes cancel)",
    "xla_fwd": "XLA's conv forward and input gradient, this engine's weight gradient",
}
_SUPPORTS = {"depthwise": rules.supports_depthwise, "mac": rules.supports_mac, "mac_cf": rules.supports_mac}


def _supports(name: str):
    """The engine's dtypes (:func:`rules.supports_dtype`), then the algorithm's own limits."""
    own = _SUPPORTS.get(name, lambda spec: None)
    return lambda spec: rules.supports_dtype(spec) or own(spec)


ALGORITHMS: dict[str, registry.Algorithm] = {
    name: registry.Algorithm(name, *_kernels(name), supports=_supports(name), summary=summary)
    for name, summary in _SUMMARIES.items()
}


def supports(name: str, spec: ExecSpec) -> bool:
    """Whether lax algorithm ``name`` can run ``spec``."""
    return name in ALGORITHMS and ALGORITHMS[name].supports(spec) is None


BACKEND = registry.register(registry.Backend(
    name="lax", algorithms=ALGORITHMS, choose=rules.choose, auto=rules.auto,
    tune_candidates=lambda spec, platform: rules.tune_candidates(spec, platform, ALGORITHMS),
    summary="Conv2D from lax primitives (one tap/phase engine)",
))

__all__ = ["ALGORITHMS", "BACKEND", "supports"]
