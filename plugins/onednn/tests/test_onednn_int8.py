"""Integer convolutions of the jconv_onednn plugin: exactly XLA's int32 results.

int8 x int8 against ``lax.conv_general_dilated(x, w, ..., preferred_element_type=jnp.int32)``;
uint8 x int8 (which lax does not mix) against the same with both operands in int32.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import itertools
import threading

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jax import lax

from onednn_cases import CASES, DN

jo = pytest.importorskip("jconv_onednn")

pytestmark = pytest.mark.skipif(not jo.available(),
                                reason=f"jconv_onednn unavailable: {jo.unavailable_reason()}")
needs_int8 = pytest.mark.skipif(not (jo.available() and jo.int8_supported()),
                                reason="this CPU has no VNNI/AMX: int8 convolutions are refused")

RANGE = {"int8": (-128, 127), "uint8": (0, 255)}

# Accumulations beyond 2^24 (the largest odd integer float32 holds exactly), where a
# float32 pass inside oneDNN would round; name: case as in onednn_cases.CASES
LARGE = {
    "dense3x3_c2048": (1, 6, 6, 2048, 16, (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), 1),
    "grouped_g4_c2048": (1, 6, 5, 2048, 32, (3, 3), (1, 1), (1, 1), ((1, 1), (0, 2)), 4),
    "1x1_c4096_stride2": (2, 6, 6, 4096, 16, (1, 1), (2, 2), (1, 1), ((0, 0), (0, 0)), 1),
    "stride_1x2_dilation_2x1_c1000": (1, 9, 8, 1000, 24, (3, 3), (1, 2), (2, 1),
                                      ((1, 2), (0, 1)), 1),
    "stem7x7_c64": (1, 20, 20, 64, 16, (7, 7), (2, 2), (1, 1), ((3, 3), (3, 3)), 1),
    "depthwise_m2_25x25": (1, 30, 30, 16, 32, (25, 25), (1, 1), (1, 1), ((12, 12), (12, 12)), 16),
}


def _geo(case):
    *_, stride, dil, pad, groups = case
    return dict(stride=stride, padding=pad, dilation=dil, groups=groups)


def _shapes(case):
    n, h, w, ci, co, (kh, kw), *_, groups = case
    return (n, h, w, ci), (kh, kw, ci // groups, co)


def _ref(x, w, geo):
    if x.dtype != w.dtype:  # uint8 x int8: lax takes one dtype
        x, w = x.astype(jnp.int32), w.astype(jnp.int32)
    return lax.conv_general_dilated(x, w, geo["stride"], geo["padding"],
                                    rhs_dilation=geo["dilation"], dimension_numbers=DN,
                                    feature_group_count=geo["groups"],
                                    preferred_element_type=jnp.int32)


def _plugin(x, w, geo):
    f = jax.jit(lambda x, w: jo.conv_forward(x, w, preferred_element_type=jnp.int32, **geo))
    return f(x, w)


def _assert_exact(got, ref):
    assert got.dtype == jnp.int32 and got.shape == ref.shape, (got.dtype, got.shape, ref.shape)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))


def _ints(rng, shape, lo, hi, dtype):
    return jnp.asarray(rng.integers(lo, hi, shape, endpoint=True), dtype)


@needs_int8
@pytest.mark.parametrize("xdt", list(RANGE))
@pytest.mark.parametrize("name", list(CASES))
def test_random_full_range(name, xdt):
    rng = np.random.default_rng(7)
    xs, ws = _shapes(CASES[name])
    x = _ints(rng, xs, *RANGE[xdt], xdt)
    w = _ints(rng, ws, -128, 127, "int8")
    geo = _geo(CASES[name])
    _assert_exact(_plugin(x, w, geo), _ref(x, w, geo))


@needs_int8
@pytest.mark.parametrize("xdt", list(RANGE))
@pytest.mark.parametrize("name", ["dense3x3", "depthwise_m2", "grouped", "asym_padding",
                                  "stride_2x1_dilation_1x2", "padding_beyond_kernel", "1x1"])
def test_extreme_values(name, xdt):
    """Constant extremes (every pair of -128/127 or 0/255 with -128/127), and a random mix."""
    lo, hi = RANGE[xdt]
    xs, ws = _shapes(CASES[name])
    geo = _geo(CASES[name])
    for xv, wv in itertools.product((lo, hi), (-128, 127)):
        x, w = jnp.full(xs, xv, xdt), jnp.full(ws, wv, jnp.int8)
        _assert_exact(_plugin(x, w, geo), _ref(x, w, geo))
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.choice(np.array([lo, hi]), xs), xdt)
    w = jnp.asarray(rng.choice(np.array([-128, 127]), ws), jnp.int8)
    _assert_exact(_plugin(x, w, geo), _ref(x, w, geo))


@needs_int8
@pytest.mark.parametrize("xdt", list(RANGE))
@pytest.mark.parametrize("name", list(LARGE))
def test_large_accumulations_are_exact(name, xdt):
    """Sums of up to 2.9e8: oneDNN's own int8-source compensation (float32) and its gemm/jit
    int8 kernels would be off by up to 32 here."""
    rng = np.random.default_rng(11)
    xs, ws = _shapes(LARGE[name])
    top = RANGE[xdt][1]
    x = _ints(rng, xs, top - 7, top, xdt)
    w = _ints(rng, ws, -128, -121, "int8")
    geo = _geo(LARGE[name])
    ref = _ref(x, w, geo)
    r = np.asarray(ref, np.int64)
    if not (name.startswith("depthwise") and xdt == "int8"):  # its sums stay below 2^24
        assert np.any(r != r.astype(np.float32).astype(np.int64)), "the test needs sums > 2^24"
    _assert_exact(_plugin(x, w, geo), ref)


def _widened(case):
    """The case with enough input channels per group for k = KH*KW*C_in/groups > 514, where
    int8 sources take the plugin's shifted path (int8_source.h) instead of oneDNN's own."""
    n, h, w, ci, co, (kh, kw), stride, dil, pad, groups = case
    cig = -(-515 // (kh * kw))
    return (n, h, w, cig * groups, co, (kh, kw), stride, dil, pad, groups)


@needs_int8
@pytest.mark.parametrize("name", list(CASES))
def test_shifted_path_geometries(name):
    """Every geometry (padding classes, strides, dilations, groups) on the shifted int8 path."""
    rng = np.random.default_rng(13)
    case = _widened(CASES[name])
    xs, ws = _shapes(case)
    x, w = _ints(rng, xs, -128, 127, "int8"), _ints(rng, ws, -128, 127, "int8")
    geo = _geo(case)
    _assert_exact(_plugin(x, w, geo), _ref(x, w, geo))


@needs_int8
def test_shifted_path_in_several_calls():
    """Images whose int32 output exceeds 1 MiB go through oneDNN one at a time."""
    rng = np.random.default_rng(17)
    case = (3, 40, 30, 60, 240, (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), 1)
    xs, ws = _shapes(case)
    x, w = _ints(rng, xs, -128, 127, "int8"), _ints(rng, ws, -128, 127, "int8")
    geo = _geo(case)
    _assert_exact(_plugin(x, w, geo), _ref(x, w, geo))


@needs_int8
def test_weights_layout_knob_does_not_apply_to_int8():
    """'plain' weights would leave oneDNN only its float-through int8 kernels."""
    rng = np.random.default_rng(5)
    case = LARGE["dense3x3_c2048"]
    xs, ws = _shapes(case)
    x, w = _ints(rng, xs, 120, 127, "int8"), _ints(rng, ws, -128, -121, "int8")
    geo = _geo(case)
    try:
        jo.set_weights_layout("plain")
        text = jo.describe("fwd", xs, ws, dtype="int8", **geo)
        assert "gemm" not in text and "ref" not in text, text
        _assert_exact(_plugin(x, w, geo), _ref(x, w, geo))
    finally:
        jo.set_weights_layout("any")


@needs_int8
def test_degenerate_shapes():
    w = jnp.ones((3, 3, 4, 8), jnp.int8)
    i32 = dict(preferred_element_type=jnp.int32)
    y = jo.conv_forward(jnp.ones((0, 6, 6, 4), jnp.int8), w, padding=1, **i32)
    assert y.shape == (0, 6, 6, 8) and y.dtype == jnp.int32
    y = jo.conv_forward(jnp.ones((2, 4, 4, 4), jnp.uint8), jnp.ones((7, 7, 4, 2), jnp.int8), **i32)
    assert y.shape == (2, 0, 0, 2)
    y = jo.conv_forward(jnp.ones((2, 4, 4, 0), jnp.int8), jnp.ones((3, 3, 0, 3), jnp.int8),
                        padding=1, **i32)
    assert y.shape == (2, 4, 4, 3) and not bool(jnp.any(y))


@needs_int8
def test_vmap_and_threads():
    """vmap (sequential), 1 OpenMP thread, and 4 Python threads at once give the same ints."""
    rng = np.random.default_rng(2)
    geo = _geo(CASES["depthwise_strided_dilated"])
    xs, ws = _shapes(CASES["depthwise_strided_dilated"])
    x = _ints(rng, (3,) + xs, -128, 127, "int8")
    w = _ints(rng, ws, -128, 127, "int8")
    f = jax.jit(jax.vmap(lambda x: jo.conv_forward(x, w, preferred_element_type=jnp.int32, **geo)))
    ys = f(x)
    for i in range(3):
        _assert_exact(ys[i], _ref(x[i], w, geo))
    try:
        jo.set_num_threads(1)
        _assert_exact(f(x), ys)
    finally:
        jo.set_num_threads(None)
    errors = []

    def work():
        try:
            for _ in range(10):
                np.testing.assert_array_equal(np.asarray(f(x)), np.asarray(ys))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_python_errors():
    x8, xu, w8 = jnp.ones((1, 5, 5, 2), jnp.int8), jnp.ones((1, 5, 5, 2), jnp.uint8), jnp.ones(
        (3, 3, 2, 2), jnp.int8)
    i32 = dict(preferred_element_type=jnp.int32)
    with pytest.raises(TypeError, match="w dtype"):
        jo.conv_forward(xu, w8.astype(jnp.uint8), **i32)
    with pytest.raises(TypeError, match="preferred_element_type"):
        jo.conv_forward(x8, w8)
    with pytest.raises(TypeError, match="preferred_element_type"):
        jo.conv_forward(x8, w8, preferred_element_type=jnp.int16)
    with pytest.raises(TypeError, match="no bias"):
        jo.conv_forward(x8, w8, jnp.ones((2,), jnp.int32), **i32)
    with pytest.raises(TypeError, match="unsupported dtype int8"):
        jo.conv_backward_data(jnp.ones((1, 3, 3, 2), jnp.int8), w8, x_shape=x8.shape)
    with pytest.raises(TypeError, match="unsupported dtype int8"):
        jo.conv_backward_weights(x8, jnp.ones((1, 3, 3, 2), jnp.int8), w_shape=w8.shape)
    with pytest.raises(TypeError, match="share one dtype"):
        jo.conv_forward(x8.astype(jnp.float32), w8)
    with pytest.raises(TypeError, match="preferred_element_type"):
        jo.conv_forward(x8.astype(jnp.float32), w8.astype(jnp.float32), **i32)
    with pytest.raises(RuntimeError, match="forward only"):
        jo.describe("bwd_data", x8.shape, w8.shape, dtype="int8")


def test_int8_refused_without_vnni(monkeypatch):
    monkeypatch.setattr(jo.settings, "int8_supported", lambda: False)
    with pytest.raises(TypeError, match="VNNI"):
        jo.conv_forward(jnp.ones((1, 5, 5, 2), jnp.int8), jnp.ones((3, 3, 2, 2), jnp.int8),
                        preferred_element_type=jnp.int32)


def test_native_errors():
    """Bypass the Python checks: the handler refuses bad integer operands cleanly."""
    attrs = dict(stride=np.array([1, 1], np.int64), padding=np.array([0, 0, 0, 0], np.int64),
                 dilation=np.array([1, 1], np.int64), groups=np.int64(1), layout=np.int64(0),
                 activation=np.int64(0))
    x, w = jnp.ones((1, 5, 5, 2), jnp.int8), jnp.ones((3, 3, 2, 2), jnp.int8)

    def call(target, out_dtype, *args):
        f = jax.ffi.ffi_call(jo.TARGETS[target], jax.ShapeDtypeStruct((1, 3, 3, 2), out_dtype),
                             vmap_method="sequential")
        return jax.block_until_ready(f(*args, **attrs))

    with pytest.raises(Exception, match="integer convolutions take x int8 or uint8"):
        call("fwd", jnp.float32, x, w)
    with pytest.raises(Exception, match="integer convolutions take x int8 or uint8"):
        call("fwd", jnp.int32, x.astype(jnp.uint8), w.astype(jnp.uint8))
    with pytest.raises(Exception, match="no bias"):
        call("fwd_bias", jnp.int32, x, w, jnp.ones((2,), jnp.int32))
    with pytest.raises(Exception, match="unsupported dtype int8"):
        f = jax.ffi.ffi_call(jo.TARGETS["bwd_data"], jax.ShapeDtypeStruct(x.shape, jnp.int8),
                             vmap_method="sequential")
        backward = {k: v for k, v in attrs.items() if k != "activation"}  # the forward's only
        jax.block_until_ready(f(jnp.ones((1, 3, 3, 2), jnp.int8), w, **backward))
