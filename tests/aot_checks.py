"""Compile-only checks of impl="pallas" for real targets, run in a subprocess per platform:

    JAX_PLATFORMS=cpu python tests/aot_checks.py tpu|cuda
    JCONV_AOT_SET=quick ...   # `make test`: one target per platform, float32 (`full`: make test-all)

One program per (target, layer, dtype): the forward and both gradients together
(``jax.value_and_grad`` of ``sum(y * ct)``), so the forward, input-gradient and weight-gradient
kernels are all compiled; at the batch of the platform's config (configs/tpu.py: 64,
configs/gpu.py: 32). The layers cover every kernel kind and the largest tiles and temporaries of
the suite; ``DRAWS``, geometries of tests/test_lowering_properties.py, reach kernel forms the
layers do not; on CUDA also the T4 (``t4_cuda``) and impl="lax" on NCHW callers. Prints one JSON
line per program (``ok``, ``msg``, ``seconds``). The subprocess keeps libtpu and the CUDA plugin
out of the pytest workers and pays their start-up once.
"""

import json
import os
import sys
import time

LAYERS = (
    "vgg16_conv4_2",            # dense 3x3, 512 channels: the largest weight tiles
    "resnet50_s3_3x3s2",        # strided (phases)
    "resnet50_s3_1x1_reduce",   # 1x1, 512 -> 128
    "resnet50_stem_7x7s2",      # 7x7 stride 2, 3 channels: folded taps, the largest temporaries
    "mobilenetv2_dw3x3_s1",     # depthwise
    "resnext_g32_3x3",          # grouped (bundles)
    "unet_up_transposed",       # transposed (input dilation)
)
BATCH = {"tpu": 64, "cuda": 32}
#: The largest-tile and largest-temporary layers, whose TPU programs take longest to compile
#: (about 20 s each here): the quick set compiles them for the L4 only.
HEAVY_TPU = ("vgg16_conv4_2", "resnet50_stem_7x7s2")
#: ``JCONV_AOT_SET``: (targets, dtypes, layers) per set. ``full`` (make test-all): every layer on
#: two targets per platform, both dtypes. ``quick`` (make test): one target per platform,
#: float32; every layer on the L4, all but ``HEAVY_TPU`` on v5e (every kernel kind on each
#: platform: v5e meets folded taps in ``DRAWS``' ``draw_7x7s3``); the draws on those targets.
SETS = {
    "full": ({"tpu": ("v5e", "v6e"), "cuda": ("h100", "l4")}, ("float32", "bfloat16"),
             {"tpu": LAYERS, "cuda": LAYERS}),
    "quick": ({"tpu": ("v5e",), "cuda": ("l4",)}, ("float32",),
              {"tpu": tuple(n for n in LAYERS if n not in HEAVY_TPU), "cuda": LAYERS}),
}
SET = os.environ.get("JCONV_AOT_SET", "full")
if SET not in SETS:
    raise ValueError(f"aot_checks: JCONV_AOT_SET (={SET!r}) must be one of {sorted(SETS)}")
TARGETS, DTYPES, SET_LAYERS = SETS[SET]


def programs(platform: str):
    import jax
    import jax.numpy as jnp

    from jconv import aot, targets
    from jconv_experiments.suite import CASES

    for tname in TARGETS[platform]:
        target = targets.get(tname)
        for name in SET_LAYERS[platform]:
            case = CASES[name]
            for dtype in DTYPES:
                spec = case.spec(BATCH[platform], dtype)
                args = [aot.shape_struct(s, dtype, target) for s in (spec.x_shape, spec.w_shape, spec.out_shape)]

                def step(x, w, ct, case=case):
                    def loss(x_, w_):
                        return jnp.sum(case.apply(x_, w_, impl="pallas").astype(jnp.float32) * ct.astype(jnp.float32))
                    return jax.value_and_grad(loss, argnums=(0, 1))(x, w)

                t0 = time.time()
                r = aot.compile_for(target, step, *args)
                ok = bool(r["compiled"]) and r.get("pallas_kernels") == 3 and r.get("xla_convolutions") == 0
                msg = r["error"] or f"{r.get('pallas_kernels')} kernels, {r.get('xla_convolutions')} XLA convolutions"
                yield dict(target=tname, name=name, dtype=dtype, ok=ok, msg=msg, seconds=round(time.time() - t0, 1))


#: impl="lax" on CUDA, NCHW callers: the tap GEMMs that XLA's GPU compiler once refused (no Triton
#: tiling for a window sliced from the caller's transposed input). name: (x NCHW, w OIHW,
#: conv_general_dilated keywords); the first is resnet50_s2_3x3_nchw at configs/gpu.py's batch.
LAX_NCHW = {
    "lax_nchw_resnet50_s2_3x3": ((32, 64, 56, 56), (64, 64, 3, 3), dict(padding=((1, 1), (1, 1)))),
    "lax_nchw_dilated": ((8, 64, 28, 28), (64, 64, 3, 3), dict(padding=((2, 2), (2, 2)), rhs_dilation=(2, 2))),
    "lax_nchw_transposed": ((8, 64, 14, 14), (64, 64, 3, 3), dict(padding=((2, 3), (2, 3)), lhs_dilation=(2, 2))),
}


def lax_cuda():
    """impl="lax:taps" forward and gradients of the ``LAX_NCHW`` convolutions on the CUDA
    targets: every program compiles, with no XLA convolution."""
    import jax
    import jax.numpy as jnp

    import jconv
    from jconv import aot, targets

    for tname in TARGETS["cuda"]:
        target = targets.get(tname)
        for name, (xs, ws, kw) in LAX_NCHW.items():
            def conv(x, w, kw=kw):
                return jconv.conv_general_dilated(x, w, (1, 1), dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                                  impl="lax:taps", **kw)

            def step(x, w, conv=conv):
                return jax.value_and_grad(lambda a, b: jnp.sum(conv(a, b).astype(jnp.float32)), argnums=(0, 1))(x, w)

            for dtype in DTYPES:
                args = [aot.shape_struct(s, dtype, target) for s in (xs, ws)]
                for kind, fn in (("fwd", conv), ("fwd+bwd", step)):
                    t0 = time.time()
                    r = aot.compile_for(target, fn, *args)
                    ok = bool(r["compiled"]) and r.get("xla_convolutions") == 0
                    msg = r["error"] or f"{r.get('xla_convolutions')} XLA convolutions"
                    yield dict(target=tname, name=f"{name}_{kind}", dtype=dtype, ok=ok, msg=msg,
                               seconds=round(time.time() - t0, 1))


#: Geometries from tests/test_lowering_properties.py whose kernels the suite's layers do not
#: reach: more than 9 taps with one input-channel chunk (the Triton tap loop, whose constant
#: channel offset crashed Triton's lowering), strided, dilated, grouped NCHW, transposed. name:
#: (x, w, keywords of jconv.conv_general_dilated, dtype, targets per platform); NCHW by name.
#: Each on some targets only (together about 20 s of compiling per platform here).
DRAWS = {
    "draw_7x7s3": ((4, 12, 12, 8), (7, 7, 8, 16), dict(window_strides=(3, 3), padding="VALID"), "float32",
                   {"cuda": ("h100", "l4"), "tpu": ("v5e",)}),
    "draw_5x5_g2_nchw": ((1, 8, 32, 40), (8, 4, 5, 5), dict(window_strides=(1, 1), padding="VALID",
                                                            feature_group_count=2), "bfloat16",
                         {"cuda": ("l4",), "tpu": ("v5e",)}),
    "draw_3x4_s2_dilated": ((2, 11, 13, 5), (3, 4, 5, 7), dict(window_strides=(2, 1), padding=((1, 2), (3, 0)),
                                                               rhs_dilation=(2, 2)), "bfloat16",
                            {"cuda": ("h100",), "tpu": ("v5e",)}),
    "draw_5x5_transposed": ((2, 9, 9, 6), (5, 5, 6, 4), dict(window_strides=(1, 1), padding=((4, 3), (4, 4)),
                                                             lhs_dilation=(2, 2)), "float32",
                            {"cuda": ("h100",), "tpu": ("v5e",)}),
}


def selected_draws() -> dict:
    """``DRAWS`` on the selected targets only (and only those with a target left)."""
    out = {}
    for name, (xs, ws, kw, dtype, on) in DRAWS.items():
        on = {p: tuple(t for t in ts if t in TARGETS[p]) for p, ts in on.items()}
        if any(on.values()):
            out[name] = (xs, ws, kw, dtype, on)
    return out


def draws(platform: str):
    """impl="pallas" forward and both gradients (one program) of each of ``DRAWS`` on its
    targets of ``platform``: it compiles, three kernels, no XLA convolution."""
    import jax
    import jax.numpy as jnp

    import jconv
    from jconv import aot, targets

    for name, (xs, ws, kw, dtype, on) in selected_draws().items():
        dn = ("NCHW", "OIHW", "NCHW") if name.endswith("_nchw") else ("NHWC", "HWIO", "NHWC")

        def step(x, w, kw=kw, dn=dn):
            def loss(a, b):
                y = jconv.conv_general_dilated(a, b, dimension_numbers=dn, impl="pallas", **kw)
                return jnp.sum(jnp.sin(y.astype(jnp.float32)))
            return jax.value_and_grad(loss, argnums=(0, 1))(x, w)

        for tname in on[platform]:
            target = targets.get(tname)
            t0 = time.time()
            r = aot.compile_for(target, step, aot.shape_struct(xs, dtype, target), aot.shape_struct(ws, dtype, target))
            ok = bool(r["compiled"]) and r.get("pallas_kernels") == 3 and r.get("xla_convolutions") == 0
            msg = r["error"] or f"{r.get('pallas_kernels')} kernels, {r.get('xla_convolutions')} XLA convolutions"
            yield dict(target=tname, name=name, dtype=dtype, ok=ok, msg=msg, seconds=round(time.time() - t0, 1))


def t4_cuda():
    """The T4 (compute capability 7.5, Colab's free GPU): impl="pallas" is jconv's own error
    before anything compiles (Triton needs 8.0); XLA's convolution compiles bfloat16 for it,
    as a float32 cuDNN convolution between conversions (sm_75 has no bfloat16 convolution)."""
    import jax
    import jax.numpy as jnp

    import jconv
    from jconv import aot, targets

    t4 = targets.get("t4")
    args = [aot.shape_struct(s, "bfloat16", t4) for s in ((8, 16, 16, 32), (3, 3, 32, 32))]

    def conv(impl):
        return lambda x, w: jconv.conv2d(x, w, padding="SAME", impl=impl)

    t0 = time.time()
    r = aot.compile_for(t4, conv("pallas"), *args)
    ok = r["error_kind"] == "jconv" and "compute capability 8.0 or newer; Tesla T4" in (r["error"] or "")
    yield dict(target="t4", name="pallas_refused", dtype="bfloat16", ok=ok, msg=r["error"] or "compiled",
               seconds=round(time.time() - t0, 1))
    t0 = time.time()
    try:
        text = jax.jit(conv("xla")).lower(*args).compile().as_text()
        convs = [ln for ln in text.splitlines() if "__cudnn$conv" in ln]
        ok = len(convs) == 1 and "(f32[" in convs[0] and aot.count_convolutions(text) == 1
        msg = convs[0].split("custom-call(")[0].strip() if convs else "no cuDNN convolution"
    except Exception as e:  # noqa: BLE001
        ok, msg = False, aot.first_line(e)
    yield dict(target="t4", name="xla_bf16_as_f32", dtype="bfloat16", ok=ok, msg=msg,
               seconds=round(time.time() - t0, 1))


def sharded_tpu(name: str = "mnist_conv2", batch: int = 8):
    """A batch-sharded input on the 4 devices of v5e:2x2 inside ``jax.set_mesh`` (Mosaic
    kernels must sit in a shard_map): the kernels, and no all-gather of the batch."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from jconv import aot, targets
    from jconv_experiments.suite import CASES

    topo = aot.topology(targets.get("v5e"))
    mesh = Mesh(np.array(topo.devices), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
    case = CASES[name]
    xs = jax.ShapeDtypeStruct(case.x_shape(batch), "float32", sharding=NamedSharding(mesh, P("batch")))
    ws = jax.ShapeDtypeStruct(case.w_shape(), "float32", sharding=NamedSharding(mesh, P()))

    def fwd(x, w):
        return case.apply(x, w, impl="pallas")

    def grad(x, w):
        return jax.grad(lambda a, b: jnp.sum(fwd(a, b) ** 2), argnums=(0, 1))(x, w)

    for kind, fn, want in (("fwd", fwd, 1), ("grad", grad, 3)):
        t0 = time.time()
        try:
            with jax.set_mesh(mesh):
                text = jax.jit(fn).lower(xs, ws).compile().as_text()
            n = aot.count_kernels(text, "tpu")
            ok = n == want and "all-gather" not in text and aot.count_convolutions(text) == 0
            msg = f"{n} kernels (want {want}); all-gather: {'all-gather' in text}"
        except Exception as e:  # noqa: BLE001
            ok, msg = False, aot.first_line(e)
        yield dict(target="v5e:2x2", name=f"sharded_{name}_{kind}", dtype="float32", ok=ok, msg=msg,
                   seconds=round(time.time() - t0, 1))


if __name__ == "__main__":
    platform = sys.argv[1]
    for row in programs(platform):
        print(json.dumps(row), flush=True)
    for row in draws(platform):
        print(json.dumps(row), flush=True)
    if platform == "tpu":
        for row in sharded_tpu():
            print(json.dumps(row), flush=True)
    if platform == "cuda":
        for row in lax_cuda():
            print(json.dumps(row), flush=True)
        for row in t4_cuda():
            print(json.dumps(row), flush=True)
