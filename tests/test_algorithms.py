"""Every lax algorithm against XLA (HIGHEST) and the float64 oracle: forward, VJP, 2nd order.

The grid covers what the engine in ``jconv.impls.lax`` enumerates differently: dense,
grouped, depthwise (multiplier 1 and 2), stride, kernel dilation, input dilation (transposed
conv, incl. stride and input dilation together, and phases that no tap reaches), negative and
asymmetric padding, 1x1 kernels. Plus: ``select`` rules, im2col chunking, dtypes.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

import jconv
from jconv import select
from jconv.geometry import parse_conv2d
from jconv.spec import ExecSpec, Geometry
import dataclasses

from jconv.impls.lax import ALGORITHMS, contractions, rules, supports
from jconv.impls.lax import taps as lax_taps
from jconv.impls.lax import weight_grad as lax_dw
from jconv_experiments.suite import CASES
from jconv.testing import assert_close
from oracle import conv2d_ref
from grids import share

DN = ("NHWC", "HWIO", "NHWC")

# (name, (C_in, C_out, groups), kernel, stride, dilation, lhs_dilation, padding ((t, b), (l, r)))
GEOMS = [
    ("dense_same", (3, 5, 1), (3, 3), (1, 1), (1, 1), (1, 1), ((1, 1), (1, 1))),
    ("dense_s21_d12_asym", (3, 4, 1), (3, 2), (2, 1), (1, 2), (1, 1), ((1, 0), (2, 1))),
    ("grouped_s2_d2", (4, 6, 2), (3, 3), (2, 2), (2, 2), (1, 1), ((2, 2), (1, 0))),
    ("depthwise_s2", (4, 4, 4), (3, 3), (2, 2), (1, 1), (1, 1), ((1, 1), (1, 1))),
    ("depthwise_m2_d2", (3, 6, 3), (3, 2), (1, 1), (2, 1), (1, 1), ((2, 1), (0, 3))),
    ("pointwise_s2", (4, 3, 1), (1, 1), (2, 2), (1, 1), (1, 1), ((0, 0), (0, 0))),
    ("transposed_l2", (3, 4, 1), (3, 3), (1, 1), (1, 1), (2, 2), ((1, 2), (1, 2))),
    ("transposed_l32_grouped_d12", (4, 6, 2), (2, 3), (1, 1), (1, 2), (3, 2), ((1, 1), (2, 0))),
    ("transposed_depthwise", (3, 6, 3), (3, 3), (1, 1), (1, 1), (2, 2), ((1, 2), (2, 1))),
    ("lhs2_stride2", (2, 3, 1), (3, 3), (2, 2), (1, 1), (2, 2), ((1, 1), (2, 2))),
    ("lhs2_stride3_negpad", (2, 3, 1), (3, 2), (3, 1), (1, 1), (2, 3), ((-1, 2), (1, -2))),
    ("lhs3_k1_empty_phases", (2, 2, 1), (1, 1), (1, 1), (1, 1), (3, 3), ((0, 1), (1, 0))),
]


def _ids(g):
    return g[0]


def _inputs(geom, dtype=np.float32, seed=0, hw=(7, 6), batch=2):
    _, (ci, co, g), (kh, kw), *_ = geom
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch,) + hw + (ci,)).astype(dtype)
    w = rng.normal(size=(kh, kw, ci // g, co)).astype(dtype)
    return x, w


def _run(geom, impl, x, w, precision="highest"):
    _, (_, _, g), _, s, d, l, pad = geom
    return jconv.conv_general_dilated(x, w, s, pad, l, d, DN, g, precision=precision, impl=impl)


def _xla(geom, x, w):
    _, (_, _, g), _, s, d, l, pad = geom
    return lax.conv_general_dilated(x, w, s, pad, l, d, DN, g, precision="highest")


def _oracle(geom, x, w):
    _, (_, _, g), _, s, d, l, pad = geom
    return conv2d_ref(x, w, stride=s, padding=pad, dilation=d, groups=g, lhs_dilation=l)


def _spec(geom, x, w) -> ExecSpec:
    """The geometry as a backend's execute spec on ``x`` itself (negative padding included: the
    engine crops by it, where ``conv2d`` would have cropped ``x`` first)."""
    _, (_, _, g), _, s, d, l, pad = geom
    user = parse_conv2d(x.shape, x.dtype, w.shape, w.dtype, stride=s, padding=pad, dilation=d,
                        lhs_dilation=l, groups=g, allow_negative_padding=True, fn="test")
    return ExecSpec(**{f.name: getattr(user, f.name) for f in dataclasses.fields(Geometry)})


def _algos(geom, x, w):
    spec = _spec(geom, x, w)
    return [a for a in ALGORITHMS if supports(a, spec)]


@pytest.mark.parametrize("geom", share(GEOMS, every=4, keep=(2, 10)), ids=_ids)
def test_forward_and_vjp_match_xla_and_oracle(geom):
    x, w = _inputs(geom)
    ref = _oracle(geom, x, w)
    y_ref, vjp_ref = jax.vjp(functools.partial(_xla, geom), jnp.asarray(x), jnp.asarray(w))
    assert_close(y_ref, ref, np.float32, what="XLA vs oracle")
    ct = jnp.asarray(np.random.default_rng(1).normal(size=y_ref.shape), jnp.float32)
    dx_ref, dw_ref = vjp_ref(ct)
    algos = _algos(geom, x, w)
    assert {"taps", "im2col"} <= set(algos)
    for algo in algos:
        impl = f"lax:{algo}"
        y, vjp = jax.vjp(functools.partial(_run, geom, impl), jnp.asarray(x), jnp.asarray(w))
        assert y.shape == ref.shape, impl
        assert_close(y, ref, np.float32, what=f"{impl} vs oracle")
        assert_close(y, y_ref, np.float32, what=f"{impl} vs XLA")
        dx, dw = vjp(ct)
        assert dx.shape == x.shape and dw.shape == w.shape
        assert_close(dx, dx_ref, np.float32, factor=2, what=f"{impl} dx")
        assert_close(dw, dw_ref, np.float32, factor=2, what=f"{impl} dw")


# the dense and depthwise geometries' second order (both modes) is in every backend's
# conformance tests (tests/conformance.py); here the transposed ones, which only lax runs natively
@pytest.mark.parametrize("geom", share([GEOMS[i] for i in (7, 10)], every=2), ids=_ids)
def test_second_order_grads(geom):
    with jax.enable_x64(True):
        x, w = _inputs(geom, dtype=np.float64, seed=3, hw=(5, 4), batch=1)
        for algo in _algos(geom, x, w):
            f = functools.partial(_run, geom, f"lax:{algo}", precision=None)
            check_grads(f, (jnp.asarray(x), jnp.asarray(w)), order=2, modes=("rev",), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_dtypes_forward_and_grad_dtypes(dtype):
    geom = GEOMS[7]  # transposed, grouped, dilated: every code path of the engine
    with jax.enable_x64(dtype == "float64"):
        x, w = _inputs(geom, seed=4)
        x, w = x.astype(dtype), w.astype(dtype)
        ref = _oracle(geom, x, w)
        for algo in _algos(geom, x, w):
            impl = f"lax:{algo}"
            y, vjp = jax.vjp(functools.partial(_run, geom, impl, precision=None), jnp.asarray(x), jnp.asarray(w))
            assert y.dtype == jnp.dtype(dtype), impl
            assert_close(y, ref, dtype, what=f"{impl} {dtype}")
            dx, dw = vjp(jnp.ones_like(y))
            assert dx.dtype == dw.dtype == jnp.dtype(dtype), impl


#: (operand dtype, preferred_element_type): integer results exact (int8 wraps, uint8 too),
#: integer operands with a floating result, complex; each accumulates in its own type
KINDS = [("int8", "int32"), ("int8", None), ("uint8", None), ("int16", "float32"), ("complex64", None)]


@pytest.mark.parametrize("dtype,pet", KINDS, ids=[f"{d}->{p or d}" for d, p in KINDS])
def test_integer_and_complex_kinds(dtype, pet):
    """Every algorithm on the engine's every code path (transposed, grouped, dilated; depthwise
    with a multiplier for ``depthwise``) equals lax's result: exactly for integer results,
    values large enough that int8 and uint8 sums wrap; complex also in its VJP (no conjugation)."""
    rng = np.random.default_rng(7)
    for geom in (GEOMS[7], GEOMS[4]):
        x, w = _inputs(geom)
        if dtype.startswith("complex"):
            x, w = (x + 1j * rng.normal(size=x.shape)).astype(dtype), (w - 1j * rng.normal(size=w.shape)).astype(dtype)
        else:
            x, w = (np.round(x * 40) % 120).astype(dtype), (np.round(w * 40) % 120).astype(dtype)
        _, (_, _, g), _, s, d, l, pad = geom
        kw = dict(window_strides=s, padding=pad, lhs_dilation=l, rhs_dilation=d, dimension_numbers=DN,
                  feature_group_count=g, preferred_element_type=pet)
        want, pull_ref = jax.vjp(functools.partial(lax.conv_general_dilated, **kw), x, w)
        for algo in _algos(geom, x, w):
            if geom is GEOMS[4] and algo != "depthwise":
                continue  # GEOMS[7] ran the others
            y, pull = jax.vjp(functools.partial(jconv.conv_general_dilated, impl=f"lax:{algo}", **kw), x, w)
            assert y.dtype == want.dtype, algo
            if dtype.startswith("complex"):
                assert_close(y, want, dtype, factor=2, what=algo)
                ct = jnp.asarray(rng.normal(size=y.shape) + 1j * rng.normal(size=y.shape), y.dtype)
                for got, ref in zip(pull(ct), pull_ref(ct)):
                    assert_close(got, ref, dtype, factor=4, what=f"{algo} vjp")
            else:
                np.testing.assert_array_equal(np.asarray(y), np.asarray(want), err_msg=algo)


def test_bias_and_layouts_through_conv2d():
    """The algorithms behind conv2d's own arguments (NCHW, bias, padding modes) and their db."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, 6, 7, 7)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(6, 2, 3, 3)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(6,)), jnp.float32)
    kw = dict(stride=2, padding=1, groups=3, layout="NCHW", padding_mode="reflect")

    def f(impl, *a):
        return jnp.sum(jconv.conv2d(*a, impl=impl, precision="highest", **kw) ** 2)

    ref = jax.grad(functools.partial(f, "xla"), argnums=(0, 1, 2))(x, w, b)
    for algo in ALGORITHMS:
        if algo == "depthwise":
            continue
        got = jax.grad(functools.partial(f, f"lax:{algo}"), argnums=(0, 1, 2))(x, w, b)
        for name, g, r in zip(("dx", "dw", "db"), got, ref):
            assert_close(g, r, np.float32, factor=2, what=f"{algo} {name}")


def test_im2col_is_chunked(monkeypatch):
    """With a small blow-up budget the patch matrix is built in row chunks, same result."""
    geom = GEOMS[0]
    x, w = _inputs(geom, hw=(12, 9))
    ref = _xla(geom, jnp.asarray(x), jnp.asarray(w))
    calls = []
    orig = contractions.PHASE_FNS["im2col"]

    def spy(xp, wt, phase, spec, target):
        out = orig(xp, wt, phase, spec, target)
        calls.append(out)
        return out

    monkeypatch.setattr(contractions, "LIMITS", dataclasses.replace(contractions.LIMITS, im2col_max_blowup=1))
    monkeypatch.setitem(contractions.PHASE_FNS, "im2col", spy)
    y = contractions.forward(jnp.asarray(x), jnp.asarray(w), _spec(geom, x, w), "im2col")
    assert calls
    assert_close(y, ref, np.float32)
    # several chunks, walked in a scan (one chunk of patches alive at a time)
    jaxpr = jax.make_jaxpr(lambda a, b: contractions.forward(a, b, _spec(geom, x, w), "im2col"))(x, w)
    assert "scan" in str(jaxpr)


def test_transposed_conv_multiplies_no_inserted_zero():
    """Phases: the input-dilated conv does the FLOPs of the undilated input only."""
    geom = GEOMS[6]
    x, w = _inputs(geom, hw=(8, 8), batch=1)
    spec = _spec(geom, x, w)
    flops = jax.jit(lambda a, b: contractions.forward(a, b, spec, "taps")).lower(x, w).compile().cost_analysis()
    flops = flops[0] if isinstance(flops, list) else flops
    ho, wo = _spec(geom, x, w).out_size
    dense_flops = 2 * ho * wo * 3 * 3 * 3 * 4  # what a conv over the dilated input would do
    # every real input pixel meets each of the 9 taps at most once
    assert flops["flops"] <= 2 * 8 * 8 * 9 * 3 * 4 * 1.1
    assert flops["flops"] < 0.4 * dense_flops


def test_mac_refuses_huge_unrolls():
    spec = parse_conv2d((1, 8, 8, 512), "float32", (3, 3, 512, 8), "float32")
    assert not supports("mac", spec)
    with pytest.raises(ValueError, match="impl"):
        jconv.conv2d(jnp.ones((1, 8, 8, 512)), jnp.ones((3, 3, 512, 8)), impl="lax:mac")


# ---- the selection rules (docs/performance.md, "The auto rules") ----
# these are the lax engine's rules: what auto plans without the oneDNN plugin (with it, its own
# rule goes first: tests/test_backend_onednn.py)

# (the lax_rules fixture: tests/conftest.py)


def _plan(name, batch=4, platform="cpu"):
    spec = CASES[name].spec(batch).execute_spec()
    return select.plan(spec, "auto", platform=platform)


@pytest.mark.parametrize("name, algorithm", [
    ("mobilenetv2_dw3x3_s1", "depthwise"),
    ("convnext_dw7x7", "depthwise"),
    ("resnext_g32_3x3", "mac"),
    ("unet_up_transposed", "xla_fwd"),
    ("resnet50_s2_3x3", "xla_fwd"),      # dense, 56x56 output
    ("vgg16_conv4_2", "xla_fwd"),        # dense, 28x28 output
    ("resnet50_stem_7x7s2", "xla_fwd"),  # dense, 112x112 output
    ("resnet50_s4_3x3", "xla"),          # dense, 14x14 output
    ("deeplab_3x3_d2", "xla"),           # dilated kernel
    ("resnet50_s2_1x1_expand", "taps"),
    ("mobilenetv2_pw_1x1", "taps"),
])
def test_auto_rules_on_cpu(name, algorithm, lax_rules):
    p = _plan(name)
    assert p.algorithm == algorithm, p
    assert p.reason.startswith("auto")


def test_auto_small_output_runs_xla_fwd_only_with_many_positions_and_few_channels(lax_rules):
    """Rule 7: N*Ho*Wo >= XLA_FWD_MIN_POSITIONS and <= XLA_FWD_MAX_CHANNELS channels."""
    for name, batch, algorithm in [("mnist_conv2", 8, "xla"),          # 968 positions
                                   ("mnist_conv2", 32, "xla"),         # 3,872
                                   ("mnist_conv2", 128, "xla_fwd"),    # 15,488, 32 -> 64 channels
                                   ("mnist_conv1", 128, "xla"),        # 86,528 but C_in = 1
                                   ("resnet50_s4_3x3", 32, "xla"),     # 6,272 but 256 channels
                                   ("deeplab_3x3_d2", 64, "xla")]:     # dilated kernel
        p = _plan(name, batch=batch)
        assert p.algorithm == algorithm, (name, batch, p)
    spec = CASES["mnist_conv2"].spec(128).execute_spec()
    assert spec.batch * spec.out_size[0] * spec.out_size[1] >= rules.THRESHOLDS.xla_fwd_min_positions
    assert "positions" in select.plan(spec, "auto", platform="cpu").reason


def test_auto_bfloat16_dense_with_many_channels_runs_taps(lax_rules):
    for name, dtype, algorithm in [("resnet50_s4_3x3", "bfloat16", "taps"), ("resnet50_s4_3x3", "float32", "xla"),
                                   ("vgg16_conv3_2", "bfloat16", "taps"), ("resnet50_s2_3x3", "bfloat16", "xla_fwd"),
                                   ("deeplab_3x3_d2", "bfloat16", "xla")]:
        spec = CASES[name].spec(2, dtype).execute_spec()
        assert select.plan(spec, "auto", platform="cpu").algorithm == algorithm, (name, dtype)


@pytest.mark.parametrize("dtype, pet, expect", [
    ("int8", "int32", {"mobilenetv2_dw3x3_s1": "depthwise", "resnext_g32_3x3": "mac", "resnet50_s2_3x3": "xla",
                       "resnet50_s2_1x1_expand": "xla", "unet_up_transposed": "xla"}),
    ("complex64", None, {"mobilenetv2_dw3x3_s1": "depthwise", "resnext_g32_3x3": "mac", "resnet50_s2_3x3": "xla",
                         "resnet50_s2_1x1_expand": "taps", "unet_up_transposed": "xla"}),
    ("bool", None, {"mobilenetv2_dw3x3_s1": "xla", "resnext_g32_3x3": "xla", "resnet50_s2_1x1_expand": "xla"}),
])
def test_auto_for_integer_complex_and_boolean_convolutions(dtype, pet, expect, lax_rules):
    """The rules for the other dtype kinds (docs/conformance.md, benchmarks/dtype_auto.py): the
    engine's depthwise and grouped multiply-accumulate, complex 1x1 as taps, the rest XLA's."""
    for name, algorithm in expect.items():
        spec = dataclasses.replace(CASES[name].spec(2, dtype), out_dtype=pet or dtype).execute_spec()
        assert select.plan(spec, "auto", platform="cpu").algorithm == algorithm, (name, dtype)


def test_auto_on_accelerators_is_xla_with_a_reason():
    for platform in ("gpu", "tpu"):
        p = _plan("mobilenetv2_dw3x3_s1", platform=platform)
        assert p.impl == "xla" and platform in p.reason


def test_explicit_impls_are_honoured_everywhere():
    spec = CASES["resnet50_s2_3x3"].spec(2).execute_spec()
    for algo in ("im2col", "taps", "mac"):
        assert select.plan(spec, f"lax:{algo}").algorithm == algo
    assert select.plan(spec, "xla").impl == "xla"
    assert select.plan(spec, "lax").impl == "lax"  # "lax" never runs XLA's conv


@pytest.mark.parametrize("geom", [GEOMS[i] for i in (3, 4, 8, 2)], ids=_ids)
def test_mac_weight_grad_in_row_chunks(geom, monkeypatch):
    """With a tiny chunk budget mac's dw runs as a scan over single rows: same gradients."""
    monkeypatch.setattr(lax_dw, "CHUNKS", dataclasses.replace(lax_dw.CHUNKS, mac_bytes=1))
    x, w = _inputs(geom, hw=(9, 7))
    y_ref, vjp_ref = jax.vjp(functools.partial(_xla, geom), jnp.asarray(x), jnp.asarray(w))
    ct = jnp.asarray(np.random.default_rng(2).normal(size=y_ref.shape), jnp.float32)
    y, vjp = jax.vjp(functools.partial(_run, geom, "lax:mac"), jnp.asarray(x), jnp.asarray(w))
    dw_fn = ALGORITHMS["mac"].weight_grad  # what the primitive lowers for dw
    assert "scan" in str(jax.make_jaxpr(lambda a, c: dw_fn(a, c, _spec(geom, x, w)))(x, ct))
    for g, r, name in zip(vjp(ct), vjp_ref(ct), ("dx", "dw")):
        assert_close(g, r, np.float32, factor=2, what=name)
    with jax.enable_x64(True):
        x64, w64 = _inputs(geom, dtype=np.float64, seed=6, hw=(6, 5), batch=1)
        f = functools.partial(_run, geom, "lax:mac", precision=None)
        check_grads(f, (jnp.asarray(x64), jnp.asarray(w64)), order=2, modes=("rev",), atol=1e-5, rtol=1e-5)


_DENSE_DILATED_S1 = ("dense_d21_asym_s1", (3, 4, 1), (3, 2), (1, 1), (2, 1), (1, 1), ((2, 0), (1, 2)))


@pytest.mark.parametrize("geom", share([GEOMS[i] for i in (0, 1, 6, 9)] + [_DENSE_DILATED_S1], every=2), ids=_ids)
@pytest.mark.parametrize("algorithm", ["xla_fwd", "taps"])
@pytest.mark.parametrize("kmajor", [True, False], ids=["kmajor", "row_major"])
def test_dense_weight_grad_in_row_chunks(geom, algorithm, kmajor, monkeypatch):
    """With tiny chunks the dense dw runs as a scan over single rows: same gradients, with
    the K-major patches (stride 1) and with the row-major ones (every stride)."""
    monkeypatch.setattr(lax_dw, "CHUNKS", dataclasses.replace(
        lax_dw.CHUNKS, kmajor_bytes=1 if kmajor else 0, kmajor_min_cols=1, im2col_bytes=1, im2col_min_k_per_cout=0))
    x, w = _inputs(geom, hw=(9, 7))
    y_ref, vjp_ref = jax.vjp(functools.partial(_xla, geom), jnp.asarray(x), jnp.asarray(w))
    ct = jnp.asarray(np.random.default_rng(2).normal(size=y_ref.shape), jnp.float32)
    y, vjp = jax.vjp(functools.partial(_run, geom, f"lax:{algorithm}"), jnp.asarray(x), jnp.asarray(w))
    dw_fn = ALGORITHMS[algorithm].weight_grad  # what the primitive lowers for dw
    assert "scan" in str(jax.make_jaxpr(lambda a, c: dw_fn(a, c, _spec(geom, x, w)))(x, ct))
    for g, r, name in zip(vjp(ct), vjp_ref(ct), ("dx", "dw")):
        assert_close(g, r, np.float32, factor=2, what=name)
    with jax.enable_x64(True):
        x64, w64 = _inputs(geom, dtype=np.float64, seed=6, hw=(6, 5), batch=1)
        f = functools.partial(_run, geom, f"lax:{algorithm}", precision=None)
        check_grads(f, (jnp.asarray(x64), jnp.asarray(w64)), order=2, modes=("rev",), atol=1e-5, rtol=1e-5)


def test_dense_weight_grad_kmajor_only_at_stride_1_and_wide_outputs(monkeypatch):
    """The K-major patches are used exactly where they were measured faster: stride 1 and
    outputs at least CHUNKS.kmajor_min_cols wide (the default limits, not monkeypatched)."""
    seen = []
    scan = lax_taps.scan_row_chunks

    def spy(*a, channels_first=False, **k):
        seen.append(channels_first)
        return scan(*a, channels_first=channels_first, **k)

    monkeypatch.setattr(lax_taps, "scan_row_chunks", spy)
    x = jnp.ones((1, 32, 32, 2))
    for stride, width, kmajor in [(1, 32, True), (2, 32, False), (1, 16, False)]:
        jax.clear_caches()  # conv2d's jit would reuse a trace made before the spy
        seen.clear()
        w = jnp.ones((3, 3, 2, 4))
        xx = x[:, :, :width]
        jax.grad(lambda w: jconv.conv2d(xx, w, stride=stride, padding=1, impl="lax:xla_fwd").sum())(w)
        assert seen == [kmajor], (stride, width, seen)


def test_nchw_callers_get_channels_first_mac(lax_rules):
    for name in ("mobilenetv2_dw3x3_s1_nchw", "resnext_g32_3x3_nchw"):
        spec = CASES[name].spec(2)
        assert jconv.conv.plan_for(spec, "auto").algorithm == "mac_cf"
        assert jconv.conv.plan_for(spec, "lax").algorithm == "mac_cf"
    assert jconv.conv.plan_for(CASES["resnext_g32_3x3"].spec(2), "auto").algorithm == "mac"
    # and through the public API, values and gradients as XLA's
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(2, 6, 9, 8)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(6, 2, 3, 3)), jnp.float32)
    kw = dict(stride=(2, 1), padding=1, groups=3, layout="NCHW")

    def f(impl, x, w):
        return jnp.sum(jnp.sin(jconv.conv2d(x, w, impl=impl, precision="highest", **kw)))

    assert_close(f("auto", x, w), f("xla", x, w), np.float32)
    for g, r in zip(jax.grad(functools.partial(f, "auto"), argnums=(0, 1))(x, w),
                    jax.grad(functools.partial(f, "xla"), argnums=(0, 1))(x, w)):
        assert_close(g, r, np.float32, factor=2)


@pytest.mark.parametrize("geom", GEOMS, ids=_ids)
def test_taps_for_a_cuda_target_computes_the_same(geom):
    """For a CUDA target the tap GEMMs take materialised (rows, C) windows (XLA's GPU compiler
    finds no Triton tiling for a window sliced from an NCHW caller's transposed input;
    tests/aot_checks.py compiles them): the same values, forward and input gradient."""
    from jconv import targets

    x, w = _inputs(geom)
    spec = _spec(geom, x, w)
    fwd, input_grad = ALGORITHMS["taps"].forward, ALGORITHMS["taps"].input_grad
    l4 = targets.get("l4")
    y = fwd(x, w, spec)
    assert_close(fwd(x, w, spec, l4), y, np.float32)
    dy = jnp.asarray(np.random.default_rng(3).normal(size=y.shape), jnp.float32)
    assert_close(input_grad(dy, w, spec, l4), input_grad(dy, w, spec), np.float32)
    text = str(jax.make_jaxpr(lambda a, b: fwd(a, b, spec, l4))(x, w))
    assert ("optimization_barrier" in text) == (spec.groups == 1)  # grouped GEMMs are batched dots
