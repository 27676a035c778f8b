"""The ``lax`` backend: Conv2D built from lax primitives (no ``lax.conv*`` but in ``xla_fwd``).

Every algorithm here runs on one engine: the convolution is enumerated as *taps* (kernel
positions) grouped into *phases* (output sub-lattices), and each phase's taps are combined by
one of the contractions, named after the algorithms that use them:

* ``taps``: one GEMM per tap, accumulated. Memory of one output.
* ``im2col``: a phase's tap windows concatenated on the channel axis, then one GEMM; the patch
  matrix is built in chunks of output rows walked by a ``lax.scan``, so it never exceeds
  ``IM2COL_MAX_BLOWUP`` times the input.
* ``mac`` and ``depthwise``: multiply-accumulate on the vector unit, no matmul at all: for
  each tap and each input channel of a group, a broadcast multiply-add into the output. The
  right thing when groups have few channels (depthwise, ResNeXt-style groups), where a GEMM
  with K = C_in/groups wastes the machine.
* ``mac_cf``: ``mac``'s forward on a channels-first copy of the input, vectorised along W; for
  NCHW callers the layout changes cancel, for NHWC callers they cost two transposes.
* ``xla_fwd``: XLA's conv where it is strong (the forward, and the input gradient, itself a
  conv), this engine's weight gradient (XLA computes it as a conv with an Ho x Wo "kernel").

Phases make input dilation (transposed convolution) cost no more than an ordinary conv:
with ``lhs_dilation`` l and stride s, an output position o only meets the non-zero (real)
inputs through taps i with ``(o*s + i*d - pad_lo) % l == 0``, which depends only on
``o mod l/gcd(l, s)``. Each phase is then an ordinary strided conv of the *undilated* input with
a sub-kernel, and the phase outputs are interleaved. No zero is ever multiplied.

Gradients: the input gradient of a conv with (stride s, input dilation l) is the conv of ``dy``
with the flipped, in/out-swapped kernel with (stride l, input dilation s)
(:meth:`ConvSpec.input_grad_spec`) -- the same engine again, so the transposed problem also
skips every zero -- and the weight gradient is one reduction per tap of ``x``'s window against
``dy``'s phase (a chunked GEMM contracting N*Ho*Wo, or a multiply-reduce for the ``mac``
family). Each algorithm is these three functions of a spec; the convolution primitive
(:mod:`jconv.primitive`) turns them into every transformation, forward mode included.

Which algorithm ``impl="lax"`` and ``impl="auto"`` on the CPU run is decided by the rules at the
end of this module; docs/performance.md has the measurements behind each.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from jconv.geometry import ConvSpec
from jconv.impls import registry, xla
from jconv.impls.common import acc_dtype, transpose_kernel

Pair = tuple[int, int]

#: im2col builds its patch matrix in row chunks no larger than this multiple of the input (a
#: number; 1 is both smaller and faster than larger blow-ups: docs/performance.md, the algorithms).
IM2COL_MAX_BLOWUP = 1
#: ``mac`` unrolls C_in/groups * KH * KW multiply-adds per output; beyond this it is refused.
MAC_MAX_TERMS = 1024


# --------------------------------------------------------------------------------------------
# Tap / phase enumeration (pure Python on static sizes)
# --------------------------------------------------------------------------------------------


def _axis_phases(out: int, k: int, s: int, d: int, l: int, lo: int):
    """One spatial axis: ``(L, xs, [(phase, count, [(tap, start), ...]), ...])``.

    Output ``o = L*a + phase`` (``a < count``) reads undilated input ``start + xs*a`` through
    kernel tap ``tap``; taps landing on inserted zeros are absent.
    """
    g = math.gcd(s, l)
    big_l, xs = l // g, s // g
    phases = []
    for p in range(min(big_l, out)):
        count = (out - p + big_l - 1) // big_l
        taps = [(i, (p * s + i * d - lo) // l) for i in range(k) if (p * s + i * d - lo) % l == 0]
        phases.append((p, count, taps))
    return big_l, xs, phases


def _plan_taps(spec: ConvSpec, in_size: Pair):
    """Both axes' phases plus the zero padding of ``x`` that keeps every window in range."""
    axes = [_axis_phases(spec.out_size[a], spec.kernel_size[a], spec.stride[a], spec.dilation[a],
                         spec.lhs_dilation[a], spec.padding[a][0]) for a in range(2)]
    pads = []
    for a, (_, xs, phases) in enumerate(axes):
        starts = [st for _, _, taps in phases for _, st in taps]
        ends = [st + xs * (cnt - 1) for _, cnt, taps in phases for _, st in taps]
        lo = max([0] + [-v for v in starts])
        hi = max([0] + [v - (in_size[a] - 1) for v in ends])
        pads.append((lo, hi))
    return axes, pads


def _window(xp, start: Pair, count: Pair, xs: Pair):
    n, _, _, c = xp.shape
    lim = (n, start[0] + xs[0] * (count[0] - 1) + 1, start[1] + xs[1] * (count[1] - 1) + 1, c)
    return lax.slice(xp, (0, start[0], start[1], 0), lim, (1, xs[0], xs[1], 1))


def _interleave(blocks, big_l: Pair, out: Pair):
    """``blocks[p][q]`` (N, n_p, n_q, C) -> (N, Ho, Wo, C) with ``y[L*a + p] = blocks[p][a]``."""
    if big_l == (1, 1):
        return blocks[0][0]
    mh, mw = -(-out[0] // big_l[0]), -(-out[1] // big_l[1])
    rows = []
    for row in blocks:
        row = [lax.pad(b, jnp.zeros((), b.dtype), ((0, 0, 0), (0, mh - b.shape[1], 0), (0, mw - b.shape[2], 0), (0, 0, 0)))
               for b in row]
        rows.append(jnp.stack(row, axis=3))  # (N, mh, mw, Lw', C)
    y = jnp.stack(rows, axis=2)  # (N, mh, Lh', mw, Lw', C)
    n, c = y.shape[0], y.shape[-1]
    y = y.reshape(n, mh * y.shape[2], mw * y.shape[4], c)
    return y[:, : out[0], : out[1]]


# --------------------------------------------------------------------------------------------
# Contractions
# --------------------------------------------------------------------------------------------


def _dot(a, b, dims, spec: ConvSpec):
    return lax.dot_general(a, b, dims, precision=spec.precision, preferred_element_type=acc_dtype(spec))


def _gemm_phase(xp, wt, taps, count, xs, spec: ConvSpec, target=None):
    """Sum over taps of window @ w[tap]; wt is (KH, KW, Cg, G, Cog).

    On CUDA each dense window is materialised as its (N*a*b, Cg) matrix: XLA's GPU compiler
    otherwise fuses a caller's NCHW -> NHWC transpose into the tap's Triton GEMM and finds no
    tiling for it ("Couldn't find output tile sizes that satisfy hlo: dot"), the failure the
    compile matrix found (docs/pallas.md, "What compiles where")."""
    g, cg, cog = wt.shape[3], wt.shape[2], wt.shape[4]
    n = xp.shape[0]
    materialise = target is not None and target.platform == "cuda"
    acc = None
    for (i, j), st in taps:
        win = _window(xp, st, count, xs)
        if g == 1:
            if materialise:
                win = lax.optimization_barrier(win.reshape(-1, cg)).reshape(win.shape)
            t = _dot(win, wt[i, j, :, 0], (((3,), (0,)), ((), ())), spec)  # (N, a, b, Co)
        else:
            win = win.reshape(n, count[0], count[1], g, cg)
            t = _dot(win, wt[i, j], (((4,), (0,)), ((3,), (1,))), spec)  # (G, N, a, b, Cog)
        acc = t if acc is None else acc + t
    if g > 1:
        acc = jnp.transpose(acc, (1, 2, 3, 0, 4)).reshape(n, count[0], count[1], g * cog)
    return acc


def _im2col_phase(xp, wt, taps, count, xs, spec: ConvSpec, target=None):
    """Concatenate the taps' windows on channels and do one (grouped) GEMM, in row chunks.

    Chunks are walked in a ``lax.scan`` writing into the output, so one chunk of patches
    (<= ``IM2COL_MAX_BLOWUP`` x the input) is alive at a time; unrolled, XLA kept every chunk's
    patches alive at once (12.7x the input on a ResNet-50 3x3).
    """
    g, cg, cog = wt.shape[3], wt.shape[2], wt.shape[4]
    n, t = xp.shape[0], len(taps)
    rows, cols = count
    wg = jnp.stack([wt[i, j] for (i, j), _ in taps], axis=0)  # (T, Cg, G, Cog)
    wg = jnp.transpose(wg, (2, 0, 1, 3)).reshape(g, t * cg, cog)
    in_bytes = max(1, xp.size)
    r = int(max(1, min(rows, (IM2COL_MAX_BLOWUP * in_bytes) // max(1, n * cols * t * cg * g))))
    base = min(st[0] for _, st in taps)

    def chunk(xr, rc):
        wins = [_chunk_window(xr, st, base, rc, cols, xs) for _, st in taps]
        p = jnp.stack(wins, axis=3).reshape(n, rc, cols, t, g, cg)  # (N, a, b, T, G, Cg)
        if g == 1:
            return _dot(p.reshape(n, rc, cols, t * cg), wg[0], (((3,), (0,)), ((), ())), spec)
        p = jnp.transpose(p, (4, 0, 1, 2, 3, 5)).reshape(g, n, rc, cols, t * cg)
        y = _dot(p, wg, (((4,), (1,)), ((0,), (0,))), spec)  # (G, N, a, b, Cog)
        return jnp.transpose(y, (1, 2, 3, 0, 4)).reshape(n, rc, cols, g * cog)

    xp, chunks, span = _row_chunks(xp, taps, rows, xs, r)
    if chunks == 1:
        return chunk(lax.slice_in_dim(xp, base, base + span, axis=1), rows)

    def body(y, k):
        xr = lax.dynamic_slice_in_dim(xp, base + k * (r * xs[0]), span, axis=1)
        return lax.dynamic_update_slice_in_dim(y, chunk(xr, r), k * r, axis=1), None

    y0 = jnp.zeros((n, chunks * r, cols, g * cog), acc_dtype(spec))
    y, _ = lax.scan(body, y0, jnp.arange(chunks))
    return y[:, :rows]


def _mac_phase(xp, wt, taps, count, xs, spec: ConvSpec, target=None):
    """Elementwise: out[..., g, o] += x[..., g, c] * w[tap, c, g, o] for every tap and c."""
    g, cg, cog = wt.shape[3], wt.shape[2], wt.shape[4]
    n = xp.shape[0]
    acc_t = acc_dtype(spec)
    acc = None
    for (i, j), st in taps:
        win = _window(xp, st, count, xs).astype(acc_t).reshape(n, count[0], count[1], g, cg)
        wij = wt[i, j].astype(acc_t)  # (Cg, G, Cog)
        for c in range(cg):
            t = win[..., c : c + 1] * wij[c][None, None, None]  # (N, a, b, G, Cog)
            acc = t if acc is None else acc + t
    return acc.reshape(n, count[0], count[1], g * cog)


def _mac_phase_cf(xc, wt, taps, count, xs, spec: ConvSpec, target=None):
    """``mac`` on a channels-first (N, C, H, W) input: vectors run along W, not along C."""
    g, cg, cog = wt.shape[3], wt.shape[2], wt.shape[4]
    n, c = xc.shape[0], xc.shape[1]
    acc_t = acc_dtype(spec)
    acc = None
    for (i, j), st in taps:
        lim = (n, c, st[0] + xs[0] * (count[0] - 1) + 1, st[1] + xs[1] * (count[1] - 1) + 1)
        win = lax.slice(xc, (0, 0, st[0], st[1]), lim, (1, 1, xs[0], xs[1]))
        win = win.astype(acc_t).reshape(n, g, cg, count[0], count[1])
        wij = wt[i, j].astype(acc_t)  # (Cg, G, Cog)
        for ci in range(cg):
            t = win[:, :, ci : ci + 1] * wij[ci][None, :, :, None, None]  # (N, G, Cog, a, b)
            acc = t if acc is None else acc + t
    # back to channels-last; cancels against a caller's NHWC -> NCHW transpose
    return jnp.transpose(acc.reshape(n, g * cog, count[0], count[1]), (0, 2, 3, 1))


#: a phase's contraction, ``fn(xp, wt, taps, count, xs, spec, target)``; ``target`` (a
#: :class:`~jconv.targets.Target` or None for the host) matters to the tap GEMMs only
_PHASE_FNS = {"taps": _gemm_phase, "im2col": _im2col_phase, "mac": _mac_phase, "depthwise": _mac_phase,
              "mac_cf": _mac_phase_cf}

#: the modes whose weight gradient is a multiply-reduce (no GEMM)
MAC_FAMILY = ("mac", "depthwise", "mac_cf")


def _forward(x, w, spec: ConvSpec, mode: str, target=None):
    """The conv of NHWC ``x`` (zero padding and input dilation of ``spec`` still to do) with
    HWIO ``w``, by the contraction ``mode`` (an algorithm name), for ``target`` (a
    :class:`~jconv.targets.Target`; None: the host)."""
    if mode == "xla_fwd":
        return xla.forward(x, w, spec)
    n, h, wd, _ = x.shape
    kh, kw, cg, co = w.shape
    g = spec.groups
    wt = w.reshape(kh, kw, cg, g, co // g)
    axes, pads = _plan_taps(spec, (h, wd))
    (lh, xsh, ph), (lw, xsw, pw) = axes
    xp = x
    if mode == "mac_cf":  # cancels against a caller's NCHW -> NHWC transpose
        xp = jnp.transpose(x, (0, 3, 1, 2))
        if any(v for pr in pads for v in pr):
            xp = lax.pad(xp, jnp.zeros((), x.dtype), ((0, 0, 0), (0, 0, 0), (pads[0][0], pads[0][1], 0), (pads[1][0], pads[1][1], 0)))
    elif any(v for pr in pads for v in pr):
        xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (pads[0][0], pads[0][1], 0), (pads[1][0], pads[1][1], 0), (0, 0, 0)))
    fn = _PHASE_FNS[mode]
    blocks = []
    for p, cnt_h, taps_h in ph:
        row = []
        for q, cnt_w, taps_w in pw:
            taps = [((i, j), (sh + pads[0][0], sw + pads[1][0])) for i, sh in taps_h for j, sw in taps_w]
            if taps:
                yb = fn(xp, wt, taps, (cnt_h, cnt_w), (xsh, xsw), spec, target)
            else:  # every tap of this phase lands on an inserted zero
                yb = jnp.zeros((n, cnt_h, cnt_w, co), acc_dtype(spec))
            row.append(yb)
        blocks.append(row)
    y = _interleave(blocks, (lh, lw), spec.out_size)
    return y.astype(spec.out_dtype)


def _weight_grad(x, dy, spec: ConvSpec, mode: str):
    """dL/dw: for each tap, x's window contracted with dy's phase over (N, rows, cols)."""
    if spec.lhs_dilation != (1, 1) and spec.stride == (1, 1):
        # A transposed conv's phases split dw into small per-phase GEMMs. Its adjoint (the conv
        # that computes dx: stride l, no input dilation) has none, and since
        # <conv(x, w), dy> = <x, conv(dy, T(w))> with T = transpose_kernel (a permutation and
        # its own inverse), dw = T(weight gradient of that conv with input dy, cotangent x).
        dwt = _weight_grad(dy.astype(x.dtype), x, spec.input_grad_spec(), mode)
        return transpose_kernel(dwt, spec.groups)
    n, h, wd, _ = x.shape
    kh, kw, cg, co = spec.kernel_shape
    g, cog = spec.groups, co // spec.groups
    axes, pads = _plan_taps(spec, (h, wd))
    (lh, xsh, ph), (lw, xsw, pw) = axes
    xp = x
    if any(v for pr in pads for v in pr):
        xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (pads[0][0], pads[0][1], 0), (pads[1][0], pads[1][1], 0), (0, 0, 0)))
    acc_t = acc_dtype(spec)
    mac = mode in MAC_FAMILY
    dy = dy.astype(x.dtype) if not mac else dy
    grads: dict = {}
    for p, cnt_h, taps_h in ph:
        for q, cnt_w, taps_w in pw:
            if not (taps_h and taps_w):
                continue
            dyp = dy if (lh, lw) == (1, 1) else dy[:, p::lh, q::lw]
            taps = [((i, j), (sh + pads[0][0], sw + pads[1][0])) for i, sh in taps_h for j, sw in taps_w]
            count, xs = (cnt_h, cnt_w), (xsh, xsw)
            if mac:
                part = _mac_weight_grad(xp, dyp, taps, count, xs, g, acc_t)
            elif g == 1:  # dense, every mode: chunked patches^T @ dy
                part = {ij: t[None] for ij, t in _im2col_weight_grad(xp, dyp, taps, count, xs, spec).items()}
            else:  # grouped GEMM modes: one batched GEMM per tap
                dyg = dyp.reshape(n, cnt_h, cnt_w, g, cog)
                part = {ij: _dot(_window(xp, st, count, xs).reshape(n, cnt_h, cnt_w, g, cg), dyg,
                                 (((0, 1, 2), (0, 1, 2)), ((3,), (3,))), spec)  # (G, Cg, Cog)
                        for ij, st in taps}
            for ij, t in part.items():
                grads[ij] = t if ij not in grads else grads[ij] + t
    zero = jnp.zeros((g, cg, cog), acc_t)
    dw = jnp.stack([grads.get((i, j), zero) for i in range(kh) for j in range(kw)])  # (T, G, Cg, Cog)
    return jnp.transpose(dw, (0, 2, 1, 3)).reshape(kh, kw, cg, co)


#: ``mac``'s weight gradient walks output rows in chunks of about this many bytes of input.
MAC_DW_CHUNK_BYTES = 1 << 19
#: the dense weight gradient builds its patch matrix for chunks of about this many bytes,
#: and of at least this many rows (N*rows*cols) per output channel.
IM2COL_DW_CHUNK_BYTES = 1 << 18
IM2COL_DW_MIN_K_PER_COUT = 8
#: stride 1: build the patches K-major, ``(KH*KW*Cg, rows)``, from one channels-first copy of
#: x, in chunks of about this many bytes (0 disables it). XLA's CPU GEMM runs ``(K, M) @ (M, N)``
#: faster than the contraction over M of ``patches^T @ dy``, and each chunk is a stack of plain
#: slices of that copy (measurements: docs/performance.md, the algorithms).
IM2COL_DW_KMAJOR_CHUNK_BYTES = 1 << 22
#: ... when the output is at least this many columns wide: each window row is then a contiguous
#: run of that many elements. Narrower outputs keep the row-major chunks, which measured faster
#: there (the seed's MNIST training step: docs/performance.md).
IM2COL_DW_KMAJOR_MIN_COLS = 28


def _row_chunks(xp, taps, rows: int, xs: Pair, r: int):
    """Output rows in chunks of ``r``: ``(xp, chunks, span)``, where chunk k reads ``span``
    rows of ``xp`` from ``base + k*r*stride`` (``base``: the smallest tap row), and ``xp`` is
    zero-padded at the bottom so the last (possibly partial) chunk stays in range."""
    chunks = -(-rows // r)
    base = min(st[0] for _, st in taps)
    span = max(st[0] for _, st in taps) - base + xs[0] * (r - 1) + 1
    need = base + xs[0] * r * (chunks - 1) + span
    if need > xp.shape[1]:
        xp = lax.pad(xp, jnp.zeros((), xp.dtype), ((0, 0, 0), (0, need - xp.shape[1], 0), (0, 0, 0), (0, 0, 0)))
    return xp, chunks, span


def _scan_row_chunks(xp, dy, taps, count, xs, r: int, chunk_fn, init, *, channels_first: bool = False):
    """``sum over row chunks k of chunk_fn(xr, dr)``, walked in a ``lax.scan``.

    ``dr`` is ``r`` rows of ``dy`` (one phase, (N, rows, cols, C_out)); ``xr`` the rows of
    ``xp`` those outputs read, so a tap's window in it starts at row ``st[0] - base`` (``base``:
    the smallest tap row). Rows past the end are zeros of ``dy`` and contribute nothing. One
    chunk's temporaries are alive at a time and stay in cache: built in a few big chunks the
    weight gradients were slower, mostly from writing (and page-faulting) the patches. ``channels_first``: ``xp`` is transposed once, before the
    chunks, and ``xr`` is (C, N, span, W).
    """
    rows = count[0]
    base = min(st[0] for _, st in taps)
    xp, chunks, span = _row_chunks(xp, taps, rows, xs, r)
    axis = 1
    if channels_first:
        xp, axis = jnp.transpose(xp, (3, 0, 1, 2)), 2
    if chunks * r > rows:
        dy = lax.pad(dy, jnp.zeros((), dy.dtype), ((0, 0, 0), (0, chunks * r - rows, 0), (0, 0, 0), (0, 0, 0)))
    if chunks == 1:
        return chunk_fn(lax.slice_in_dim(xp, base, base + span, axis=axis), dy)

    def body(carry, k):
        xr = lax.dynamic_slice_in_dim(xp, base + k * (r * xs[0]), span, axis=axis)
        dr = lax.dynamic_slice_in_dim(dy, k * r, r, axis=1)
        return carry + chunk_fn(xr, dr), None

    total, _ = lax.scan(body, init, jnp.arange(chunks))
    return total


def _chunk_window(xr, st, base: int, r: int, cols: int, xs: Pair):
    n, c = xr.shape[0], xr.shape[3]
    return lax.slice(xr, (0, st[0] - base, st[1], 0),
                     (n, st[0] - base + xs[0] * (r - 1) + 1, st[1] + xs[1] * (cols - 1) + 1, c),
                     (1, xs[0], xs[1], 1))


def _mac_weight_grad(xp, dy, taps, count, xs, g: int, acc_t):
    """``mac`` dw of one phase: per-tap multiply-reduce, walked over row chunks.

    Each tap's window is materialised before XLA's CPU reduction reads it; walking the output
    rows in small chunks keeps those windows in cache and the temporaries to a few chunks
    (a single pass would hold every tap's full window: KH*KW times the input).
    """
    n, c = xp.shape[0], xp.shape[3]
    cg, co = c // g, dy.shape[3]
    cog = co // g
    rows, cols = count
    row_bytes = n * cols * c * jnp.dtype(acc_t).itemsize
    r = int(max(1, min(rows, MAC_DW_CHUNK_BYTES // max(1, row_bytes))))
    base = min(st[0] for _, st in taps)

    def chunk(xr, dr):
        rr = dr.shape[1]
        dr = dr.astype(acc_t).reshape(n, rr, cols, g, 1, cog)
        out = []
        for _, st in taps:
            win = _chunk_window(xr, st, base, rr, cols, xs)
            win = win.astype(acc_t).reshape(n, rr, cols, g, cg, 1)
            out.append(jnp.sum(win * dr, axis=(0, 1, 2)))  # (G, Cg, Cog)
        return jnp.stack(out)

    total = _scan_row_chunks(xp, dy, taps, count, xs, r, chunk, jnp.zeros((len(taps), g, cg, cog), acc_t))
    return {ij: total[k] for k, (ij, _) in enumerate(taps)}


def _im2col_weight_grad(xp, dy, taps, count, xs, spec: ConvSpec):
    """Dense dw of one phase: patches^T @ dy (K = N*rows*cols), walked over row chunks of
    about ``IM2COL_DW_CHUNK_BYTES`` of patches. A single tap (1x1) is one GEMM, unchunked.

    Stride 1 with outputs at least ``IM2COL_DW_KMAJOR_MIN_COLS`` wide builds the patches
    K-major instead, (T*Cg, N*r*cols) from a channels-first copy of x made once, in chunks of
    ``IM2COL_DW_KMAJOR_CHUNK_BYTES``: a ``(K, M) @ (M, N)`` GEMM per chunk."""
    n, t, cg = xp.shape[0], len(taps), xp.shape[3]
    co = dy.shape[3]
    rows, cols = count
    if t == 1:
        win = _window(xp, taps[0][1], count, xs)
        return {taps[0][0]: _dot(win, dy, (((0, 1, 2), (0, 1, 2)), ((), ())), spec)}
    # a chunk must also be long enough (K >= 8 * C_out) that re-reading and writing the
    # (T*Cg, C_out) accumulator per chunk stays small next to the patches it contracts
    r_min = -(-IM2COL_DW_MIN_K_PER_COUT * co // (n * cols))
    kmajor = xs == (1, 1) and IM2COL_DW_KMAJOR_CHUNK_BYTES > 0 and cols >= IM2COL_DW_KMAJOR_MIN_COLS
    row_bytes = n * cols * t * cg * xp.dtype.itemsize
    budget = IM2COL_DW_KMAJOR_CHUNK_BYTES if kmajor else IM2COL_DW_CHUNK_BYTES
    r = int(max(1, min(rows, max(r_min, budget // max(1, row_bytes)))))
    base = min(st[0] for _, st in taps)

    def chunk(xr, dr):
        rr = dr.shape[1]
        if kmajor:  # xr (Cg, N, span, W)
            wins = [lax.slice(xr, (0, 0, st[0] - base, st[1]), (cg, n, st[0] - base + rr, st[1] + cols))
                    for _, st in taps]
            p = jnp.stack(wins, axis=0).reshape(t * cg, n * rr * cols)
            return _dot(p, dr.reshape(n * rr * cols, co), (((1,), (0,)), ((), ())), spec)
        wins = [_chunk_window(xr, st, base, rr, cols, xs) for _, st in taps]
        p = jnp.concatenate(wins, axis=3)  # (N, r, cols, T*Cg)
        return _dot(p, dr, (((0, 1, 2), (0, 1, 2)), ((), ())), spec)  # (T*Cg, Co)

    init = jnp.zeros((t * cg, co), acc_dtype(spec))
    acc = _scan_row_chunks(xp, dy, taps, count, xs, r, chunk, init, channels_first=kmajor)
    acc = acc.reshape(t, cg, -1)
    return {ij: acc[k] for k, (ij, _) in enumerate(taps)}




# --------------------------------------------------------------------------------------------
# The algorithms: three functions of a spec each (the primitive makes every transformation)
# --------------------------------------------------------------------------------------------


def _kernels(mode: str):
    def forward(x, w, spec: ConvSpec, target=None):
        return _forward(x, w, spec, mode, target)

    def input_grad(dy, w, spec: ConvSpec, target=None):
        # the same engine on the transposed problem (every inserted zero skipped again). The
        # transposed kernel is materialised once: fused into mac's unrolled loop every output
        # element re-gathered it (slower); a GEMM or XLA conv reads a
        # materialised kernel anyway
        wt = lax.optimization_barrier(transpose_kernel(w, spec.groups))
        return _forward(dy.astype(w.dtype), wt, spec.input_grad_spec(), mode, target).astype(spec.dtype)

    def weight_grad(x, dy, spec: ConvSpec, target=None):
        return _weight_grad(x, dy, spec, mode).astype(spec.dtype)

    return forward, input_grad, weight_grad


def _mac_terms(spec: ConvSpec) -> int:
    return spec.group_in_channels * spec.kernel_size[0] * spec.kernel_size[1]


def _supports_mac(spec: ConvSpec) -> str | None:
    if _mac_terms(spec) > MAC_MAX_TERMS:
        return (f"it unrolls C_in/groups*KH*KW (={_mac_terms(spec)}) multiply-adds per output, more than "
                f"{MAC_MAX_TERMS}; use 'taps' or 'im2col'")
    return None


def _supports_depthwise(spec: ConvSpec) -> str | None:
    if not spec.is_depthwise:
        return f"it needs groups == C_in (got groups={spec.groups}, C_in={spec.in_channels})"
    return _supports_mac(spec)


_SUMMARIES = {
    "im2col": "patches (chunked) and one grouped GEMM per phase",
    "taps": "one GEMM per kernel tap (per phase), accumulated",
    "depthwise": "per-tap multiply-accumulate on the vector unit, groups == C_in",
    "mac": "per-tap, per-channel multiply-accumulate (grouped, few channels per group)",
    "mac_cf": "mac computed channels-first (NCHW callers: the layout changes cancel)",
    "xla_fwd": "XLA's conv forward and input gradient, this engine's weight gradient",
}
_SUPPORTS = {"depthwise": _supports_depthwise, "mac": _supports_mac, "mac_cf": _supports_mac}

ALGORITHMS: dict[str, registry.Algorithm] = {
    name: registry.Algorithm(name, *_kernels(name), supports=_SUPPORTS.get(name, lambda spec: None),
                             summary=summary)
    for name, summary in _SUMMARIES.items()
}


def supports(name: str, spec: ConvSpec) -> bool:
    """Whether lax algorithm ``name`` can run ``spec``."""
    return name in ALGORITHMS and ALGORITHMS[name].supports(spec) is None


# --------------------------------------------------------------------------------------------
# The rules: impl="lax" and impl="auto" on the CPU. Each says what it does; the measurements
# behind it are in docs/performance.md ("The auto rules"), regenerated from committed results.
# --------------------------------------------------------------------------------------------

#: ``mac`` for grouped convs with at most this many input channels per group.
MAC_GROUP_CHANNELS = 16
#: ``xla_fwd`` for dense, undilated convs from this many output pixels (28x28) on ...
XLA_FWD_MIN_OUT_PIXELS = 28 * 28
#: ... and from this many output positions (N*Ho*Wo) on, with ``XLA_FWD_MIN_CHANNELS`` to
#: ``XLA_FWD_MAX_CHANNELS`` input channels and at most that many output channels.
XLA_FWD_MIN_POSITIONS = 4096
XLA_FWD_MIN_CHANNELS = 16
XLA_FWD_MAX_CHANNELS = 128
#: ``taps`` for dense, undilated bfloat16 convs with at least this many input channels.
BF16_TAPS_MIN_CHANNELS = 128
#: ``im2col`` (not ``taps``) below this many input channels per group.
IM2COL_MAX_CHANNELS = 16


def _channels_first(name: str, why: str, layout: str) -> tuple[str, str]:
    if layout == "NCHW" and name in ("mac", "depthwise"):
        return "mac_cf", why + "; channels-first for the NCHW input (the layout changes cancel)"
    return name, why


def lax_rule(spec: ConvSpec, layout: str = "NHWC") -> tuple[str, str]:
    """``(algorithm, reason)`` for ``impl="lax"``: never XLA's conv."""
    if spec.is_depthwise:
        name, why = "depthwise", "groups == C_in: per-tap multiply-accumulate, no matmul"
    elif spec.groups > 1 and spec.group_in_channels <= MAC_GROUP_CHANNELS and supports("mac", spec):
        name, why = "mac", (f"grouped, {spec.group_in_channels} input channels per group: multiply-accumulate "
                            "on the vector unit")
    elif spec.group_in_channels < IM2COL_MAX_CHANNELS and not spec.is_pointwise:
        name, why = "im2col", "few input channels: one GEMM over the (chunked) patches, K = KH*KW*C_in"
    elif spec.lhs_dilation != (1, 1):
        name, why = "taps", "input dilation: per-phase tap GEMMs, inserted zeros skipped"
    else:
        name, why = "taps", "dense: one GEMM per kernel tap, accumulated"
    return _channels_first(name, why, layout)


def auto_rule(spec: ConvSpec, platform: str, layout: str = "NHWC") -> registry.Choice | None:
    """``impl="auto"`` on the CPU (None elsewhere: XLA's rule applies). In order:

    1. depthwise -> ``depthwise``; grouped with few channels per group -> ``mac`` (NCHW callers:
       ``mac_cf``): XLA's CPU conv runs these as generic grouped convs, slowly, above all backward.
    2. input dilation (transposed conv) -> ``xla_fwd``: XLA's forward, this engine's weight
       gradient (XLA's is a conv with a dilated Ho x Wo kernel).
    3. 1x1, channels-last caller -> ``taps`` (one GEMM each way); NCHW caller -> ``xla_fwd``.
    4. dense bfloat16, undilated, >= ``BF16_TAPS_MIN_CHANNELS`` input channels -> ``taps``: the
       GEMMs use the CPU's bfloat16 units, XLA's conv runs bfloat16 at float32 speed.
    5. dense, undilated, output >= ``XLA_FWD_MIN_OUT_PIXELS`` -> ``xla_fwd``: XLA's weight
       gradient (a conv with an Ho x Wo "kernel") is the slow part there.
    6. dense, undilated, N*Ho*Wo >= ``XLA_FWD_MIN_POSITIONS`` with 16-128 channels -> ``xla_fwd``.
    7. everything else -> XLA's conv.
    """
    if platform != "cpu":
        return None
    name, why = lax_rule(spec, layout)
    if spec.is_depthwise or name in ("mac", "mac_cf"):
        return registry.Choice("lax", name, why)
    if spec.lhs_dilation != (1, 1):
        return registry.Choice("lax", "xla_fwd", "input dilation: XLA's conv forward and input gradient, the "
                               "weight gradient as GEMMs (XLA's is a conv with a dilated Ho x Wo kernel)")
    if spec.is_pointwise and layout == "NHWC":
        return registry.Choice("lax", "taps", "1x1, channels-last: one GEMM forward and backward")
    if spec.is_pointwise:
        return registry.Choice("lax", "xla_fwd", "1x1, NCHW caller: XLA's conv forward (no layout change), the "
                               "weight gradient as one GEMM")
    if spec.dilation == (1, 1):
        ho, wo = spec.out_size
        positions = spec.batch * ho * wo
        if spec.dtype == "bfloat16" and spec.group_in_channels >= BF16_TAPS_MIN_CHANNELS:
            return registry.Choice("lax", "taps", f"dense bfloat16, {spec.group_in_channels} input channels: one "
                                   "bfloat16 GEMM per tap (XLA's CPU conv computes bfloat16 at float32 speed)")
        if ho * wo >= XLA_FWD_MIN_OUT_PIXELS:
            return registry.Choice("lax", "xla_fwd", f"dense, {ho}x{wo} output: XLA's conv forward and input "
                                   "gradient, the weight gradient as chunked patch GEMMs")
        if (positions >= XLA_FWD_MIN_POSITIONS
                and XLA_FWD_MIN_CHANNELS <= spec.group_in_channels
                and max(spec.group_in_channels, spec.out_channels) <= XLA_FWD_MAX_CHANNELS):
            return registry.Choice("lax", "xla_fwd", f"dense, {positions} output positions, "
                                   f"{XLA_FWD_MIN_CHANNELS}-{XLA_FWD_MAX_CHANNELS} channels: XLA's conv forward "
                                   "and input gradient, the weight gradient as chunked patch GEMMs")
    return registry.Choice("xla", "xla", "dense, small output or dilated kernel: XLA's CPU convolution, "
                           "forward and backward")


def tune_candidates(spec: ConvSpec, layout: str, platform: str) -> list[str]:
    """The lax algorithms the tuner measures (CPU only: they are CPU formulations)."""
    if platform != "cpu":
        return []
    out = []
    for name in ALGORITHMS:
        if name == "mac" and spec.is_depthwise:
            continue  # the same code as "depthwise"
        if name == "mac_cf" and not (spec.groups > 1 or layout == "NCHW"):
            continue  # a dense conv as per-channel multiply-adds: never close
        if supports(name, spec):
            out.append(f"lax:{name}")
    return out


BACKEND = registry.register(registry.Backend(
    name="lax", algorithms=ALGORITHMS, default=lax_rule, auto=auto_rule, auto_priority=0,
    tune_candidates=tune_candidates, summary="Conv2D from lax primitives (one tap/phase engine)",
))
