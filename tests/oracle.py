"""A float64 NumPy oracle for Conv2D, written from the seed's definition (no JAX).

``output[n, i, j, o] = sum_{c in group(o), di, dj} xpad[n, i*s + di*d, j*s + dj*d, c] * w[di, dj, c, o] + b[o]``
"""

from __future__ import annotations

import numpy as np

_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def conv2d_ref(x, w, b=None, *, stride=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1),
               groups=1, layout="NHWC", padding_mode="zeros", flip_kernel=False, lhs_dilation=(1, 1)):
    """Everything in float64. ``padding`` must be per-side numbers (resolved)."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    unbatched = x.ndim == 3
    if unbatched:
        x = x[None]
    if layout == "NCHW":
        x = x.transpose(0, 2, 3, 1)
        w = w.transpose(2, 3, 1, 0)
    if flip_kernel:
        w = w[::-1, ::-1]
    n, h, wd, c = x.shape
    lh, lw = lhs_dilation
    if (lh, lw) != (1, 1):
        xd = np.zeros((n, (h - 1) * lh + 1, (wd - 1) * lw + 1, c))
        xd[:, ::lh, ::lw] = x
        x = xd
    (pt, pb), (pl, pr) = padding
    if padding_mode == "zeros":
        # negative padding crops
        x = x[:, max(-pt, 0): x.shape[1] - max(-pb, 0), max(-pl, 0): x.shape[2] - max(-pr, 0)]
        x = np.pad(x, ((0, 0), (max(pt, 0), max(pb, 0)), (max(pl, 0), max(pr, 0)), (0, 0)))
    else:
        x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), mode=_MODES[padding_mode])
    kh, kw, cg, co = w.shape
    sh, sw = stride
    dh, dw = dilation
    hp, wp = x.shape[1:3]
    ho = (hp - (kh - 1) * dh - 1) // sh + 1
    wo = (wp - (kw - 1) * dw - 1) // sw + 1
    cog = co // groups
    y = np.zeros((n, ho, wo, co))
    for g in range(groups):
        xg = x[..., g * cg:(g + 1) * cg]
        wg = w[..., g * cog:(g + 1) * cog]
        for i in range(kh):
            for j in range(kw):
                patch = xg[:, i * dh: i * dh + (ho - 1) * sh + 1: sh, j * dw: j * dw + (wo - 1) * sw + 1: sw]
                y[..., g * cog:(g + 1) * cog] += np.einsum("nhwc,co->nhwo", patch, wg[i, j])
    if b is not None:
        y = y + np.asarray(b, np.float64)
    if layout == "NCHW":
        y = y.transpose(0, 3, 1, 2)
    return y[0] if unbatched else y
