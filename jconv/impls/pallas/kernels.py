"""Kernel bodies of the Pallas Conv2D (no pallas_call here: see ops.py).

Refs arrive with squeezed leading block dims (the BlockSpecs in ops.py use ``None``):

* ``x_ref``: (P, rows_in, in_w, C) -- the stride's phases of one row tile of the padded input;
  tap t reads the unit-stride window ``x_ref[p_t, u_t:u_t+rows, v_t:v_t+out_w, :]``.
* ``w_ref``: (T, C_in_block, C_out_block) for dense/grouped, (T, C_block) for depthwise.
* ``o_ref``: (rows, out_w, C_out_block) output tile, or the weight-gradient block.

Accumulation is in float32: in a VMEM scratch ref when the target has one (TPU, and the CPU
interpreter), in values carried through the unrolled taps on Triton.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

F32 = jnp.float32


def _window(x_ref, tap, rows, out_w, c0=None, width=None):
    p, u, v = tap
    cs = slice(None) if c0 is None else pl.ds(c0, width)
    return x_ref[p, pl.ds(u, rows), pl.ds(v, out_w), cs]


# ------------------------------------------------------------------------------------------
# dense / grouped (groups bundled block-diagonally): matmuls of shifted windows
# ------------------------------------------------------------------------------------------


def conv_fwd_kernel(x_ref, w_ref, b_ref, o_ref, *scratch, taps, rows, out_w, chunk, k_axis, nk, precision):
    """o = sum over taps and input-channel chunks of window @ w[tap] (+ bias at the end)."""
    bci = x_ref.shape[-1]
    bco = o_ref.shape[-1]
    m = rows * out_w

    def partial_sum(t, tap, c0):
        win = _window(x_ref, tap, rows, out_w, c0, chunk).reshape(m, chunk)
        return jnp.dot(win, w_ref[t, pl.ds(c0, chunk), :], preferred_element_type=F32, precision=precision)

    def finish(acc):
        o_ref[...] = (acc + b_ref[...].astype(F32)).reshape(rows, out_w, bco).astype(o_ref.dtype)

    if not scratch:  # Triton: accumulate in values, one write
        acc = None
        for t, tap in enumerate(taps):
            for c0 in range(0, bci, chunk):
                part = partial_sum(t, tap, c0)
                acc = part if acc is None else acc + part
        finish(acc)
        return

    (acc_ref,) = scratch
    k = pl.program_id(k_axis)

    @pl.when(k == 0)
    def _init():
        acc_ref[...] = jnp.zeros(acc_ref.shape, F32)

    for t, tap in enumerate(taps):
        for c0 in range(0, bci, chunk):
            acc_ref[...] += partial_sum(t, tap, c0)

    @pl.when(k == nk - 1)
    def _done():
        finish(acc_ref[...])


def _dw_contrib(x_tile, g, tap, rows, out_w, precision):
    win = x_tile(tap).reshape(rows * out_w, -1)
    # (M, Ci)^T @ (M, Co): contract the pixel dimension of both
    return lax.dot_general(win, g, (((0,), (0,)), ((), ())), preferred_element_type=F32, precision=precision)


def conv_dw_kernel(x_ref, g_ref, o_ref, acc_ref, *, taps, rows, out_w, precision, red_axes):
    """Weight gradient, one (C_in block, C_out block) per output block; the grid reduces over
    (batch, row tiles) on its last two ("arbitrary") axes: acc[t] += window_t^T @ g."""
    first = (pl.program_id(red_axes[0]) == 0) & (pl.program_id(red_axes[1]) == 0)
    last = (pl.program_id(red_axes[0]) == pl.num_programs(red_axes[0]) - 1) & (
        pl.program_id(red_axes[1]) == pl.num_programs(red_axes[1]) - 1)

    @pl.when(first)
    def _init():
        acc_ref[...] = jnp.zeros(acc_ref.shape, F32)

    g = g_ref[...].reshape(rows * out_w, g_ref.shape[-1])
    for t, tap in enumerate(taps):
        acc_ref[t] += _dw_contrib(lambda tp: _window(x_ref, tp, rows, out_w), g, tap, rows, out_w, precision)

    @pl.when(last)
    def _done():
        o_ref[...] = acc_ref[...].astype(o_ref.dtype)


def conv_dw_kernel_loop(x_ref, g_ref, o_ref, *, taps, rows, out_w, precision, batch, row_tiles):
    """Triton form of :func:`conv_dw_kernel`: the (batch, row tile) reduction is a loop inside
    the kernel (Triton programs run concurrently, so they cannot share an output block)."""
    bco = g_ref.shape[-1]

    def body(step, accs):
        n, r = lax.div(step, jnp.int32(row_tiles)), lax.rem(step, jnp.int32(row_tiles))
        g = g_ref[n, pl.ds(r * rows, rows), :, :].reshape(rows * out_w, bco)
        xt = lambda tp: x_ref[n, r, tp[0], pl.ds(tp[1], rows), pl.ds(tp[2], out_w), :]
        return tuple(a + _dw_contrib(xt, g, tap, rows, out_w, precision) for a, tap in zip(accs, taps))

    zeros = tuple(jnp.zeros((x_ref.shape[-1], bco), F32) for _ in taps)
    accs = lax.fori_loop(0, batch * row_tiles, body, zeros)
    for t, a in enumerate(accs):
        o_ref[t] = a.astype(o_ref.dtype)


# ------------------------------------------------------------------------------------------
# depthwise: per-channel multiply-accumulate over taps on the vector unit (channels on lanes)
# ------------------------------------------------------------------------------------------


def depthwise_fwd_kernel(x_ref, w_ref, b_ref, o_ref, *, taps, rows, out_w):
    c = o_ref.shape[-1]
    acc = jnp.broadcast_to(b_ref[...].astype(F32).reshape(1, 1, c), (rows, out_w, c))
    for t, tap in enumerate(taps):
        wt = w_ref[pl.ds(t, 1), :].astype(F32).reshape(1, 1, c)
        acc = acc + _window(x_ref, tap, rows, out_w).astype(F32) * wt
    o_ref[...] = acc.astype(o_ref.dtype)


def depthwise_dw_kernel(x_ref, g_ref, o_ref, acc_ref, *, taps, rows, out_w, red_axes):
    """dw[t, c] = sum over pixels of window_t[.., c] * g[.., c]; grid reduces over (n, r)."""
    first = (pl.program_id(red_axes[0]) == 0) & (pl.program_id(red_axes[1]) == 0)
    last = (pl.program_id(red_axes[0]) == pl.num_programs(red_axes[0]) - 1) & (
        pl.program_id(red_axes[1]) == pl.num_programs(red_axes[1]) - 1)
    c = g_ref.shape[-1]

    @pl.when(first)
    def _init():
        acc_ref[...] = jnp.zeros(acc_ref.shape, F32)

    g = g_ref[...].astype(F32).reshape(rows * out_w, c)
    for t, tap in enumerate(taps):
        prod = _window(x_ref, tap, rows, out_w).astype(F32).reshape(rows * out_w, c) * g
        acc_ref[pl.ds(t, 1), :] += jnp.sum(prod, axis=0, keepdims=True)

    @pl.when(last)
    def _done():
        o_ref[...] = acc_ref[...].astype(o_ref.dtype)


def depthwise_dw_kernel_loop(x_ref, g_ref, o_ref, *, taps, rows, out_w, batch, row_tiles):
    """Triton form of :func:`depthwise_dw_kernel` (reduction loop inside the kernel)."""
    c = g_ref.shape[-1]

    def body(step, accs):
        n, r = lax.div(step, jnp.int32(row_tiles)), lax.rem(step, jnp.int32(row_tiles))
        g = g_ref[n, pl.ds(r * rows, rows), :, :].astype(F32).reshape(rows * out_w, c)
        out = []
        for a, (p, u, v) in zip(accs, taps):
            win = x_ref[n, r, p, pl.ds(u, rows), pl.ds(v, out_w), :].astype(F32).reshape(rows * out_w, c)
            out.append(a + jnp.sum(win * g, axis=0))
        return tuple(out)

    accs = lax.fori_loop(0, batch * row_tiles, body, tuple(jnp.zeros((c,), F32) for _ in taps))
    for t, a in enumerate(accs):
        o_ref[t, :] = a.astype(o_ref.dtype)


__all__ = [
    "conv_fwd_kernel", "conv_dw_kernel", "conv_dw_kernel_loop",
    "depthwise_fwd_kernel", "depthwise_dw_kernel", "depthwise_dw_kernel_loop",
]
