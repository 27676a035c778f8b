"""Helpers shared by the implementations (the execute contract is in ``jconv.impls``)."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jconv.spec import ExecSpec


def acc_dtype(spec: ExecSpec):
    """Accumulator dtype: float64 when float64 is involved, else float32."""
    return jnp.float64 if "float64" in (spec.dtype, spec.out_dtype) else jnp.float32


def pad_input(x, spec: ExecSpec):
    """Apply ``spec.padding`` (zeros) and ``spec.lhs_dilation`` (interior zeros) to NHWC ``x``."""
    (pt, pb), (pl, pr) = spec.padding
    lh, lw = spec.lhs_dilation
    if (pt, pb, pl, pr, lh, lw) == (0, 0, 0, 0, 1, 1):
        return x
    zero = jnp.zeros((), x.dtype)
    return lax.pad(x, zero, ((0, 0, 0), (pt, pb, lh - 1), (pl, pr, lw - 1), (0, 0, 0)))


def add_bias(y, b, axis: int = -1):
    """``y`` plus bias ``b`` (C_out,) along ``y``'s channel ``axis`` (default the last),
    without implicit rank promotion."""
    if b is None:
        return y
    shape = [1] * y.ndim
    shape[axis] = -1
    return y + b.astype(y.dtype).reshape(shape)


def transpose_kernel(w, groups: int):
    """HWIO (KH, KW, Cg, G*Cog) -> flipped (KH, KW, Cog, G*Cg): the kernel of the input gradient
    (a convolution of the cotangent), in/out channels swapped within each group."""
    kh, kw, cg, co = w.shape
    cog = co // groups
    wt = w.reshape(kh, kw, cg, groups, cog)[::-1, ::-1]
    return jnp.transpose(wt, (0, 1, 4, 3, 2)).reshape(kh, kw, cog, groups * cg)
