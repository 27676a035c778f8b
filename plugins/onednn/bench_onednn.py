"""Speed of the jconv_onednn plugin against XLA's convolution (and PyTorch).

Usage (after `pip install ./plugins/onednn`; PyTorch optional):
    JAX_PLATFORMS=cpu python plugins/onednn/bench_onednn.py [--quick] [--no-torch]
                                                            [--no-bf16] [--no-f32] [--only NAME ...]

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
import os
import platform
import subprocess
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Run as a script, this file's folder would come first on sys.path and its
# jconv_onednn/ source folder (without the built library) would shadow the
# installed package.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

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


def timed(fns, *, block_s, blocks):
    """Median seconds per call of each function in `fns` ({name: (fn, sync)}).

    Every function is warmed up and calibrated to blocks of about block_s,
    then the blocks are interleaved (one block of each function per round),
    so a slow-down of the machine during the run hits all of them alike.
    """
    inner = {}
    for name, (fn, sync) in fns.items():
        sync(fn())
        sync(fn())
        t0 = time.perf_counter()
        sync(fn())
        one = max(time.perf_counter() - t0, 1e-6)
        inner[name] = max(1, int(block_s / one))
    samples = {name: [] for name in fns}
    for _ in range(blocks):
        for name, (fn, sync) in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner[name]):
                out = fn()
            sync(out)
            samples[name].append((time.perf_counter() - t0) / inner[name])
    return {name: float(np.median(v)) for name, v in samples.items()}


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
    args = ap.parse_args()
    block_s, blocks = (0.1, 5) if args.quick else (0.25, 7)

    if not jo.available():
        sys.exit(f"jconv_onednn unavailable: {jo.unavailable_reason()}")
    torch = None
    if not args.no_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            torch = None

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


if __name__ == "__main__":
    main()
