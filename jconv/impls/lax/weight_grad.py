"""The lax engine's weight gradients: for each tap, ``x``'s window contracted with the
cotangent's phase over (N, rows, cols).

Two schemes, by the algorithm's family:

* the GEMM family (``taps``, ``im2col``, ``xla_fwd``): dense convs build patches in row chunks
  and contract them with ``dy`` (K = N*rows*cols) in a ``lax.scan``, K-major from a
  channels-first copy of ``x`` where that is faster; grouped convs do one batched GEMM per tap;
* the ``mac`` family (``mac``, ``depthwise``, ``mac_cf``): a per-tap multiply-reduce, walked
  over row chunks so each tap's window stays in cache.

The chunk sizes are :data:`CHUNKS` (measurements: docs/performance.md, the algorithms).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jax import lax

from jconv.impls.common import acc_dtype, transpose_kernel
from jconv.impls.lax import taps as tp
from jconv.impls.lax.contractions import MAC_FAMILY, dot
from jconv.spec import ExecSpec


@dataclasses.dataclass(frozen=True)
class Chunks:
    """How the weight gradients walk a phase's output rows (docs/performance.md, the algorithms)."""

    #: ``mac``'s weight gradient walks output rows in chunks of about this many bytes of input
    mac_bytes: int = 1 << 19
    #: the dense weight gradient builds its patch matrix for chunks of about this many bytes ...
    im2col_bytes: int = 1 << 18
    #: ... and of at least this many rows (N*rows*cols) per output channel, so re-reading and
    #: writing the (T*Cg, C_out) accumulator per chunk stays small next to the patches
    im2col_min_k_per_cout: int = 8
    #: stride 1: the patches K-major, ``(KH*KW*Cg, rows)``, from one channels-first copy of x,
    #: in chunks of about this many bytes (0 disables it). XLA's CPU GEMM runs
    #: ``(K, M) @ (M, N)`` faster than the contraction over M of ``patches^T @ dy``
    kmajor_bytes: int = 1 << 22
    #: ... when the output is at least this many columns wide (each window row is then a
    #: contiguous run); narrower outputs keep the row-major chunks, measured faster there (the
    #: seed's MNIST training step)
    kmajor_min_cols: int = 28


CHUNKS = Chunks()


def weight_grad(x, dy, spec: ExecSpec, mode: str):
    """dL/dw of ``spec`` by the scheme of algorithm ``mode``: (KH, KW, C_in/groups, C_out) in
    the accumulator dtype."""
    if spec.lhs_dilation != (1, 1) and spec.stride == (1, 1):
        # A transposed conv's phases split dw into small per-phase GEMMs. Its adjoint (the conv
        # that computes dx: stride l, no input dilation) has none, and since
        # <conv(x, w), dy> = <x, conv(dy, T(w))> with T = transpose_kernel (a permutation and
        # its own inverse), dw = T(weight gradient of that conv with input dy, cotangent x).
        dwt = weight_grad(dy.astype(x.dtype), x, spec.input_grad_spec(), mode)
        return transpose_kernel(dwt, spec.groups)
    n, h, wd, _ = x.shape
    kh, kw, cg, co = spec.kernel_shape
    g, cog = spec.groups, co // spec.groups
    plan = tp.plan(spec, (h, wd))
    xp = tp.pad_spatial(x, plan.pads)
    acc_t = acc_dtype(spec)
    mac = mode in MAC_FAMILY
    dy = dy.astype(x.dtype) if not mac else dy
    grads: dict = {}
    lh, lw = plan.big_l
    for ph in plan.phases:
        if not ph.taps:
            continue
        dyp = dy if (lh, lw) == (1, 1) else dy[:, ph.p::lh, ph.q::lw]
        if mac:
            part = _mac_weight_grad(xp, dyp, ph, g, acc_t)
        elif g == 1:  # dense, every mode: chunked patches^T @ dy
            part = {ij: t[None] for ij, t in _im2col_weight_grad(xp, dyp, ph, spec).items()}
        else:  # grouped GEMM modes: one batched GEMM per tap
            dyg = dyp.reshape(n, ph.count[0], ph.count[1], g, cog)
            part = {ij: dot(tp.window(xp, st, ph.count, ph.xs).reshape(n, ph.count[0], ph.count[1], g, cg), dyg,
                            (((0, 1, 2), (0, 1, 2)), ((3,), (3,))), spec)  # (G, Cg, Cog)
                    for ij, st in ph.taps}
        for ij, t in part.items():
            grads[ij] = t if ij not in grads else grads[ij] + t
    zero = jnp.zeros((g, cg, cog), acc_t)
    dw = jnp.stack([grads.get((i, j), zero) for i in range(kh) for j in range(kw)])  # (T, G, Cg, Cog)
    return jnp.transpose(dw, (0, 2, 1, 3)).reshape(kh, kw, cg, co)


def _mac_weight_grad(xp, dy, ph: tp.Phase, g: int, acc_t):
    """``mac`` dw of one phase: per-tap multiply-reduce, walked over row chunks.

    Each tap's window is materialised before XLA's CPU reduction reads it; walking the output
    rows in small chunks keeps those windows in cache and the temporaries to a few chunks
    (a single pass would hold every tap's full window: KH*KW times the input).
    """
    taps, xs = ph.taps, ph.xs
    n, c = xp.shape[0], xp.shape[3]
    cg, co = c // g, dy.shape[3]
    cog = co // g
    rows, cols = ph.count
    row_bytes = n * cols * c * jnp.dtype(acc_t).itemsize
    r = int(max(1, min(rows, CHUNKS.mac_bytes // max(1, row_bytes))))
    base = min(st[0] for _, st in taps)

    def chunk(xr, dr):
        rr = dr.shape[1]
        dr = dr.astype(acc_t).reshape(n, rr, cols, g, 1, cog)
        out = []
        for _, st in taps:
            win = tp.chunk_window(xr, st, base, rr, cols, xs)
            win = win.astype(acc_t).reshape(n, rr, cols, g, cg, 1)
            out.append(jnp.sum(win * dr, axis=(0, 1, 2)))  # (G, Cg, Cog)
        return jnp.stack(out)

    total = tp.scan_row_chunks(xp, dy, taps, ph.count, xs, r, chunk, jnp.zeros((len(taps), g, cg, cog), acc_t))
    return {ij: total[k] for k, (ij, _) in enumerate(taps)}


def _im2col_weight_grad(xp, dy, ph: tp.Phase, spec: ExecSpec):
    """Dense dw of one phase: patches^T @ dy (K = N*rows*cols), walked over row chunks of
    about ``CHUNKS.im2col_bytes`` of patches. A single tap (1x1) is one GEMM, unchunked.

    Stride 1 with outputs at least ``CHUNKS.kmajor_min_cols`` wide builds the patches K-major
    instead, (T*Cg, N*r*cols) from a channels-first copy of x made once, in chunks of
    ``CHUNKS.kmajor_bytes``: a ``(K, M) @ (M, N)`` GEMM per chunk."""
    taps, xs = ph.taps, ph.xs
    n, t, cg = xp.shape[0], len(taps), xp.shape[3]
    co = dy.shape[3]
    rows, cols = ph.count
    if t == 1:
        win = tp.window(xp, taps[0][1], ph.count, xs)
        return {taps[0][0]: dot(win, dy, (((0, 1, 2), (0, 1, 2)), ((), ())), spec)}
    r_min = -(-CHUNKS.im2col_min_k_per_cout * co // (n * cols))
    kmajor = xs == (1, 1) and CHUNKS.kmajor_bytes > 0 and cols >= CHUNKS.kmajor_min_cols
    row_bytes = n * cols * t * cg * xp.dtype.itemsize
    budget = CHUNKS.kmajor_bytes if kmajor else CHUNKS.im2col_bytes
    r = int(max(1, min(rows, max(r_min, budget // max(1, row_bytes)))))
    base = min(st[0] for _, st in taps)

    def chunk(xr, dr):
        rr = dr.shape[1]
        if kmajor:  # xr (Cg, N, span, W)
            wins = [lax.slice(xr, (0, 0, st[0] - base, st[1]), (cg, n, st[0] - base + rr, st[1] + cols))
                    for _, st in taps]
            p = jnp.stack(wins, axis=0).reshape(t * cg, n * rr * cols)
            return dot(p, dr.reshape(n * rr * cols, co), (((1,), (0,)), ((), ())), spec)
        wins = [tp.chunk_window(xr, st, base, rr, cols, xs) for _, st in taps]
        p = jnp.concatenate(wins, axis=3)  # (N, r, cols, T*Cg)
        return dot(p, dr, (((0, 1, 2), (0, 1, 2)), ((), ())), spec)  # (T*Cg, Co)

    init = jnp.zeros((t * cg, co), acc_dtype(spec))
    acc = tp.scan_row_chunks(xp, dy, taps, ph.count, xs, r, chunk, init, channels_first=kmajor)
    acc = acc.reshape(t, cg, -1)
    return {ij: acc[k] for k, (ij, _) in enumerate(taps)}


__all__ = ["weight_grad", "CHUNKS", "Chunks"]
