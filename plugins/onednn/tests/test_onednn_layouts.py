"""The plugin on NCHW / OIHW arrays, the activation-layout knob, and the ReLU epilogue (float32).

Every geometry of onednn_cases in layout "NCHW" (each activation policy: "auto", which reorders
NCHW to oneDNN's blocked layout and back; "plain", NCHW as it is; "any") and in layout "NHWC"
with the "any" policy (reorders there too): forward with and without bias, backward-data,
backward-weights and the bias gradient against XLA's convolution in the same layout.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jax import lax

from onednn_cases import CASES

jo = pytest.importorskip("jconv_onednn")

pytestmark = pytest.mark.skipif(not jo.available(),
                                reason=f"jconv_onednn unavailable: {jo.unavailable_reason()}")

TOL = 1e-5
DNS = {"NHWC": ("NHWC", "HWIO", "NHWC"), "NCHW": ("NCHW", "OIHW", "NCHW")}


@pytest.fixture
def activations():
    """Set the activation-layout policy for one test; "auto" again afterwards."""
    yield jo.set_activations_layout
    jo.set_activations_layout("auto")


def _make(case, layout, seed=0):
    n, h, w, ci, co, (kh, kw), stride, dil, pad, groups = case
    rng = np.random.default_rng(seed)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape, np.float32))  # noqa: E731
    nchw = layout == "NCHW"
    x = normal(n, ci, h, w) if nchw else normal(n, h, w, ci)
    wt = normal(co, ci // groups, kh, kw) if nchw else normal(kh, kw, ci // groups, co)
    geo = dict(stride=stride, padding=pad, dilation=dil, groups=groups, layout=layout)
    y_shape = jo.conv_output_shape(x.shape, wt.shape, stride=stride, padding=pad, dilation=dil, layout=layout)
    return x, wt, normal(co), normal(*y_shape), geo


def _ref(x, w, geo):
    return lax.conv_general_dilated(x, w, geo["stride"], geo["padding"], rhs_dilation=geo["dilation"],
                                    dimension_numbers=DNS[geo["layout"]], feature_group_count=geo["groups"],
                                    precision="highest")


def _close(got, ref, what):
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    scale = max(float(np.max(np.abs(ref))), 1e-30) if ref.size else 1.0
    err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    assert err <= TOL * scale, f"{what}: max|err| {err:.3g} > {TOL} * max|ref| {scale:.3g}"


def _check_all(name, layout):
    x, w, b, dy, geo = _make(CASES[name], layout)
    channel = (1, -1, 1, 1) if layout == "NCHW" else (1, 1, 1, -1)
    y_ref, vjp = jax.vjp(lambda a, c: _ref(a, c, geo), x, w)
    dx_ref, dw_ref = vjp(dy)
    _close(jax.jit(lambda a, c: jo.conv_forward(a, c, **geo))(x, w), y_ref, "forward")
    _close(jax.jit(lambda a, c, d: jo.conv_forward(a, c, d, **geo))(x, w, b), y_ref + b.reshape(channel),
           "forward+bias")
    _close(jax.jit(lambda g, c: jo.conv_backward_data(g, c, x_shape=x.shape, **geo))(dy, w), dx_ref,
           "backward-data")
    dw, db = jax.jit(lambda a, g: jo.conv_backward_weights(a, g, w_shape=w.shape, with_bias=True, **geo))(x, dy)
    _close(dw, dw_ref, "backward-weights")
    _close(db, jnp.sum(dy, axis=(0, 2, 3) if layout == "NCHW" else (0, 1, 2)), "bias gradient")


@pytest.mark.parametrize("policy", ["auto", "plain", "any"])
@pytest.mark.parametrize("name", list(CASES))
def test_nchw(name, policy, activations):
    activations(policy)
    _check_all(name, "NCHW")


@pytest.mark.parametrize("name", list(CASES))
def test_nhwc_with_reordered_activations(name, activations):
    activations("any")
    _check_all(name, "NHWC")


def test_describe_says_where_activations_are_reordered(activations):
    shapes = dict(x_shape=(2, 16, 8, 8), w_shape=(16, 16, 3, 3))
    auto = jo.describe("fwd", **shapes, padding=1, layout="NCHW")
    assert "+src-reorder" in auto and "+dst-reorder" in auto, auto  # NCHW: blocked inside the call
    activations("plain")
    plain = jo.describe("fwd", **shapes, padding=1, layout="NCHW")
    assert "src-reorder" not in plain and "dst-reorder" not in plain, plain
    nhwc = jo.describe("fwd", (2, 8, 8, 16), (3, 3, 16, 16), padding=1)
    assert "src-reorder" not in nhwc and "dst-reorder" not in nhwc, nhwc


def test_empty_input_gives_the_bias_per_channel_plane():
    x = jnp.ones((2, 0, 4, 5))                       # zero input channels
    w = jnp.ones((3, 0, 1, 1))
    b = jnp.asarray([1.0, 2.0, 3.0])
    y = jo.conv_forward(x, w, b, layout="NCHW")
    np.testing.assert_array_equal(np.asarray(y), np.broadcast_to(np.asarray(b).reshape(1, 3, 1, 1), (2, 3, 4, 5)))


def test_layout_errors():
    with pytest.raises(ValueError, match=r"conv_forward: layout \(='NWHC'\) must be 'NHWC'"):
        jo.conv_forward(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2)), layout="NWHC")
    with pytest.raises(ValueError, match=r"groups \(=2\) does not fit input channels 4.*\(C_out, 4/groups, KH, KW\)"):
        jo.conv_forward(jnp.ones((1, 4, 5, 5)), jnp.ones((6, 3, 3, 3)), groups=2, layout="NCHW")
    with pytest.raises(ValueError, match="activations_layout"):
        jo.set_activations_layout("blocked")
    if jo.int8_supported():
        with pytest.raises(ValueError, match="must be 'NHWC' for integer convolutions"):
            jo.conv_forward(jnp.ones((1, 2, 4, 4), jnp.int8), jnp.ones((2, 2, 3, 3), jnp.int8),
                            preferred_element_type=jnp.int32, layout="NCHW")


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("name", ["dense3x3", "depthwise_m2", "stride_2x1_dilation_1x2", "1x1", "stem7x7"])
def test_relu_epilogue(name, layout):
    """activation="relu": max(0, conv + b) in the forward's own pass (a oneDNN post-op), with and
    without bias. A NaN output becomes 0 (oneDNN's jit ReLU is the hardware max; its GEMM-based
    kernels keep NaN): either, never a NaN in another image."""
    x, w, b, _, geo = _make(CASES[name], layout)
    channel = (1, -1, 1, 1) if layout == "NCHW" else (1, 1, 1, -1)
    ref = _ref(x, w, geo)
    got = jax.jit(lambda a, c, d: jo.conv_forward(a, c, d, activation="relu", **geo))(x, w, b)
    _close(got, jnp.maximum(ref + b.reshape(channel), 0), "relu(conv + b)")
    assert float(jnp.min(got)) == 0.0
    _close(jo.conv_forward(x, w, activation="relu", **geo), jnp.maximum(ref, 0), "relu(conv)")
    y = jo.conv_forward(x.at[0].set(jnp.nan), w, b, activation="relu", **geo)
    assert bool(jnp.all(jnp.isnan(y[0]) | (y[0] == 0))) and not bool(jnp.isnan(y[1:]).any())


def test_relu_epilogue_degenerate_and_errors():
    b = jnp.asarray([1.0, -2.0, 3.0])
    y = jo.conv_forward(jnp.ones((2, 4, 5, 0)), jnp.ones((1, 1, 0, 3)), b, activation="relu")
    np.testing.assert_array_equal(np.asarray(y), np.broadcast_to(np.asarray([1.0, 0.0, 3.0]), (2, 4, 5, 3)))
    with pytest.raises(ValueError, match=r"conv_forward: activation \(='gelu'\) must be None or 'relu'"):
        jo.conv_forward(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2)), activation="gelu")
    attrs = dict(stride=np.array([1, 1], np.int64), padding=np.array([0, 0, 0, 0], np.int64),
                 dilation=np.array([1, 1], np.int64), groups=np.int64(1), layout=np.int64(0),
                 activation=np.int64(2))
    call = jax.ffi.ffi_call(jo.TARGETS["fwd"], jax.ShapeDtypeStruct((1, 3, 3, 2), jnp.float32),
                            vmap_method="sequential")
    with pytest.raises(Exception, match=r"activation must be 0 \(none\) or 1 \(relu"):
        jax.block_until_ready(call(jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 2)), **attrs))
    if jo.int8_supported():
        with pytest.raises(ValueError, match="activation .* is for float convolutions"):
            jo.conv_forward(jnp.ones((1, 4, 4, 2), jnp.int8), jnp.ones((3, 3, 2, 2), jnp.int8),
                            preferred_element_type=jnp.int32, activation="relu")
