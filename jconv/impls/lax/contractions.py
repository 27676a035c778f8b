"""The forward contractions of the lax engine: how one phase's taps are combined.

* ``taps``: one GEMM per tap, accumulated. Memory of one output.
* ``im2col``: a phase's tap windows concatenated on the channel axis, then one GEMM; the patch
  matrix is built in chunks of output rows walked by a ``lax.scan``, so it never exceeds
  ``LIMITS.im2col_max_blowup`` times the input.
* ``mac`` and ``depthwise``: multiply-accumulate on the vector unit, no matmul at all: for
  each tap and each input channel of a group, a broadcast multiply-add into the output. The
  right thing when groups have few channels (depthwise, ResNeXt-style groups), where a GEMM
  with K = C_in/groups wastes the machine.
* ``mac_cf``: ``mac``'s forward on a channels-first copy of the input, vectorised along W; for
  NCHW callers the layout changes cancel, for NHWC callers they cost two transposes.
* ``xla_fwd``: XLA's conv (the forward, and the input gradient, itself a conv).

:func:`forward` runs one of them over every phase of :func:`jconv.impls.lax.taps.plan` and
interleaves the phase outputs; the input gradient is the same function on the transposed
problem (:meth:`~jconv.spec.ExecSpec.input_grad_spec`).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jax import lax

from jconv.impls import xla
from jconv.impls.common import acc_dtype
from jconv.impls.lax import taps as tp
from jconv.spec import ExecSpec


@dataclasses.dataclass(frozen=True)
class Limits:
    """The engine's own limits (not rules: they bound memory and program size)."""

    #: im2col builds its patch matrix in row chunks no larger than this multiple of the input
    #: (1 is both smaller and faster than larger blow-ups: docs/performance.md, the algorithms)
    im2col_max_blowup: int = 1
    #: ``mac`` unrolls C_in/groups * KH * KW multiply-adds per output; beyond this it is refused
    mac_max_terms: int = 1024


LIMITS = Limits()

#: the modes whose weight gradient is a multiply-reduce (no GEMM)
MAC_FAMILY = ("mac", "depthwise", "mac_cf")


def dot(a, b, dims, spec: ExecSpec):
    return lax.dot_general(a, b, dims, precision=spec.precision, preferred_element_type=acc_dtype(spec))


def _gemm_phase(xp, wt, ph: tp.Phase, spec: ExecSpec, target=None):
    """Sum over taps of window @ w[tap]; wt is (KH, KW, Cg, G, Cog).

    On CUDA each dense window is materialised as its (N*a*b, Cg) matrix: XLA's GPU compiler
    otherwise fuses a caller's NCHW -> NHWC transpose into the tap's Triton GEMM and finds no
    tiling for it ("Couldn't find output tile sizes that satisfy hlo: dot"), the failure the
    compile matrix found (docs/pallas.md, "What compiles where")."""
    g, cg, cog = wt.shape[3], wt.shape[2], wt.shape[4]
    n, count = xp.shape[0], ph.count
    materialise = target is not None and target.platform == "cuda"
    acc = None
    for (i, j), st in ph.taps:
        win = tp.window(xp, st, count, ph.xs)
        if g == 1:
            if materialise:
                win = lax.optimization_barrier(win.reshape(-1, cg)).reshape(win.shape)
            t = dot(win, wt[i, j, :, 0], (((3,), (0,)), ((), ())), spec)  # (N, a, b, Co)
        else:
            win = win.reshape(n, count[0], count[1], g, cg)
            t = dot(win, wt[i, j], (((4,), (0,)), ((3,), (1,))), spec)  # (G, N, a, b, Cog)
        acc = t if acc is None else acc + t
    if g > 1:
        acc = jnp.transpose(acc, (1, 2, 3, 0, 4)).reshape(n, count[0], count[1], g * cog)
    return acc


def _im2col_phase(xp, wt, ph: tp.Phase, spec: ExecSpec, target=None):
    """Concatenate the taps' windows on channels and do one (grouped) GEMM, in row chunks.

    Chunks are walked in a ``lax.scan`` writing into the output, so one chunk of patches
    (<= ``LIMITS.im2col_max_blowup`` x the input) is alive at a time; unrolled, XLA kept every
    chunk's patches alive at once (12.7x the input on a ResNet-50 3x3).
    """
    g, cg, cog = wt.shape[3], wt.shape[2], wt.shape[4]
    taps, xs = ph.taps, ph.xs
    n, t = xp.shape[0], len(taps)
    rows, cols = ph.count
    wg = jnp.stack([wt[i, j] for (i, j), _ in taps], axis=0)  # (T, Cg, G, Cog)
    wg = jnp.transpose(wg, (2, 0, 1, 3)).reshape(g, t * cg, cog)
    in_bytes = max(1, xp.size)
    r = int(max(1, min(rows, (LIMITS.im2col_max_blowup * in_bytes) // max(1, n * cols * t * cg * g))))
    base = min(st[0] for _, st in taps)

    def chunk(xr, rc):
        wins = [tp.chunk_window(xr, st, base, rc, cols, xs) for _, st in taps]
        p = jnp.stack(wins, axis=3).reshape(n, rc, cols, t, g, cg)  # (N, a, b, T, G, Cg)
        if g == 1:
            return dot(p.reshape(n, rc, cols, t * cg), wg[0], (((3,), (0,)), ((), ())), spec)
        p = jnp.transpose(p, (4, 0, 1, 2, 3, 5)).reshape(g, n, rc, cols, t * cg)
        y = dot(p, wg, (((4,), (1,)), ((0,), (0,))), spec)  # (G, N, a, b, Cog)
        return jnp.transpose(y, (1, 2, 3, 0, 4)).reshape(n, rc, cols, g * cog)

    xp, chunks, span = tp.row_chunks(xp, taps, rows, xs, r)
    if chunks == 1:
        return chunk(lax.slice_in_dim(xp, base, base + span, axis=1), rows)

    def body(y, k):
        xr = lax.dynamic_slice_in_dim(xp, base + k * (r * xs[0]), span, axis=1)
        return lax.dynamic_update_slice_in_dim(y, chunk(xr, r), k * r, axis=1), None

    y0 = jnp.zeros((n, chunks * r, cols, g * cog), acc_dtype(spec))
    y, _ = lax.scan(body, y0, jnp.arange(chunks))
    return y[:, :rows]


def _mac_phase(xp, wt, ph: tp.Phase, spec: ExecSpec, target=None):
    """Elementwise: out[..., g, o] += x[..., g, c] * w[tap, c, g, o] for every tap and c."""
    g, cg, cog = wt.shape[3], wt.shape[2], wt.shape[4]
    n, count = xp.shape[0], ph.count
    acc_t = acc_dtype(spec)
    acc = None
    for (i, j), st in ph.taps:
        win = tp.window(xp, st, count, ph.xs).astype(acc_t).reshape(n, count[0], count[1], g, cg)
        wij = wt[i, j].astype(acc_t)  # (Cg, G, Cog)
        for c in range(cg):
            t = win[..., c : c + 1] * wij[c][None, None, None]  # (N, a, b, G, Cog)
            acc = t if acc is None else acc + t
    return acc.reshape(n, count[0], count[1], g * cog)


def _mac_phase_cf(xc, wt, ph: tp.Phase, spec: ExecSpec, target=None):
    """``mac`` on a channels-first (N, C, H, W) input: vectors run along W, not along C."""
    g, cg, cog = wt.shape[3], wt.shape[2], wt.shape[4]
    n, c = xc.shape[0], xc.shape[1]
    count, xs = ph.count, ph.xs
    acc_t = acc_dtype(spec)
    acc = None
    for (i, j), st in ph.taps:
        lim = (n, c, st[0] + xs[0] * (count[0] - 1) + 1, st[1] + xs[1] * (count[1] - 1) + 1)
        win = lax.slice(xc, (0, 0, st[0], st[1]), lim, (1, 1, xs[0], xs[1]))
        win = win.astype(acc_t).reshape(n, g, cg, count[0], count[1])
        wij = wt[i, j].astype(acc_t)  # (Cg, G, Cog)
        for ci in range(cg):
            t = win[:, :, ci : ci + 1] * wij[ci][None, :, :, None, None]  # (N, G, Cog, a, b)
            acc = t if acc is None else acc + t
    # back to channels-last; cancels against a caller's NHWC -> NCHW transpose
    return jnp.transpose(acc.reshape(n, g * cog, count[0], count[1]), (0, 2, 3, 1))


#: a phase's contraction, ``fn(xp, wt, phase, spec, target)``; ``target`` (a
#: :class:`~jconv.targets.Target` or None for the host) matters to the tap GEMMs only
PHASE_FNS = {"taps": _gemm_phase, "im2col": _im2col_phase, "mac": _mac_phase, "depthwise": _mac_phase,
             "mac_cf": _mac_phase_cf}


def forward(x, w, spec: ExecSpec, mode: str, target=None):
    """The conv of NHWC ``x`` (zero padding and input dilation of ``spec`` still to do) with
    HWIO ``w``, by the contraction ``mode`` (an algorithm name), for ``target`` (a
    :class:`~jconv.targets.Target`; None: the host)."""
    if mode == "xla_fwd":
        return xla.forward(x, w, spec)
    n, h, wd, _ = x.shape
    kh, kw, cg, co = w.shape
    wt = w.reshape(kh, kw, cg, spec.groups, co // spec.groups)
    plan = tp.plan(spec, (h, wd))
    channels_first = mode == "mac_cf"  # cancels against a caller's NCHW -> NHWC transpose
    xp = tp.pad_spatial(jnp.transpose(x, (0, 3, 1, 2)) if channels_first else x, plan.pads,
                        channels_first=channels_first)
    fn = PHASE_FNS[mode]
    blocks: list[list] = [[] for _ in range(min(plan.big_l[0], spec.out_size[0]))]
    for ph in plan.phases:
        if ph.taps:
            yb = fn(xp, wt, ph, spec, target)
        else:  # every tap of this phase lands on an inserted zero
            yb = jnp.zeros((n, ph.count[0], ph.count[1], co), acc_dtype(spec))
        blocks[ph.p].append(yb)
    y = tp.interleave(blocks, plan.big_l, spec.out_size)
    return y.astype(spec.out_dtype)


__all__ = ["forward", "dot", "PHASE_FNS", "MAC_FAMILY", "LIMITS", "Limits"]
