"""Shared memory the Triton kernels request, measured by ptxas, against jconv's model.

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/smem_probe.py docs/perf/smem_probe.jsonl

For a grid of tiles (output pixels per program, input-channel chunk, output-channel block,
float32/bfloat16, 1x1 and 3x3, dense and depthwise), each kernel (forward, weight gradient) is
compiled for an H100 whose opt-in shared memory is set to 1 KiB (:func:`jconv.aot.probe_smem`):
the refusal names the bytes requested. Writes one JSON row per point and prints the table of
docs/pallas.md with the model (:func:`jconv.impls.pallas.tiling.smem_bytes`) beside it; the model
must bound every measurement.
"""

from __future__ import annotations

import itertools
import json
import sys

from jconv import aot, targets
from jconv.files import atomic_write
from jconv.spec import ExecSpec
from jconv.impls.pallas import calls
from jconv.impls.pallas.tiling import BlockSizes, make_tiling, smem_bytes


def measure():
    h100 = targets.get("h100")
    for dtype, (rows, out_w), chunk, bco, k, depthwise in itertools.product(
            ["float32", "bfloat16"], [(2, 64), (1, 64), (4, 32)], [16, 32, 64], [16, 32, 64], [1, 3], [False, True]):
        if depthwise and chunk != 16:
            continue
        c = 64
        spec = ExecSpec(4, (rows * 3 + k - 1, out_w + k - 1), c, c, (k, k), groups=c if depthwise else 1,
                        dtype=dtype, out_dtype=dtype)
        blocks = BlockSizes(rows, 64, chunk, bco, 16, out_w, "cuda")
        tl = make_tiling(spec, blocks, h100)
        xs, ys, ws = ((4,) + spec.in_size + (c,), dtype), ((4,) + spec.out_size + (c,), dtype), (spec.kernel_shape, dtype)
        fwd = aot.probe_smem(lambda x, w: calls.forward_valid(x, w, spec, target=h100, out_dtype=dtype, blocks=blocks),
                             xs, ws)
        dw = aot.probe_smem(lambda x, g: calls.weight_grad_valid(x, g, spec.kernel_shape, spec, target=h100,
                                                                  blocks=blocks), xs, ys)
        yield dict(dtype=dtype, pixels=rows * out_w, chunk_ci=chunk, block_co=bco, kernel=k,
                   kind="depthwise" if depthwise else "dense", fwd_bytes=fwd, fwd_model=smem_bytes(tl, "fwd"),
                   dw_bytes=dw, dw_model=smem_bytes(tl, "dw"))


def table(rows) -> str:
    lines = ["| kind | dtype | pixels | chunk_ci | block_co | kernel | fwd measured / model | dw measured / model |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['dtype']} | {r['pixels']} | {r['chunk_ci']} | {r['block_co']} | "
                     f"{r['kernel']}x{r['kernel']} | {r['fwd_bytes']} / {r['fwd_model']} | {r['dw_bytes']} / {r['dw_model']} |")
    worst = max(max(r["fwd_bytes"] / r["fwd_model"], r["dw_bytes"] / r["dw_model"]) for r in rows)
    return "\n".join(lines) + f"\n\nLargest measured / model: {worst:.2f} ({len(rows)} points)."


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else "docs/perf/smem_probe.jsonl"
    rows = list(measure())
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))
    print(table(rows))
