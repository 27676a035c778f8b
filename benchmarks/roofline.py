"""The roofline table of docs/pallas.md: what the Pallas forward kernel moves and computes.

    .venv/bin/python benchmarks/roofline.py

A model, not a measurement: for each default-suite layer at batch 32 in bfloat16, the useful
FLOPs and the FLOPs as executed on padded channels, the bytes each operand needs (ideal) and
the bytes the tiled kernel moves (halo rows, padding, re-fetches: ``tiling.forward_cost``), and
the time the roofline bound gives on a TPU v5e, an A100 and an H100 (peak dense bfloat16 matmul
rate and HBM bandwidth: TPU from ``pltpu.get_tpu_info_for_chip``, GPUs from the vendors' data
sheets), with the tiles jconv picks for each (``tiling.get_default``).
"""

from __future__ import annotations

from jconv import targets
from jconv.impls.pallas.tiling import fold_taps, folded, forward_cost, ideal_bytes, make_tiling
from jconv_experiments.suite import get_suite

# dense bfloat16 matmul peak (FLOP/s) and HBM bandwidth (B/s), vendors' data sheets (SXM parts)
GPU_PEAKS = {"a100": (312e12, 2039e9), "h100": (989e12, 3350e9)}


def hardware():
    from jax.experimental.pallas import tpu as pltpu

    v5e = pltpu.get_tpu_info_for_chip(pltpu.ChipVersion("v5e"), 1)
    return {"TPU v5e": (targets.get("v5e"), v5e.bf16_ops_per_second, v5e.mem_bw_bytes_per_second),
            "A100": (targets.get("a100"),) + GPU_PEAKS["a100"], "H100": (targets.get("h100"),) + GPU_PEAKS["h100"]}


def rows(suite: str = "default", batch: int = 32, dtype: str = "bfloat16"):
    out = []
    hw = hardware()
    for case in get_suite(suite):
        spec = case.spec(batch, dtype).execute_spec().valid_spec()
        for name, (target, flops, bw) in hw.items():
            run = folded(spec) if fold_taps(spec, target.platform) else spec
            cost = forward_cost(make_tiling(run, target=target))
            if run is not spec:  # the XLA im2col reads the input once and writes the patches
                cost["bytes"] += ideal_bytes(spec)
            t_flop, t_mem = cost["flops_padded"] / flops, cost["bytes"] / bw
            out.append(dict(case=case.name, hardware=name, gflop=spec.flops / 1e9, gflop_padded=cost["flops_padded"] / 1e9,
                            mb_ideal=ideal_bytes(spec) / 1e6, mb_tiled=cost["bytes"] / 1e6,
                            intensity=spec.flops / ideal_bytes(spec), bound="compute" if t_flop > t_mem else "memory",
                            us=1e6 * max(t_flop, t_mem),
                            us_ideal=1e6 * max(spec.flops / flops, ideal_bytes(spec) / bw), ridge=flops / bw))
    return out


def markdown(suite: str = "default", batch: int = 32, dtype: str = "bfloat16") -> str:
    rs = rows(suite, batch, dtype)
    by = {(r["case"], r["hardware"]): r for r in rs}
    hws = list(dict.fromkeys(r["hardware"] for r in rs))
    lines = [f"Forward, batch {batch}, {dtype}. GFLOP: useful / as executed on padded channels. MB: ideal "
             "(each operand once) / as tiled for the TPU. Intensity: useful FLOP per ideal byte. Time: "
             "max(executed FLOP / peak, tiled bytes / bandwidth), ideal in brackets.", "",
             "| layer | GFLOP | MB ideal / tiled (TPU) | FLOP/B | " + " | ".join(hws) + " |",
             "|---|---|---|---|" + "---|" * len(hws)]
    for case in dict.fromkeys(r["case"] for r in rs):
        t = by[(case, hws[0])]
        cells = [f"{by[(case, h)]['us']:.0f} us {by[(case, h)]['bound'][:3]} ({by[(case, h)]['us_ideal']:.0f})" for h in hws]
        lines.append(f"| {case} | {t['gflop']:.2f} / {t['gflop_padded']:.2f} | {t['mb_ideal']:.1f} / {t['mb_tiled']:.1f} | "
                     f"{t['intensity']:.0f} | " + " | ".join(cells) + " |")
    lines += ["", "Ridge points (FLOP/B): " + ", ".join(f"{h} {by[(next(iter(by))[0], h)]['ridge']:.0f}" for h in hws) + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
