"""ConvNeXt-T's convolutions one by one (float32, NHWC, batch 8): where the model's conv time goes.

    JAX_PLATFORMS=cpu PYTHONPATH=. python benchmarks/convnext_layers.py [--out docs/perf/convnext_layers_cpu.jsonl]
    python benchmarks/convnext_layers.py --table docs/perf/convnext_layers_cpu.jsonl   # docs/models.md's table

Each distinct convolution of ConvNeXt-T (jconv_experiments/zoo/convnext.py at 224x224: the 4x4/4
stem, the three 2x2/2 downsamplings, the 7x7 depthwise layer of each stage) is timed in one
process in interleaved rounds (jconv.timing.time_interleaved, blocks of 3 calls, the first of
each block untimed), with its bias:

* forward: jconv ``auto``, XLA (``impl="xla"``), PyTorch NCHW and channels_last;
* the depthwise layers' weight gradient (the VJP with respect to the kernel): jconv ``onednn``,
  XLA, the lax engine, PyTorch channels_last (``aten.convolution_backward``).

Every candidate's result is checked against XLA's (jconv.testing.assert_close) before it is timed. One row per layer, with
how many times the model uses it, and ``<out>.env.json`` (lscpu) beside the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

def layers() -> list[tuple]:
    """ConvNeXt-T's distinct convolutions, read from the model the experiment runs
    (``jconv_experiments.zoo``, traced at 224x224, nothing compiled): (name, H=W, C_in, C_out,
    kernel, stride, padding, groups, uses in the model); the stem and downsamplings first, then
    the depthwise layers, each in the model's order."""
    import collections

    import jax
    import jax.numpy as jnp

    from jconv import primitive
    from jconv_experiments import zoo

    model = zoo.build("convnext_t", "jconv")
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(lambda a: model.init(jax.random.key(0), a, train=False), x)
    jaxpr = jax.make_jaxpr(lambda v, a: model.apply(v, a, train=False))(variables, x)
    uses = collections.Counter()
    for eqn in primitive.conv_eqns(jaxpr):
        s = eqn.params["spec"]
        uses[(s.x_shape[1], s.x_shape[3], s.w_shape[3], s.w_shape[0], s.stride[0], s.padding[0][0], s.groups)] += 1
    out = []
    for (hw, ci, co, k, st, p, g), n in uses.items():
        name = (f"dw {k}x{k} {hw}x{hw}x{ci}" if g == ci else
                f"{'down' if out else 'stem'} {k}x{k}/{st} {ci}->{co}")
        out.append((name, hw, ci, co, k, st, p, g, n))
    return sorted(out, key=lambda layer: layer[0].startswith("dw"))  # stable: the model's order within each


FWD = ("auto", "xla", "torch_nchw", "torch_cl")
WGRAD = ("onednn", "xla", "lax", "torch_cl")


def _median_ms(ts: dict) -> dict:
    return {k: round(statistics.median(v) * 1e3, 3) for k, v in ts.items()}


def measure(layer, n: int, rounds: int) -> dict:
    import jax
    import jax.numpy as jnp
    import torch

    import jconv
    from jconv.testing import assert_close
    from jconv.timing import time_interleaved

    name, hw, ci, co, k, s, p, g, uses = layer
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, hw, hw, ci)).astype(np.float32)
    w = (rng.normal(size=(k, k, ci // g, co)) * 0.1).astype(np.float32)
    b = rng.normal(size=(co,)).astype(np.float32)
    conv = dict(stride=s, padding=p, groups=g)
    xj, wj, bj = map(jnp.asarray, (x, w, b))
    tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    txl = tx.contiguous(memory_format=torch.channels_last)
    tw, tb = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(), torch.from_numpy(b)

    def tconv(t):
        return lambda: torch.nn.functional.conv2d(t, tw, tb, stride=s, padding=p, groups=g)

    fwd = {impl: jax.jit(lambda x_, w_, b_, impl=impl: jconv.conv2d(x_, w_, b_, impl=impl, **conv))
           for impl in ("auto", "xla")}
    ref = np.asarray(fwd["xla"](xj, wj, bj))
    fns = {}
    for impl, f in fwd.items():
        assert_close(f(xj, wj, bj), ref, np.float32, what=f"{name} fwd {impl}")
        fns[impl] = lambda f=f: f(xj, wj, bj).block_until_ready()
    for key, t in (("torch_nchw", tx), ("torch_cl", txl)):
        with torch.no_grad():
            got = tconv(t)().permute(0, 2, 3, 1).numpy()
        assert_close(got, ref, np.float32, what=f"{name} fwd {key}")
        fns[key] = tconv(t)
    with torch.no_grad():
        row = dict(layer=name, uses=uses, n=n, plan=str(jconv.plan_for(xj, wj, bj, **conv).impl),
                   fwd_ms=_median_ms(time_interleaved(fns, iters=rounds, block=3)))
    if g == ci == co:  # depthwise: its weight gradient too
        dy = rng.normal(size=ref.shape).astype(np.float32)
        dyj = jnp.asarray(dy)

        def wgrad(impl):
            return jax.jit(lambda w_, dy_: jax.vjp(lambda v: jconv.conv2d(xj, v, impl=impl, **conv), w_)[1](dy_)[0])

        grads = {impl: wgrad(impl) for impl in ("onednn", "xla", "lax")}
        gref = np.asarray(grads["xla"](wj, dyj))
        fns = {}
        for impl, f in grads.items():
            assert_close(f(wj, dyj), gref, np.float32, what=f"{name} weight grad {impl}")
            fns[impl] = lambda f=f: f(wj, dyj).block_until_ready()
        tdy = torch.from_numpy(dy).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)

        def torch_wgrad():
            return torch.ops.aten.convolution_backward(tdy, txl, tw, None, (s, s), (p, p), (1, 1), False, (0, 0), g,
                                                       (False, False, True))[1]

        assert_close(torch_wgrad().permute(2, 3, 1, 0).numpy(), gref, np.float32, what=f"{name} weight grad torch")
        fns["torch_cl"] = torch_wgrad
        row["wgrad_ms"] = _median_ms(time_interleaved(fns, iters=rounds, block=3))
    return row


def table(path: str) -> str:
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    out = ["| layer | uses | fwd: jconv auto | XLA | PyTorch NCHW | PyTorch channels_last | "
           "dw weight grad: jconv (oneDNN) | XLA | lax engine | PyTorch channels_last |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    tot = dict.fromkeys(FWD, 0.0)
    for r in rows:
        f, wg = r["fwd_ms"], r.get("wgrad_ms")
        for k in FWD:
            tot[k] += r["uses"] * f[k]
        cells = [f"{f[k]:.2f}" for k in FWD] + ([f"{wg[k]:.1f}" for k in WGRAD] if wg else [""] * len(WGRAD))
        out.append(f"| {r['layer']} | {r['uses']} | " + " | ".join(cells) + " |")
    out.append("| **the model's convolutions (uses x ms)** | | " + " | ".join(f"**{tot[k]:.0f}**" for k in FWD)
               + " | | | | |")
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/perf/convnext_layers_cpu.jsonl")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--table", metavar="JSONL", help="print the markdown table of a results file and exit")
    a = ap.parse_args(argv)
    if a.table:
        print(table(a.table))
        return
    from jconv.files import atomic_write_json
    from jconv_experiments.bench import env_info

    with open(a.out, "w") as f:  # each row as it is measured
        for layer in layers():
            row = measure(layer, a.batch, a.rounds)
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(json.dumps(row), flush=True)
    atomic_write_json(a.out.removesuffix(".jsonl") + ".env.json", dict(env_info(), argv=sys.argv[1:]), indent=2)
    print(table(a.out))


if __name__ == "__main__":
    main()
