"""Speed of the jconv_onednn plugin against XLA's convolution (and PyTorch).

Usage (after `pip install ./plugins/onednn`; PyTorch optional):
    JAX_PLATFORMS=cpu python benchmarks/onednn_bench.py [--quick] [--no-torch]
                                                            [--no-bf16] [--no-f32] [--only NAME ...]
    JAX_PLATFORMS=cpu PYTHONPATH=. python benchmarks/onednn_bench.py --int8 [--out FILE.jsonl]
    python benchmarks/onednn_bench.py --table FILE.jsonl      # the int8 table of a results file

--int8: quantized inference, the forward int8 x int8 -> int32 convolution (lax with
preferred_element_type=int32) through XLA and through the plugin (also uint8 x int8, and both in
float32 for scale) on the dense layers of jconv's default suite (jconv_experiments.suite; groups 1, NHWC, no
input dilation) at the experiments' batch (configs/default.py: 8, lowered so one forward is at
most 1 GFLOP). Each result must equal XLA's exactly before it is timed. Writes a JSONL file: an
env record (lscpu, versions, threads), then one record per layer.

For every layer it times, in this one process, with warm-up and the median of
blocks of calls:
  * forward:            y = conv(x, w) + b
  * forward + backward: y and the gradients dx, dw, db for a given dy
    (XLA: jax.vjp of lax.conv_general_dilated + b; plugin: conv_forward,
    conv_backward_data, conv_backward_weights(with_bias=True); PyTorch:
    conv2d + autograd backward).
All JAX variants run under jax.jit.  Times are milliseconds per call: the
median over blocks, with the blocks of all implementations interleaved.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# the repository root on sys.path (jconv_experiments' suite), as the other benchmarks do
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

import numpy as np
import jax
import jax.numpy as jnp
from jax import lax

import jconv_onednn as jo

DN = ("NHWC", "HWIO", "NHWC")

# name, N, H, W, C_in, C_out, K, stride, pad, dilation, groups
LAYERS = [
    ("resnet50 3x3 56x56 64->64", 8, 56, 56, 64, 64, 3, 1, 1, 1, 1),
    ("resnet50 1x1 56x56 64->256", 8, 56, 56, 64, 256, 1, 1, 0, 1, 1),
    ("resnet50 3x3/2 56x56 128->128", 8, 56, 56, 128, 128, 3, 2, 1, 1, 1),
    ("resnet50 3x3 14x14 256->256", 8, 14, 14, 256, 256, 3, 1, 1, 1, 1),
    ("vgg 3x3 28x28 512->512 (N=1)", 1, 28, 28, 512, 512, 3, 1, 1, 1, 1),
    ("stem 7x7/2 224x224 3->64 (N=2)", 2, 224, 224, 3, 64, 7, 2, 3, 1, 1),
    ("mobilenetv2 dw3x3 56x56 144", 8, 56, 56, 144, 144, 3, 1, 1, 1, 144),
    ("convnext dw7x7 56x56 96", 8, 56, 56, 96, 96, 7, 1, 3, 1, 96),
    ("resnext g32 3x3 28x28 256->256", 8, 28, 28, 256, 256, 3, 1, 1, 1, 32),
    ("deeplab 3x3 d2 33x33 256->256 (N=2)", 2, 33, 33, 256, 256, 3, 1, 2, 2, 1),
    ("mnist 3x3 13x13 32->64 (N=128)", 128, 13, 13, 32, 64, 3, 1, 0, 1, 1),
]
BF16_LAYERS = LAYERS[:5]


def timed(fns, *, block_s, blocks, samples=False):
    """Median seconds per call of each function in `fns` ({name: (fn, sync)}).

    Every function is warmed up and calibrated to blocks of about block_s,
    then the blocks are interleaved (one block of each function per round,
    each block after one untimed call), so a slow-down of the machine during
    the run hits all of them alike.  With samples=True also returns the
    per-block times.
    """
    inner = {}
    for name, (fn, sync) in fns.items():
        sync(fn())
        sync(fn())
        t0 = time.perf_counter()
        sync(fn())
        one = max(time.perf_counter() - t0, 1e-6)
        inner[name] = max(1, int(block_s / one))
    got = {name: [] for name in fns}
    for _ in range(blocks):
        for name, (fn, sync) in fns.items():
            sync(fn())
            t0 = time.perf_counter()
            for _ in range(inner[name]):
                out = fn()
            sync(out)
            got[name].append((time.perf_counter() - t0) / inner[name])
    medians = {name: float(np.median(v)) for name, v in got.items()}
    return (medians, got) if samples else medians


def jax_sync(out):
    jax.block_until_ready(out)


def make_jax(layer, dtype):
    name, n, h, w, ci, co, k, s, p, d, g = layer
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    x = jax.random.normal(keys[0], (n, h, w, ci), jnp.float32).astype(dtype)
    wt = (jax.random.normal(keys[1], (k, k, ci // g, co), jnp.float32)
          / np.sqrt(k * k * ci // g)).astype(dtype)
    b = jax.random.normal(keys[2], (co,), jnp.float32).astype(dtype)
    geo = dict(stride=(s, s), padding=((p, p), (p, p)), dilation=(d, d), groups=g)
    y_shape = jo.conv_output_shape(x.shape, wt.shape, stride=s, padding=p, dilation=d)
    dy = jax.random.normal(keys[3], y_shape, jnp.float32).astype(dtype)
    return x, wt, b, dy, geo


def xla_fns(geo):
    def conv(x, w, b):
        return lax.conv_general_dilated(
            x, w, geo["stride"], geo["padding"], rhs_dilation=geo["dilation"],
            dimension_numbers=DN, feature_group_count=geo["groups"]) + b

    fwd = jax.jit(conv)

    @jax.jit
    def fwd_bwd(x, w, b, dy):
        y, vjp = jax.vjp(conv, x, w, b)
        return (y,) + vjp(dy)

    return fwd, fwd_bwd


def plugin_fns(geo, x_shape, w_shape):
    fwd = jax.jit(lambda x, w, b: jo.conv_forward(x, w, b, **geo))

    @jax.jit
    def fwd_bwd(x, w, b, dy):
        y = jo.conv_forward(x, w, b, **geo)
        dx = jo.conv_backward_data(dy, w, x_shape=x_shape, **geo)
        dw, db = jo.conv_backward_weights(x, dy, w_shape=w_shape, with_bias=True, **geo)
        return y, dx, dw, db

    return fwd, fwd_bwd


def torch_fns(torch, layer, x, w, b, dy, channels_last, dtype):
    name, n, h, wd, ci, co, k, s, p, d, g = layer
    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    # NHWC / HWIO arrays -> NCHW / OIHW tensors (then the chosen memory format).
    as_t = lambda a: torch.from_numpy(np.array(a, np.float32))  # a writable copy
    xt = as_t(x).permute(0, 3, 1, 2).to(tdt)
    wt = as_t(w).permute(3, 2, 0, 1).to(tdt)
    bt = as_t(b).to(tdt)
    dyt = as_t(dy).permute(0, 3, 1, 2).to(tdt)
    xt = xt.contiguous(memory_format=fmt)
    wt = wt.contiguous(memory_format=fmt)
    dyt = dyt.contiguous(memory_format=fmt)
    F = torch.nn.functional

    def fwd():
        with torch.inference_mode():
            return F.conv2d(xt, wt, bt, stride=s, padding=p, dilation=d, groups=g)

    xg = xt.detach().requires_grad_(True)
    wg = wt.detach().requires_grad_(True)
    bg = bt.detach().requires_grad_(True)

    def fwd_bwd():
        xg.grad = wg.grad = bg.grad = None
        y = F.conv2d(xg, wg, bg, stride=s, padding=p, dilation=d, groups=g)
        y.backward(dyt)
        return y, xg.grad, wg.grad, bg.grad

    def check():
        y, dx, dwt, db = fwd_bwd()
        return (y.float().permute(0, 2, 3, 1).detach().numpy(),
                dx.float().permute(0, 2, 3, 1).numpy(),
                dwt.float().permute(2, 3, 1, 0).numpy(), db.float().numpy())

    return fwd, fwd_bwd, check


def rel_err(a, r):
    a = np.asarray(jnp.asarray(a, jnp.float32))
    r = np.asarray(jnp.asarray(r, jnp.float32))
    return float(np.max(np.abs(a - r)) / max(np.max(np.abs(r)), 1e-30))


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.strip()
    except OSError:
        pass
    return f"Model name: {platform.processor()}"


def fmt_ms(t):
    return "-" if t is None else f"{t * 1e3:.2f}"


def fmt_ratio(a, b):
    return "-" if a is None or b is None else f"{a / b:.2f}x"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter blocks (noisier)")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-bf16", action="store_true")
    ap.add_argument("--no-f32", action="store_true")
    ap.add_argument("--only", nargs="*", help="substrings of layer names to run")
    ap.add_argument("--int8", action="store_true", help="int8 forward vs XLA's int8 (see above)")
    ap.add_argument("--out", default=os.path.join(_ROOT, "plugins", "onednn", "results", "int8_forward.jsonl"),
                    help="--int8: the JSONL file to write")
    ap.add_argument("--table", metavar="JSONL", help="print the int8 table of a results file")
    args = ap.parse_args()
    block_s, blocks = (0.1, 5) if args.quick else (0.25, 7)
    if args.table:
        return print(int8_table(args.table))

    if not jo.available():
        sys.exit(f"jconv_onednn unavailable: {jo.unavailable_reason()}")
    torch = None
    if not args.no_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            torch = None

    if args.int8:
        return run_int8(args.only, block_s, blocks, args.out)

    print(cpu_model())
    print(f"nproc {os.cpu_count()}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
          f"jax {jax.__version__}; oneDNN (plugin) {'.'.join(map(str, jo.onednn_version()))}; "
          f"bf16 native: {jo.bf16_supported()}"
          + (f"; torch {torch.__version__} ({torch.get_num_threads()} threads)" if torch else
             "; torch: not installed"))
    print(f"timing: median of {blocks} interleaved blocks of ~{block_s}s, ms per call, "
          "all JAX under jax.jit\n")

    def run(layers, dtype):
        rows = []
        for layer in layers:
            if args.only and not any(o in layer[0] for o in args.only):
                continue
            x, w, b, dy, geo = make_jax(layer, dtype)
            xf, xfb = xla_fns(geo)
            pf, pfb = plugin_fns(geo, x.shape, w.shape)
            # Correctness guard: the plugin must agree with XLA (in float32:
            # XLA's own bfloat16 bias-gradient reduction is the least precise
            # of the three implementations).
            f32 = lambda a: a.astype(jnp.float32)
            ref = xla_fns(geo)[1](f32(x), f32(w), f32(b), f32(dy))
            got = pfb(x, w, b, dy)
            tol = 1e-4 if dtype == "float32" else 3e-2
            errs = [rel_err(g_, r_) for g_, r_ in zip(got, ref)]
            if max(errs) > tol:
                print(f"WARNING {layer[0]} {dtype}: plugin vs XLA rel err {errs}")
            fns = {
                "xla_f": (lambda: xf(x, w, b), jax_sync),
                "xla_fb": (lambda: xfb(x, w, b, dy), jax_sync),
                "dnn_f": (lambda: pf(x, w, b), jax_sync),
                "dnn_fb": (lambda: pfb(x, w, b, dy), jax_sync),
            }
            if torch is not None:
                for fmt_name, cl in (("cl", True), ("nchw", False)):
                    tf, tfb, check = torch_fns(torch, layer, x, w, b, dy, cl, dtype)
                    terrs = [rel_err(g_, r_) for g_, r_ in zip(check(), ref)]
                    if max(terrs) > tol:
                        print(f"WARNING {layer[0]} {dtype}: torch vs XLA rel err {terrs}")
                    fns[f"t{fmt_name}_f"] = (tf, lambda o: None)
                    fns[f"t{fmt_name}_fb"] = (tfb, lambda o: None)
            t = dict.fromkeys(("tcl_f", "tcl_fb", "tnchw_f", "tnchw_fb"))
            t.update(timed(fns, block_s=block_s, blocks=blocks))
            rows.append((layer[0], t))
            print(f"  done {layer[0]} ({dtype})", file=sys.stderr, flush=True)
        return rows

    def table(rows, dtype):
        for kind, label in (("f", "forward"), ("fb", "forward + backward (y, dx, dw, db)")):
            print(f"\n### {dtype}: {label}, ms per call\n")
            head = "| layer | XLA | oneDNN plugin | XLA / plugin |"
            sep = "|---|---:|---:|---:|"
            if torch is not None:
                head += " torch channels_last | torch NCHW | torch CL / plugin |"
                sep += "---:|---:|---:|"
            print(head)
            print(sep)
            for name, t in rows:
                line = (f"| {name} | {fmt_ms(t['xla_' + kind])} | {fmt_ms(t['dnn_' + kind])} | "
                        f"{fmt_ratio(t['xla_' + kind], t['dnn_' + kind])} |")
                if torch is not None:
                    line += (f" {fmt_ms(t['tcl_' + kind])} | {fmt_ms(t['tnchw_' + kind])} | "
                             f"{fmt_ratio(t['tcl_' + kind], t['dnn_' + kind])} |")
                print(line)
        print("\n(ratios > 1 mean the plugin is faster)")

    if not args.no_f32:
        table(run(LAYERS, "float32"), "float32")
    if not args.no_bf16:
        if jo.bf16_supported():
            table(run(BF16_LAYERS, "bfloat16"), "bfloat16")
        else:
            print("\nbfloat16: skipped (no native bf16 on this CPU)")


# ---------------------------------------------------------------------------
# int8 (quantized inference): forward int8 x int8 -> int32
# ---------------------------------------------------------------------------

INT8_IMPLS = ("xla_int8", "onednn_int8", "onednn_uint8", "xla_f32", "onednn_f32")
FLAGS = ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def suite_dense_layers():
    """(name, ConvSpec) of jconv's default suite's dense layers at the experiments' batch."""
    from jconv_experiments.suite import CASES, SUITES

    out = []
    for name in SUITES["default"]:
        case = CASES[name]
        if case.groups != 1 or case.lhs_dilation != (1, 1) or case.layout != "NHWC":
            continue
        batch = max(1, min(8, int(1.0 // (case.flops(1) / 1e9))))
        out.append((name, case.spec(batch)))
    return out


def env_record():
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return {"kind": "env", "cpu_model": fields.get("Model name", "").strip(),
            "flags": {f: f in flags for f in FLAGS}, "nproc": os.cpu_count(),
            "affinity_cpus": len(os.sched_getaffinity(0)), "XLA_FLAGS": os.environ.get("XLA_FLAGS"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "jax": jax.__version__,
            "onednn": ".".join(map(str, jo.onednn_version())),
            "onednn_threads": jo.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "lscpu": lscpu}


def int8_layer(name, spec, block_s, blocks):
    rng = np.random.default_rng(0)
    geo = dict(stride=spec.stride, padding=spec.padding, dilation=spec.dilation, groups=1)
    ints = lambda lo, hi, shape, dt: jnp.asarray(rng.integers(lo, hi, shape, endpoint=True), dt)
    x8, xu8 = ints(-128, 127, spec.x_shape, jnp.int8), ints(0, 255, spec.x_shape, jnp.uint8)
    w8 = ints(-128, 127, spec.kernel_shape, jnp.int8)
    xf, wf = x8.astype(jnp.float32), w8.astype(jnp.float32)

    def xla(pet):
        return jax.jit(lambda x, w: lax.conv_general_dilated(
            x, w, spec.stride, spec.padding, rhs_dilation=spec.dilation, dimension_numbers=DN,
            preferred_element_type=pet))

    dnn_int = jax.jit(lambda x, w: jo.conv_forward(x, w, preferred_element_type=jnp.int32, **geo))
    calls = {"xla_int8": (xla(jnp.int32), x8, w8), "onednn_int8": (dnn_int, x8, w8),
             "onednn_uint8": (dnn_int, xu8, w8), "xla_f32": (xla(None), xf, wf),
             "onednn_f32": (jax.jit(lambda x, w: jo.conv_forward(x, w, **geo)), xf, wf)}
    # exactness first: int8 against XLA's int8, uint8 against XLA's int32 convolution
    for impl, ref in (("onednn_int8", calls["xla_int8"][0](x8, w8)),
                      ("onednn_uint8", xla(jnp.int32)(xu8.astype(jnp.int32), w8.astype(jnp.int32)))):
        fn, x, w = calls[impl]
        if not np.array_equal(np.asarray(fn(x, w)), np.asarray(ref)):
            sys.exit(f"{name}: {impl} differs from XLA")
    # each call waits for its result: the time of one convolution, as inside a jitted model
    # (XLA:CPU's async dispatch would otherwise run several plugin calls at once, each on its own
    # thread and OpenMP team, while its own convolutions share one thread pool)
    medians, samples = timed({k: ((lambda f=f, x=x, w=w: jax.block_until_ready(f(x, w))),
                                  lambda out: None)
                              for k, (f, x, w) in calls.items()},
                             block_s=block_s, blocks=blocks, samples=True)
    describe = {dt: jo.describe("fwd", spec.x_shape, spec.kernel_shape, dtype=dt, **geo)
                for dt in ("int8", "uint8", "float32")}
    return {"kind": "int8_forward", "layer": name, "batch": spec.batch,
            "x_shape": list(spec.x_shape), "w_shape": list(spec.kernel_shape),
            "stride": list(spec.stride), "padding": [list(p) for p in spec.padding],
            "dilation": list(spec.dilation), "gflop": spec.flops / 1e9,
            "ms": {k: v * 1e3 for k, v in medians.items()},
            "block_ms": {k: [round(t * 1e3, 4) for t in v] for k, v in samples.items()},
            "onednn_impl": describe}


def run_int8(only, block_s, blocks, out_path):
    if not jo.int8_supported():
        sys.exit("int8: this CPU has no VNNI/AMX; the plugin refuses int8 convolutions here")
    records = [env_record()]
    print(records[0]["cpu_model"], {k: v for k, v in records[0]["flags"].items() if v})
    for name, spec in suite_dense_layers():
        if only and not any(o in name for o in only):
            continue
        records.append(int8_layer(name, spec, block_s, blocks))
        print(f"  done {name}", file=sys.stderr, flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    print(int8_table(out_path))


def int8_table(path):
    """Markdown: ms per call (median of blocks), the speed-ups, geometric means."""
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    env = next(r for r in records if r["kind"] == "env")
    rows = [r for r in records if r["kind"] == "int8_forward"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in env["flags"].items())
    out = [f"{env['cpu_model']} ({env['nproc']} CPUs, process pinned to {env['affinity_cpus']}; "
           f"{flags}); oneDNN {env['onednn']} with {env['onednn_threads']} OpenMP threads; "
           f"XLA_FLAGS={env['XLA_FLAGS']}; jax {env['jax']}; {env['date']}", "",
           "| layer | N | " + " | ".join(INT8_IMPLS) + " | XLA int8 / oneDNN int8 "
           "| oneDNN f32 / oneDNN int8 | XLA int8 / XLA f32 |",
           "|---|---:|" + "---:|" * (len(INT8_IMPLS) + 3)]
    ratios = {"x": [], "f": [], "xf": []}
    for r in rows:
        ms = r["ms"]
        x, f = ms["xla_int8"] / ms["onednn_int8"], ms["onednn_f32"] / ms["onednn_int8"]
        xf = ms["xla_int8"] / ms["xla_f32"]
        for k, v in zip(ratios, (x, f, xf)):
            ratios[k].append(v)
        out.append(f"| {r['layer']} | {r['batch']} | "
                   + " | ".join(f"{ms[k]:.3f}" for k in INT8_IMPLS)
                   + f" | {x:.2f}x | {f:.2f}x | {xf:.2f}x |")
    geo = {k: float(np.exp(np.mean(np.log(v)))) for k, v in ratios.items()}
    cells = ["geometric mean", ""] + [""] * len(INT8_IMPLS) + [f"{geo[k]:.2f}x" for k in ratios]
    out.append("| " + " | ".join(cells) + " |")
    out += ["", "ms per call, median of interleaved blocks; ratios > 1: the denominator is faster."]
    return "\n".join(out)


if __name__ == "__main__":
    main()
