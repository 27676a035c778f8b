"""Kernel bodies of the Pallas Conv2D (no pallas_call here: see calls.py).

Refs arrive with squeezed leading block dims (the BlockSpecs in calls.py use ``None``):

* ``x_ref``: (P, rows_in, in_w, C) -- the stride's phases of one row tile of the padded input;
  tap t reads the unit-stride window ``x_ref[p_t, u_t:u_t+rows, v_t:v_t+out_w, :]``.
* ``w_ref``: (T, C_in_block, C_out_block) for dense/grouped, (T, C_block) for depthwise.
* ``o_ref``: (rows, out_w, C_out_block) output tile, or the weight-gradient block.

Accumulation is in float32: in a VMEM scratch ref on TPU (and the CPU interpreter), across the
grid's "arbitrary" reduction axes; on Triton, whose programs run concurrently and have no
scratch, in values inside one program (the ``*_triton`` kernels loop over the reduction).
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


#: Triton kernels unroll at most this many taps; more (a 7x7 kernel) run as a loop over a
#: regular tap grid (:func:`_tap_grid`), whose offsets are computed from the loop index.
TRITON_UNROLLED_TAPS = 9


def _tap_grid(taps):
    """``(kw, u0, v0, du, dv)`` when ``taps`` are one phase's regular grid, tap ``t`` at
    ``(0, u0 + (t // kw) * du, v0 + (t % kw) * dv)`` (every stride-1 kernel); else None."""
    if not taps or any(p != 0 for p, _, _ in taps):
        return None
    _, u0, v0 = taps[0]
    kw = sum(1 for _, u, _ in taps if u == u0)
    if len(taps) % kw:
        return None
    kh = len(taps) // kw
    du = taps[kw][1] - u0 if kh > 1 else 0
    dv = taps[1][2] - v0 if kw > 1 else 0
    grid = tuple((0, u0 + i * du, v0 + j * dv) for i in range(kh) for j in range(kw))
    return (kw, u0, v0, du, dv) if grid == tuple(taps) else None


def _chunk_start(c, chunk: int):
    """The first channel of chunk ``c``: a traced loop index is marked a multiple of ``chunk``
    (aligned loads); a Python int (one chunk: the loop's index is the constant 0) stays an int,
    which ``pl.multiple_of`` cannot lower on Triton."""
    return c * chunk if isinstance(c, int) else pl.multiple_of(c * chunk, chunk)


def _first_last(red_axes):
    first = (pl.program_id(red_axes[0]) == 0) & (pl.program_id(red_axes[1]) == 0)
    last = (pl.program_id(red_axes[0]) == pl.num_programs(red_axes[0]) - 1) & (
        pl.program_id(red_axes[1]) == pl.num_programs(red_axes[1]) - 1)
    return first, last


# ------------------------------------------------------------------------------------------
# dense / grouped (groups bundled block-diagonally): matmuls of shifted windows
# ------------------------------------------------------------------------------------------


def conv_fwd_kernel(x_ref, w_ref, o_ref, *scratch, taps, rows, out_w, chunk, k_axis, nk, precision):
    """o = sum over taps and input-channel chunks of window @ w[tap]."""
    bci = x_ref.shape[-1]
    bco = o_ref.shape[-1]
    m = rows * out_w

    def partial_sum(t, tap, c0):
        win = _window(x_ref, tap, rows, out_w, c0, chunk).reshape(m, chunk)
        return jnp.dot(win, w_ref[t, pl.ds(c0, chunk), :], preferred_element_type=F32, precision=precision)

    def finish(acc):
        o_ref[...] = acc.reshape(rows, out_w, bco).astype(o_ref.dtype)

    if not scratch:  # Triton: accumulate in values, one write; the chunks a loop (code size:
        # unrolled, a 512-channel 3x3 layer was 144 dots and ~200 s of ptxas)
        acc = jnp.zeros((m, bco), F32)
        nc = bci // chunk
        grid = _tap_grid(taps) if len(taps) > TRITON_UNROLLED_TAPS else None
        if grid is not None:  # the taps a loop too (the stem's input gradient: 49 taps, 7 min of ptxas)
            kw, u0, v0, du, dv = grid

            def tap_body(s, acc):  # lax.div/rem: non-negative, and jnp's floor forms do not lower to Triton
                t, c = (s, 0) if nc == 1 else (lax.div(s, nc), lax.rem(s, nc))
                tap = (0, u0 + lax.div(t, kw) * du, v0 + lax.rem(t, kw) * dv)
                return acc + partial_sum(t, tap, _chunk_start(c, chunk))

            finish(lax.fori_loop(0, len(taps) * nc, tap_body, acc))
            return
        for t, tap in enumerate(taps):
            def body(c, acc, t=t, tap=tap):
                return acc + partial_sum(t, tap, _chunk_start(c, chunk))

            acc = lax.fori_loop(0, bci // chunk, body, acc)
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


def _dw_contrib(win, g, precision):
    # (M, Ci)^T @ (M, Co): contract the pixel dimension of both
    return lax.dot_general(win, g, (((0,), (0,)), ((), ())), preferred_element_type=F32, precision=precision)


def conv_dw_kernel(x_ref, g_ref, o_ref, acc_ref, *, taps, rows, out_w, precision, red_axes):
    """Weight gradient, one (C_in block, C_out block) per output block; the grid reduces over
    (batch, row tiles) on its last two ("arbitrary") axes: acc[t] += window_t^T @ g."""
    first, last = _first_last(red_axes)

    @pl.when(first)
    def _init():
        acc_ref[...] = jnp.zeros(acc_ref.shape, F32)

    m = rows * out_w
    g = g_ref[...].reshape(m, g_ref.shape[-1])
    for t, tap in enumerate(taps):
        acc_ref[t] += _dw_contrib(_window(x_ref, tap, rows, out_w).reshape(m, -1), g, precision)

    @pl.when(last)
    def _done():
        o_ref[...] = acc_ref[...].astype(o_ref.dtype)


def _split_steps(split_axis: int, steps: int, splits: int):
    """The reduction steps of this program: ``per`` steps from ``lo``; steps past the end are
    clamped (in-bounds loads) and masked by ``valid``."""
    per = -(-steps // splits)
    lo = pl.program_id(split_axis) * per

    def step(i):
        s = lo + i
        return jnp.minimum(s, steps - 1), (s < steps).astype(F32)

    return per, step


def conv_dw_kernel_triton(x_ref, g_ref, o_ref, *, taps, rows, out_w, precision, steps, row_tiles, splits,
                          split_axis):
    """Triton form of :func:`conv_dw_kernel`: one (C_in block, C_out block) per program, one tap
    at a time (one accumulator in registers), the (batch, row tile) reduction a loop inside the
    kernel over this program's share of it (``splits`` programs share it; XLA adds them up)."""
    m = rows * out_w
    bci, bco = x_ref.shape[-1], g_ref.shape[-1]
    per, step = _split_steps(split_axis, steps, splits)
    for t, (p, u, v) in enumerate(taps):
        def body(i, acc, p=p, u=u, v=v):
            s, valid = step(i)
            n, r = lax.div(s, jnp.int32(row_tiles)), lax.rem(s, jnp.int32(row_tiles))
            g = g_ref[n, pl.ds(r * rows, rows), :, :].reshape(m, bco).astype(F32) * valid
            win = x_ref[n, r, p, pl.ds(u, rows), pl.ds(v, out_w), :].reshape(m, bci)
            return acc + _dw_contrib(win.astype(F32), g, precision)

        o_ref[t] = lax.fori_loop(0, per, body, jnp.zeros((bci, bco), F32)).astype(o_ref.dtype)


# ------------------------------------------------------------------------------------------
# depthwise: per-channel multiply-accumulate over taps on the vector unit (channels on lanes)
# ------------------------------------------------------------------------------------------


def depthwise_fwd_kernel(x_ref, w_ref, o_ref, *, taps, rows, out_w):
    c = o_ref.shape[-1]
    acc = jnp.zeros((rows, out_w, c), F32)
    for t, tap in enumerate(taps):
        wt = w_ref[pl.ds(t, 1), :].astype(F32).reshape(1, 1, c)
        acc = acc + _window(x_ref, tap, rows, out_w).astype(F32) * wt
    o_ref[...] = acc.astype(o_ref.dtype)


def depthwise_dw_kernel(x_ref, g_ref, o_ref, acc_ref, *, taps, rows, out_w, red_axes):
    """dw[t, c] = sum over pixels of window_t[.., c] * g[.., c]; grid reduces over (n, r)."""
    first, last = _first_last(red_axes)
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


def depthwise_dw_kernel_triton(x_ref, g_ref, o_ref, *, taps, rows, out_w, steps, row_tiles, splits, split_axis):
    """Triton form of :func:`depthwise_dw_kernel` (one tap at a time, the reduction a loop over
    this program's share of (batch, row tiles))."""
    c = g_ref.shape[-1]
    m = rows * out_w
    per, step = _split_steps(split_axis, steps, splits)
    for t, (p, u, v) in enumerate(taps):
        def body(i, acc, p=p, u=u, v=v):
            s, valid = step(i)
            n, r = lax.div(s, jnp.int32(row_tiles)), lax.rem(s, jnp.int32(row_tiles))
            g = g_ref[n, pl.ds(r * rows, rows), :, :].astype(F32).reshape(m, c) * valid
            win = x_ref[n, r, p, pl.ds(u, rows), pl.ds(v, out_w), :].astype(F32).reshape(m, c)
            return acc + jnp.sum(win * g, axis=0)

        o_ref[t, :] = lax.fori_loop(0, per, body, jnp.zeros((c,), F32)).astype(o_ref.dtype)


__all__ = [
    "conv_fwd_kernel", "conv_dw_kernel", "conv_dw_kernel_triton",
    "depthwise_fwd_kernel", "depthwise_dw_kernel", "depthwise_dw_kernel_triton",
]
