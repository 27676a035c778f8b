"""The evidence table for oneDNN's ``auto`` rule in docs/performance.md: explicit ``onednn``
beside what ``auto`` planned before it (the lax/XLA rules), XLA and PyTorch, from one run.

    JAX_PLATFORMS=cpu .venv/bin/python -m jconv_experiments --config=configs/cpu_full.py \\
        --workdir=runs/onednn_probe "--config.dtypes=('float32','bfloat16')" \\
        "--config.impls=('xla','auto','onednn','torch','gemm_peak')" \\
        --config.iters=15 --config.min_iters=5 --config.max_time_s=8 --config.report=False
    JCONV_AUTO_EXCLUDE=onednn ...   # the same, with auto planned without the plugin's rule
    .venv/bin/python benchmarks/onednn_table.py docs/perf/cpu_full_onednn_probe.jsonl

(The committed rows were measured before oneDNN had an ``auto`` rule, so their ``auto`` is the
lax/XLA rules; today set ``JCONV_AUTO_EXCLUDE=onednn`` on the first command to get the same.)
Medians in ms; ratios are between medians of the same interleaved rounds.
"""

from __future__ import annotations

import json
import math
import statistics
import sys


def _gm(vals):
    vals = [v for v in vals if v]
    return math.exp(statistics.mean(math.log(v) for v in vals)) if vals else float("nan")


def markdown(path: str) -> str:
    t, plan = {}, {}
    for line in open(path):
        if line.strip():
            r = json.loads(line)
            if r.get("time_median_s"):
                k = (r["case"], r["dtype"], r["pass"], r["impl"])
                t[k], plan[k] = r["time_median_s"] * 1e3, r.get("plan") or ""
    keys = list(dict.fromkeys(k[:3] for k in t))
    out = ["| layer | dtype | pass | XLA ms | rules' auto ms | (plan) | onednn ms | PyTorch ms | onednn vs rules | onednn vs PyTorch |",
           "|---|---|---|---:|---:|---|---:|---:|---:|---:|"]
    summary: dict[tuple, list] = {}
    f = lambda v: f"{v:.2f}" if v else ""
    for k in keys:
        x, a, o, p = (t.get(k + (i,)) for i in ("xla", "auto", "onednn", "torch"))
        if not o:
            continue
        summary.setdefault(k[1:], []).append((a / o if a else None, p / o if p else None, x / o if x else None))
        out.append(f"| {k[0]} | {k[1]} | {k[2]} | {f(x)} | {f(a)} | {plan.get(k + ('auto',), '')} | {f(o)} | {f(p)} | "
                   f"{f(a / o if a else None)}x | {f(p / o if p else None)}x |")
    out.append("")
    for (dtype, pass_), v in summary.items():
        out.append(f"- {dtype} {pass_}: onednn vs the rules' auto **{_gm([a for a, _, _ in v]):.2f}x**, vs PyTorch "
                   f"**{_gm([p for _, p, _ in v]):.2f}x**, vs XLA {_gm([x for _, _, x in v]):.2f}x ({len(v)} layers); "
                   f"below 1.0x of the rules: {sum(1 for a, _, _ in v if a and a < 1)}")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown(sys.argv[1]))
