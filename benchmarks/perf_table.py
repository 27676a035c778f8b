"""The docs/performance.md results table from a compare run's ``results.jsonl``.

    JAX_PLATFORMS=cpu .venv/bin/python -m jconv_experiments --config=configs/cpu_full.py \\
        --workdir=runs/speed_cpu_full "--config.dtypes=('float32',)" \\
        "--config.impls=('xla','auto','torch','gemm_peak')" \\
        --config.iters=15 --config.min_iters=5 --config.max_time_s=8
    .venv/bin/python benchmarks/perf_table.py runs/speed_cpu_full/results.jsonl

Columns: medians in ms; speedups are ratios of medians from the same interleaved rounds;
"% GEMM" is auto's FLOP rate over a same-size GEMM's (dense layers, forward); "temp/x" is
auto's compiled temporary memory (``memory_analysis()``) over the input's size.
"""

from __future__ import annotations

import json
import math
import statistics
import sys


def load(path):
    rows = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                r = json.loads(line)
                rows[(r["case"], r["pass"], r["dtype"], r["impl"])] = r
    return rows


def _gm(vals):
    vals = [v for v in vals if v]
    return math.exp(statistics.mean(math.log(v) for v in vals)) if vals else float("nan")


def build(rows, dtype="float32", vs=None) -> str:
    """The table; ``vs``: another impl of the run (e.g. ``lax``), with its ms and auto's speedup
    over it in two more columns and its geometric mean in the summary."""
    cases = list(dict.fromkeys(k[0] for k in rows))
    extra = f" {vs} ms | vs {vs} |" if vs else ""
    out = ["| layer | batch | pass | XLA ms | PyTorch ms | auto ms | auto runs | vs XLA | vs PyTorch | % GEMM | temp/x |"
           + extra, "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|" + ("---:|---:|" if vs else "")]
    summary = {"fwd": ([], [], [], []), "fwd+bwd": ([], [], [], [])}
    for case in cases:
        for p in ("fwd", "fwd+bwd"):
            a, x = rows.get((case, p, dtype, "auto")), rows.get((case, p, dtype, "xla"))
            if not a or not x or a.get("error") or x.get("error"):
                continue
            t = rows.get((case, p, dtype, "torch"))
            g = rows.get((case, "fwd", dtype, "gemm_peak"))
            am, xm = a["time_median_s"] * 1e3, x["time_median_s"] * 1e3
            tm = t["time_median_s"] * 1e3 if t and not t.get("error") else None
            vs_x, vs_t = xm / am, (tm / am if tm else None)
            summary[p][0].append(vs_x)
            summary[p][1].append(vs_t)
            summary[p][2].append((vs_x, case))
            frac = f"{100 * a['gflops'] / g['gflops']:.0f}%" if (g and p == "fwd" and not g.get("error")) else ""
            mem = f"{a['temp_bytes'] / a['argument_bytes']:.1f}" if a.get("temp_bytes") is not None and a.get("argument_bytes") else ""
            plan = (a.get("plan") or "").replace("lax:", "") + (" (tuned)" if (a.get("plan_reason") or "").startswith("auto: tuned") else "")
            cells = ""
            if vs:
                o = rows.get((case, p, dtype, vs))
                om = o["time_median_s"] * 1e3 if o and not o.get("error") else None
                summary[p][3].append(om / am if om else None)
                cells = f" {'' if om is None else f'{om:.2f}'} | {'' if om is None else f'{om / am:.2f}x'} |"
            out.append(f"| {case} | {a['batch']} | {p} | {xm:.2f} | {'' if tm is None else f'{tm:.2f}'} | {am:.2f} | "
                       f"{plan} | {vs_x:.2f}x | {'' if vs_t is None else f'{vs_t:.2f}x'} | {frac} | {mem} |" + cells)
    out.append("")
    for p, (vx, vt, pairs, vo) in summary.items():
        if not vx:
            continue
        worst = min(pairs)
        below = [f"{c} ({v:.2f}x)" for v, c in sorted(pairs) if v < 0.9]
        other = (f" auto vs {vs} geometric mean **{_gm(vo):.2f}x**, worst {min(v for v in vo if v):.2f}x."
                 if vs and any(vo) else "")
        out.append(f"- **{p}**: auto vs XLA geometric mean **{_gm(vx):.2f}x**, worst {worst[0]:.2f}x ({worst[1]}); "
                   f"below 0.9x: {', '.join(below) or 'none'}. auto vs PyTorch geometric mean "
                   f"**{_gm(vt):.2f}x** over {sum(1 for v in vt if v)} layers." + other)
    return "\n".join(out)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="docs/performance.md's table of a compare run")
    ap.add_argument("results")
    ap.add_argument("dtype", nargs="?", default="float32")
    ap.add_argument("--vs", help="another impl of the run: its ms and auto's speedup over it")
    a = ap.parse_args()
    print(build(load(a.results), a.dtype, a.vs))
