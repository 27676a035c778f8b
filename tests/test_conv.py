"""conv2d on a grid of argument combinations, against XLA (HIGHEST) and the float64 oracle."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jconv
from jconv.geometry import parse_conv2d
from jconv.impls.lax import ALGORITHMS
from jconv.testing import assert_close
from oracle import conv2d_ref
from grids import share

LAYOUTS = ["NHWC", "NCHW"]
# (C_in, C_out, groups): dense, grouped, depthwise, depthwise with multiplier 2
GROUPINGS = [(3, 4, 1), (4, 6, 2), (4, 4, 4), (3, 6, 3)]
PADDINGS = ["VALID", "same", 1, (2, 0), ((1, 0), (0, 2))]
MODES = ["zeros", "reflect", "replicate", "circular"]
STRIDES = [1, 2, (1, 2)]
DILATIONS = [1, (2, 1), 2]


def _grid():
    """Every layout x grouping x padding form; the other factors cycle so each value of each
    appears many times, in varied company."""
    cases = []
    for i, (layout, grouping, padding) in enumerate(itertools.product(LAYOUTS, GROUPINGS, PADDINGS)):
        cases.append(dict(
            layout=layout, grouping=grouping, padding=padding,
            padding_mode=MODES[i % 4], stride=STRIDES[(i // 2) % 3], dilation=DILATIONS[(i // 3) % 3],
            bias=i % 2 == 0, flip=(i // 4) % 2 == 1, unbatched=i % 7 == 3,
        ))
    return cases


GRID = _grid()


def _ids(c):
    ci, co, g = c["grouping"]
    return (f"{c['layout']}-g{g}c{ci}to{co}-p{c['padding']}-{c['padding_mode']}-s{c['stride']}-d{c['dilation']}"
            f"{'-b' if c['bias'] else ''}{'-flip' if c['flip'] else ''}{'-unb' if c['unbatched'] else ''}").replace(" ", "")


def make_inputs(c, dtype=np.float32, seed=0, hw=(9, 8), batch=2):
    rng = np.random.default_rng(seed)
    ci, co, g = c["grouping"]
    kh, kw = 3, 2
    h, w = hw
    x_shape = (batch, h, w, ci) if c["layout"] == "NHWC" else (batch, ci, h, w)
    w_shape = (kh, kw, ci // g, co) if c["layout"] == "NHWC" else (co, ci // g, kh, kw)
    x = rng.normal(size=x_shape).astype(dtype)
    if c["unbatched"]:
        x = x[0]
    k = rng.normal(size=w_shape).astype(dtype)
    b = rng.normal(size=(co,)).astype(dtype) if c["bias"] else None
    return x, k, b


def kwargs_of(c):
    return dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"], groups=c["grouping"][2],
                layout=c["layout"], padding_mode=c["padding_mode"], flip_kernel=c["flip"])


def oracle_of(c, x, k, b):
    spec = parse_conv2d(x.shape, x.dtype, k.shape, k.dtype, None if b is None else b.shape,
                        None if b is None else b.dtype, **kwargs_of(c))
    return conv2d_ref(x, k, b, stride=spec.stride, padding=spec.padding, dilation=spec.dilation,
                      groups=spec.groups, layout=spec.layout, padding_mode=spec.padding_mode,
                      flip_kernel=spec.flip_kernel)


def xla_of(c, x, k, b):
    """lax.conv_general_dilated at HIGHEST, with the padding mode / flip done by hand."""
    spec = parse_conv2d(x.shape, x.dtype, k.shape, k.dtype, **kwargs_of(c))
    xx, kk = jnp.asarray(x), jnp.asarray(k)
    if spec.layout == "NCHW":
        xx = jnp.moveaxis(xx, -3, -1)
        kk = jnp.transpose(kk, (2, 3, 1, 0))
    if not spec.batched:
        xx = xx[None]
    if spec.flip_kernel:
        kk = kk[::-1, ::-1]
    pads = spec.padding
    if spec.padding_mode != "zeros":
        mode = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[spec.padding_mode]
        xx = jnp.pad(xx, ((0, 0), *pads, (0, 0)), mode=mode)
        pads = ((0, 0), (0, 0))
    y = lax.conv_general_dilated(xx, kk, spec.stride, pads, rhs_dilation=spec.dilation,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                 feature_group_count=spec.groups, precision=lax.Precision.HIGHEST)
    if b is not None:
        y = y + jnp.asarray(b).reshape(1, 1, 1, -1)
    if spec.layout == "NCHW":
        y = jnp.moveaxis(y, -1, -3)
    return y if spec.batched else y[0]


IMPLS = ["auto", "xla", "lax"] + [f"lax:{a}" for a in ALGORITHMS]


@pytest.mark.parametrize("c", share(GRID, every=3), ids=_ids)
def test_grid_matches_oracle_and_xla(c):
    x, k, b = make_inputs(c)
    ref = oracle_of(c, x, k, b)
    xla_ref = np.asarray(xla_of(c, x, k, b))
    assert_close(xla_ref, ref, np.float32, what="lax.conv_general_dilated vs oracle")
    spec = parse_conv2d(x.shape, x.dtype, k.shape, k.dtype, **kwargs_of(c))
    for impl in IMPLS:
        if impl == "lax:depthwise" and not spec.is_depthwise:
            continue
        y = jconv.conv2d(jnp.asarray(x), jnp.asarray(k), None if b is None else jnp.asarray(b), impl=impl, **kwargs_of(c))
        assert y.shape == ref.shape == spec.out_shape, impl
        assert y.dtype == jnp.float32
        assert_close(y, ref, np.float32, what=f"{impl} vs oracle")
        assert_close(y, xla_ref, np.float32, what=f"{impl} vs XLA")


DTYPE_CASES = [GRID[i] for i in (0, 7, 13, 22, 31)]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
@pytest.mark.parametrize("c", DTYPE_CASES, ids=_ids)
def test_dtypes(c, dtype):
    if dtype == "float64" and jax.default_backend() == "tpu":
        pytest.skip("TPUs do not compute float64")
    with jax.enable_x64(dtype == "float64"):
        np_dtype = jnp.dtype(dtype)
        x, k, b = make_inputs(c, dtype=np.float32, seed=1)
        x, k = x.astype(np_dtype), k.astype(np_dtype)
        b = None if b is None else b.astype(np_dtype)
        ref = oracle_of(c, x, k, b)  # float64 from the same rounded inputs
        for impl in ("xla", "lax"):
            y = jconv.conv2d(jnp.asarray(x), jnp.asarray(k), None if b is None else jnp.asarray(b), impl=impl, **kwargs_of(c))
            assert y.dtype == np_dtype, impl
            assert_close(y, ref, dtype, what=f"{impl} {dtype}")


def test_preferred_element_type_gives_f32_from_bf16():
    c = GRID[3]
    x, k, b = make_inputs(c, seed=2)
    xb, kb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(k, jnp.bfloat16)
    bb = None if b is None else jnp.asarray(b, jnp.bfloat16)
    ref = oracle_of(c, np.asarray(xb, np.float32), np.asarray(kb, np.float32), None if b is None else np.asarray(bb, np.float32))
    for impl in ("xla", "lax"):
        y = jconv.conv2d(xb, kb, bb, impl=impl, preferred_element_type=jnp.float32, **kwargs_of(c))
        assert y.dtype == jnp.float32
        # accumulated and returned in f32: much closer than a bf16 result could be
        assert_close(y, ref, np.float32, factor=50, what=impl)


def test_seed_worked_example_first_output_is_7():
    x = jnp.array([[1, 2, 3, 0, 1], [0, 1, 2, 3, 0], [1, 0, 1, 2, 1], [2, 1, 0, 1, 0], [0, 1, 2, 0, 1]], jnp.float32)
    k = jnp.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], jnp.float32)
    for impl in ("xla", "lax"):
        y = jconv.conv2d(x[None, :, :, None], k[:, :, None, None], impl=impl)
        assert y.shape == (1, 3, 3, 1)
        assert float(y[0, 0, 0, 0]) == 7.0
        np.testing.assert_array_equal(np.asarray(y[0, :, :, 0]), [[7, 6, 9], [4, 7, 4], [5, 3, 6]])


def test_seed_mnist_shapes():
    x = jnp.zeros((32, 28, 28, 1))
    y = jconv.conv2d(x, jnp.zeros((3, 3, 1, 32)))
    assert y.shape == (32, 26, 26, 32)
    y2 = jconv.conv2d(jnp.zeros((32, 13, 13, 32)), jnp.zeros((3, 3, 32, 64)))
    assert y2.shape == (32, 11, 11, 64)
    # PyTorch layout: (32, 1, 28, 28) with weight (32, 1, 3, 3)
    assert jconv.conv2d(jnp.zeros((32, 1, 28, 28)), jnp.zeros((32, 1, 3, 3)), layout="NCHW").shape == (32, 32, 26, 26)


class TestEdgeCases:
    def test_batch_of_zero(self):
        for impl in ("xla", "lax"):
            y = jconv.conv2d(jnp.zeros((0, 5, 5, 2)), jnp.ones((3, 3, 2, 4)), jnp.ones(4), impl=impl, padding="SAME")
            assert y.shape == (0, 5, 5, 4)

    def test_one_by_one_same(self):
        rng = np.random.default_rng(3)
        x, k = rng.normal(size=(2, 5, 6, 3)).astype(np.float32), rng.normal(size=(1, 1, 3, 4)).astype(np.float32)
        for impl in ("xla", "lax"):
            y = jconv.conv2d(jnp.asarray(x), jnp.asarray(k), padding="SAME", impl=impl)
            assert_close(y, np.einsum("nhwc,co->nhwo", x, k[0, 0]), np.float32)

    def test_kernel_equal_to_input_is_a_dot_product(self):
        rng = np.random.default_rng(4)
        x, k = rng.normal(size=(3, 4, 5, 2)).astype(np.float32), rng.normal(size=(4, 5, 2, 3)).astype(np.float32)
        for impl in ("xla", "lax"):
            y = jconv.conv2d(jnp.asarray(x), jnp.asarray(k), impl=impl)
            assert y.shape == (3, 1, 1, 3)
            assert_close(y[:, 0, 0], np.einsum("nhwc,hwco->no", x, k), np.float32)

    @pytest.mark.parametrize("impl", ["xla", "lax", "lax:im2col", "lax:taps"])
    def test_nan_propagates_only_where_it_touches(self, impl):
        x = np.ones((1, 7, 7, 1), np.float32)
        x[0, 0, 0, 0] = np.nan
        y = np.asarray(jconv.conv2d(jnp.asarray(x), jnp.ones((3, 3, 1, 1)), impl=impl))
        nan = np.isnan(y[0, :, :, 0])
        expected = np.zeros((5, 5), bool)
        expected[0, 0] = True  # only the window that covers pixel (0, 0)
        np.testing.assert_array_equal(nan, expected)

    def test_nan_depthwise(self):
        x = np.ones((1, 6, 6, 2), np.float32)
        x[0, 5, 5, 1] = np.nan
        y = np.asarray(jconv.conv2d(jnp.asarray(x), jnp.ones((2, 2, 1, 2)), groups=2, impl="lax:depthwise"))
        assert not np.isnan(y[..., 0]).any()
        assert np.isnan(y[0, :, :, 1]).sum() == 1 and np.isnan(y[0, 4, 4, 1])

    def test_accepts_numpy_arrays(self):
        y = jconv.conv2d(np.ones((1, 4, 4, 1), np.float32), np.ones((2, 2, 1, 1), np.float32))
        assert float(y[0, 0, 0, 0]) == 4.0


def test_conv_general_dilated_matches_lax():
    rng = np.random.default_rng(5)
    cases = [
        # (lhs shape, rhs shape, strides, padding, lhs_dil, rhs_dil, dn, groups)
        ((2, 4, 9, 8), (6, 2, 3, 3), (1, 2), ((1, -1), (2, 0)), (2, 1), (1, 1), None, 2),
        ((2, 9, 8, 4), (3, 3, 4, 5), (2, 2), "SAME", None, (2, 1), ("NHWC", "HWIO", "NHWC"), 1),
        ((2, 9, 8, 4), (5, 4, 3, 3), (1, 1), ((2, 2), (2, 2)), (2, 2), None, ("NHWC", "OIHW", "NCHW"), 1),
        ((2, 4, 7, 7), (4, 1, 3, 3), (1, 1), ((0, 0), (0, 0)), (3, 3), (1, 2), ("NCHW", "OIHW", "NCHW"), 4),
    ]
    for lhs_s, rhs_s, st, pad, ld, rd, dn, g in cases:
        lhs = jnp.asarray(rng.normal(size=lhs_s), jnp.float32)
        rhs = jnp.asarray(rng.normal(size=rhs_s), jnp.float32)
        ref = lax.conv_general_dilated(lhs, rhs, st, pad, ld, rd, dn, g, precision=lax.Precision.HIGHEST)
        for impl in ("xla", "lax", "auto"):
            y = jconv.conv_general_dilated(lhs, rhs, st, pad, ld, rd, dn, g, impl=impl)
            assert y.shape == ref.shape, (impl, lhs_s)
            assert_close(y, ref, np.float32, what=f"{impl} {lhs_s}")


def test_conv_general_dilated_unsupported():
    """0-D, 1-D and 3-D convolutions (JAX's testConvGeneralDilated0D, testConvTranspose1D, ...)
    are not jconv's: a clear NotImplementedError."""
    for lhs, rhs, strides in (((2, 3), (4, 3), ()), ((2, 3, 5), (4, 3, 3), (1,)),
                              ((1, 2, 4, 4, 4), (3, 2, 2, 2, 2), (1, 1, 1))):
        with pytest.raises(NotImplementedError, match="only 2-D convolutions"):
            jconv.conv_general_dilated(jnp.ones(lhs), jnp.ones(rhs), strides, "VALID")


def test_batch_groups_are_feature_groups_of_the_folded_batch():
    """batch_group_count (lax's weight gradient of a grouped conv): batch group g, the g-th
    slice of the batch, meets the g-th slice of the output features; forward and gradients
    equal lax's for every impl."""
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.normal(size=(6, 4, 7, 6)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(6, 4, 3, 2)), jnp.float32)
    kw = dict(window_strides=(2, 1), padding=((1, 0), (0, 1)), rhs_dilation=(1, 2), batch_group_count=3,
              precision="highest")
    ref, pull_ref = jax.vjp(functools.partial(lax.conv_general_dilated, **kw), x, k)
    ct = jnp.asarray(rng.normal(size=ref.shape), jnp.float32)
    for impl in ("xla", "lax", "auto"):
        y, pull = jax.vjp(functools.partial(jconv.conv_general_dilated, impl=impl, **kw), x, k)
        assert y.shape == ref.shape == (2, 6, 3, 5)
        assert_close(y, ref, np.float32, what=impl)
        for g, r in zip(pull(ct), pull_ref(ct)):
            assert_close(g, r, np.float32, factor=2, what=f"{impl} gradient")


def test_plan_is_recorded_and_explicit_impl_is_honoured():
    s = parse_conv2d((1, 8, 8, 4), "float32", (3, 3, 1, 4), "float32", groups=4)
    assert jconv.plan_for(s, "lax:im2col").algorithm == "im2col"
    assert jconv.plan_for(s, "xla").impl == "xla"
    assert jconv.plan_for(s, "lax").impl == "lax"
    with pytest.raises(ValueError, match="impl"):
        jconv.conv2d(jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 2, 4)), groups=2, impl="lax:depthwise")
