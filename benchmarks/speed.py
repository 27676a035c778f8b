"""CPU speed of jconv's implementations vs XLA (``lax.conv_general_dilated``) and PyTorch.

One process, every candidate timed *interleaved* (round r times each candidate once, in
turn), after warm-up; medians over rounds; ratios are taken between medians of the same run.
Forward and forward+backward (grad of ``sum(y * ct)`` w.r.t. x, w and b). For dense layers a
GEMM of the same size (M = N*Ho*Wo, K = KH*KW*C_in, N = C_out) is timed in the same rounds
and the conv's FLOP rate is reported as a fraction of it.

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/speed.py --suite full --out runs/speed
    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/speed.py --cases mobilenetv2_dw3x3_s1 --algos all

Writes ``<out>/results.jsonl`` (one row per case and mode) and ``<out>/table.md``.
PyTorch is optional (``pip install torch``); without it the torch column is empty.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import jconv
from jconv.conv import _exec_spec, plan_for
from jconv.impls import lax_conv
from jconv.suite import get_suite

try:  # optional peer
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    torch = None


def default_batch(case) -> int:
    """Batch so that one forward is about 1 GFLOP (1..8)."""
    return int(min(8, max(1, 1e9 // case.flops(1))))


def _block(t):
    return jax.tree_util.tree_map(lambda a: a.block_until_ready(), t)


def jax_fns(case, impl, x, w, b, ct):
    fwd = jax.jit(lambda x, w, b: case.apply(x, w, b, impl=impl))

    def loss(x, w, b):
        return jnp.sum(case.apply(x, w, b, impl=impl) * ct)

    bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    return (lambda: _block(fwd(x, w, b))), (lambda: _block(bwd(x, w, b))), fwd, bwd


def torch_fns(case, x, w, b, ct):
    """The same layer in PyTorch (NCHW contiguous, its default), fwd and fwd+bwd."""
    xt = torch.from_numpy(np.asarray(x)).clone()
    if case.layout == "NHWC":
        xt = xt.permute(0, 3, 1, 2).contiguous()
    bt = torch.from_numpy(np.asarray(b)).clone()
    spec = case.spec(x.shape[0])
    co, cg = case.out_channels, case.in_channels // case.groups
    kh, kw = case.kernel_size
    if case.lhs_dilation != (1, 1):
        # transposed conv: lax pad lo = k-1-p, hi = k-1-p+output_padding, lhs_dilation = stride
        (lo_h, hi_h), (lo_w, hi_w) = spec.padding
        p = (kh - 1 - lo_h, kw - 1 - lo_w)
        op = (hi_h - lo_h, hi_w - lo_w)
        wt = torch.randn(case.in_channels, co // case.groups, kh, kw)

        def conv(xx, ww, bb):
            return F.conv_transpose2d(xx, ww, bb, stride=case.lhs_dilation, padding=p, output_padding=op,
                                      groups=case.groups, dilation=case.dilation)
    else:
        wt = torch.randn(co, cg, kh, kw)
        (pt, pb), (pl, pr) = spec.padding
        sym = pt == pb and pl == pr

        def conv(xx, ww, bb):
            if not sym:
                xx = F.pad(xx, (pl, pr, pt, pb))
            return F.conv2d(xx, ww, bb, stride=case.stride, padding=(pt, pl) if sym else 0,
                            dilation=case.dilation, groups=case.groups)
    with torch.no_grad():
        y = conv(xt, wt, bt)
    ctt = torch.randn(y.shape)

    def fwd():
        with torch.no_grad():
            return conv(xt, wt, bt)

    xg, wg, bg = (t.clone().requires_grad_(True) for t in (xt, wt, bt))

    def bwd():
        xg.grad = wg.grad = bg.grad = None
        conv(xg, wg, bg).backward(ctt)
        return xg.grad

    return fwd, bwd


def time_interleaved(fns: dict, reps: int, warmup: int = 2, budget_s: float = 20.0):
    for f in fns.values():
        for _ in range(warmup):
            f()
    times = {k: [] for k in fns}
    t_start = time.perf_counter()
    for r in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
        if r >= 2 and time.perf_counter() - t_start > budget_s:
            break
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def temp_bytes(jitted, *args):
    try:
        m = jitted.lower(*args).compile().memory_analysis()
        return int(m.temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - report only
        return None


def run_case(case, batch, algos, reps, use_torch, modes):
    rng = np.random.default_rng(0)
    spec = case.spec(batch)
    x = jnp.asarray(rng.normal(size=case.x_shape(batch)).astype(np.float32))
    w = jnp.asarray((rng.normal(size=case.w_shape()) / math.sqrt(spec.group_in_channels * spec.kernel_size[0] * spec.kernel_size[1])).astype(np.float32))
    b = jnp.asarray(rng.normal(size=(case.out_channels,)).astype(np.float32))
    y_shape = spec.out_shape
    ct = jnp.asarray(rng.normal(size=y_shape).astype(np.float32))
    exec_spec = _exec_spec(spec)
    impls = ["xla", "auto"] + [f"lax:{a}" for a in (lax_conv.ALGORITHMS if algos == "all" else algos)
                               if a in lax_conv.ALGORITHMS and lax_conv.supports(a, exec_spec)]
    # skip what is known to be pointless: im2col GEMMs with K = KH*KW on depthwise, and the
    # unrolled vector-unit 'mac' on dense layers with many input channels
    impls = [i for i in dict.fromkeys(impls)
             if not (i == "lax:im2col" and exec_spec.is_depthwise)
             and not (i == "lax:mac" and exec_spec.groups == 1 and exec_spec.in_channels > 4)]
    plan = plan_for(spec, "auto")
    rows = []
    fwd_fns, bwd_fns, mem = {}, {}, {}
    for impl in impls:
        f, g, fj, gj = jax_fns(case, impl, x, w, b, ct)
        fwd_fns[impl], bwd_fns[impl] = f, g
        mem[impl] = (temp_bytes(fj, x, w, b), temp_bytes(gj, x, w, b))
    if use_torch and torch is not None:
        tf, tb = torch_fns(case, x, w, b, ct)
        fwd_fns["torch"], bwd_fns["torch"] = tf, tb
    # a GEMM of the same size, for the fraction of the machine's matmul rate
    ho, wo = exec_spec.out_size
    m, k, n = batch * ho * wo, exec_spec.group_in_channels * case.kernel_size[0] * case.kernel_size[1], case.out_channels
    if case.groups == 1:
        a_ = jnp.asarray(rng.normal(size=(m, k)).astype(np.float32))
        b_ = jnp.asarray(rng.normal(size=(k, n)).astype(np.float32))
        mm = jax.jit(jnp.dot)
        fwd_fns["gemm"] = lambda: mm(a_, b_).block_until_ready()
    in_bytes = x.size * 4
    for mode, fns in (("fwd", fwd_fns), ("fwd+bwd", bwd_fns)):
        if mode not in modes:
            continue
        med = time_interleaved(fns, reps)
        flops = spec.flops * (1 if mode == "fwd" else 3)
        row = dict(case=case.name, batch=batch, mode=mode, algorithm=plan.algorithm, reason=plan.reason,
                   ms={k: round(v, 3) for k, v in med.items() if k != "gemm"}, gflops=flops / 1e9,
                   temp_over_input={k: (None if mem[k][mode != "fwd"] is None else round(mem[k][mode != "fwd"] / in_bytes, 2)) for k in impls})
        if "gemm" in med:
            row["gemm_ms"] = round(med["gemm"], 3)
            row["auto_frac_of_gemm"] = round((spec.flops / med["auto"]) / (2 * m * k * n / med["gemm"]), 3) if mode == "fwd" else None
        row["auto_vs_xla"] = round(med["xla"] / med["auto"], 3)
        if "torch" in med:
            row["auto_vs_torch"] = round(med["torch"] / med["auto"], 3)
            row["xla_vs_torch"] = round(med["torch"] / med["xla"], 3)
        rows.append(row)
    return rows


def table(rows) -> str:
    out = ["| layer | batch | mode | XLA ms | torch ms | auto ms | algorithm | auto/XLA speedup | auto/torch speedup | % of GEMM | other lax algorithms (ms) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = r["ms"]
        others = ", ".join(f"{k[4:]} {v:.1f}" for k, v in ms.items() if k.startswith("lax:"))
        frac = r.get("auto_frac_of_gemm")
        out.append(
            f"| {r['case']} | {r['batch']} | {r['mode']} | {ms['xla']:.2f} | "
            f"{ms['torch']:.2f} | " if "torch" in ms else f"| {r['case']} | {r['batch']} | {r['mode']} | {ms['xla']:.2f} | - | "
        )
        out[-1] += (f"{ms['auto']:.2f} | {r['algorithm']} | {r['auto_vs_xla']:.2f}x | "
                    f"{(str(r['auto_vs_torch']) + 'x') if 'auto_vs_torch' in r else '-'} | "
                    f"{'-' if frac is None else f'{100 * frac:.0f}%'} | {others} |")
    for mode in ("fwd", "fwd+bwd"):
        rs = [r for r in rows if r["mode"] == mode]
        if not rs:
            continue
        gx = math.exp(statistics.mean(math.log(r["auto_vs_xla"]) for r in rs))
        worst = min(rs, key=lambda r: r["auto_vs_xla"])
        line = f"\n**{mode}**: geometric-mean speedup of auto over XLA {gx:.2f}x (worst {worst['auto_vs_xla']:.2f}x on {worst['case']})"
        if all("auto_vs_torch" in r for r in rs):
            gt = math.exp(statistics.mean(math.log(r["auto_vs_torch"]) for r in rs))
            gxt = math.exp(statistics.mean(math.log(r["xla_vs_torch"]) for r in rs))
            line += f"; over PyTorch {gt:.2f}x (XLA over PyTorch: {gxt:.2f}x)"
        out.append(line)
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="full")
    p.add_argument("--cases", default="", help="comma-separated case names (overrides --suite)")
    p.add_argument("--algos", default="", help="extra lax algorithms to time: 'all' or comma-separated")
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--batch", type=int, default=0, help="0: default_batch(case)")
    p.add_argument("--modes", default="fwd,fwd+bwd")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--out", default="runs/speed")
    a = p.parse_args(argv)
    cases = get_suite(a.cases.split(",") if a.cases else a.suite)
    algos = "all" if a.algos == "all" else [s for s in a.algos.split(",") if s]
    if torch is not None:
        torch.set_num_threads(os.cpu_count() or 1)
    os.makedirs(a.out, exist_ok=True)
    rows = []
    with open(os.path.join(a.out, "results.jsonl"), "w") as fh:
        for case in cases:
            batch = a.batch or default_batch(case)
            for row in run_case(case, batch, algos, a.reps, not a.no_torch, a.modes.split(",")):
                rows.append(row)
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                print(json.dumps(row), flush=True)
    md = table(rows)
    with open(os.path.join(a.out, "table.md"), "w") as fh:
        fh.write(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
