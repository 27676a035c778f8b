"""conv2d(activation="relu"): the bias and ReLU as the convolution's epilogue (jconv.fused), and
the Flax modules' ``activation`` field.

Against ``jax.nn.relu(conv2d(...))`` for every backend that runs on the CPU (oneDNN's fused
post-op where the plugin is installed, the composed epilogue elsewhere): forward, gradients of
x, w and b, jvp, vmap of each operand, hessian, NCHW, no bias, NaN, batch sharding, the
arguments conv2d transforms before the convolution (padding mode, flipped kernel, one unbatched
example), Pallas interpreted, float64 second order (check_grads); the program
oneDNN runs (one custom call with the epilogue, no separate ReLU pass); errors.
"""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from jax.test_util import check_grads

import jconv
import jconv.linen
import jconv.nnx
from jconv.impls import registry
from jconv.testing import assert_close

IMPLS = [i for i in ("onednn", "xla", "lax") if i in registry.names()]
needs_plugin = pytest.mark.skipif("onednn" not in registry.names(), reason="the jconv-onednn plugin is not installed")
KW = dict(stride=(2, 1), padding=((1, 0), (2, 1)), groups=2, precision="highest")


def _inputs(layout="NHWC", seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 9, 8, 4) if layout == "NHWC" else (2, 4, 9, 8))
    w = rng.normal(size=(3, 2, 2, 6) if layout == "NHWC" else (6, 2, 3, 2))
    return (jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32),
            jnp.asarray(rng.normal(size=(6,)), jnp.float32))


def _pair(impl, layout="NHWC"):
    fused = functools.partial(jconv.conv2d, impl=impl, activation="relu", layout=layout, **KW)
    composed = lambda x, w, b: jax.nn.relu(jconv.conv2d(x, w, b, impl="xla", layout=layout, **KW))  # noqa: E731
    return fused, composed


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("impl", IMPLS)
def test_values_and_gradients(impl, layout):
    x, w, b = _inputs(layout)
    f, ref = _pair(impl, layout)
    assert_close(f(x, w, b), ref(x, w, b), np.float32, precision="highest")
    assert float(jnp.min(f(x, w, b))) == 0.0  # the ReLU is there
    loss = lambda g: lambda *a: jnp.sum(jnp.sin(g(*a)) * jnp.arange(6.0).reshape(  # noqa: E731
        (1, 1, 1, 6) if layout == "NHWC" else (1, 6, 1, 1)))
    for got, want in zip(jax.grad(loss(f), argnums=(0, 1, 2))(x, w, b), jax.grad(loss(ref), argnums=(0, 1, 2))(x, w, b)):
        assert_close(got, want, np.float32, factor=2, precision="highest")
    t = (jnp.ones_like(x) * 0.5, jnp.ones_like(w) * -0.25, jnp.ones_like(b))
    assert_close(jax.jvp(f, (x, w, b), t)[1], jax.jvp(ref, (x, w, b), t)[1], np.float32, factor=2,
                 precision="highest")
    if layout == "NCHW":  # second order: once per backend
        return
    h = jax.hessian(lambda c: jnp.sum(jnp.tanh(f(x, c, b)) ** 2))(w)
    assert_close(h, jax.hessian(lambda c: jnp.sum(jnp.tanh(ref(x, c, b)) ** 2))(w), np.float32, factor=8,
                 precision="highest")


@pytest.mark.parametrize("impl", IMPLS)
def test_vmap_and_no_bias(impl):
    x, w, b = _inputs()
    f, ref = _pair(impl)
    rng = np.random.default_rng(1)
    xs, ws, bs = (jnp.asarray(rng.normal(size=(3,) + a.shape), jnp.float32) for a in (x, w, b))
    for axes, args in (((0, None, None), (xs, w, b)), ((None, 0, None), (x, ws, b)), ((None, None, 0), (x, w, bs)),
                       ((0, 0, 0), (xs, ws, bs))):
        assert_close(jax.vmap(f, axes)(*args), jax.vmap(ref, axes)(*args), np.float32, precision="highest",
                     what=f"vmap {axes}")
    g = jax.vmap(jax.grad(lambda a, c: jnp.sum(f(a[None], c, b) ** 2), argnums=(0, 1)), (0, None))(x, w)
    g_ref = jax.vmap(jax.grad(lambda a, c: jnp.sum(ref(a[None], c, b) ** 2), argnums=(0, 1)), (0, None))(x, w)
    for got, want in zip(g, g_ref):
        assert_close(got, want, np.float32, factor=2, precision="highest", what="vmap of grad")
    assert_close(jconv.conv2d(x, w, impl=impl, activation="relu", **KW),
                 jax.nn.relu(jconv.conv2d(x, w, impl="xla", **KW)), np.float32, precision="highest")


@pytest.mark.parametrize("impl", IMPLS)
def test_nan_and_empty_batch(impl):
    """A NaN stays in its image: NaN where the ReLU is composed (as jax.nn.relu), NaN or 0 with
    oneDNN's epilogue (its jit kernels' ReLU is the hardware max, which gives 0)."""
    x, w, b = _inputs()
    f, ref = _pair(impl)
    xn = x.at[0].set(jnp.nan)
    y, y_ref = f(xn, w, b), ref(xn, w, b)
    nan = jnp.isnan(y_ref[0])
    assert not bool(jnp.isnan(y[1]).any()) and bool(nan.any())
    if registry.get(impl).algorithm(jconv.plan_for(x, w, b, impl=impl, **KW).algorithm).forward_relu is None:
        assert bool(jnp.all(jnp.isnan(y[0]) == nan))
    else:
        assert bool(jnp.all(jnp.where(nan, jnp.isnan(y[0]) | (y[0] == 0), ~jnp.isnan(y[0]))))
    assert f(x[:0], w, b).shape == (0,) + f(x, w, b).shape[1:]


@needs_plugin
def test_onednn_runs_the_epilogue_in_the_convolution():
    """One forward custom call with the bias and ReLU inside (no maximum, no add after it); the
    gradients are oneDNN's backward-data and backward-weights of the masked cotangent."""
    x, w, b = _inputs()
    f, _ = _pair("onednn")
    text = jax.jit(f).lower(x, w, b).as_text()
    assert re.findall(r"@(jconv_onednn_\w+)\(", text) == ["jconv_onednn_conv_fwd_bias"]
    assert "maximum" not in text and "stablehlo.add" not in text
    grad = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) ** 2), argnums=(0, 1, 2))).lower(x, w, b).as_text()
    assert sorted(set(re.findall(r"@(jconv_onednn_\w+)\(", grad))) == [
        "jconv_onednn_conv_bwd_data", "jconv_onednn_conv_bwd_weights", "jconv_onednn_conv_fwd_bias"]


@pytest.mark.multi_device
@needs_plugin
def test_onednn_batch_sharding_is_kept():
    mesh = jax.make_mesh((4,), ("batch",), devices=jax.devices()[:4], axis_types=(jax.sharding.AxisType.Auto,))
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(8, 9, 8, 4)), jnp.float32)
    _, w, b = _inputs()
    xs = jax.device_put(x, NamedSharding(mesh, P("batch")))
    f, ref = _pair("onednn")
    grad = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) ** 2), argnums=(0, 1, 2)))
    y = jax.jit(f)(xs, w, b)
    assert y.sharding.is_equivalent_to(NamedSharding(mesh, P("batch")), 4)
    assert "all-gather" not in grad.lower(xs, w, b).compile().as_text()
    assert_close(y, ref(x, w, b), np.float32)
    for got, want in zip(grad(xs, w, b), jax.grad(lambda *a: jnp.sum(ref(*a) ** 2), argnums=(0, 1, 2))(x, w, b)):
        assert_close(got, want, np.float32, factor=2)


def test_bad_activation_is_a_clear_error():
    x, w, b = _inputs()
    with pytest.raises(ValueError, match=r"conv2d: activation \(='gelu'\) must be None or one of \('relu',\)"):
        jconv.conv2d(x, w, b, activation="gelu", **KW)
    with pytest.raises(ValueError, match=r"Conv: activation \(='tanh'\) must be one of"):
        jconv.linen.Conv(4, (3, 3), activation="tanh").init(jax.random.key(0), jnp.ones((1, 5, 5, 2)))
    with pytest.raises(TypeError, match=r"Conv2D: activation \(=3\) must be None, a string or a callable"):
        jconv.nnx.Conv2D(2, 4, 3, activation=3, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("activation", ["relu", nn.relu, jnp.tanh, None])
def test_flax_modules_activation(activation):
    """linen and nnx Conv(activation=...) equal flax's conv followed by the activation; "relu"
    and nn.relu run the epilogue (checked in the jaxpr), other callables are applied after."""
    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 7, 7, 3)), jnp.float32)
    after = {"relu": nn.relu, None: lambda y: y}.get(activation, activation) if isinstance(
        activation, (str, type(None))) else activation
    module = jconv.linen.Conv(4, (3, 3), strides=2, activation=activation)
    params = module.init(jax.random.key(0), x)
    ref = after(nn.Conv(4, (3, 3), strides=2).apply(params, x))
    assert_close(module.apply(params, x), ref, np.float32)
    fused = "jconv_conv_bias_relu" in str(jax.make_jaxpr(module.apply)(params, x))
    assert fused == (activation in ("relu", nn.relu))
    conv = jconv.nnx.Conv2D(3, 4, 3, strides=2, activation=activation, rngs=nnx.Rngs(0))
    ref_nnx = after(nnx.Conv(3, 4, (3, 3), strides=2, rngs=nnx.Rngs(0))(x))
    assert_close(conv(x), ref_nnx, np.float32)
    grads = jax.grad(lambda p: jnp.sum(module.apply(p, x) ** 2))(params)
    grads_ref = jax.grad(lambda p: jnp.sum(after(nn.Conv(4, (3, 3), strides=2).apply(p, x)) ** 2))(params)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
        assert_close(got, want, np.float32, factor=2)


TRANSFORMS = [  # what conv2d does to x and w before the convolution, with dilation and groups
    dict(layout="NHWC", padding_mode="reflect", padding=(1, 2), dilation=(2, 1), groups=2),
    dict(layout="NCHW", flip_kernel=True, padding="SAME", stride=2, dilation=(1, 2)),
    dict(layout="NCHW", padding_mode="circular", padding=1, groups=2, unbatched=True),
]


def _transform_case(args, seed=2):
    args = dict(args)
    unbatched = args.pop("unbatched", False)
    x, w, b = _inputs(args["layout"], seed)
    if args.get("groups", 1) == 1:  # w as for 4 input channels
        w = jnp.concatenate([w, w[::-1]], axis=2 if args["layout"] == "NHWC" else 1)
    return (x[0] if unbatched else x), w, b, dict(args, precision="highest")


@pytest.mark.parametrize("case", range(len(TRANSFORMS)))
@pytest.mark.parametrize("impl", IMPLS)
def test_transformed_arguments(impl, case):
    """The fused op sees the arrays the unfused convolution sees (padding mode, flipped kernel,
    NCHW, one example): equal values and gradients, the bias added once, with and without it."""
    x, w, b, kw = _transform_case(TRANSFORMS[case])
    f = functools.partial(jconv.conv2d, impl=impl, activation="relu", **kw)
    ref = lambda *a: jax.nn.relu(jconv.conv2d(*a, impl="xla", **kw))  # noqa: E731
    assert_close(f(x, w, b), ref(x, w, b), np.float32, precision="highest")
    assert_close(f(x, w), ref(x, w), np.float32, precision="highest", what="no bias")
    loss = lambda g: lambda *a: jnp.sum(g(*a) ** 2)  # noqa: E731
    for got, want in zip(jax.grad(loss(f), argnums=(0, 1, 2))(x, w, b), jax.grad(loss(ref), argnums=(0, 1, 2))(x, w, b)):
        assert_close(got, want, np.float32, factor=2, precision="highest")


@pytest.mark.cpu_only
@pytest.mark.parametrize("case", [0, 1])
def test_pallas_interpreted(case):
    """Pallas has no epilogue: the fused op is its forward then the bias and ReLU (interpreted)."""
    x, w, b, kw = _transform_case(TRANSFORMS[case])
    f = functools.partial(jconv.conv2d, impl="pallas", activation="relu", **kw)
    assert "impl=pallas" in str(jax.make_jaxpr(f)(x, w, b))  # the backend asked for, no swap
    assert_close(f(x, w, b), jax.nn.relu(jconv.conv2d(x, w, b, impl="xla", **kw)), np.float32,
                 precision="highest")
    g = jax.grad(lambda c: jnp.sum(f(x, c, b) ** 2))(w)
    assert_close(g, jax.grad(lambda c: jnp.sum(jax.nn.relu(jconv.conv2d(x, c, b, impl="xla", **kw)) ** 2))(w),
                 np.float32, factor=2, precision="highest")


def test_second_order_float64_lax():
    """check_grads (finite differences, both modes, order 2) of the fused op on lax in float64,
    away from the ReLU's kink (a positive bias keeps every output well above 0 or below)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        x = jnp.asarray(rng.uniform(0.5, 1.0, size=(1, 5, 4, 2)))
        w = jnp.asarray(rng.uniform(0.1, 0.5, size=(3, 2, 1, 4)) * np.array([1, -1, 1, -1]))
        b = jnp.asarray([0.5, -9.0, 1.0, -9.0])
        f = functools.partial(jconv.conv2d, impl="lax", activation="relu", groups=2, padding=1)
        y = f(x, w, b)
        assert y.dtype == jnp.float64 and float(jnp.min(jnp.abs(y[y != 0]))) > 0.1 and bool((y == 0).any())
        check_grads(f, (x, w, b), order=2, modes=("fwd", "rev"), eps=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_nothing_to_compute(impl):
    """Zero input channels: the output is relu(b) (lax's zeros plus the bias), its gradient the mask."""
    x, w, b = jnp.ones((2, 5, 5, 0)), jnp.ones((3, 3, 0, 3)), jnp.asarray([1.0, -2.0, 3.0])
    y = jconv.conv2d(x, w, b, impl=impl, activation="relu")
    np.testing.assert_array_equal(np.asarray(y), np.broadcast_to([1.0, 0.0, 3.0], (2, 3, 3, 3)))
    np.testing.assert_array_equal(np.asarray(jax.grad(lambda c: jnp.sum(jconv.conv2d(
        x, w, c, impl=impl, activation="relu")))(b)), [18.0, 0.0, 18.0])


def test_flax_fields_unchanged_by_default():
    """activation defaults to None; with "relu" the variables are flax's, names and shapes."""
    x = jnp.ones((1, 6, 6, 3))
    assert jconv.linen.Conv(4, (3, 3)).activation is None
    assert jconv.nnx.Conv2D(3, 4, 3, rngs=nnx.Rngs(0)).activation is None
    shapes = lambda t: jax.tree.map(jnp.shape, t)  # noqa: E731
    assert shapes(jconv.linen.Conv(4, (3, 3), activation="relu").init(jax.random.key(0), x)) == shapes(
        nn.Conv(4, (3, 3)).init(jax.random.key(0), x))
    state = nnx.state(jconv.nnx.Conv2D(3, 4, 3, activation="relu", rngs=nnx.Rngs(0)), nnx.Param)
    assert shapes(state) == shapes(nnx.state(nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0)), nnx.Param))
