"""Taps and phases: how the lax engine enumerates a convolution (pure Python on static sizes),
and the windows of the input each tap reads.

A *tap* is a kernel position (i, j). With input dilation ``l`` and stride ``s``, an output
position ``o`` only meets the real (non-inserted) inputs through taps with
``(o*s + i*d - pad_lo) % l == 0``, which depends only on ``o mod L`` (``L = l / gcd(l, s)``):
the outputs split into *phases* (sub-lattices), each an ordinary strided convolution of the
undilated input with a sub-kernel. :func:`plan` lists them once for every consumer (the
forward contractions and the weight gradients).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

from jconv.spec import ExecSpec, Pair, Pads


def _axis_phases(out: int, k: int, s: int, d: int, l: int, lo: int):
    """One spatial axis: ``(L, xs, [(phase, count, [(tap, start), ...]), ...])``.

    Output ``o = L*a + phase`` (``a < count``) reads undilated input ``start + xs*a`` through
    kernel tap ``tap``; taps landing on inserted zeros are absent.
    """
    g = math.gcd(s, l)
    big_l, xs = l // g, s // g
    out_phases = []
    for p in range(min(big_l, out)):
        count = (out - p + big_l - 1) // big_l
        taps = [(i, (p * s + i * d - lo) // l) for i in range(k) if (p * s + i * d - lo) % l == 0]
        out_phases.append((p, count, taps))
    return big_l, xs, out_phases


class Phase(NamedTuple):
    """One output sub-lattice: outputs ``(Lh*a + p, Lw*b + q)`` for ``a < count[0]``,
    ``b < count[1]``; ``taps`` are ``((i, j), (row, col))``: kernel tap (i, j) reads the padded
    input from (row, col) with step ``xs``. No taps: every tap lands on an inserted zero."""

    p: int
    q: int
    count: Pair
    xs: Pair
    taps: list


class TapPlan(NamedTuple):
    big_l: Pair          # phases per axis (the output interleave)
    pads: Pads           # zero padding of x that keeps every window in range
    phases: list[Phase]  # row-major over (p, q)


def plan(spec: ExecSpec, in_size: Pair) -> TapPlan:
    """Both axes' phases of ``spec`` on an input of ``in_size``, with the padding they need."""
    axes = [_axis_phases(spec.out_size[a], spec.kernel_size[a], spec.stride[a], spec.dilation[a],
                         spec.lhs_dilation[a], spec.padding[a][0]) for a in range(2)]
    pads = []
    for a, (_, xs, ph) in enumerate(axes):
        starts = [st for _, _, taps in ph for _, st in taps]
        ends = [st + xs * (cnt - 1) for _, cnt, taps in ph for _, st in taps]
        lo = max([0] + [-v for v in starts])
        hi = max([0] + [v - (in_size[a] - 1) for v in ends])
        pads.append((lo, hi))
    (lh, xsh, ph), (lw, xsw, pw) = axes
    out = []
    for p, cnt_h, taps_h in ph:
        for q, cnt_w, taps_w in pw:
            taps = [((i, j), (sh + pads[0][0], sw + pads[1][0])) for i, sh in taps_h for j, sw in taps_w]
            out.append(Phase(p, q, (cnt_h, cnt_w), (xsh, xsw), taps))
    return TapPlan((lh, lw), tuple(pads), out)  # type: ignore[arg-type]


def pad_spatial(x, pads: Pads, *, channels_first: bool = False):
    """Zero-pad the two spatial axes of an (N, H, W, C) array (``channels_first``: (N, C, H, W))
    by ``((top, bottom), (left, right))``; negative values crop."""
    if not any(v for pr in pads for v in pr):
        return x
    sp = [(pads[0][0], pads[0][1], 0), (pads[1][0], pads[1][1], 0)]
    cfg = [(0, 0, 0), (0, 0, 0)] + sp if channels_first else [(0, 0, 0)] + sp + [(0, 0, 0)]
    return lax.pad(x, jnp.zeros((), x.dtype), cfg)


def window(xp, start: Pair, count: Pair, xs: Pair):
    """The (N, count_h, count_w, C) window of NHWC ``xp`` from ``start`` with step ``xs``."""
    n, _, _, c = xp.shape
    lim = (n, start[0] + xs[0] * (count[0] - 1) + 1, start[1] + xs[1] * (count[1] - 1) + 1, c)
    return lax.slice(xp, (0, start[0], start[1], 0), lim, (1, xs[0], xs[1], 1))


def interleave(blocks, big_l: Pair, out: Pair):
    """``blocks[p][q]`` (N, n_p, n_q, C) -> (N, Ho, Wo, C) with ``y[L*a + p] = blocks[p][a]``."""
    if big_l == (1, 1):
        return blocks[0][0]
    mh, mw = -(-out[0] // big_l[0]), -(-out[1] // big_l[1])
    rows = []
    for row in blocks:
        row = [pad_spatial(b, ((0, mh - b.shape[1]), (0, mw - b.shape[2]))) for b in row]
        rows.append(jnp.stack(row, axis=3))  # (N, mh, mw, Lw', C)
    y = jnp.stack(rows, axis=2)  # (N, mh, Lh', mw, Lw', C)
    n, c = y.shape[0], y.shape[-1]
    y = y.reshape(n, mh * y.shape[2], mw * y.shape[4], c)
    return y[:, : out[0], : out[1]]


# --------------------------------------------------------------------------------------------
# Row chunks: a phase's output rows walked in chunks (im2col's patches, the weight gradients)
# --------------------------------------------------------------------------------------------


def row_chunks(xp, taps, rows: int, xs: Pair, r: int):
    """Output rows in chunks of ``r``: ``(xp, chunks, span)``, where chunk k reads ``span``
    rows of ``xp`` from ``base + k*r*stride`` (``base``: the smallest tap row), and ``xp`` is
    zero-padded at the bottom so the last (possibly partial) chunk stays in range."""
    chunks = -(-rows // r)
    base = min(st[0] for _, st in taps)
    span = max(st[0] for _, st in taps) - base + xs[0] * (r - 1) + 1
    need = base + xs[0] * r * (chunks - 1) + span
    if need > xp.shape[1]:
        xp = pad_spatial(xp, ((0, need - xp.shape[1]), (0, 0)))
    return xp, chunks, span


def chunk_window(xr, st, base: int, r: int, cols: int, xs: Pair):
    """Tap window (start ``st``) of ``r`` output rows inside a chunk ``xr`` that starts at row
    ``base`` of the padded input."""
    n, c = xr.shape[0], xr.shape[3]
    return lax.slice(xr, (0, st[0] - base, st[1], 0),
                     (n, st[0] - base + xs[0] * (r - 1) + 1, st[1] + xs[1] * (cols - 1) + 1, c),
                     (1, xs[0], xs[1], 1))


def scan_row_chunks(xp, dy, taps, count, xs, r: int, chunk_fn, init, *, channels_first: bool = False):
    """``sum over row chunks k of chunk_fn(xr, dr)``, walked in a ``lax.scan``.

    ``dr`` is ``r`` rows of ``dy`` (one phase, (N, rows, cols, C_out)); ``xr`` the rows of
    ``xp`` those outputs read, so a tap's window in it starts at row ``st[0] - base`` (``base``:
    the smallest tap row). Rows past the end are zeros of ``dy`` and contribute nothing. One
    chunk's temporaries are alive at a time and stay in cache: built in a few big chunks the
    weight gradients were slower, mostly from writing (and page-faulting) the patches.
    ``channels_first``: ``xp`` is transposed once, before the chunks, and ``xr`` is (C, N, span, W).
    """
    rows = count[0]
    base = min(st[0] for _, st in taps)
    xp, chunks, span = row_chunks(xp, taps, rows, xs, r)
    axis = 1
    if channels_first:
        xp, axis = jnp.transpose(xp, (3, 0, 1, 2)), 2
    if chunks * r > rows:
        dy = pad_spatial(dy, ((0, chunks * r - rows), (0, 0)))
    if chunks == 1:
        return chunk_fn(lax.slice_in_dim(xp, base, base + span, axis=axis), dy)

    def body(carry, k):
        xr = lax.dynamic_slice_in_dim(xp, base + k * (r * xs[0]), span, axis=axis)
        dr = lax.dynamic_slice_in_dim(dy, k * r, r, axis=1)
        return carry + chunk_fn(xr, dr), None

    total, _ = lax.scan(body, init, jnp.arange(chunks))
    return total


__all__ = ["Phase", "TapPlan", "plan", "pad_spatial", "window", "interleave", "row_chunks",
           "chunk_window", "scan_row_chunks"]
