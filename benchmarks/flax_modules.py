"""jconv.linen.ConvTranspose vs flax.linen.ConvTranspose on the U-Net up-sampling layer.

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/flax_modules.py            # measure -> docs/perf/flax_modules.*
    .venv/bin/python benchmarks/flax_modules.py --table                     # the docs/flax.md table

The layer is jconv_experiments.suite's ``unet_up_transposed`` (64x64x64 -> 128x128x32, 3x3, stride 2, the
input-dilated convolution's pads ((1, 2), (1, 2))), written as flax writes it:
``ConvTranspose(32, (3, 3), strides=2, padding=((1, 2), (1, 2)))``. Candidates, all in one
process with the same params and input: flax's module, jconv's with ``impl="auto"`` and jconv's
with ``impl="xla"`` (XLA's convolution behind jconv's module: the module's own overhead).
``fwd`` is ``apply``; ``fwd+bwd`` the gradient of ``<apply(p, x), ct>`` w.r.t. params and input.
Each is jit-compiled first, checked against flax, then timed in interleaved rounds of blocks
of ``--block`` calls, the first call of each block untimed; medians. Rows go to
``docs/perf/flax_modules.jsonl``, the environment (CPU model, lscpu, versions, commit) to
``docs/perf/flax_modules.env.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "docs", "perf", "flax_modules")
CANDIDATES = (("flax", None), ("jconv", "auto"), ("jconv", "xla"))


def _modules(case):
    import flax.linen as nn

    import jconv.linen as jl

    kw = dict(features=case.out_channels, kernel_size=case.kernel_size, strides=case.lhs_dilation,
              padding=case.padding)
    return {f"{lib}:{impl}" if impl else lib: (nn.ConvTranspose(**kw) if lib == "flax" else
                                               jl.ConvTranspose(**kw, impl=impl)) for lib, impl in CANDIDATES}


def measure(batch: int, rounds: int, block: int) -> list[dict]:
    import jax
    import jax.numpy as jnp

    import jconv
    from jconv.timing import compile_timed, time_interleaved
    from jconv_experiments.suite import CASES
    from jconv.testing import scaled_error

    case = CASES["unet_up_transposed"]
    mods = _modules(case)
    kx, kc = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (batch,) + case.in_size + (case.in_channels,), jnp.float32)
    params = mods["flax"].init(jax.random.key(1), x)
    ct = jax.random.normal(kc, mods["flax"].apply(params, x).shape, jnp.float32)

    def fwd(m):
        return lambda p, a, c: m.apply(p, a)

    def fwd_bwd(m):  # the cotangent an argument: a constant would be folded into the program
        return jax.grad(lambda p, a, c: jnp.vdot(m.apply(p, a), c), argnums=(0, 1))

    plan = jconv.plan_for(case.spec(batch), "auto")
    rows = []
    for pass_, make in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
        compiled, compile_s, outs = {}, {}, {}
        for name, m in mods.items():
            compiled[name], compile_s[name], _ = compile_timed(make(m), params, x, ct)
            outs[name] = compiled[name](params, x, ct)
        fns = {n: (lambda f=f: jax.block_until_ready(f(params, x, ct))) for n, f in compiled.items()}
        times = time_interleaved(fns, iters=rounds, min_iters=rounds, block=block)
        for name, ts in times.items():
            err = max(scaled_error(a, b) for a, b in zip(jax.tree.leaves(outs[name]), jax.tree.leaves(outs["flax"])))
            rows.append({
                "case": case.name, "batch": batch, "pass": pass_, "dtype": "float32", "module": name,
                "plan": f"{plan.impl}:{plan.algorithm}" if name == "jconv:auto" else name.split(":")[-1],
                "time_median_s": statistics.median(ts), "time_min_s": min(ts), "times_s": ts,
                "compile_s": compile_s[name], "scaled_err_vs_flax": err, "rounds": rounds, "block": block,
            })
            print(f"{pass_:8s} {name:11s} median {1e3 * rows[-1]['time_median_s']:9.2f} ms  "
                  f"(n={len(ts)}, compile {compile_s[name]:.1f} s, err vs flax {err:.2g})", flush=True)
    return rows


def table(rows: list[dict], env: dict) -> str:
    by = {(r["pass"], r["module"]): r for r in rows}
    r0 = rows[0]
    out = [f"`{r0['case']}`, batch {r0['batch']}, float32; {env.get('cpu_model')} ({env.get('cpu_count')} cores), "
           f"jax {env.get('jax')}, flax {env.get('flax')}, commit {str(env.get('commit'))[:7]}; medians of "
           f"{r0['rounds']} interleaved rounds of {r0['block']}-call blocks (first call untimed).", "",
           "| pass | flax.linen.ConvTranspose ms | jconv `auto` ms | jconv `xla` ms | flax / jconv `auto` | auto runs |",
           "|---|---:|---:|---:|---:|---|"]
    for p in ("fwd", "fwd+bwd"):
        f, a, x = (by[(p, m)]["time_median_s"] * 1e3 for m in ("flax", "jconv:auto", "jconv:xla"))
        out.append(f"| {p} | {f:.2f} | {a:.2f} | {x:.2f} | {f / a:.2f}x | `{by[(p, 'jconv:auto')]['plan']}` |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--block", type=int, default=3)
    ap.add_argument("--out", default=OUT, help="path prefix of the .jsonl and .env.json files")
    ap.add_argument("--table", action="store_true", help="print the docs table from the committed results")
    a = ap.parse_args(argv)
    if a.table:
        with open(a.out + ".env.json") as f:
            env = json.load(f)
        with open(a.out + ".jsonl") as f:
            print(table([json.loads(line) for line in f if line.strip()], env))
        return 0
    sys.path.insert(0, os.path.join(HERE, ".."))
    from jconv_experiments.bench.env import env_info

    rows = measure(a.batch, a.rounds, a.block)
    env = env_info()
    with open(a.out + ".jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(a.out + ".env.json", "w") as f:
        json.dump({**env, "config": vars(a)}, f, indent=2)
    print(table(rows, env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
