"""Conv2D built from lax primitives only (no ``lax.conv*``).

Each algorithm follows the execute contract of :mod:`jconv.impls` and is differentiable by
JAX's autodiff of the primitives it uses (slices, pads, reshapes, ``dot_general``,
elementwise ops). Which one runs for ``impl="lax"`` is decided in :mod:`jconv.select`;
``impl="lax:<name>"`` forces one.

* ``im2col``: gather the KH*KW taps into patches and do one (grouped) GEMM. Few, large
  matmuls; memory ``KH*KW`` times the input.
* ``taps``: one GEMM per kernel tap, accumulated. Memory of one output; many smaller matmuls.
* ``depthwise``: ``groups == C_in``: multiply-accumulate over taps on the vector unit, no
  matmul at all (a matmul with one input channel per group wastes it).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from jax import lax

from jconv.geometry import ConvSpec
from jconv.impls.common import acc_dtype, add_bias, pad_input, tap_slice


def _grouped_weights(w, spec: ConvSpec):
    """HWIO (KH, KW, Cg, Co) -> (G, KH*KW*Cg, Co/G), rows ordered (tap, channel)."""
    kh, kw, cg, co = w.shape
    g = spec.groups
    w = w.reshape(kh * kw, cg, g, co // g)
    return jnp.transpose(w, (2, 0, 1, 3)).reshape(g, kh * kw * cg, co // g)


def _finish(y, b, spec: ConvSpec):
    return add_bias(y, b).astype(spec.out_dtype)


def conv_im2col(x, w, b, spec: ConvSpec):
    xp = pad_input(x, spec)
    kh, kw = spec.kernel_size
    n = xp.shape[0]
    ho, wo = spec.out_size
    g, cg = spec.groups, spec.group_in_channels
    taps = [tap_slice(xp, spec, i, j) for i in range(kh) for j in range(kw)]
    p = jnp.stack(taps, axis=3)  # (N, Ho, Wo, T, C)
    p = p.reshape(n * ho * wo, kh * kw, g, cg)
    p = jnp.transpose(p, (2, 0, 1, 3)).reshape(g, n * ho * wo, kh * kw * cg)
    wg = _grouped_weights(w, spec)  # (G, T*Cg, Cog)
    y = lax.dot_general(
        p, wg, (((2,), (1,)), ((0,), (0,))),
        precision=spec.precision, preferred_element_type=acc_dtype(spec),
    )  # (G, M, Cog)
    y = jnp.transpose(y, (1, 0, 2)).reshape(n, ho, wo, spec.out_channels)
    return _finish(y, b, spec)


def conv_taps(x, w, b, spec: ConvSpec):
    xp = pad_input(x, spec)
    kh, kw = spec.kernel_size
    n = xp.shape[0]
    ho, wo = spec.out_size
    g, cg, cog = spec.groups, spec.group_in_channels, spec.group_out_channels
    wt = w.reshape(kh, kw, cg, g, cog)
    acc = None
    for i in range(kh):
        for j in range(kw):
            xs = tap_slice(xp, spec, i, j).reshape(n, ho, wo, g, cg)
            t = lax.dot_general(
                xs, wt[i, j], (((4,), (0,)), ((3,), (1,))),
                precision=spec.precision, preferred_element_type=acc_dtype(spec),
            )  # (G, N, Ho, Wo, Cog)
            acc = t if acc is None else acc + t
    y = jnp.transpose(acc, (1, 2, 3, 0, 4)).reshape(n, ho, wo, spec.out_channels)
    return _finish(y, b, spec)


def conv_depthwise(x, w, b, spec: ConvSpec):
    if not spec.is_depthwise:
        raise NotImplementedError(
            f"conv2d: the 'depthwise' lax algorithm needs groups == C_in (got groups={spec.groups}, "
            f"C_in={spec.in_channels})"
        )
    acc_t = acc_dtype(spec)
    xp = pad_input(x, spec).astype(acc_t)
    kh, kw = spec.kernel_size
    c, m = spec.in_channels, spec.depth_multiplier
    wd = w.reshape(kh, kw, c, m).astype(acc_t)
    acc = None
    for i in range(kh):
        for j in range(kw):
            xs = tap_slice(xp, spec, i, j)
            t = xs[..., None] * wd[i, j][None, None, None] if m > 1 else xs * wd[i, j, :, 0][None, None, None]
            acc = t if acc is None else acc + t
    n, ho, wo = acc.shape[:3]
    y = acc.reshape(n, ho, wo, c * m)
    return _finish(y, b, spec)


ALGORITHMS: dict[str, Callable] = {
    "im2col": conv_im2col,
    "taps": conv_taps,
    "depthwise": conv_depthwise,
}


def supports(name: str, spec: ConvSpec) -> bool:
    """Whether lax algorithm ``name`` can run ``spec``."""
    if name == "depthwise":
        return spec.is_depthwise
    return name in ALGORITHMS
