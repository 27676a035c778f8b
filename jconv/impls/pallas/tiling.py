"""Tile sizes as data: :class:`BlockSizes` per target, and the tiled geometry they imply.

A Pallas convolution here always runs on an already zero-padded ("VALID") input, described by
a :class:`Problem`. :func:`get_default` picks :class:`BlockSizes` for a problem and a target
(``"tpu"``, ``"cuda"`` (Triton) or ``"cpu"`` (interpreted)); :func:`make_tiling` turns both into
a :class:`Tiling`: padded channel counts, group bundles, row tiles, the phase decomposition of
the stride and the static list of kernel taps. Nothing here touches an array.

Rules per target (docs/pallas.md explains them):

* TPU: channels padded to multiples of 128 (the lane dimension); the last two dims of every
  block are multiples of (8, 128) or the full array dims; output width padded to a multiple of
  the sublane count (8 for 32-bit, 16 for 16-bit types) so ``(rows, width, C) -> (rows*width,
  C)`` is a free reshape for Mosaic.
* Triton: every array a kernel touches has power-of-2 dims, dots at least 16 wide: channels,
  output rows and widths padded to powers of 2 (>= 16 for channels).
* CPU (interpret mode, a correctness tool): no lane padding, small blocks.
"""

from __future__ import annotations

import dataclasses

from jconv.geometry import output_size

TARGETS = ("tpu", "cuda", "cpu")


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def round_up(a: int, b: int) -> int:
    return cdiv(a, b) * b


def next_pow2(a: int) -> int:
    return 1 if a <= 1 else 1 << (a - 1).bit_length()


def _is_pow2(a: int) -> bool:
    return a >= 1 and a & (a - 1) == 0


@dataclasses.dataclass(frozen=True)
class Problem:
    """A VALID convolution of an NHWC input already zero-padded / input-dilated.

    ``in_size`` is the padded spatial size; the kernel is HWIO ``(KH, KW, C_in/groups, C_out)``.
    """

    batch: int
    in_size: tuple[int, int]
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    dtype: str = "float32"

    @property
    def out_size(self) -> tuple[int, int]:
        return tuple(  # type: ignore[return-value]
            output_size(p, k, stride=s, dilation=d)
            for p, k, d, s in zip(self.in_size, self.kernel_size, self.dilation, self.stride)
        )

    @property
    def is_depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels

    @property
    def taps(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    @property
    def flops(self) -> int:
        ho, wo = self.out_size
        return 2 * self.batch * ho * wo * self.out_channels * (self.in_channels // self.groups) * self.taps

    @classmethod
    def from_spec(cls, spec, dtype: str | None = None) -> "Problem":
        return cls(spec.batch, spec.padded_size, spec.in_channels, spec.out_channels, spec.kernel_size,
                   spec.stride, spec.dilation, spec.groups, dtype or spec.dtype)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes for one target. All channel sizes are in the padded channel space.

    block_h:   output rows per grid step (forward) / per reduction step (weight gradient).
    block_ci:  input channels per grid step (the "arbitrary" reduction axis; Triton: all).
    chunk_ci:  input channels per matmul inside a step (TPU: = block_ci; Triton: <= 64).
    block_co:  output channels per grid step.
    lane:      channel padding multiple (TPU 128; Triton: channels padded to a power of 2 >= it).
    w_multiple: output width padded to a multiple of this (TPU sublanes; Triton: power of 2).
    target:    "tpu" | "cuda" | "cpu".
    """

    block_h: int
    block_ci: int
    chunk_ci: int
    block_co: int
    lane: int
    w_multiple: int
    target: str = "tpu"

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"BlockSizes: target (={self.target!r}) must be one of {TARGETS}")
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
    """The tiled geometry of a :class:`Problem` under :class:`BlockSizes` (all static ints)."""

    problem: Problem
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


def _pad_channels(c: int, lane: int, target: str) -> int:
    if target == "cuda":
        return max(lane, next_pow2(c))
    return round_up(c, lane)


def _largest_block(total: int, unit: int, cap: int) -> int:
    """The largest multiple of ``unit`` dividing ``total`` and <= max(cap, unit)."""
    best = unit
    for b in range(unit, min(total, max(cap, unit)) + 1, unit):
        if total % b == 0:
            best = b
    return best


def _bundle(problem: Problem, lane: int, target: str) -> int:
    if problem.groups == 1:
        return 1
    cg = problem.in_channels // problem.groups
    cog = problem.out_channels // problem.groups
    gb = max(1, lane // max(cg, cog))
    if target == "cuda":
        gb = 1 << (gb.bit_length() - 1)  # keep bundles power-of-2 friendly
    return min(gb, problem.groups)


def get_default(problem: Problem, target: str) -> BlockSizes:
    """Default tile sizes of ``problem`` for ``target`` (see module docstring)."""
    if target not in TARGETS:
        raise ValueError(f"get_default: target (={target!r}) must be one of {TARGETS}")
    ho, wo = problem.out_size
    itemsize = 2 if problem.dtype in ("bfloat16", "float16") else 4
    if target == "tpu":
        lane, w_mult = 128, (16 if itemsize == 2 and problem.dtype == "bfloat16" else 8)
        gb = 1 if problem.is_depthwise else _bundle(problem, lane, target)
        cin_b = round_up(gb * problem.in_channels // problem.groups, lane)
        cout_b = round_up(gb * problem.out_channels // problem.groups, lane)
        if problem.is_depthwise:
            cin_b = cout_b = round_up(problem.out_channels, lane)
        block_ci = _largest_block(cin_b, 128, 512)
        block_co = _largest_block(cout_b, 128, 256 if cin_b >= 256 else 128)
        out_w = round_up(wo, w_mult)
        # about 1024 output pixels per step (few halo rows re-read, few grid steps), bounded by
        # the input block's VMEM footprint (~4 MiB; double-buffered)
        bh = max(1, min(ho, 1024 // out_w if out_w <= 1024 else 1))
        in_w = out_w + ((problem.kernel_size[1] - 1) * problem.dilation[1]) // problem.stride[1]
        phases = problem.stride[0] * problem.stride[1]
        while bh > 1 and phases * (bh + problem.kernel_size[0]) * in_w * block_ci * itemsize > 4 << 20:
            bh //= 2
        return BlockSizes(bh, block_ci, block_ci, block_co, lane, w_mult, "tpu")
    if target == "cuda":
        lane = 16
        gb = 1 if problem.is_depthwise else _bundle(problem, lane, target)
        cin_b = _pad_channels(gb * problem.in_channels // problem.groups, lane, target)
        cout_b = _pad_channels(gb * problem.out_channels // problem.groups, lane, target)
        if problem.is_depthwise:
            cin_b = cout_b = _pad_channels(problem.out_channels, lane, target)
        out_w = next_pow2(wo)
        bh = next_pow2(max(1, min(ho, 128 // out_w if out_w <= 128 else 1)))
        if bh * out_w < 16:
            bh = 16 // out_w
        return BlockSizes(bh, cin_b, min(cin_b, 32), min(cout_b, 64), lane, out_w, "cuda")
    # cpu: interpret mode; a few rows per step so row tiling is exercised
    return BlockSizes(max(1, min(ho, 4)), 1 << 30, 1 << 30, 1 << 30, 1, 1, "cpu")


def fold_taps(problem: Problem, target: str) -> bool:
    """Whether to fold the kernel taps into the contraction (an XLA im2col, then a 1x1 kernel).

    Worth it when few input channels would leave most of each per-tap matmul as lane padding:
    a 3-channel stem pads 3 -> 128 per tap (x43 the work), while its 7x7x3 = 147 folded
    channels pad to 256 (x1.7). Dense (ungrouped) convolutions only; never on CPU (no lanes).
    """
    if problem.groups != 1 or problem.taps == 1 or target == "cpu":
        return False
    if target == "tpu":
        pad = lambda c: round_up(c, 128)  # noqa: E731
    else:
        pad = lambda c: max(16, next_pow2(c))  # noqa: E731
    return pad(problem.taps * problem.in_channels) < problem.taps * pad(problem.in_channels)


def folded(problem: Problem) -> Problem:
    """The 1x1 problem that :func:`fold_taps` turns ``problem`` into."""
    return Problem(problem.batch, problem.out_size, problem.taps * problem.in_channels, problem.out_channels,
                   (1, 1), (1, 1), (1, 1), 1, problem.dtype)


def make_tiling(problem: Problem, blocks: BlockSizes | None = None, target: str = "tpu") -> Tiling:
    """The :class:`Tiling` of ``problem`` with ``blocks`` (default: :func:`get_default`)."""
    if blocks is None:
        blocks = get_default(problem, target)
    t = blocks.target
    kh, kw = problem.kernel_size
    sh, sw = problem.stride
    dh, dw = problem.dilation
    ho, wo = problem.out_size
    if ho < 1 or wo < 1:
        raise NotImplementedError(f"conv2d: impl='pallas' needs a non-empty output (got {ho}x{wo})")
    depthwise = problem.is_depthwise
    if depthwise:
        gb, nb = 1, 1
        cin_b = cout_b = _pad_channels(problem.out_channels, blocks.lane, t)
    else:
        gb = _bundle(problem, blocks.lane, t)
        nb = cdiv(problem.groups, gb)
        cin_b = _pad_channels(gb * problem.in_channels // problem.groups, blocks.lane, t)
        cout_b = _pad_channels(gb * problem.out_channels // problem.groups, blocks.lane, t)
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
    return Tiling(problem, blocks, depthwise, gb, nb, cin_b, cout_b, rows, row_tiles, out_w,
                  rows + halo_h, out_w + halo_w, phases, taps)


def vmem_bytes(tiling: Tiling) -> int:
    """Approximate VMEM footprint of one forward step (double-buffered blocks + scratch)."""
    b = tiling.blocks
    item = 2 if tiling.problem.dtype in ("bfloat16", "float16") else 4
    x = len(tiling.phases) * tiling.rows_in * tiling.in_w * b.block_ci * item
    w = len(tiling.taps) * b.block_ci * b.block_co * item
    o = tiling.rows * tiling.out_w * b.block_co * 4
    acc = tiling.rows * tiling.out_w * b.block_co * 4
    return 2 * (x + w + o) + acc


__all__ = ["BlockSizes", "Problem", "Tiling", "get_default", "make_tiling", "vmem_bytes"]


# ------------------------------------------------------------------------------------------
# cost model: what one forward pallas_call moves and computes (used for pl.CostEstimate and
# the roofline table in docs/pallas.md)
# ------------------------------------------------------------------------------------------


def _itemsize(dtype: str) -> int:
    return {"bfloat16": 2, "float16": 2, "float32": 4, "float64": 8}[dtype]


def forward_cost(tiling: Tiling, out_itemsize: int | None = None) -> dict:
    """Flops (useful, and as executed on padded channels) and HBM bytes of the forward kernel.

    Bytes follow the grid order (n, r, bundle, j, k): an input block is fetched again for each
    output-channel block only when the reduction axis has several blocks; weights once, or per
    row tile when there are several weight blocks; the output is written once.
    """
    p, b = tiling.problem, tiling.blocks
    item = _itemsize(p.dtype)
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


def ideal_bytes(problem: Problem) -> int:
    """Each operand read or written exactly once, unpadded."""
    ho, wo = problem.out_size
    h, w = problem.in_size
    item = _itemsize(problem.dtype)
    cg = problem.in_channels // problem.groups
    return item * (problem.batch * (h * w * problem.in_channels + ho * wo * problem.out_channels)
                   + problem.taps * cg * problem.out_channels)


# Peak dense bf16 matmul rate (FLOP/s) and HBM bandwidth (B/s), from the vendors' data sheets.
HARDWARE = {
    "TPU v5e": dict(target="tpu", flops=197e12, bw=819e9),
    "A100 SXM 80GB": dict(target="cuda", flops=312e12, bw=2039e9),
    "H100 SXM": dict(target="cuda", flops=989e12, bw=3350e9),
}


def roofline_rows(cases, batch: int = 32, dtype: str = "bfloat16"):
    """One dict per (case, hardware): flops, bytes (ideal and as tiled), intensity, bound, time."""
    rows = []
    for case in cases:
        spec = case.spec(batch, dtype)
        problem = Problem.from_spec(spec)
        for hw, peak in HARDWARE.items():
            run = folded(problem) if fold_taps(problem, peak["target"]) else problem
            tl = make_tiling(run, get_default(run, peak["target"]), peak["target"])
            cost = forward_cost(tl)
            if run is not problem:  # the XLA im2col writes and the kernel reads the patches
                cost["bytes"] += ideal_bytes(problem)  # the input read once by the im2col
            t_flop = cost["flops_padded"] / peak["flops"]
            t_mem = cost["bytes"] / peak["bw"]
            rows.append(dict(
                case=case.name, hardware=hw, gflop=problem.flops / 1e9,
                gflop_padded=cost["flops_padded"] / 1e9, mb_ideal=ideal_bytes(problem) / 1e6,
                mb_tiled=cost["bytes"] / 1e6, intensity=problem.flops / ideal_bytes(problem),
                ridge=peak["flops"] / peak["bw"], bound="compute" if t_flop > t_mem else "memory",
                us=1e6 * max(t_flop, t_mem),
                us_ideal=1e6 * max(problem.flops / peak["flops"], ideal_bytes(problem) / peak["bw"]),
            ))
    return rows


def roofline_markdown(suite: str = "default", batch: int = 32, dtype: str = "bfloat16") -> str:
    """The roofline table of docs/pallas.md (``python -m jconv.impls.pallas.tiling``)."""
    from jconv.suite import get_suite

    cases = get_suite(suite)
    lines = [
        f"Forward, batch {batch}, {dtype}. GFLOP: useful / as executed on padded channels. "
        "MB: ideal (each operand once) / as tiled (halo rows, padding, re-fetches). "
        "Intensity: useful FLOP per ideal byte. Time: max(executed FLOP / peak, tiled bytes / "
        "bandwidth), ideal in brackets.",
        "",
        "| layer | GFLOP | MB ideal / tiled (TPU) | FLOP/B | TPU v5e | A100 | H100 |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = roofline_rows(cases, batch, dtype)
    by = {(r["case"], r["hardware"]): r for r in rows}
    for case in cases:
        tpu = by[(case.name, "TPU v5e")]
        cells = []
        for hw in HARDWARE:
            r = by[(case.name, hw)]
            cells.append(f"{r['us']:.0f} us {r['bound'][:3]} ({r['us_ideal']:.0f})")
        lines.append(
            f"| {case.name} | {tpu['gflop']:.2f} / {tpu['gflop_padded']:.2f} | "
            f"{tpu['mb_ideal']:.1f} / {tpu['mb_tiled']:.1f} | {tpu['intensity']:.0f} | " + " | ".join(cells) + " |"
        )
    ridge = ", ".join(f"{hw} {v['flops'] / v['bw']:.0f}" for hw, v in HARDWARE.items())
    lines += ["", f"Ridge points (FLOP/B): {ridge}."]
    return "\n".join(lines)


if __name__ == "__main__":
    print(roofline_markdown())
