"""pallas_call wrappers, the custom_vjp and the per-platform dispatch of the Pallas Conv2D.

Data flow of one convolution (``forward_valid``), all static shapes:

1. XLA prepares the operands (cheap, memory-bound): channels padded to the target's lanes (and
   small groups packed block-diagonally into bundles), the stride split into phases (space to
   depth) so every tap is a unit-stride window, output rows cut into tiles that carry their
   halo rows, the kernel laid out as (bundle, tap, C_in, C_out).
2. One Pallas kernel (kernels.py) computes all taps of one tile: matmuls of shifted windows
   with an f32 accumulator (or a multiply-accumulate for depthwise).
3. XLA crops the padding away.

The backward pass is Pallas as well: the input gradient is ``forward_valid`` of the dilated,
padded cotangent with the flipped, transposed kernel; the weight gradient has its own kernels
(window^T @ cotangent, reduced over batch and row tiles).

Which lowering runs is decided by the *target* platform through ``lax.platform_dependent``:
interpreted on CPU, Mosaic on TPU, Triton on CUDA. Nothing falls back to XLA's convolution.

Sharding: a batch-sharded input stays split, under ``shard_map`` when the mesh is known while
tracing, else (CPU, CUDA) by XLA's partitioner through ``custom_partitioning`` (see
``conv_pallas`` and docs/pallas.md).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.custom_partitioning import custom_partitioning
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from jconv.geometry import ConvSpec
from jconv.impls.common import pad_input, transpose_kernel
from jconv.impls.pallas import kernels
from jconv.impls.pallas.tiling import BlockSizes, Problem, Tiling, fold_taps, folded, make_tiling

_F32 = jnp.float32


# ------------------------------------------------------------------------------------------
# target plumbing
# ------------------------------------------------------------------------------------------


# Scoped VMEM for one kernel: above the 16 MiB default (the weight-gradient blocks of 512-channel
# layers need ~20 MiB), within every TPU generation's VMEM.
VMEM_LIMIT_BYTES = 32 * 1024 * 1024


def _call_kwargs(target: str, interpret: Any, semantics: tuple[str, ...]) -> dict:
    """interpret / compiler_params for one pallas_call on ``target``.

    ``interpret`` overrides the lowering (e.g. ``pltpu.InterpretParams`` to run the TPU kernels
    in TPU interpret mode on CPU); the TPU compiler params stay, so the interpreter sees the
    parallel / arbitrary dimension semantics (and splits parallel axes across its cores).
    """
    tpu_params = pltpu.CompilerParams(dimension_semantics=semantics, vmem_limit_bytes=VMEM_LIMIT_BYTES)
    if interpret is not None and interpret is not False:
        return {"interpret": interpret, **({"compiler_params": tpu_params} if target == "tpu" else {})}
    if target == "cpu":
        return {"interpret": True}
    if target == "tpu":
        return {"compiler_params": tpu_params}
    if target == "cuda":
        return {"compiler_params": pltriton.CompilerParams(num_warps=4, num_stages=2)}
    raise ValueError(f"conv2d: impl='pallas' has no lowering for target (={target!r})")


def _uses_scratch(target: str) -> bool:
    return target != "cuda"


def compute_dtype(dtype, target: str):
    """Dtype the kernels read: TPU has no float16 arithmetic, so float16 is widened to f32."""
    dtype = jnp.dtype(dtype)
    if target == "tpu" and dtype == jnp.float16:
        return jnp.dtype(_F32)
    return dtype


def _nbytes(*arrays) -> int:
    return int(sum(np.prod(a.shape) * jnp.dtype(a.dtype).itemsize for a in arrays))


# ------------------------------------------------------------------------------------------
# XLA-side layout: channels, groups, phases, row tiles
# ------------------------------------------------------------------------------------------


def _pad_last(a, size: int):
    extra = size - a.shape[-1]
    if extra == 0:
        return a
    return jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, extra)])


def pack_channels(x, tl: Tiling):
    """(..., C_in) -> (..., bundles * cin_block_total): groups packed, lanes padded."""
    p = tl.problem
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
    p = tl.problem
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
    p = tl.problem
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
    p = tl.problem
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
    p = tl.problem
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
    phases of the stride with the halo rows each tile needs. Extra rows/cols are zeros."""
    p = tl.problem
    sh, sw = p.stride
    n, hp, wp, c = xp.shape
    hq = tl.out_rows + (tl.rows_in - tl.rows)
    wq = tl.in_w
    zero = jnp.zeros((), xp.dtype)
    xp = lax.pad(xp, zero, ((0, 0, 0), (0, hq * sh - hp, 0), (0, wq * sw - wp, 0), (0, 0, 0)))
    if (sh, sw) == (1, 1):
        ph = xp[:, None]
    else:
        xp = xp.reshape(n, hq, sh, wq, sw, c).transpose(0, 2, 4, 1, 3, 5)
        ph = jnp.stack([xp[:, a, b] for a, b in tl.phases], axis=1)    # (N, P, hq, wq, C)
    if tl.row_tiles == 1:
        return ph[:, None]
    return jnp.stack([ph[:, :, r * tl.rows: r * tl.rows + tl.rows_in] for r in range(tl.row_tiles)], axis=1)


def _pad_out_grid(g, tl: Tiling):
    """Cotangent (N, Ho, Wo, C) -> (N, out_rows, out_w, C) with zeros."""
    ho, wo = tl.problem.out_size
    return jnp.pad(g, ((0, 0), (0, tl.out_rows - ho), (0, tl.out_w - wo), (0, 0)))


# ------------------------------------------------------------------------------------------
# forward of a VALID convolution
# ------------------------------------------------------------------------------------------


def im2col(xp, problem: Problem):
    """(N, Ho, Wo, T*C) patches of padded ``xp``, tap-major (matches HWIO reshaped)."""
    kh, kw = problem.kernel_size
    sh, sw = problem.stride
    dh, dw = problem.dilation
    ho, wo = problem.out_size
    n, _, _, c = xp.shape
    taps = [lax.slice(xp, (0, i * dh, j * dw, 0), (n, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, c),
                      (1, sh, sw, 1)) for i in range(kh) for j in range(kw)]
    # concatenate on the channel axis (stack + reshape compiles ~20x slower for TPU)
    return jnp.concatenate(taps, axis=-1)


def forward_valid(xp, w, b, problem: Problem, *, target: str, out_dtype, precision=None,
                  blocks: BlockSizes | None = None, interpret: Any = None, fold: bool | None = None):
    """Pallas forward of a VALID conv: ``xp`` NHWC already padded, ``w`` HWIO, ``b`` or None.

    ``fold`` (default: :func:`~jconv.impls.pallas.tiling.fold_taps`) folds the taps into the
    contraction first; the kernel then runs a 1x1 convolution of the patches.
    """
    if fold if fold is not None else (blocks is None and fold_taps(problem, target)):
        kh, kw, cg, co = w.shape
        return forward_valid(im2col(xp, problem), w.reshape(1, 1, kh * kw * cg, co), b, folded(problem),
                             target=target, out_dtype=out_dtype, precision=precision, blocks=blocks,
                             interpret=interpret, fold=False)
    cdt = compute_dtype(xp.dtype, target)
    tl = make_tiling(_with_dtype(problem, cdt), blocks, target)
    xt = phase_tiles(pack_channels(xp.astype(cdt), tl), tl)
    wp = pack_weights(w.astype(cdt), tl)
    co_tot = tl.bundles * tl.cout_block_total
    bias = jnp.zeros((1, co_tot), _F32) if b is None else pack_out_channels(b.astype(_F32).reshape(1, -1), tl)
    n = problem.batch
    r, rows, ow, rin, iw = tl.row_tiles, tl.rows, tl.out_w, tl.rows_in, tl.in_w
    npx = len(tl.phases)
    ho, wo = problem.out_size
    # TPU kernels cannot store float16: they write f32 and XLA narrows it
    out_shape = jax.ShapeDtypeStruct((n, tl.out_rows, ow, co_tot), compute_dtype(out_dtype, target))
    cost = pl.CostEstimate(flops=int(problem.flops), transcendentals=0,
                           bytes_accessed=_nbytes(xt, wp, bias) + int(np.prod(out_shape.shape)) * out_shape.dtype.itemsize)
    bk = tl.blocks
    if tl.depthwise:
        bc = bk.block_co
        nc = tl.cout_block_total // bc
        kern = functools.partial(kernels.depthwise_fwd_kernel, taps=tl.taps, rows=rows, out_w=ow)
        y = pl.pallas_call(
            kern,
            out_shape=out_shape,
            grid=(n, r, nc),
            in_specs=[
                pl.BlockSpec((None, None, npx, rin, iw, bc), lambda i, t, c: (i, t, 0, 0, 0, c)),
                pl.BlockSpec((len(tl.taps), bc), lambda i, t, c: (0, c)),
                pl.BlockSpec((1, bc), lambda i, t, c: (0, c)),
            ],
            out_specs=pl.BlockSpec((None, rows, ow, bc), lambda i, t, c: (i, t, 0, c)),
            cost_estimate=cost,
            name="jconv_depthwise_fwd",
            **_call_kwargs(target, interpret, ("parallel", "parallel", "parallel")),
        )(xt, wp, bias)
    else:
        nk, nj = tl.k_blocks, tl.j_blocks
        bci, bco = bk.block_ci, bk.block_co
        scratch = _uses_scratch(target)
        if not scratch and nk != 1:
            raise NotImplementedError("conv2d: impl='pallas' on Triton needs block_ci == all input channels")
        kern = functools.partial(kernels.conv_fwd_kernel, taps=tl.taps, rows=rows, out_w=ow, chunk=bk.chunk_ci,
                                 k_axis=4, nk=nk, precision=precision)
        y = pl.pallas_call(
            kern,
            out_shape=out_shape,
            grid=(n, r, tl.bundles, nj, nk),
            in_specs=[
                pl.BlockSpec((None, None, npx, rin, iw, bci), lambda i, t, g, j, k: (i, t, 0, 0, 0, g * nk + k)),
                pl.BlockSpec((None, len(tl.taps), bci, bco), lambda i, t, g, j, k: (g, 0, k, j)),
                pl.BlockSpec((1, bco), lambda i, t, g, j, k: (0, g * nj + j)),
            ],
            out_specs=pl.BlockSpec((None, rows, ow, bco), lambda i, t, g, j, k: (i, t, 0, g * nj + j)),
            scratch_shapes=[pltpu.VMEM((rows * ow, bco), _F32)] if scratch else [],
            cost_estimate=cost,
            name="jconv_conv_fwd",
            **_call_kwargs(target, interpret, ("parallel",) * 4 + ("arbitrary",)),
        )(xt, wp, bias)
    return unpack_out_channels(y[:, :ho, :wo], tl).astype(out_dtype)


def _with_dtype(problem: Problem, dtype) -> Problem:
    return dataclasses.replace(problem, dtype=jnp.dtype(dtype).name)


# ------------------------------------------------------------------------------------------
# weight gradient of a VALID convolution
# ------------------------------------------------------------------------------------------


def weight_grad_valid(xp, g, w_shape, problem: Problem, *, target: str, precision=None,
                      blocks: BlockSizes | None = None, interpret: Any = None, fold: bool | None = None):
    """dL/dw (HWIO, float32) of a VALID conv given padded input ``xp`` and cotangent ``g``."""
    if fold if fold is not None else (blocks is None and fold_taps(problem, target)):
        kh, kw, cg, co = w_shape
        dw = weight_grad_valid(im2col(xp, problem), g, (1, 1, kh * kw * cg, co), folded(problem), target=target,
                               precision=precision, blocks=blocks, interpret=interpret, fold=False)
        return dw.reshape(w_shape)
    cdt = compute_dtype(jnp.promote_types(xp.dtype, g.dtype), target)
    tl = make_tiling(_with_dtype(problem, cdt), blocks, target)
    xt = phase_tiles(pack_channels(xp.astype(cdt), tl), tl)
    gp = pack_out_channels(_pad_out_grid(g.astype(cdt), tl), tl)
    n = problem.batch
    r, rows, ow, rin, iw = tl.row_tiles, tl.rows, tl.out_w, tl.rows_in, tl.in_w
    npx, nt = len(tl.phases), len(tl.taps)
    bk = tl.blocks
    scratch = _uses_scratch(target)
    cost_bytes = _nbytes(xt, gp)
    if tl.depthwise:
        bc = bk.block_co
        nc = tl.cout_block_total // bc
        out_shape = jax.ShapeDtypeStruct((nt, tl.cout_block_total), _F32)
        cost = pl.CostEstimate(flops=int(problem.flops), transcendentals=0,
                               bytes_accessed=cost_bytes + nt * tl.cout_block_total * 4)
        if scratch:
            kern = functools.partial(kernels.depthwise_dw_kernel, taps=tl.taps, rows=rows, out_w=ow, red_axes=(1, 2))
            dwb = pl.pallas_call(
                kern, out_shape=out_shape, grid=(nc, n, r),
                in_specs=[
                    pl.BlockSpec((None, None, npx, rin, iw, bc), lambda c, i, t: (i, t, 0, 0, 0, c)),
                    pl.BlockSpec((None, rows, ow, bc), lambda c, i, t: (i, t, 0, c)),
                ],
                out_specs=pl.BlockSpec((nt, bc), lambda c, i, t: (0, c)),
                scratch_shapes=[pltpu.VMEM((nt, bc), _F32)],
                cost_estimate=cost, name="jconv_depthwise_dw",
                **_call_kwargs(target, interpret, ("parallel", "arbitrary", "arbitrary")),
            )(xt, gp)
        else:
            kern = functools.partial(kernels.depthwise_dw_kernel_loop, taps=tl.taps, rows=rows, out_w=ow,
                                     batch=n, row_tiles=r)
            dwb = pl.pallas_call(
                kern, out_shape=out_shape, grid=(nc,),
                in_specs=[
                    pl.BlockSpec((n, r, npx, rin, iw, bc), lambda c: (0, 0, 0, 0, 0, c)),
                    pl.BlockSpec((n, tl.out_rows, ow, bc), lambda c: (0, 0, 0, c)),
                ],
                out_specs=pl.BlockSpec((nt, bc), lambda c: (0, c)),
                cost_estimate=cost, name="jconv_depthwise_dw",
                **_call_kwargs(target, interpret, ("parallel",)),
            )(xt, gp)
        return unpack_weight_grad(dwb, tl, w_shape)
    nk, nj, nb = tl.k_blocks, tl.j_blocks, tl.bundles
    bci, bco = bk.block_ci, bk.block_co
    out_shape = jax.ShapeDtypeStruct((nb, nt, tl.cin_block_total, tl.cout_block_total), _F32)
    cost = pl.CostEstimate(flops=int(problem.flops), transcendentals=0,
                           bytes_accessed=cost_bytes + int(np.prod(out_shape.shape)) * 4)
    if scratch:
        kern = functools.partial(kernels.conv_dw_kernel, taps=tl.taps, rows=rows, out_w=ow, precision=precision,
                                 red_axes=(3, 4))
        dwb = pl.pallas_call(
            kern, out_shape=out_shape, grid=(nb, nj, nk, n, r),
            in_specs=[
                pl.BlockSpec((None, None, npx, rin, iw, bci), lambda g_, j, k, i, t: (i, t, 0, 0, 0, g_ * nk + k)),
                pl.BlockSpec((None, rows, ow, bco), lambda g_, j, k, i, t: (i, t, 0, g_ * nj + j)),
            ],
            out_specs=pl.BlockSpec((None, nt, bci, bco), lambda g_, j, k, i, t: (g_, 0, k, j)),
            scratch_shapes=[pltpu.VMEM((nt, bci, bco), _F32)],
            cost_estimate=cost, name="jconv_conv_dw",
            **_call_kwargs(target, interpret, ("parallel",) * 3 + ("arbitrary",) * 2),
        )(xt, gp)
    else:
        kern = functools.partial(kernels.conv_dw_kernel_loop, taps=tl.taps, rows=rows, out_w=ow,
                                 precision=precision, batch=n, row_tiles=r)
        dwb = pl.pallas_call(
            kern, out_shape=out_shape, grid=(nb, nj, nk),
            in_specs=[
                pl.BlockSpec((n, r, npx, rin, iw, bci), lambda g_, j, k: (0, 0, 0, 0, 0, g_ * nk + k)),
                pl.BlockSpec((n, tl.out_rows, ow, bco), lambda g_, j, k: (0, 0, 0, g_ * nj + j)),
            ],
            out_specs=pl.BlockSpec((None, nt, bci, bco), lambda g_, j, k: (g_, 0, k, j)),
            cost_estimate=cost, name="jconv_conv_dw",
            **_call_kwargs(target, interpret, ("parallel",) * 3),
        )(xt, gp)
    return unpack_weight_grad(dwb, tl, w_shape)


# ------------------------------------------------------------------------------------------
# the execute-contract function: forward, dx, dw for a ConvSpec
# ------------------------------------------------------------------------------------------


def spec_forward(x, w, b, spec: ConvSpec, *, target: str, blocks=None, interpret=None):
    xp = pad_input(x, spec)
    return forward_valid(xp, w, b, Problem.from_spec(spec), target=target, out_dtype=spec.out_dtype,
                         precision=spec.precision, blocks=blocks, interpret=interpret)


def _input_grad_operands(g, w, spec: ConvSpec):
    """The input gradient as a VALID convolution: (dilated, padded cotangent, transposed kernel,
    its spec). XLA ops only (differentiable); the padding may be negative (a crop)."""
    (pbh, pah), (pbw, paw) = spec.input_grad_padding
    sh, sw = spec.stride
    ct = jnp.promote_types(g.dtype, w.dtype)
    gp = lax.pad(g.astype(ct), jnp.zeros((), ct), ((0, 0, 0), (pbh, pah, sh - 1), (pbw, paw, sw - 1), (0, 0, 0)))
    wt = transpose_kernel(w.astype(ct), spec.groups)
    dx_spec = dataclasses.replace(
        spec, in_size=tuple(gp.shape[1:3]), in_channels=spec.out_channels, out_channels=spec.in_channels,
        stride=spec.lhs_dilation, padding=((0, 0), (0, 0)), lhs_dilation=(1, 1), has_bias=False,
        dtype=jnp.dtype(ct).name, out_dtype=spec.dtype,
    )
    if dx_spec.out_size != tuple(spec.in_size):
        raise AssertionError(f"pallas input gradient: size {dx_spec.out_size} != input {spec.in_size}")
    return gp, wt, dx_spec


def spec_input_grad(g, w, spec: ConvSpec, *, target: str, blocks=None, interpret=None):
    """dL/dx (N, H, W, C_in) in ``spec.dtype``: a forward conv of the dilated, padded cotangent."""
    gp, wt, dx_spec = _input_grad_operands(g, w, spec)
    return forward_valid(gp, wt, None, Problem.from_spec(dx_spec), target=target, out_dtype=spec.dtype,
                         precision=spec.precision, blocks=blocks, interpret=interpret)


def spec_weight_grad(x, g, w_shape, spec: ConvSpec, *, target: str, blocks=None, interpret=None):
    """dL/dw (HWIO) in ``spec.dtype``."""
    return _spec_weight_grad_f32(x, g, w_shape, spec, target=target, blocks=blocks,
                                 interpret=interpret).astype(spec.dtype)


def _spec_weight_grad_f32(x, g, w_shape, spec: ConvSpec, *, target: str, blocks=None, interpret=None):
    xp = pad_input(x, spec)
    return weight_grad_valid(xp, g, tuple(w_shape), Problem.from_spec(spec), target=target,
                             precision=spec.precision, blocks=blocks, interpret=interpret)


def _on_target(fn, *args):
    """``fn(*args, target=<platform>)`` with the platform chosen when lowering."""
    return lax.platform_dependent(
        *args,
        cpu=functools.partial(fn, target="cpu"),
        tpu=functools.partial(fn, target="tpu"),
        cuda=functools.partial(fn, target="cuda"),
    )


# The custom_vjp structure (every derivative is again one of these Pallas ops, so higher-order
# derivatives are Pallas too and correct):
#   _conv(x, w)          forward kernel
#   d/dx of _conv        _input_grad(g, w) = _conv(dilated padded g, transposed w)
#   d/dw of _conv        _weight_grad(x, g), whose own VJP is (_input_grad(g, ct), _conv(x, ct))
#
# Inside each primal: ``lax.platform_dependent`` picks the target's lowering, and on CPU and
# CUDA the op is a ``custom_partitioning`` function that XLA's SPMD partitioner splits along the
# batch (below). custom_partitioning is not differentiable, hence inside the custom_vjp.


# ------------------------------------------------------------------------------------------
# XLA's SPMD partitioner splits the ops along the batch (custom_partitioning)
# ------------------------------------------------------------------------------------------
#
# A pallas_call is a custom call XLA cannot split: on a batch-sharded input it would gather the
# whole batch on every device. Each op is therefore a ``custom_partitioning`` function: when XLA
# partitions the program (a jit over sharded arrays, the mesh known only from the arrays), it
# asks ``partition`` for a per-device program: the batch dim stays sharded as the input is (over
# the same mesh axes), everything else is replicated (XLA gathers any other sharding first),
# and each device runs the Pallas kernel on its own examples. The weight gradient, a sum over
# the batch, is summed over the batch axes (an all-reduce of the small dw, in float32). A batch
# that does not divide evenly over those axes runs unsplit (XLA would pad the shards with rows
# that must not enter dw). On one device, or inside shard_map, the function is inlined as is.
#
# Not on TPU: libtpu in this JAX has no hook for the Python partitioner (compiling fails with
# "Custom emitter for CustomSPMDPartitioning not found", jax-ml/jax#38196), so the TPU branch
# stays a plain pallas_call: split only under conv_pallas' shard_map (see _batch_split); in a
# multi-device program outside shard_map, Mosaic refuses to lower it.

PARTITIONED_TARGETS = ("cpu", "cuda")


def _batch_axes(arg, mesh, batch: int):
    """(mesh axes the batch dim of ``arg`` is sharded over, or None; number of shards)."""
    sharding = arg.sharding
    if not isinstance(sharding, jax.sharding.NamedSharding) or not len(sharding.spec):
        return None, 1
    axes = sharding.spec[0]
    names = () if axes is None else axes if isinstance(axes, tuple) else (axes,)
    if not names:
        return None, 1
    shards = int(np.prod([mesh.shape[a] for a in names]))
    if shards == 1 or batch % shards:
        return None, 1
    return (names[0] if len(names) == 1 else tuple(names)), shards


def _partition_mesh(mesh, arg):
    """The mesh to partition over: the operand's (a NamedSharding's), else the context's."""
    sharding = arg.sharding
    return sharding.mesh if isinstance(sharding, jax.sharding.NamedSharding) else mesh


def _named(mesh, *spec):
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))


def _all_but_batch(rule: str) -> tuple[str, ...]:
    """Factors of an einsum-like sharding ``rule`` other than the batch ``n``, in order of
    appearance (the order Shardy requires): all must stay replicated."""
    names = rule.replace(",", " ").replace("->", " ").split()
    return tuple(dict.fromkeys(f for f in names if f != "n"))


# forward (and input gradient: a forward of the cotangent)

def _forward_body(x, w, b, spec, target):
    return spec_forward(x, w, b, spec, target=target)


def _forward_infer(spec, target, mesh, arg_shapes, result_shape):
    mesh = _partition_mesh(mesh, arg_shapes[0])
    return _named(mesh, _batch_axes(arg_shapes[0], mesh, spec.batch)[0])


def _forward_partition(spec, target, mesh, arg_shapes, result_shape):
    mesh = _partition_mesh(mesh, arg_shapes[0])
    axes, shards = _batch_axes(arg_shapes[0], mesh, spec.batch)
    local = dataclasses.replace(spec, batch=spec.batch // shards)
    x_sh, rep = _named(mesh, axes), _named(mesh)
    b_sh = None if arg_shapes[2] is None else rep
    return mesh, functools.partial(_forward_body, spec=local, target=target), x_sh, (x_sh, rep, b_sh)


def _forward_rule(spec, target, mesh, operand_types, result_types):
    rule = "n x0 x1 x2, w0 w1 w2 w3" + (", b0" if len(operand_types) == 3 else "") + " -> n y0 y1 y2"
    return rule, {"need_replication_factors": _all_but_batch(rule)}


_forward_op = custom_partitioning(_forward_body, static_argnums=(3, 4))
_forward_op.def_partition(_forward_partition, infer_sharding_from_operands=_forward_infer,
                          sharding_rule=_forward_rule)


def _forward(x, w, b, spec, partitioned: bool = True):
    def per_target(x_, w_, b_, target):
        op = _forward_op if partitioned and target in PARTITIONED_TARGETS else _forward_body
        return op(x_, w_, b_, spec, target)
    return _on_target(per_target, x, w, b)


# weight gradient

def _weight_grad_body(x, g, w_shape, spec, target):
    return _weight_grad_summed(x, g, w_shape=w_shape, spec=spec, target=target, axes=None)


def _weight_grad_summed(x, g, *, w_shape, spec, target, axes):
    """dw of these examples, summed over the mesh ``axes`` the batch is split on (if any)."""
    dw = _spec_weight_grad_f32(x, g, w_shape, spec, target=target)
    if axes is not None:
        dw = lax.psum(dw, axes)  # the per-shard sums added up, in float32
    return dw.astype(spec.dtype)


def _weight_grad_infer(w_shape, spec, target, mesh, arg_shapes, result_shape):
    return _named(_partition_mesh(mesh, arg_shapes[0]))


def _weight_grad_partition(w_shape, spec, target, mesh, arg_shapes, result_shape):
    mesh = _partition_mesh(mesh, arg_shapes[0])
    axes, shards = _batch_axes(arg_shapes[0], mesh, spec.batch)
    local = dataclasses.replace(spec, batch=spec.batch // shards)
    lower = functools.partial(_weight_grad_summed, w_shape=w_shape, spec=local, target=target, axes=axes)
    return mesh, lower, _named(mesh), (_named(mesh, axes), _named(mesh, axes))


_WEIGHT_GRAD_RULE = "n x0 x1 x2, n g0 g1 g2 -> d0 d1 d2 d3"
_weight_grad_op = custom_partitioning(_weight_grad_body, static_argnums=(2, 3, 4))
_weight_grad_op.def_partition(_weight_grad_partition, infer_sharding_from_operands=_weight_grad_infer,
                              sharding_rule=_WEIGHT_GRAD_RULE,
                              need_replication_factors=_all_but_batch(_WEIGHT_GRAD_RULE))


def _weight_grad_any(x, g, w_shape, spec, partitioned: bool = True):
    def per_target(x_, g_, target):
        op = _weight_grad_op if partitioned and target in PARTITIONED_TARGETS else _weight_grad_body
        return op(x_, g_, w_shape, spec, target)
    return _on_target(per_target, x, g)


def _vmappable(fn, *args):
    """``fn(*args)`` (partitioned); under ``vmap`` (custom_partitioning has no batching rule),
    the vmap of ``fn(*args, partitioned=False)``: plain pallas_calls, which batch themselves."""
    @jax.custom_batching.custom_vmap
    def call(*a):
        return fn(*a)

    @call.def_vmap
    def _rule(axis_size, in_batched, *a):
        plain = functools.partial(fn, partitioned=False)
        return jax.vmap(plain, in_axes=tuple(0 if bt else None for bt in in_batched))(*a), True

    return call(*args)


# the differentiable ops

@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _conv(x, w, b, spec):
    if b is None:
        return _vmappable(lambda x_, w_, **kw: _forward(x_, w_, None, spec, **kw), x, w)
    return _vmappable(lambda x_, w_, b_, **kw: _forward(x_, w_, b_, spec, **kw), x, w, b)


def _conv_fwd(x, w, b, spec):
    return _conv(x, w, b, spec), (x, w, b)


def _conv_bwd(spec, res, g):
    x, w, b = res
    dx = _input_grad(g, w, spec)
    dw = _weight_grad(x, g, tuple(w.shape), spec)
    db = None if b is None else jnp.sum(g.astype(_F32), axis=(0, 1, 2)).astype(b.dtype)
    return dx.astype(x.dtype), dw.astype(w.dtype), db


def _input_grad(g, w, spec):
    gp, wt, dx_spec = _input_grad_operands(g, w, spec)
    return _conv(gp, wt, None, dx_spec)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _weight_grad(x, g, w_shape, spec):
    return _vmappable(lambda x_, g_, **kw: _weight_grad_any(x_, g_, w_shape, spec, **kw), x, g)


def _weight_grad_fwd(x, g, w_shape, spec):
    return _weight_grad(x, g, w_shape, spec), (x, g)


def _weight_grad_bwd(w_shape, spec, res, ct):
    x, g = res  # dw is bilinear in (x, g): contract ct with one to get the other's gradient
    ct = ct.astype(spec.dtype)
    return _input_grad(g, ct, spec).astype(x.dtype), _conv(x, ct, None, spec).astype(g.dtype)


_weight_grad.defvjp(_weight_grad_fwd, _weight_grad_bwd)
_conv.defvjp(_conv_fwd, _conv_bwd)


def check_supported(spec: ConvSpec) -> None:
    if "float64" in (spec.dtype, spec.out_dtype):
        raise NotImplementedError(
            "conv2d: impl='pallas' does not support float64 (no f64 matmul in TPU/GPU kernels); "
            "use impl='lax' or impl='xla'"
        )
    ho, wo = spec.out_size
    if ho < 1 or wo < 1:
        raise NotImplementedError(f"conv2d: impl='pallas' needs a non-empty output (got {ho}x{wo})")


def _batch_split(x, batch: int):
    """(mesh, axes) to split the batch over with ``shard_map``, or None: the ops are then split
    by XLA's partitioner on CPU / CUDA (see PARTITIONED_TARGETS); on TPU, Mosaic refuses to
    lower a kernel in a multi-device program outside shard_map (use ``jax.set_mesh``).

    Explicit sharding: the axes the batch dim of ``x`` is sharded over. Auto sharding inside
    ``jax.set_mesh(mesh)``: all axes of that mesh when the batch divides evenly (data
    parallelism over the input's mesh; this also splits on TPU). Without a mesh in context the
    mesh is unknown when tracing (``shard_map`` over an abstract mesh miscompiles inputs closed
    over as jit constants in this JAX), so None.
    """
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty or mesh.size == 1:
        return None
    types = set(getattr(mesh, "axis_types", ()))
    if types and types <= {jax.sharding.AxisType.Auto}:
        context = jax.sharding.get_abstract_mesh()
        if context.empty or dict(context.shape) != dict(mesh.shape) or batch % mesh.size:
            return None
        names = tuple(mesh.axis_names)
        return mesh, (names[0] if len(names) == 1 else names)
    if not len(sharding.spec) or sharding.spec[0] is None:
        return None
    return mesh, sharding.spec[0]


def conv_pallas(x, w, b, spec: ConvSpec):
    """The execute-contract entry point (see :mod:`jconv.impls`).

    Each device convolves its own examples, so the batch sharding is kept (XLA cannot split a
    Pallas custom call by itself and would gather the whole batch on every device): under
    ``shard_map`` over the batch when the mesh is known while tracing (explicit sharding, or
    inside ``jax.set_mesh``; see :func:`_batch_split`), otherwise through the
    custom_partitioning ops, which XLA's partitioner splits along the batch (CPU, CUDA).
    """
    check_supported(spec)
    split = _batch_split(x, spec.batch)
    if split is None:
        return _conv(x, w, b, spec)
    mesh, axes = split
    names = axes if isinstance(axes, tuple) else (axes,)
    shards = int(np.prod([mesh.shape[a] for a in names]))
    local = dataclasses.replace(spec, batch=spec.batch // shards)
    P = jax.sharding.PartitionSpec
    if b is None:
        fn, args, in_specs = (lambda x_, w_: _conv(x_, w_, None, local)), (x, w), (P(axes), P())
    else:
        fn, args, in_specs = (lambda x_, w_, b_: _conv(x_, w_, b_, local)), (x, w, b), (P(axes), P(), P())
    # check_vma=False: pallas_call outputs carry no varying-axes annotation
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=P(axes), check_vma=False)(*args)
