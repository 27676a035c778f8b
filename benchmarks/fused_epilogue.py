"""The oneDNN convolution with its bias + ReLU epilogue (``conv2d(..., activation="relu")``,
:mod:`jconv.fused`) against the same convolution followed by ``jax.nn.relu`` (the bias and ReLU
one more XLA pass over the output), forward and forward+backward, float32.

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/fused_epilogue.py --out docs/perf/fused_epilogue.jsonl
    .venv/bin/python benchmarks/fused_epilogue.py --table docs/perf/fused_epilogue.jsonl

One process; interleaved rounds of blocks of 2 calls, the first untimed
(``jconv.timing.time_interleaved``); medians (and the fastest calls' ratio, less moved by other
processes on a shared machine), and the medians of the process CPU time per call (every
thread's). Each row carries the CPU model (lscpu) and the
load average at the start; the machine facts in the ``.env.json`` beside the output.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time

#: (name, H = W, C_in, C_out, kernel, batch): ResNet-50 stage layers, NHWC, stride 1, SAME
LAYERS = (
    ("resnet50_s2_3x3", 56, 64, 64, 3, 8),
    ("resnet50_s2_1x1_reduce", 56, 256, 64, 1, 8),
    ("resnet50_s3_3x3", 28, 128, 128, 3, 8),
    ("resnet50_s4_3x3", 14, 256, 256, 3, 8),
)
PASSES = ("fwd", "fwd+bwd")


def _candidates(x, w, b, ct, pass_: str) -> dict:
    import jax

    import jconv
    from jconv.timing import layer_pass

    fused = functools.partial(jconv.conv2d, impl="onednn", padding="SAME", activation="relu")
    unfused = lambda *a: jax.nn.relu(jconv.conv2d(*a, impl="onednn", padding="SAME"))  # noqa: E731
    out, cpu = {}, {}
    for name, layer in (("fused", fused), ("unfused", unfused)):
        f = jax.jit(layer_pass(layer, pass_, has_bias=True))
        args = (x, w, b) if pass_ == "fwd" else (x, w, b, ct)
        cpu[name] = []
        out[name] = functools.partial(_call, f, args, cpu[name])
    return out, cpu


def _call(f, args, cpu: list):
    """One call, blocked on; its process CPU time (every thread's) appended to ``cpu``."""
    import jax

    t0 = time.process_time()
    jax.block_until_ready(f(*args))
    cpu.append(time.process_time() - t0)


def measure(out: str, iters: int) -> None:
    import jax.numpy as jnp
    import numpy as np

    from jconv.timing import time_interleaved
    from jconv_experiments.bench.env import cpu_model, env_info

    rng = np.random.default_rng(0)
    model, load = cpu_model(), os.getloadavg()[0]
    rows = []
    for name, hw, ci, co, k, batch in LAYERS:
        x = jnp.asarray(rng.normal(size=(batch, hw, hw, ci)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(k, k, ci, co)) / np.sqrt(k * k * ci), jnp.float32)
        b = jnp.asarray(rng.normal(size=(co,)) * 0.1, jnp.float32)
        ct = jnp.asarray(rng.normal(size=(batch, hw, hw, co)), jnp.float32)
        for pass_ in PASSES:
            fns, cpu = _candidates(x, w, b, ct, pass_)
            times = time_interleaved(fns, iters=iters, block=2)
            cpu = {impl: ts[2::2] for impl, ts in cpu.items()}  # the timed calls: not the warm-up, 2nd of each block
            med = {impl: statistics.median(ts) for impl, ts in times.items()}
            for impl, ts in times.items():
                rows.append(dict(case=name, batch=batch, dtype="float32", pass_=pass_, impl=impl,
                                 time_median_s=med[impl], time_min_s=min(ts), n=len(ts),
                                 cpu_median_s=statistics.median(cpu[impl]),
                                 unfused_over_fused=med["unfused"] / med["fused"], cpu_model=model,
                                 loadavg_1m=load))
                print(json.dumps(rows[-1]), flush=True)
    with open(out, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    with open(out.replace(".jsonl", ".env.json"), "w") as fh:
        json.dump(env_info(), fh, indent=1)


def table(path: str) -> str:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    t = {(r["case"], r["pass_"], r["impl"]): r for r in rows}
    out = ["| layer | batch | pass | unfused ms | fused ms | unfused / fused | fastest calls | CPU time |",
           "|---|---:|---|---:|---:|---:|---:|---:|"]
    for (case, pass_, impl), r in t.items():
        if impl != "fused":
            continue
        u = t[(case, pass_, "unfused")]
        out.append(f"| {case} | {r['batch']} | {pass_} | {u['time_median_s'] * 1e3:.2f} | "
                   f"{r['time_median_s'] * 1e3:.2f} | {u['time_median_s'] / r['time_median_s']:.2f}x | "
                   f"{u['time_min_s'] / r['time_min_s']:.2f}x | {u['cpu_median_s'] / r['cpu_median_s']:.2f}x |")
    return "\n".join(out)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="measure, writing rows here (jsonl)")
    p.add_argument("--table", help="print the markdown table of these rows")
    p.add_argument("--iters", type=int, default=61)
    a = p.parse_args()
    if a.out:
        measure(a.out, a.iters)
    if a.table:
        print(table(a.table))
