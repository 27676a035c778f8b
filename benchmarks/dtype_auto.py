"""What ``impl="auto"`` runs for integer and complex convolutions on the CPU, against XLA's
convolution: the evidence for the dtype table in docs/conformance.md.

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/dtype_auto.py --out docs/perf/dtype_auto.jsonl
    .venv/bin/python benchmarks/dtype_auto.py --table docs/perf/dtype_auto.jsonl

The lax engine's ``auto`` rule (jconv/impls/lax/rules.py) was measured on float32 and bfloat16;
this checks that its picks hold (the oneDNN plugin left out: ``select.auto_excluded``; oneDNN's
own int8 measurements are in plugins/onednn/README.md) for int8 (``preferred_element_type=int32``; forward only: no
gradient exists) and complex64 (forward and backward). Medians in ms of interleaved rounds
(``jconv.timing.time_interleaved``, blocks of 2 calls, the first untimed); the machine facts in
the ``.env.json`` beside the output.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics

#: (suite layer, batch)
LAYERS = (("mobilenetv2_dw3x3_s1", 2), ("resnext_g32_3x3", 2), ("resnet50_s3_3x3", 1), ("resnet50_s2_1x1_expand", 1))
#: (dtype, preferred_element_type, pass)
KINDS = (("int8", "int32", "fwd"), ("complex64", None, "fwd+bwd"))


def measure(out: str, iters: int) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jconv
    from jconv.timing import time_interleaved
    from jconv_experiments.bench.env import env_info
    from jconv_experiments.suite import CASES

    rng = np.random.default_rng(0)
    rows = []
    for name, batch in LAYERS:
        spec = CASES[name].spec(batch)
        kw = dict(stride=spec.stride, padding=spec.padding, groups=spec.groups)
        for dtype, pet, pass_ in KINDS:
            x = rng.integers(-8, 8, spec.x_shape).astype(dtype)
            w = rng.integers(-8, 8, spec.w_shape).astype(dtype)
            fns, plans = {}, {}
            for impl in ("xla", "auto"):
                f = functools.partial(jconv.conv2d, impl=impl, preferred_element_type=pet, **kw)
                if pass_ == "fwd+bwd":
                    f = jax.grad(lambda a, b, f=f: jnp.sum(jnp.abs(f(a, b)) ** 2), argnums=(0, 1))
                g = jax.jit(f)
                fns[impl] = functools.partial(lambda g: jax.block_until_ready(g(x, w)), g)
                plans[impl] = jconv.plan_for(x, w, impl=impl, preferred_element_type=pet, **kw).explicit
            times = time_interleaved(fns, iters=iters, block=2)
            for impl, ts in times.items():
                rows.append(dict(case=name, batch=batch, dtype=dtype, preferred_element_type=pet, pass_=pass_,
                                 impl=impl, plan=plans[impl], time_median_s=statistics.median(ts), n=len(ts)))
                print(json.dumps(rows[-1]), flush=True)
    with open(out, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    with open(out.replace(".jsonl", ".env.json"), "w") as fh:
        json.dump(env_info(), fh, indent=1)


def table(path: str) -> str:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    t = {(r["case"], r["dtype"], r["pass_"], r["impl"]): r for r in rows}
    out = ["| layer | batch | dtype | pass | XLA ms | auto ms | auto runs | auto vs XLA |", "|---|---:|---|---|---:|---:|---|---:|"]
    for (case, dtype, pass_, impl), r in t.items():
        if impl != "auto":
            continue
        x = t[(case, dtype, pass_, "xla")]
        label = dtype + (f" -> {r['preferred_element_type']}" if r["preferred_element_type"] else "")
        out.append(f"| {case} | {r['batch']} | {label} | {pass_} | {x['time_median_s'] * 1e3:.2f} | "
                   f"{r['time_median_s'] * 1e3:.2f} | {r['plan']} | {x['time_median_s'] / r['time_median_s']:.2f}x |")
    return "\n".join(out)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="measure, writing rows here (jsonl)")
    p.add_argument("--table", help="print the markdown table of a jsonl written by --out")
    p.add_argument("--iters", type=int, default=5)
    a = p.parse_args()
    if a.out:
        from jconv import select

        with select.auto_excluded("onednn"):
            measure(a.out, a.iters)
    if a.table:
        print(table(a.table))
