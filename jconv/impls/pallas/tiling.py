"""Tile sizes as data: :class:`BlockSizes` per target, sized from the target's memory, and the
tiled geometry they imply. Nothing here touches an array.

A Pallas convolution always runs on an already zero-padded ("VALID") input: a
:class:`~jconv.spec.ExecSpec` from :meth:`ExecSpec.valid_spec` (no padding, no input dilation).
:func:`get_default` picks :class:`BlockSizes` for such a spec and a
:class:`~jconv.targets.Target`; :func:`make_tiling` turns both into a :class:`Tiling`: padded
channel counts, group bundles, row tiles, the phase decomposition of the stride and the static
list of kernel taps.

Rules per platform (docs/pallas.md explains them):

* TPU: channels padded to multiples of 128 (the lane dimension); the last two dims of every
  block are multiples of (8, 128) or the full array dims; output width padded to the sublane
  count (8 for 32-bit, 16 for 16-bit types). Blocks are shrunk until the kernel's VMEM footprint
  (:func:`vmem_bytes`: double-buffered blocks, scratch, one relayout copy of a window) is at most
  ``VMEM_BUDGET`` of the target generation's VMEM per core; the kernel is given
  ``VMEM_LIMIT`` of it as its scoped limit.
* Triton (CUDA): every array a kernel loads has power-of-2 dims, dots at least 16 wide. Tiles
  are sized so the shared memory the compiler allocates (:func:`smem_bytes`, a bound fitted to
  what ptxas reports for these kernels) is at most ``SMEM_BUDGET`` of the target's opt-in
  shared memory per block, and the per-program accumulators stay within the registers.
* CPU (interpret mode, a correctness tool): no lane padding, small blocks.

A layer that cannot fit even at the smallest tiles raises :class:`KernelFitError` naming the
target and the limit.
"""

from __future__ import annotations

import dataclasses

from jconv.spec import ExecSpec
from jconv.targets import Target

PLATFORMS = ("tpu", "cuda", "cpu")

#: TPU: blocks are shrunk until a kernel's footprint is at most this fraction of VMEM per core ...
VMEM_BUDGET = 0.7
#: ... and each kernel's scoped VMEM limit is this fraction of it.
VMEM_LIMIT = 0.9
#: CUDA: tiles use at most this fraction of the opt-in shared memory per block.
SMEM_BUDGET = 0.75
#: CUDA: float32 accumulator elements per program (num_warps=4: 128 threads; 16384 floats are
#: 128 registers per thread, half the 255 a thread can have).
TRITON_ACC_ELEMENTS = 16384
#: CUDA: output pixels (rows x width) per program, the M of the kernels' dots.
TRITON_PIXELS = 128
TRITON_NUM_WARPS = 4
TRITON_NUM_STAGES = 2


class KernelFitError(NotImplementedError):
    """A Pallas kernel cannot be tiled to fit the target's memory."""


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def round_up(a: int, b: int) -> int:
    return cdiv(a, b) * b


def next_pow2(a: int) -> int:
    return 1 if a <= 1 else 1 << (a - 1).bit_length()


def _is_pow2(a: int) -> bool:
    return a >= 1 and a & (a - 1) == 0


def itemsize(dtype: str) -> int:
    return {"bfloat16": 2, "float16": 2, "float32": 4, "float64": 8}[dtype]


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes for one platform. All channel sizes are in the padded channel space.

    block_h:   output rows per grid step (forward) / per reduction step (weight gradient).
    block_ci:  input channels per grid step (the "arbitrary" reduction axis; Triton: all).
    chunk_ci:  input channels per matmul inside a step (TPU: = block_ci; Triton: <= 64, and the
               input-channel block of the Triton weight gradient).
    block_co:  output channels per grid step.
    lane:      channel padding multiple (TPU 128; Triton: channels padded to a power of 2 >= it).
    w_multiple: output width padded to a multiple of this (TPU sublanes; Triton: power of 2).
    target:    "tpu" | "cuda" | "cpu" (the platform).
    """

    block_h: int
    block_ci: int
    chunk_ci: int
    block_co: int
    lane: int
    w_multiple: int
    target: str = "tpu"

    def __post_init__(self):
        if self.target not in PLATFORMS:
            raise ValueError(f"BlockSizes: target (={self.target!r}) must be one of {PLATFORMS}")
        for name in ("block_h", "block_ci", "chunk_ci", "block_co", "lane", "w_multiple"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"BlockSizes: {name} (={v!r}) must be a positive int")
        if self.block_ci % self.chunk_ci:
            raise ValueError(f"BlockSizes: chunk_ci (={self.chunk_ci}) must divide block_ci (={self.block_ci})")
        if self.target == "tpu":
            for name in ("block_ci", "block_co", "lane"):
                if getattr(self, name) % 128:
                    raise ValueError(f"BlockSizes: {name} (={getattr(self, name)}) must be a multiple of 128 on TPU (lanes)")
            if self.w_multiple % 8:
                raise ValueError(f"BlockSizes: w_multiple (={self.w_multiple}) must be a multiple of 8 on TPU (sublanes)")
        if self.target == "cuda":
            for name in ("block_h", "block_ci", "chunk_ci", "block_co", "lane", "w_multiple"):
                if not _is_pow2(getattr(self, name)):
                    raise ValueError(f"BlockSizes: {name} (={getattr(self, name)}) must be a power of 2 for Triton")
            if min(self.chunk_ci, self.block_co, self.lane) < 16:
                raise ValueError("BlockSizes: Triton dots need chunk_ci, block_co and lane >= 16")


@dataclasses.dataclass(frozen=True)
class Tiling:
    """The tiled geometry of a VALID spec under :class:`BlockSizes` (all static ints)."""

    spec: ExecSpec
    blocks: BlockSizes
    depthwise: bool
    group_bundle: int          # groups packed block-diagonally into one channel block
    bundles: int               # number of bundles (ceil(groups / group_bundle))
    cin_block_total: int       # padded input channels per bundle
    cout_block_total: int      # padded output channels per bundle
    rows: int                  # output rows per tile (block_h)
    row_tiles: int             # R
    out_w: int                 # padded output width
    rows_in: int               # input rows (phase space) one tile reads: rows + halo
    in_w: int                  # input width (phase space)
    phases: tuple[tuple[int, int], ...]         # used (row phase, col phase) of the stride
    taps: tuple[tuple[int, int, int], ...]      # per tap (i, j): (phase index, row off, col off)

    @property
    def out_rows(self) -> int:
        return self.rows * self.row_tiles

    @property
    def k_blocks(self) -> int:
        return self.cin_block_total // self.blocks.block_ci

    @property
    def j_blocks(self) -> int:
        return self.cout_block_total // self.blocks.block_co

    @property
    def pixels(self) -> int:
        return self.rows * self.out_w


def _pad_channels(c: int, lane: int, platform: str) -> int:
    if platform == "cuda":
        return max(lane, next_pow2(c))
    return round_up(c, lane)


def _largest_block(total: int, unit: int, cap: int) -> int:
    """The largest multiple of ``unit`` dividing ``total`` and <= max(cap, unit)."""
    best = unit
    for b in range(unit, min(total, max(cap, unit)) + 1, unit):
        if total % b == 0:
            best = b
    return best


def _bundle(spec: ExecSpec, lane: int, platform: str) -> int:
    if spec.groups == 1:
        return 1
    gb = max(1, lane // max(spec.group_in_channels, spec.group_out_channels))
    if platform == "cuda":
        gb = 1 << (gb.bit_length() - 1)  # keep bundles power-of-2 friendly
    return min(gb, spec.groups)


def _channel_totals(spec: ExecSpec, lane: int, platform: str) -> tuple[int, int]:
    """Padded (input, output) channels of one bundle."""
    if spec.is_depthwise:
        c = _pad_channels(spec.out_channels, lane, platform)
        return c, c
    gb = _bundle(spec, lane, platform)
    return (_pad_channels(gb * spec.group_in_channels, lane, platform),
            _pad_channels(gb * spec.group_out_channels, lane, platform))


# --------------------------------------------------------------------------------------------
# Memory models: what one pallas_call needs, from its Tiling
# --------------------------------------------------------------------------------------------


def vmem_bytes(tl: Tiling, kernel: str = "both") -> int:
    """TPU VMEM of the forward (``"fwd"``) or weight-gradient (``"dw"``) kernel, or the larger:
    double-buffered in/out blocks, the f32 scratch, and one relayout copy of a tap's window."""
    b, item = tl.blocks, itemsize(tl.spec.dtype)
    nt = len(tl.taps)
    bci = b.block_co if tl.depthwise else b.block_ci
    x = len(tl.phases) * tl.rows_in * tl.in_w * bci * item
    px = tl.pixels
    win = px * bci * 4
    if tl.depthwise:
        fwd = 2 * (x + nt * b.block_co * item + px * b.block_co * 4) + px * b.block_co * 4 + win
        dw = 2 * (x + px * b.block_co * item + nt * b.block_co * 4) + nt * b.block_co * 4 + win
    else:
        fwd = 2 * (x + nt * bci * b.block_co * item + px * b.block_co * 4) + px * b.block_co * 4 + win
        dw = 2 * (x + px * b.block_co * item + nt * bci * b.block_co * 4) + nt * bci * b.block_co * 4 + win
    return {"fwd": fwd, "dw": dw}.get(kernel, max(fwd, dw))


def smem_bytes(tl: Tiling, kernel: str = "both") -> int:
    """Triton shared memory of the forward or weight-gradient kernel (or the larger): an upper
    bound fitted to the bytes ptxas requests for these kernels (``jconv.aot.probe_smem``
    measures them; docs/pallas.md has the table). Dots stage their operands through shared
    memory in float32 layouts, one dot at a time."""
    b = tl.blocks
    px = tl.pixels
    if tl.depthwise:
        fwd = px * b.block_co * 4
        dw = px * b.block_co * 4 * 2
    else:
        fwd = px * max(b.chunk_ci, b.block_co) * 4
        dw = px * (b.chunk_ci + b.block_co) * 4
    return {"fwd": fwd, "dw": dw}.get(kernel, max(fwd, dw))


def accumulator_elements(tl: Tiling) -> int:
    """Triton: float32 accumulator elements one program keeps in registers (the larger kernel)."""
    b = tl.blocks
    if tl.depthwise:
        return max(tl.pixels * b.block_co, len(tl.taps) * b.block_co)
    return max(tl.pixels * b.block_co, b.chunk_ci * b.block_co)


def on_chip_memory(tl: Tiling, target: Target, kernel: str = "both") -> tuple[str, int, int] | None:
    """``(memory, need, budget)``: the modelled VMEM (TPU) or shared memory (CUDA) of ``tl``'s
    forward (``"fwd"``), weight-gradient (``"dw"``) kernel or the larger, and the budget tiles
    are sized against; None on other platforms."""
    if target.platform == "tpu":
        return "vmem", vmem_bytes(tl, kernel), int(VMEM_BUDGET * target.vmem_bytes)
    if target.platform == "cuda":
        return "smem", smem_bytes(tl, kernel), int(SMEM_BUDGET * target.smem_per_block)
    return None


def fits(tl: Tiling, target: Target) -> str | None:
    """None when ``tl``'s kernels fit ``target``, else what does not (for error messages)."""
    mem = on_chip_memory(tl, target)
    if mem is not None and mem[1] > mem[2]:
        name, need, cap = mem
        if name == "vmem":
            return f"{need / 2**20:.1f} MiB of VMEM, over the {cap / 2**20:.1f} MiB budget"
        return f"{need // 1024} KiB of shared memory, over the {cap // 1024} KiB budget"
    if target.platform == "cuda":
        acc = accumulator_elements(tl)
        if acc > TRITON_ACC_ELEMENTS:
            return f"{acc} accumulator elements per program, over {TRITON_ACC_ELEMENTS}"
    return None


# --------------------------------------------------------------------------------------------
# Defaults per target
# --------------------------------------------------------------------------------------------


def _tpu_candidates(spec: ExecSpec):
    """TPU block sizes from the largest (few grid steps, few halo re-reads) to the smallest."""
    ho, wo = spec.out_size
    item = itemsize(spec.dtype)
    lane, w_mult = 128, (16 if item == 2 and spec.dtype == "bfloat16" else 8)
    cin_b, cout_b = _channel_totals(spec, lane, "tpu")
    out_w = round_up(wo, w_mult)
    # about 1024 output pixels per step, the input block at most ~4 MiB; at least twice the halo
    # rows (each tile re-reads them: a 7x7 kernel over 4-row tiles materialised 2.5x its input)
    halo = ((spec.kernel_size[0] - 1) * spec.dilation[0]) // spec.stride[0]
    bh = max(1, min(ho, max(1024 // out_w if out_w <= 1024 else 1, 2 * halo)))
    in_w = out_w + ((spec.kernel_size[1] - 1) * spec.dilation[1]) // spec.stride[1]
    phases = spec.stride[0] * spec.stride[1]
    block_ci = _largest_block(cin_b, 128, 512)
    block_co = _largest_block(cout_b, 128, 256 if cin_b >= 256 else 128)
    while bh > 1 and phases * (bh + spec.kernel_size[0]) * in_w * block_ci * item > 4 << 20:
        bh //= 2
    ci_options = [c for c in range(block_ci, 127, -128) if cin_b % c == 0]
    co_options = [c for c in range(block_co, 127, -128) if cout_b % c == 0]
    for ci in ci_options:
        for co in co_options:
            h = bh
            while True:
                yield BlockSizes(h, ci, ci, co, lane, w_mult, "tpu")
                if h == 1:
                    break
                h = max(1, h // 2)


def _cuda_candidates(spec: ExecSpec):
    ho, wo = spec.out_size
    lane = 16
    cin_b, cout_b = _channel_totals(spec, lane, "cuda")
    out_w = next_pow2(wo)
    for pixels in (TRITON_PIXELS, TRITON_PIXELS // 2, TRITON_PIXELS // 4):
        bh = next_pow2(max(1, min(ho, pixels // out_w if out_w <= pixels else 1)))
        if bh * out_w < 16:
            bh = 16 // out_w
        for chunk in (32, 16):
            for co in (64, 32, 16):
                yield BlockSizes(bh, cin_b, min(cin_b, chunk), min(cout_b, co), lane, out_w, "cuda")


def get_default(spec: ExecSpec, target: Target) -> BlockSizes:
    """Default tile sizes of VALID ``spec`` for ``target``: the largest candidate whose kernels
    fit the target's memory (:func:`fits`). Raises :class:`KernelFitError` when none does."""
    platform = target.platform
    if platform not in PLATFORMS:
        raise ValueError(f"get_default: target platform (={platform!r}) must be one of {PLATFORMS}")
    if platform == "cpu":  # interpret mode; a few rows per step so row tiling is exercised
        return BlockSizes(max(1, min(spec.out_size[0], 4)), 1 << 30, 1 << 30, 1 << 30, 1, 1, "cpu")
    last = None
    for blocks in (_tpu_candidates(spec) if platform == "tpu" else _cuda_candidates(spec)):
        tl = make_tiling(spec, blocks, target)
        last = fits(tl, target)
        if last is None:
            return blocks
    raise KernelFitError(
        f"conv2d: impl='pallas' cannot tile this convolution (input {spec.in_size}, kernel "
        f"{spec.kernel_size}, {spec.in_channels}->{spec.out_channels} channels, groups {spec.groups}, "
        f"{spec.dtype}) for {target.describe()}: even the smallest tiles need {last}; use impl='xla'"
    )


def fold_taps(spec: ExecSpec, platform: str) -> bool:
    """Whether to fold the kernel taps into the contraction (an XLA im2col, then a 1x1 kernel).

    Worth it when few input channels would leave most of each per-tap matmul as lane padding:
    a 3-channel stem pads 3 -> 128 per tap, while its 7x7x3 = 147 folded channels pad to 256.
    Dense (ungrouped) convolutions only; never on CPU (no lanes). The caller also bounds the
    patches' memory (:func:`jconv.impls.pallas.calls.FOLD_MAX_BLOWUP`).
    """
    if spec.groups != 1 or spec.taps == 1 or platform == "cpu":
        return False
    if platform == "tpu":
        pad = lambda c: round_up(c, 128)  # noqa: E731
    else:
        pad = lambda c: max(16, next_pow2(c))  # noqa: E731
    return pad(spec.taps * spec.in_channels) < spec.taps * pad(spec.in_channels)


def folded(spec: ExecSpec) -> ExecSpec:
    """The 1x1 VALID spec that :func:`fold_taps` turns ``spec`` into."""
    return dataclasses.replace(spec, in_size=spec.out_size, in_channels=spec.taps * spec.in_channels,
                               kernel_size=(1, 1), stride=(1, 1), dilation=(1, 1), groups=1,
                               padding=((0, 0), (0, 0)), lhs_dilation=(1, 1))


def make_tiling(spec: ExecSpec, blocks: BlockSizes | None = None, target: Target | None = None) -> Tiling:
    """The :class:`Tiling` of VALID ``spec`` with ``blocks`` (default: :func:`get_default`)."""
    if blocks is None:
        if target is None:
            raise ValueError("make_tiling: give blocks or a target")
        blocks = get_default(spec, target)
    t = blocks.target
    kh, kw = spec.kernel_size
    sh, sw = spec.stride
    dh, dw = spec.dilation
    ho, wo = spec.out_size
    if ho < 1 or wo < 1:
        raise NotImplementedError(f"conv2d: impl='pallas' needs a non-empty output (got {ho}x{wo})")
    depthwise = spec.is_depthwise
    cin_b, cout_b = _channel_totals(spec, blocks.lane, t)
    gb = 1 if depthwise else _bundle(spec, blocks.lane, t)
    nb = 1 if depthwise else cdiv(spec.groups, gb)
    if t == "cpu":  # one block of each: interpret mode has no lanes to fill
        blocks = dataclasses.replace(blocks, block_ci=cin_b, chunk_ci=cin_b, block_co=cout_b)
    block_ci, block_co = min(blocks.block_ci, cin_b), min(blocks.block_co, cout_b)
    chunk_ci = min(blocks.chunk_ci, block_ci)
    blocks = dataclasses.replace(blocks, block_ci=block_ci, chunk_ci=chunk_ci, block_co=block_co)
    if cin_b % block_ci or cout_b % block_co:
        raise ValueError(
            f"make_tiling: block_ci (={block_ci}) / block_co (={block_co}) must divide the padded "
            f"channels ({cin_b} in, {cout_b} out)"
        )
    if depthwise and block_ci != block_co:
        blocks = dataclasses.replace(blocks, block_ci=block_co, chunk_ci=block_co)
    rows = min(blocks.block_h, ho) if t != "cuda" else blocks.block_h
    row_tiles = cdiv(ho, rows)
    out_w = round_up(wo, blocks.w_multiple)
    # phase decomposition of the stride: tap (i, j) reads phase ((i*dh) % sh, (j*dw) % sw)
    # at offset ((i*dh) // sh, (j*dw) // sw) of the phase grid, with unit stride.
    raw = [((i * dh) % sh, (j * dw) % sw, (i * dh) // sh, (j * dw) // sw) for i in range(kh) for j in range(kw)]
    phases = tuple(sorted({(a, b) for a, b, _, _ in raw}))
    taps = tuple((phases.index((a, b)), u, v) for a, b, u, v in raw)
    halo_h = max(u for _, u, _ in taps)
    halo_w = max(v for _, _, v in taps)
    return Tiling(spec, blocks, depthwise, gb, nb, cin_b, cout_b, rows, row_tiles, out_w,
                  rows + halo_h, out_w + halo_w, phases, taps)


def forward_cost(tiling: Tiling, out_itemsize: int | None = None) -> dict:
    """Flops (useful, and as executed on padded channels) and HBM bytes of the forward kernel.

    Bytes follow the grid order (n, r, bundle, j, k): an input block is fetched again for each
    output-channel block only when the reduction axis has several blocks; weights once, or per
    row tile when there are several weight blocks; the output is written once.
    """
    p, b = tiling.spec, tiling.blocks
    item = itemsize(p.dtype)
    out_item = item if out_itemsize is None else out_itemsize
    n, r, t = p.batch, tiling.row_tiles, len(tiling.taps)
    x_block = len(tiling.phases) * tiling.rows_in * tiling.in_w * tiling.cin_block_total * tiling.bundles
    out_px = tiling.out_rows * tiling.out_w
    if tiling.depthwise:
        flops_padded = 2 * n * out_px * tiling.cout_block_total * t
        x_bytes = n * r * x_block * item
        w_bytes = n * r * t * tiling.cout_block_total * item
    else:
        flops_padded = 2 * n * out_px * tiling.bundles * tiling.cin_block_total * tiling.cout_block_total * t
        x_bytes = n * r * x_block * item * (tiling.j_blocks if tiling.k_blocks > 1 else 1)
        w_all = tiling.bundles * t * tiling.cin_block_total * tiling.cout_block_total * item
        # a block whose index does not change between consecutive steps is not fetched again
        w_bytes = w_all * (n * r if tiling.bundles * tiling.j_blocks * tiling.k_blocks > 1 else 1)
    o_bytes = n * out_px * tiling.bundles * tiling.cout_block_total * out_item
    return dict(flops=p.flops, flops_padded=flops_padded, bytes=x_bytes + w_bytes + o_bytes,
                x_bytes=x_bytes, w_bytes=w_bytes, out_bytes=o_bytes)


def ideal_bytes(spec: ExecSpec) -> int:
    """Each operand read or written exactly once, unpadded."""
    ho, wo = spec.out_size
    h, w = spec.in_size
    item = itemsize(spec.dtype)
    return item * (spec.batch * (h * w * spec.in_channels + ho * wo * spec.out_channels)
                   + spec.taps * spec.group_in_channels * spec.out_channels)


__all__ = ["BlockSizes", "Tiling", "KernelFitError", "get_default", "make_tiling", "fold_taps", "folded",
           "vmem_bytes", "smem_bytes", "fits", "forward_cost", "ideal_bytes"]
