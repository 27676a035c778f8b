"""Property test: impl="pallas" lowers for CUDA (Triton) and TPU (Mosaic) on any valid geometry.

Hypothesis draws valid convolutions beyond the suite's shapes (kernels 1-7 per axis, strides
1-3, kernel dilation, input dilation (transposed convolution) some of the time, dense, grouped
and depthwise with a depth multiplier, odd sizes and channel counts, NHWC and NCHW, float32 and
bfloat16, bias or not, every padding form) and exports the forward and both gradients of each
(``jax.value_and_grad`` w.r.t. x and w: the forward, input-gradient and weight-gradient kernels)
with ``jax.export`` for ``cuda`` and ``tpu``, no device needed, sized for a drawn target of that
platform. Every draw lowers (three Pallas kernels, no XLA convolution), or jconv refuses it with
its own ValueError / NotImplementedError, which tracing the backend functions alone (no Pallas
lowering) raises too. An internal error of a lowering (an AttributeError inside Triton's, an MLIR
verifier's) fails the test. Some draws are also lowered for the CPU (interpret mode).

Derandomized: the same draws on every run. The real compilers (ptxas, Mosaic) see a few of the
families found here in tests/aot_checks.py.
"""

import contextlib
import os

import jax
import jax.numpy as jnp
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from jax import export

import jconv
from jconv import primitive, targets

#: draws per run, about 0.6 s of CPU each here (a deeper run: JCONV_LOWERING_DRAWS=1000)
DRAWS = int(os.environ.get("JCONV_LOWERING_DRAWS", "60"))
SETTINGS = settings(max_examples=DRAWS, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_TRITON = "__gpu$xla.gpu.triton"
MARKER = {"cuda": _TRITON, "tpu": "tpu_custom_call"}
#: the target each platform's kernels are sized for: None is what a trace without a device of
#: that platform gets (jconv.targets' conservative stand-in)
TARGETS = {"cuda": (None, "l4", "h100", "a100", "a100_40gb"), "tpu": (None, "v5e", "v6e", "v4", "v5p")}


@st.composite
def geometries(draw):
    layout = draw(st.sampled_from(["NHWC", "NCHW"]))
    kind = draw(st.sampled_from(["dense", "dense", "grouped", "depthwise"]))
    if kind == "dense":
        groups, cin, cout = 1, draw(st.integers(1, 9)), draw(st.integers(1, 9))
    elif kind == "grouped":
        groups = draw(st.integers(2, 4))
        cin, cout = groups * draw(st.integers(1, 4)), groups * draw(st.integers(1, 4))
    else:  # depthwise, depth multiplier 1-3
        groups = cin = draw(st.integers(1, 6))
        cout = cin * draw(st.integers(1, 3))
    k = (draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilated = draw(st.integers(0, 2)) == 0
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if dilated else (1, 1)
    general = draw(st.integers(0, 3)) == 0  # conv_general_dilated: input dilation, crops
    lhs_dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if general else (1, 1)
    keff = tuple((a - 1) * d + 1 for a, d in zip(k, dilation))
    # the (input-dilated) input at least as big as the dilated kernel: VALID is non-empty
    smallest = [-(-(e - 1) // ld) + 1 for e, ld in zip(keff, lhs_dilation)]
    hw = tuple(draw(st.integers(m, m + 5)) for m in smallest)
    if general:  # explicit (low, high) pairs, a crop (negative) allowed
        padding = tuple((draw(st.integers(-1, e - 1)), draw(st.integers(-1, e - 1))) for e in keff)
        for size, ld, e, (lo, hi) in zip(hw, lhs_dilation, keff, padding):
            assume((size - 1) * ld + 1 + lo + hi >= e)
    else:
        form = draw(st.sampled_from(["VALID", "SAME", "int", "pair", "sides"]))
        if form == "int":
            padding = draw(st.integers(0, 3))
        elif form == "pair":
            padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
        elif form == "sides":
            padding = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(2))
        else:
            padding = form
    return dict(layout=layout, groups=groups, cin=cin, cout=cout, k=k, stride=stride, dilation=dilation,
                general=general, lhs_dilation=lhs_dilation, hw=hw, padding=padding, batch=draw(st.integers(1, 3)),
                dtype=draw(st.sampled_from(["float32", "bfloat16"])),
                bias=not general and draw(st.booleans()),
                cuda=draw(st.sampled_from(TARGETS["cuda"])), tpu=draw(st.sampled_from(TARGETS["tpu"])),
                cpu=draw(st.integers(0, 7)) == 0)


def _program(g):
    """``(fn, args)``: the loss's value and its gradients w.r.t. x and w (and b)."""
    (h, w), (kh, kw), n = g["hw"], g["k"], g["batch"]
    cg = g["cin"] // g["groups"]
    if g["layout"] == "NHWC":
        xs, ws = (n, h, w, g["cin"]), (kh, kw, cg, g["cout"])
    else:
        xs, ws = (n, g["cin"], h, w), (g["cout"], cg, kh, kw)
    args = [jax.ShapeDtypeStruct(xs, g["dtype"]), jax.ShapeDtypeStruct(ws, g["dtype"])]
    if g["bias"]:
        args.append(jax.ShapeDtypeStruct((g["cout"],), g["dtype"]))

    if g["general"]:
        dn = ("NHWC", "HWIO", "NHWC") if g["layout"] == "NHWC" else ("NCHW", "OIHW", "NCHW")

        def conv(x, w_):
            return jconv.conv_general_dilated(x, w_, g["stride"], g["padding"], lhs_dilation=g["lhs_dilation"],
                                              rhs_dilation=g["dilation"], dimension_numbers=dn,
                                              feature_group_count=g["groups"], impl="pallas")
    else:
        def conv(x, w_, b=None):
            return jconv.conv2d(x, w_, b, stride=g["stride"], padding=g["padding"], dilation=g["dilation"],
                                groups=g["groups"], layout=g["layout"], impl="pallas")

    def loss(*a):
        y = conv(*a).astype(jnp.float32)
        return jnp.sum(y * jnp.cos(y))  # a cotangent that depends on y

    return jax.value_and_grad(loss, argnums=tuple(range(len(args)))), args


def _export(fn, args, platform):
    checks = [export.DisabledSafetyCheck.custom_call(_TRITON)] if platform == "cuda" else []
    return export.export(jax.jit(fn), platforms=[platform], disabled_checks=checks)(*args).mlir_module()


def _is_clear_refusal(e: BaseException) -> bool:
    return isinstance(e, (ValueError, NotImplementedError)) and str(e).startswith(("conv2d:", "conv_general_dilated:"))


def _check_platform(fn, args, platform, target_name):
    ctx = targets.use(target_name) if target_name else contextlib.nullcontext()
    with ctx:
        try:
            text = _export(fn, args, platform)
        except Exception as e:  # noqa: BLE001 - judged below
            assert _is_clear_refusal(e), f"{platform} lowering crashed: {type(e).__name__}: {str(e)[:2000]}"
            # refused while planning, or while tracing the backend's functions for that target:
            # never by a Pallas lowering
            try:
                primitive.kernel_jaxprs(jax.make_jaxpr(fn)(*args), platform)
            except (ValueError, NotImplementedError) as again:
                assert str(again) == str(e)
            else:
                raise AssertionError(f"{platform}: refused only while lowering: {e}") from e
            return "refused"
    assert text.count(MARKER[platform]) == 3, f"{platform}: {text.count(MARKER[platform])} Pallas kernels, want 3"
    assert "stablehlo.convolution" not in text
    return "lowered"


def _geometry(**kw):
    g = dict(layout="NHWC", groups=1, cin=8, cout=16, k=(3, 3), stride=(1, 1), dilation=(1, 1), general=False,
             lhs_dilation=(1, 1), hw=(12, 12), padding="VALID", batch=1, dtype="float32", bias=False, cuda=None,
             tpu=None, cpu=False)
    g.update(kw)
    return g


@SETTINGS
@given(geometries())
# what crashed Triton's lowering before (a tap loop over one input-channel chunk): a 7x7 stride-3
# gradient, a 5x5 grouped NCHW forward; a GPU without Triton (the T4): refused, not crashed
@example(_geometry(batch=4, k=(7, 7), stride=(3, 3)))
@example(_geometry(layout="NCHW", groups=2, cin=8, cout=8, k=(5, 5), hw=(32, 40)))
@example(_geometry(dtype="bfloat16", cuda="t4"))
def test_pallas_lowers_or_refuses_clearly(g):
    fn, args = _program(g)
    for platform in ("cuda", "tpu"):
        _check_platform(fn, args, platform, g[platform])
    if g["cpu"]:  # interpret mode: the CPU lowering of the same program
        text = jax.jit(fn).lower(*args).as_text()
        assert "stablehlo.convolution" not in text
