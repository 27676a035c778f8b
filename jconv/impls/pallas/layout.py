"""XLA-side layout of the Pallas Conv2D's operands (memory-bound preparation around the kernels).

* channels on lanes: padded to the target's lane multiple; small groups packed block-diagonally
  into bundles that share one channel block (:func:`pack_channels`, :func:`pack_weights`);
* the stride as phases (space to depth), so every tap reads a unit-stride window, and output
  rows cut into tiles that carry their halo rows (:func:`phase_tiles`);
* the taps folded into the contraction (:func:`im2col`) when few input channels would leave
  most of each per-tap matmul as lane padding.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jconv.spec import ExecSpec
from jconv.impls.pallas.tiling import Tiling


def _pad_last(a, size: int):
    extra = size - a.shape[-1]
    if extra == 0:
        return a
    return jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, extra)])


def pack_channels(x, tl: Tiling):
    """(..., C_in) -> (..., bundles * cin_block_total): groups packed, lanes padded."""
    p = tl.spec
    if tl.depthwise:
        m = p.out_channels // p.in_channels
        if m > 1:
            x = jnp.repeat(x, m, axis=-1)
        return _pad_last(x, tl.cin_block_total)
    if p.groups == 1:
        return _pad_last(x, tl.cin_block_total)
    g, cg, gb, nb = p.groups, p.in_channels // p.groups, tl.group_bundle, tl.bundles
    lead = x.shape[:-1]
    x = x.reshape(lead + (g, cg))
    if nb * gb != g:
        x = jnp.pad(x, [(0, 0)] * len(lead) + [(0, nb * gb - g), (0, 0)])
    x = _pad_last(x.reshape(lead + (nb, gb * cg)), tl.cin_block_total)
    return x.reshape(lead + (nb * tl.cin_block_total,))


def pack_out_channels(y, tl: Tiling):
    """(..., C_out) -> (..., bundles * cout_block_total): the cotangent's layout."""
    p = tl.spec
    if tl.depthwise or p.groups == 1:
        return _pad_last(y, tl.cout_block_total)
    g, cog, gb, nb = p.groups, p.out_channels // p.groups, tl.group_bundle, tl.bundles
    lead = y.shape[:-1]
    y = y.reshape(lead + (g, cog))
    if nb * gb != g:
        y = jnp.pad(y, [(0, 0)] * len(lead) + [(0, nb * gb - g), (0, 0)])
    y = _pad_last(y.reshape(lead + (nb, gb * cog)), tl.cout_block_total)
    return y.reshape(lead + (nb * tl.cout_block_total,))


def unpack_out_channels(y, tl: Tiling):
    """Inverse of :func:`pack_out_channels`."""
    p = tl.spec
    co = p.out_channels
    if tl.depthwise or p.groups == 1:
        return y[..., :co]
    cog, gb, nb = co // p.groups, tl.group_bundle, tl.bundles
    lead = y.shape[:-1]
    y = y.reshape(lead + (nb, tl.cout_block_total))[..., : gb * cog]
    return y.reshape(lead + (nb * gb * cog,))[..., :co]


def pack_weights(w, tl: Tiling):
    """HWIO -> (bundles, T, cin_block_total, cout_block_total), block-diagonal per bundle;
    depthwise: (T, cout_block_total)."""
    p = tl.spec
    kh, kw, cg, co = w.shape
    t = kh * kw
    if tl.depthwise:
        return _pad_last(w.reshape(t, co), tl.cout_block_total)
    if p.groups == 1:
        w = w.reshape(t, cg, co)
        w = jnp.pad(w, ((0, 0), (0, tl.cin_block_total - cg), (0, tl.cout_block_total - co)))
        return w[None]
    g, cog, gb, nb = p.groups, co // p.groups, tl.group_bundle, tl.bundles
    w = w.reshape(t, cg, g, cog)
    if nb * gb != g:
        w = jnp.pad(w, ((0, 0), (0, 0), (0, nb * gb - g), (0, 0)))
    w = w.reshape(t, cg, nb, gb, cog)
    eye = jnp.eye(gb, dtype=w.dtype)
    # block-diagonal: W[n, t, (a, c), (b, o)] = w[t, c, n, a, o] * (a == b)
    bd = w.transpose(2, 0, 3, 1, 4)[:, :, :, :, None, :] * eye[None, None, :, None, :, None]
    bd = bd.reshape(nb, t, gb * cg, gb * cog)
    return jnp.pad(bd, ((0, 0), (0, 0), (0, tl.cin_block_total - gb * cg), (0, tl.cout_block_total - gb * cog)))


def unpack_weight_grad(dwb, tl: Tiling, w_shape):
    """(bundles, T, cin_b, cout_b) (depthwise: (T, cout_b)) -> HWIO ``w_shape``."""
    p = tl.spec
    kh, kw, cg, co = w_shape
    t = kh * kw
    if tl.depthwise:
        return dwb[:, :co].reshape(kh, kw, 1, co)
    if p.groups == 1:
        return dwb[0, :, :cg, :co].reshape(kh, kw, cg, co)
    g, cog, gb, nb = p.groups, co // p.groups, tl.group_bundle, tl.bundles
    d = dwb[:, :, : gb * cg, : gb * cog].reshape(nb, t, gb, cg, gb, cog)
    d = jnp.diagonal(d, axis1=2, axis2=4)                  # (nb, t, cg, cog, gb)
    d = d.transpose(1, 2, 0, 4, 3).reshape(t, cg, nb * gb * cog)[:, :, :co]
    return d.reshape(kh, kw, cg, co)


def phase_tiles(xp, tl: Tiling):
    """Padded NHWC (channels packed) -> (N, R, P, rows_in, in_w, C): per row tile, the used
    phases of the stride with the halo rows each tile needs. Extra rows/cols are zeros.

    Built from ``q = ceil(rows_in / rows)`` reshapes of row-shifted views, concatenated: a
    slice per tile stacked (R slices) made XLA materialise the padded input once per tile on
    TPU (13 copies, 2.7 GB for the ResNet stem at batch 8).
    """
    p = tl.spec
    sh, sw = p.stride
    n, hp, wp, c = xp.shape
    rows, r_tiles = tl.rows, tl.row_tiles
    q = -(-tl.rows_in // rows)
    hq = (r_tiles + q - 1) * rows
    wq = tl.in_w
    zero = jnp.zeros((), xp.dtype)
    xp = lax.pad(xp, zero, ((0, 0, 0), (0, hq * sh - hp, 0), (0, wq * sw - wp, 0), (0, 0, 0)))
    if (sh, sw) == (1, 1):
        ph = xp[:, None]
    else:
        xp = xp.reshape(n, hq, sh, wq, sw, c).transpose(0, 2, 4, 1, 3, 5)
        ph = jnp.stack([xp[:, a, b] for a, b in tl.phases], axis=1)    # (N, P, hq, wq, C)
    npx = ph.shape[1]
    pieces = [lax.slice_in_dim(ph, j * rows, j * rows + r_tiles * rows, axis=2).reshape(n, npx, r_tiles, rows, wq, c)
              for j in range(q)]
    tiles = pieces[0] if q == 1 else jnp.concatenate(pieces, axis=3)
    tiles = lax.slice_in_dim(tiles, 0, tl.rows_in, axis=3)            # (N, P, R, rows_in, wq, C)
    return jnp.transpose(tiles, (0, 2, 1, 3, 4, 5))


def pad_out_grid(g, tl: Tiling):
    """Cotangent (N, Ho, Wo, C) -> (N, out_rows, out_w, C) with zeros."""
    ho, wo = tl.spec.out_size
    return jnp.pad(g, ((0, 0), (0, tl.out_rows - ho), (0, tl.out_w - wo), (0, 0)))


def im2col(xp, spec: ExecSpec, *, channels_first: bool = False):
    """(N, Ho, Wo, T*C) patches of padded ``xp``, tap-major (matches HWIO reshaped).

    ``channels_first`` builds them from a (N, C, H, W) copy and transposes once at the end: on
    TPU a slice whose minor dim is a few channels is laid out padded to 128 lanes, and the 49
    (N, Ho, Wo, 3) slices of the ResNet stem took 20 GB at batch 64 (2.7 GB at batch 8, against
    67 MB of patches); channels-first slices have the width as their minor dim.
    """
    kh, kw = spec.kernel_size
    sh, sw = spec.stride
    dh, dw = spec.dilation
    ho, wo = spec.out_size
    n, _, _, c = xp.shape
    if channels_first:
        # written tap by tap into one buffer (in place): a concatenate of the 49 strided slices
        # was left unfused inside a chunked batch, each slice a padded buffer of its own
        xc = jnp.transpose(xp, (0, 3, 1, 2))
        out = jnp.zeros((n, kh * kw * c, ho, wo), xp.dtype)
        for t, (i, j) in enumerate((i, j) for i in range(kh) for j in range(kw)):
            tap = lax.slice(xc, (0, 0, i * dh, j * dw), (n, c, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1),
                            (1, 1, sh, sw))
            out = lax.dynamic_update_slice(out, tap, (0, t * c, 0, 0))
        return jnp.transpose(out, (0, 2, 3, 1))
    taps = [lax.slice(xp, (0, i * dh, j * dw, 0), (n, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, c),
                      (1, sh, sw, 1)) for i in range(kh) for j in range(kw)]
    # concatenate on the channel axis (stack + reshape compiles ~20x slower for TPU)
    return jnp.concatenate(taps, axis=-1)
