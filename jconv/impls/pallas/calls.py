"""The ``pallas_call``s of the Pallas Conv2D: a VALID convolution's forward and weight gradient,
each lowered for one target (interpreted on the CPU, Mosaic on TPU, Triton on CUDA).

Data flow of one call, all static shapes:

1. XLA prepares the operands (:mod:`.layout`): channels padded to lanes and groups bundled, the
   stride split into phases, output rows cut into tiles with their halo rows, the kernel laid
   out as (bundle, tap, C_in, C_out); or the taps folded into the contraction (an im2col).
2. One Pallas kernel (:mod:`.kernels`) computes all taps of one tile.
3. XLA crops the padding away (and, for a Triton weight gradient split over programs, adds the
   partial sums).

Tiles come from :func:`.tiling.get_default` for the :class:`~jconv.targets.Target`; every
operand the call materialises is bounded by ``HBM_BUDGET`` of the target's device memory, and a
call that cannot fit raises :class:`.tiling.KernelFitError` before anything is compiled.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from jconv.spec import ExecSpec
from jconv.impls.pallas import kernels
from jconv.impls.pallas.layout import (
    im2col, pack_channels, pack_out_channels, pack_weights, pad_out_grid, phase_tiles, unpack_out_channels,
    unpack_weight_grad,
)
from jconv.impls.pallas.tiling import (
    TRITON_NUM_STAGES, TRITON_NUM_WARPS, VMEM_LIMIT, BlockSizes, KernelFitError, Tiling, fold_taps, folded,
    itemsize, make_tiling, on_chip_memory,
)
from jconv.targets import Target

_F32 = jnp.float32

#: The arrays one call materialises (tiles, patches, packed operands: :func:`working_set`) are at
#: most this fraction of the target's device memory; a bigger batch runs in chunks (ops.py).
HBM_BUDGET = 0.25
#: Fold the taps (im2col) only when the patches are at most this many times the bytes of the
#: phase tiles they replace (the stem's input gradient would otherwise materialise 20 GB).
FOLD_MAX_RATIO = 2.0


# what each lowered kernel got: read by the compile matrix and benchmarks/tile_table.py
# ------------------------------------------------------------------------------------------

_TILE_LOG: contextvars.ContextVar[list | None] = contextvars.ContextVar("jconv_pallas_tile_log", default=None)
_ROLE: contextvars.ContextVar[str] = contextvars.ContextVar("jconv_pallas_role", default="forward")


@contextlib.contextmanager
def recording_tiles():
    """Collect, while lowering inside the block, one dict per Pallas kernel: its role (forward,
    input gradient, weight gradient), kernel, examples per call, whether the taps were folded,
    the tiles (``BlockSizes``), the grid's tile counts, and the kernel's modelled VMEM or shared
    memory beside the budget it was sized against. Nothing is collected outside the block."""
    log: list = []
    token = _TILE_LOG.set(log)
    try:
        yield log
    finally:
        _TILE_LOG.reset(token)


@contextlib.contextmanager
def role(name: str):
    """The role (``forward``, ``input gradient``, ``weight gradient``) of the kernels lowered in
    the block, for :func:`recording_tiles`."""
    token = _ROLE.set(name)
    try:
        yield
    finally:
        _ROLE.reset(token)


def _note(kernel: str, tl: Tiling, target: Target, folded_: bool) -> None:
    log = _TILE_LOG.get()
    if log is None:
        return
    b, which = tl.blocks, ("dw" if kernel.endswith("_dw") else "fwd")
    entry = {"role": _ROLE.get(), "kernel": kernel, "examples": tl.spec.batch, "folded": folded_,
             "block_h": b.block_h, "block_ci": b.block_ci, "chunk_ci": b.chunk_ci, "block_co": b.block_co,
             "row_tiles": tl.row_tiles, "k_blocks": tl.k_blocks, "j_blocks": tl.j_blocks, "bundles": tl.bundles,
             "cin_padded": tl.cin_block_total, "cout_padded": tl.cout_block_total}
    mem = on_chip_memory(tl, target, which)
    if mem is not None:
        name, need, budget = mem
        entry.update({f"{name}_model": need, f"{name}_budget": budget})
    log.append(entry)


def compute_dtype(dtype, target: Target):
    """Dtype the kernels read: TPU has no float16 arithmetic, so float16 is widened to f32."""
    dtype = jnp.dtype(dtype)
    if target.platform == "tpu" and dtype == jnp.float16:
        return jnp.dtype(_F32)
    return dtype


def call_kwargs(target: Target, interpret: Any, semantics: tuple[str, ...]) -> dict:
    """interpret / compiler_params for one pallas_call on ``target``.

    ``interpret`` overrides the lowering (e.g. ``pltpu.InterpretParams`` to run the TPU kernels
    in TPU interpret mode on CPU); the TPU compiler params stay, so the interpreter sees the
    parallel / arbitrary dimension semantics (and splits parallel axes across its cores).
    """
    tpu_params = None
    if target.platform == "tpu":
        tpu_params = pltpu.CompilerParams(dimension_semantics=semantics,
                                          vmem_limit_bytes=int(VMEM_LIMIT * target.vmem_bytes))
    if interpret is not None and interpret is not False:
        return {"interpret": interpret, **({"compiler_params": tpu_params} if tpu_params else {})}
    if target.platform == "cpu":
        return {"interpret": True}
    if target.platform == "tpu":
        return {"compiler_params": tpu_params}
    if target.platform == "cuda":
        return {"compiler_params": pltriton.CompilerParams(num_warps=TRITON_NUM_WARPS, num_stages=TRITON_NUM_STAGES)}
    raise ValueError(f"conv2d: impl='pallas' has no lowering for platform (={target.platform!r})")


def _uses_scratch(target: Target, interpret: Any) -> bool:
    """TPU (and the CPU interpreter) accumulate in scratch across "arbitrary" grid axes; Triton
    programs cannot, so CUDA uses the ``*_triton`` kernel forms (also when interpreted: the
    tests run them on the CPU with ``interpret=True`` and a CUDA target)."""
    return target.platform != "cuda"


def _nbytes(shape, dtype) -> int:
    return int(np.prod(shape)) * jnp.dtype(dtype).itemsize


def _tiles_shape(tl: Tiling) -> tuple[int, ...]:
    n = tl.spec.batch
    return (n, tl.row_tiles, len(tl.phases), tl.rows_in, tl.in_w, tl.bundles * tl.cin_block_total)


def _check_memory(what: str, nbytes: int, target: Target) -> None:
    """A last guard: ops.py chunks the batch so that one call fits; a call that still does not
    (one example too big) is refused here, before anything is compiled."""
    if target.memory_bytes and nbytes > 2 * HBM_BUDGET * target.memory_bytes:
        raise KernelFitError(
            f"conv2d: impl='pallas' cannot run this convolution's {what} on {target.describe()}: its "
            f"operands take {nbytes / 2**30:.1f} GiB, over {2 * HBM_BUDGET:.0%} of the device's "
            f"{target.memory_bytes / 2**30:.1f} GiB; use a smaller batch or impl='xla'"
        )


def _laid_out_bytes(shape, dtype, target: Target) -> int:
    """Bytes of an array as the target lays it out: TPU pads the minor dim to 128 lanes and the
    second-minor to the sublanes (8 rows of 32 bits); elsewhere, row-major."""
    item = jnp.dtype(dtype).itemsize
    shape = tuple(int(d) for d in shape)
    if target.platform != "tpu" or len(shape) < 2:
        return int(np.prod(shape)) * item
    sub = 8 * max(1, 4 // item)
    lead = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return lead * (-(-shape[-2] // sub) * sub) * (-(-shape[-1] // 128) * 128) * item


def working_set(spec: ExecSpec, target: Target, kind: str, dtype) -> int:
    """Bytes one call (``kind`` "fwd" or "dw") of VALID ``spec`` materialises around its kernel,
    as the target lays them out: the padded input, the patches (folded taps), the packed input
    and its row tiles, and the kernel's output and its cropped copy (forward) or the packed
    cotangent (weight gradient). Linear in the batch."""
    cdt = compute_dtype(dtype, target)
    run = folded(spec) if _should_fold(spec, target, cdt) else spec
    tl = make_tiling(_with_dtype(run, cdt), target=target)
    n = spec.batch
    ho, wo = spec.out_size
    total = _laid_out_bytes((n,) + tuple(spec.in_size) + (spec.in_channels,), cdt, target)
    if run is not spec:
        total += 2 * _laid_out_bytes((n, ho, wo, run.in_channels), cdt, target)
    total += _laid_out_bytes(_tiles_shape(tl), cdt, target)
    if kind == "fwd":
        total += _laid_out_bytes((n, tl.out_rows, tl.out_w, tl.bundles * tl.cout_block_total), cdt, target)
        total += _laid_out_bytes((n, ho, wo, spec.out_channels), cdt, target)
    else:
        total += 2 * _laid_out_bytes((n, tl.out_rows, tl.out_w, tl.bundles * tl.cout_block_total), cdt, target)
    return total


def batch_chunk(spec: ExecSpec, target: Target, kind: str, dtype) -> int:
    """Examples per call so that :func:`working_set` stays within ``HBM_BUDGET`` of the
    target's memory (the whole batch when it fits, or on a target without a memory figure)."""
    if not target.memory_bytes or spec.batch <= 1:
        return spec.batch
    one = working_set(dataclasses.replace(spec, batch=1), target, kind, dtype)
    budget = HBM_BUDGET * target.memory_bytes
    if one > 2 * budget:
        raise KernelFitError(
            f"conv2d: impl='pallas' cannot run this convolution on {target.describe()}: one example's "
            f"operands take {one / 2**30:.1f} GiB, over {2 * HBM_BUDGET:.0%} of the device's "
            f"{target.memory_bytes / 2**30:.1f} GiB; use impl='xla'")
    limit = int(max(1, min(spec.batch, budget // one)))
    k = -(-spec.batch // limit)
    return -(-spec.batch // k)  # balanced chunks: the least padding (64 examples at 61: 2 x 32)


def _should_fold(spec: ExecSpec, target: Target, dtype) -> bool:
    """:func:`.tiling.fold_taps`, when the patches are not much bigger than the tiles."""
    if not fold_taps(spec, target.platform):
        return False
    tl = make_tiling(spec, target=target)
    ftl = make_tiling(folded(spec), target=target)
    return _nbytes(_tiles_shape(ftl), dtype) <= FOLD_MAX_RATIO * _nbytes(_tiles_shape(tl), dtype)


def _with_dtype(spec: ExecSpec, dtype) -> ExecSpec:
    name = jnp.dtype(dtype).name
    return dataclasses.replace(spec, dtype=name, out_dtype=name)


# ------------------------------------------------------------------------------------------
# forward of a VALID convolution
# ------------------------------------------------------------------------------------------


def forward_valid(xp, w, spec: ExecSpec, *, target: Target, out_dtype, precision=None,
                  blocks: BlockSizes | None = None, interpret: Any = None, fold: bool | None = None,
                  _folded: bool = False):
    """Pallas forward of a VALID conv: ``xp`` NHWC already padded, ``w`` HWIO.

    ``fold`` (default: :func:`_should_fold`) folds the taps into the contraction first; the
    kernel then runs a 1x1 convolution of the patches.
    """
    cdt = compute_dtype(xp.dtype, target)
    if fold if fold is not None else (blocks is None and _should_fold(spec, target, cdt)):
        kh, kw, cg, co = w.shape
        return forward_valid(im2col(xp, spec, channels_first=target.platform == "tpu"), w.reshape(1, 1, kh * kw * cg, co), folded(spec),
                             target=target, out_dtype=out_dtype, precision=precision, blocks=blocks,
                             interpret=interpret, fold=False, _folded=True)
    tl = make_tiling(_with_dtype(spec, cdt), blocks, target)
    _note("depthwise_fwd" if tl.depthwise else "conv_fwd", tl, target, _folded)
    n = spec.batch
    r, rows, ow, rin, iw = tl.row_tiles, tl.rows, tl.out_w, tl.rows_in, tl.in_w
    npx = len(tl.phases)
    ho, wo = spec.out_size
    co_tot = tl.bundles * tl.cout_block_total
    # TPU kernels cannot store float16: they write f32 and XLA narrows it
    out_shape = jax.ShapeDtypeStruct((n, tl.out_rows, ow, co_tot), compute_dtype(out_dtype, target))
    w_shape = (tl.bundles, len(tl.taps), tl.cin_block_total, tl.cout_block_total)
    in_bytes = _nbytes(_tiles_shape(tl), cdt) + _nbytes(w_shape, cdt)
    out_bytes = _nbytes(out_shape.shape, out_shape.dtype)
    _check_memory("forward", in_bytes + out_bytes, target)
    xt = phase_tiles(pack_channels(xp.astype(cdt), tl), tl)
    wp = pack_weights(w.astype(cdt), tl)
    cost = pl.CostEstimate(flops=int(spec.flops), transcendentals=0, bytes_accessed=in_bytes + out_bytes)
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
            ],
            out_specs=pl.BlockSpec((None, rows, ow, bc), lambda i, t, c: (i, t, 0, c)),
            cost_estimate=cost,
            name="jconv_depthwise_fwd",
            **call_kwargs(target, interpret, ("parallel", "parallel", "parallel")),
        )(xt, wp)
    else:
        nk, nj = tl.k_blocks, tl.j_blocks
        bci, bco = bk.block_ci, bk.block_co
        scratch = _uses_scratch(target, interpret)
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
            ],
            out_specs=pl.BlockSpec((None, rows, ow, bco), lambda i, t, g, j, k: (i, t, 0, g * nj + j)),
            scratch_shapes=[pltpu.VMEM((rows * ow, bco), _F32)] if scratch else [],
            cost_estimate=cost,
            name="jconv_conv_fwd",
            **call_kwargs(target, interpret, ("parallel",) * 4 + ("arbitrary",)),
        )(xt, wp)
    return unpack_out_channels(y[:, :ho, :wo], tl).astype(out_dtype)


# ------------------------------------------------------------------------------------------
# weight gradient of a VALID convolution
# ------------------------------------------------------------------------------------------


def _splits(target: Target, base_programs: int, steps: int) -> int:
    """Triton: programs sharing one dw block's reduction, so the grid has about two programs
    per SM; their partial sums are added by XLA."""
    sms = target.sm_count or 1
    return max(1, min(steps, -(-2 * sms // max(1, base_programs))))


def weight_grad_valid(xp, g, w_shape, spec: ExecSpec, *, target: Target, precision=None,
                      blocks: BlockSizes | None = None, interpret: Any = None, fold: bool | None = None,
                      _folded: bool = False):
    """dL/dw (HWIO, float32) of a VALID conv given padded input ``xp`` and cotangent ``g``."""
    cdt = compute_dtype(jnp.promote_types(xp.dtype, g.dtype), target)
    if fold if fold is not None else (blocks is None and _should_fold(spec, target, cdt)):
        kh, kw, cg, co = w_shape
        dw = weight_grad_valid(im2col(xp, spec, channels_first=target.platform == "tpu"), g, (1, 1, kh * kw * cg, co), folded(spec), target=target,
                               precision=precision, blocks=blocks, interpret=interpret, fold=False,
                               _folded=True)
        return dw.reshape(w_shape)
    tl = make_tiling(_with_dtype(spec, cdt), blocks, target)
    _note("depthwise_dw" if tl.depthwise else "conv_dw", tl, target, _folded)
    scratch = _uses_scratch(target, interpret)
    g_shape = (spec.batch, tl.out_rows, tl.out_w, tl.bundles * tl.cout_block_total)
    in_bytes = _nbytes(_tiles_shape(tl), cdt) + _nbytes(g_shape, cdt)
    xt = phase_tiles(pack_channels(xp.astype(cdt), tl), tl)
    gp = pack_out_channels(pad_out_grid(g.astype(cdt), tl), tl)
    call = _depthwise_dw_call if tl.depthwise else _conv_dw_call
    dwb = call(xt, gp, spec, tl, target=target, precision=precision, interpret=interpret, scratch=scratch,
               in_bytes=in_bytes)
    return unpack_weight_grad(dwb.sum(axis=0), tl, w_shape)


def _depthwise_dw_call(xt, gp, spec: ExecSpec, tl, *, target: Target, precision, interpret, scratch: bool,
                       in_bytes: int):
    """The depthwise weight gradient's pallas_call: (splits, taps, channels) float32 partial sums."""
    n, r, rows, ow, rin, iw = spec.batch, tl.row_tiles, tl.rows, tl.out_w, tl.rows_in, tl.in_w
    npx, nt, bk, steps = len(tl.phases), len(tl.taps), tl.blocks, spec.batch * tl.row_tiles
    bc = bk.block_co
    nc = tl.cout_block_total // bc
    splits = 1 if scratch else _splits(target, nc, steps)
    out_shape = jax.ShapeDtypeStruct((splits, nt, tl.cout_block_total), _F32)
    _check_memory("weight gradient", in_bytes + _nbytes(out_shape.shape, _F32), target)
    cost = pl.CostEstimate(flops=int(spec.flops), transcendentals=0,
                           bytes_accessed=in_bytes + _nbytes(out_shape.shape, _F32))
    if scratch:
        kern = functools.partial(kernels.depthwise_dw_kernel, taps=tl.taps, rows=rows, out_w=ow, red_axes=(1, 2))
        dwb = pl.pallas_call(
            kern, out_shape=out_shape, grid=(nc, n, r),
            in_specs=[
                pl.BlockSpec((None, None, npx, rin, iw, bc), lambda c, i, t: (i, t, 0, 0, 0, c)),
                pl.BlockSpec((None, rows, ow, bc), lambda c, i, t: (i, t, 0, c)),
            ],
            out_specs=pl.BlockSpec((None, nt, bc), lambda c, i, t: (0, 0, c)),
            scratch_shapes=[pltpu.VMEM((nt, bc), _F32)],
            cost_estimate=cost, name="jconv_depthwise_dw",
            **call_kwargs(target, interpret, ("parallel", "arbitrary", "arbitrary")),
        )(xt, gp)
    else:
        kern = functools.partial(kernels.depthwise_dw_kernel_triton, taps=tl.taps, rows=rows, out_w=ow,
                                 steps=steps, row_tiles=r, splits=splits, split_axis=1)
        dwb = pl.pallas_call(
            kern, out_shape=out_shape, grid=(nc, splits),
            in_specs=[
                pl.BlockSpec((n, r, npx, rin, iw, bc), lambda c, s: (0, 0, 0, 0, 0, c)),
                pl.BlockSpec((n, tl.out_rows, ow, bc), lambda c, s: (0, 0, 0, c)),
            ],
            out_specs=pl.BlockSpec((None, nt, bc), lambda c, s: (s, 0, c)),
            cost_estimate=cost, name="jconv_depthwise_dw",
            **call_kwargs(target, interpret, ("parallel", "parallel")),
        )(xt, gp)
    return dwb


def _conv_dw_call(xt, gp, spec: ExecSpec, tl, *, target: Target, precision, interpret, scratch: bool,
                  in_bytes: int):
    """The dense/grouped weight gradient's pallas_call: (splits, bundles, taps, C_in, C_out) float32
    partial sums."""
    n, r, rows, ow, rin, iw = spec.batch, tl.row_tiles, tl.rows, tl.out_w, tl.rows_in, tl.in_w
    npx, nt, bk, steps = len(tl.phases), len(tl.taps), tl.blocks, spec.batch * tl.row_tiles
    nb = tl.bundles
    if scratch:
        nk, nj = tl.k_blocks, tl.j_blocks
        bci, bco = bk.block_ci, bk.block_co
        splits = 1
    else:  # Triton: its own (chunk_ci, block_co) blocks, one accumulator per program
        bci, bco = bk.chunk_ci, bk.block_co
        nk, nj = tl.cin_block_total // bci, tl.j_blocks
        splits = _splits(target, nb * nj * nk, steps)
    out_shape = jax.ShapeDtypeStruct((splits, nb, nt, tl.cin_block_total, tl.cout_block_total), _F32)
    _check_memory("weight gradient", in_bytes + _nbytes(out_shape.shape, _F32), target)
    cost = pl.CostEstimate(flops=int(spec.flops), transcendentals=0,
                           bytes_accessed=in_bytes + _nbytes(out_shape.shape, _F32))
    if scratch:
        kern = functools.partial(kernels.conv_dw_kernel, taps=tl.taps, rows=rows, out_w=ow, precision=precision,
                                 red_axes=(3, 4))
        dwb = pl.pallas_call(
            kern, out_shape=out_shape, grid=(nb, nj, nk, n, r),
            in_specs=[
                pl.BlockSpec((None, None, npx, rin, iw, bci), lambda g_, j, k, i, t: (i, t, 0, 0, 0, g_ * nk + k)),
                pl.BlockSpec((None, rows, ow, bco), lambda g_, j, k, i, t: (i, t, 0, g_ * nj + j)),
            ],
            out_specs=pl.BlockSpec((None, None, nt, bci, bco), lambda g_, j, k, i, t: (0, g_, 0, k, j)),
            scratch_shapes=[pltpu.VMEM((nt, bci, bco), _F32)],
            cost_estimate=cost, name="jconv_conv_dw",
            **call_kwargs(target, interpret, ("parallel",) * 3 + ("arbitrary",) * 2),
        )(xt, gp)
    else:
        kern = functools.partial(kernels.conv_dw_kernel_triton, taps=tl.taps, rows=rows, out_w=ow,
                                 precision=precision, steps=steps, row_tiles=r, splits=splits, split_axis=3)
        dwb = pl.pallas_call(
            kern, out_shape=out_shape, grid=(nb, nj, nk, splits),
            in_specs=[
                pl.BlockSpec((n, r, npx, rin, iw, bci), lambda g_, j, k, s: (0, 0, 0, 0, 0, g_ * nk + k)),
                pl.BlockSpec((n, tl.out_rows, ow, bco), lambda g_, j, k, s: (0, 0, 0, g_ * nj + j)),
            ],
            out_specs=pl.BlockSpec((None, None, nt, bci, bco), lambda g_, j, k, s: (s, g_, 0, k, j)),
            cost_estimate=cost, name="jconv_conv_dw",
            **call_kwargs(target, interpret, ("parallel",) * 4),
        )(xt, gp)
    return dwb


__all__ = ["forward_valid", "weight_grad_valid", "compute_dtype", "call_kwargs", "HBM_BUDGET", "KernelFitError"]
