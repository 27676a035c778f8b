"""Helpers shared by the implementations (the execute contract is in ``jconv.impls``)."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jconv.geometry import dtype_kind
from jconv.spec import ExecSpec


def acc_dtype(spec: ExecSpec):
    """The dtype products are summed in, by the kind of the result (:func:`jconv.geometry.dtype_kind`):

    * integer: exact, wrapping as lax's integer convolution does: the result's own width from
      32 bits up, else int32 (uint32 for an unsigned result); a sum mod 2**32 cast to a narrower
      result is that result's wrapped sum (int8 x int8 -> int8 wraps like lax's);
    * complex: complex128 when complex128 is involved, else complex64;
    * floating (from floating or integer operands): float64 when float64 is involved, else float32.
    """
    kind = dtype_kind(spec.out_dtype)
    if kind in ("int", "uint"):
        out = jnp.dtype(spec.out_dtype)
        if out.itemsize >= 4:
            return out
        return jnp.dtype(jnp.int32 if kind == "int" else jnp.uint32)
    if kind == "complex":
        return jnp.dtype(jnp.complex128 if "complex128" in (spec.dtype, spec.out_dtype) else jnp.complex64)
    return jnp.dtype(jnp.float64 if "float64" in (spec.dtype, spec.out_dtype) else jnp.float32)


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
