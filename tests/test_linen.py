"""jconv.linen.Conv2D against the real flax.linen.Conv: same params/init, same outputs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jconv
import jconv.linen as jl
from jconv.testing import assert_close

# (flax.linen.Conv kwargs, input shape, features): every flax argument convention we translate.
GRID = [
    (dict(), (2, 9, 9, 4), 6),  # flax default: SAME
    (dict(padding="VALID"), (2, 9, 9, 4), 6),
    (dict(padding="SAME", strides=2), (2, 9, 8, 4), 6),
    (dict(padding="SAME_LOWER", strides=(1, 2)), (2, 8, 8, 4), 6),  # lax's other SAME
    (dict(padding="CIRCULAR", strides=(2, 1)), (2, 9, 9, 4), 6),
    (dict(padding="REFLECT", kernel_dilation=2), (2, 9, 9, 4), 6),
    (dict(padding=1, feature_group_count=2), (2, 7, 7, 4), 6),
    (dict(padding=(2, 1)), (2, 7, 7, 3), 5),  # a single int per axis
    (dict(padding=((1, 0), (2, 1)), use_bias=False), (2, 7, 7, 3), 5),
    (dict(padding=((1, 0), 2), kernel_dilation=(1, 2)), (2, 7, 7, 3), 5),  # mixed int / pair
    (dict(padding=((1, 1), (2, 0)), input_dilation=2, strides=1), (2, 5, 5, 3), 4),  # transposed
    (dict(padding="VALID", feature_group_count=4), (2, 7, 7, 4), 8),  # depthwise, multiplier 2
    (dict(padding="SAME", strides=None, kernel_dilation=None, input_dilation=None), (1, 6, 6, 2), 3),
]
IDS = [",".join(f"{k}={v}" for k, v in kw.items()) or "defaults" for kw, _, _ in GRID]
IMPLS = ("xla", "lax", "auto")


def _x(shape, seed=1, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


@pytest.mark.parametrize("kwargs,shape,features", GRID, ids=IDS)
def test_same_params_and_outputs_as_flax(kwargs, shape, features):
    x = _x(shape)
    ref_mod = nn.Conv(features, (3, 3), **kwargs)
    ref_vars = ref_mod.init(jax.random.key(0), x)
    ref_y = ref_mod.apply(ref_vars, x)
    for impl in IMPLS:
        mod = jl.Conv2D(features, 3, impl=impl, **kwargs)
        variables = mod.init(jax.random.key(0), x)
        # Same key -> the same parameter tree, shapes and values (default initialisers).
        assert jax.tree.structure(variables) == jax.tree.structure(ref_vars)
        jax.tree.map(np.testing.assert_array_equal, variables, ref_vars)
        # Same params -> the same outputs.
        y = mod.apply(ref_vars, x)
        assert y.shape == ref_y.shape and y.dtype == ref_y.dtype
        assert_close(y, ref_y, jnp.float32, what=f"impl={impl}")


@pytest.mark.parametrize("impl", ["xla", "lax"])
def test_gradients_match_flax(impl):
    x = _x((2, 8, 8, 3))
    ref_mod, mod = nn.Conv(4, (3, 3), strides=2, padding="SAME"), jl.Conv2D(4, 3, strides=2, padding="SAME", impl=impl)
    params = ref_mod.init(jax.random.key(0), x)

    def loss(m):
        return lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))

    g_ref = jax.jit(jax.grad(loss(ref_mod), argnums=(0, 1)))(params, x)
    g = jax.jit(jax.grad(loss(mod), argnums=(0, 1)))(params, x)
    jax.tree.map(lambda a, b: assert_close(a, b, jnp.float32, factor=5), g, g_ref)


@pytest.mark.parametrize("dtype,param_dtype,x_dtype", [
    (None, jnp.float32, jnp.bfloat16),  # promoted to float32, as flax does
    (jnp.bfloat16, jnp.float32, jnp.float32),  # computed in bfloat16
    (None, jnp.bfloat16, jnp.bfloat16),
    (None, jnp.float32, jnp.uint8),  # integer images: promoted to float
])
def test_dtype_promotion_as_flax(dtype, param_dtype, x_dtype):
    x = (_x((2, 6, 6, 3)) * 3).astype(x_dtype)
    kw = dict(padding="SAME", dtype=dtype, param_dtype=param_dtype)
    ref_mod, mod = nn.Conv(4, (3, 3), **kw), jl.Conv2D(4, 3, **kw)
    params = ref_mod.init(jax.random.key(0), x)
    jax.tree.map(np.testing.assert_array_equal, mod.init(jax.random.key(0), x), params)
    ref_y, y = ref_mod.apply(params, x), mod.apply(params, x)
    assert y.dtype == ref_y.dtype
    assert_close(y, ref_y, y.dtype)


def test_batch_dims_unbatched_and_mask():
    mask = jnp.tril(jnp.ones((3, 3, 3, 4)))
    x = _x((2, 3, 6, 6, 3))  # two leading batch dims, flattened and restored
    ref_mod, mod = nn.Conv(4, (3, 3), mask=mask), jl.Conv2D(4, 3, mask=mask)
    params = ref_mod.init(jax.random.key(0), x)
    assert_close(mod.apply(params, x), ref_mod.apply(params, x), jnp.float32)
    x1 = x[0, 0]  # one example, no batch dimension
    y1 = mod.apply(params, x1)
    assert y1.shape == (6, 6, 4)
    assert_close(y1, ref_mod.apply(params, x1), jnp.float32)


def test_jconv_extras_padding_mode_flip_preferred_type():
    x = _x((2, 7, 7, 3))
    base = nn.Conv(4, (3, 3), padding="VALID")
    params = base.init(jax.random.key(0), x)
    k, b = params["params"]["kernel"], params["params"]["bias"]
    # replicate padding: the same as edge-padding by hand, then VALID
    y = jl.Conv2D(4, 3, padding=1, padding_mode="replicate").apply(params, x)
    x_edge = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    assert_close(y, base.apply(params, x_edge), jnp.float32)
    # flip_kernel: true convolution = cross-correlation with the flipped kernel
    y = jl.Conv2D(4, 3, padding="VALID", flip_kernel=True).apply(params, x)
    flipped = {"params": {"kernel": k[::-1, ::-1], "bias": b}}
    assert_close(y, base.apply(flipped, x), jnp.float32)
    # preferred_element_type: bfloat16 operands, float32 result
    y = jl.Conv2D(4, 3, padding="VALID", dtype=jnp.bfloat16, preferred_element_type=jnp.float32).apply(params, x)
    assert y.dtype == jnp.float32
    assert_close(y, base.apply(params, x), jnp.bfloat16)


def test_auto_named_conv_loads_flax_checkpoint():
    """A model switched from nn.Conv to jconv.linen.Conv keeps its parameter tree."""

    def model(conv):
        class Net(nn.Module):
            @nn.compact
            def __call__(self, x):
                x = nn.relu(conv(8, (3, 3))(x))
                return conv(4, (3, 3), strides=2)(x)

        return Net()

    x = _x((2, 8, 8, 1))
    ref, ours = model(nn.Conv), model(jl.Conv)
    params = ref.init(jax.random.key(0), x)
    assert set(params["params"]) == {"Conv_0", "Conv_1"}
    jax.tree.map(np.testing.assert_array_equal, ours.init(jax.random.key(0), x), params)
    assert_close(ours.apply(params, x), ref.apply(params, x), jnp.float32)
    # Conv2D auto-names after its own class
    assert set(model(jl.Conv2D).init(jax.random.key(0), x)["params"]) == {"Conv2D_0", "Conv2D_1"}


@pytest.mark.parametrize("module", [
    jl.Conv2D(4, 3, padding="CIRCULAR", strides=2),
    jl.Conv2D(4, 3, padding=((1, 0), 2), input_dilation=2),
    jl.ConvTranspose(4, (3, 3), strides=2, padding="SAME"),
    jl.ConvTranspose(4, (3, 3), strides=2, padding="CIRCULAR"),
], ids=["conv-circular", "conv-input-dilation", "transpose-same", "transpose-circular"])
def test_padding_is_resolved_once(module, monkeypatch):
    """The modules normalise their fields without resolving padding; the one resolution of the
    module's padding is the parse of jconv.conv2d / jconv.conv_general_dilated (with the input's
    shapes). (A native backend may normalise the explicit pads it is handed again: not counted.)"""
    from jconv import geometry

    calls = []
    real = geometry.resolve_padding
    monkeypatch.setattr(geometry, "resolve_padding", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    module.init(jax.random.key(0), jnp.ones((1, 6, 6, 2)))
    assert calls.count("conv2d") + calls.count("conv_general_dilated") == 1, calls


def test_tabulate():
    table = nn.tabulate(jl.Conv2D(32, 3, padding="VALID"), jax.random.key(0), console_kwargs={"width": 200})(
        jnp.ones((1, 28, 28, 1))
    )
    assert "Conv2D" in table and "26,26,32" in table and "320" in table
    table = nn.tabulate(jl.ConvTranspose(8, (2, 2), strides=2), jax.random.key(0), console_kwargs={"width": 200})(
        jnp.ones((1, 13, 13, 32))
    )
    assert "ConvTranspose" in table and "26,26,8" in table and "1,032" in table


@pytest.mark.parametrize("kwargs,shape", [
    (dict(), (1, 5, 5, 2)),
    (dict(padding="CIRCULAR", strides=2, feature_group_count=2), (2, 6, 6, 4)),
], ids=["defaults", "circular-s2-g2"])
def test_pallas_matches_or_is_not_implemented(kwargs, shape):
    """impl='pallas' must run the Pallas kernel (matching flax) or say it cannot: never differ."""
    x = _x(shape)
    ref_mod = nn.Conv(4, (3, 3), **kwargs)
    params = ref_mod.init(jax.random.key(0), x)
    try:
        y = jl.Conv2D(4, 3, impl="pallas", **kwargs).apply(params, x)
    except NotImplementedError as e:
        assert "pallas" in str(e)
    else:
        assert_close(y, ref_mod.apply(params, x), jnp.float32)


def test_impl_is_passed_to_jconv(monkeypatch):
    import jconv.flax_conv as fc

    seen = []

    def spy(real):
        def call(*args, **kwargs):
            seen.append((real.__name__, kwargs["impl"]))
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(fc, "conv2d", spy(fc.conv2d))
    monkeypatch.setattr(fc, "conv_general_dilated", spy(fc.conv_general_dilated))
    x = _x((1, 5, 5, 2))
    jl.Conv2D(3, 3, impl="lax:taps").init(jax.random.key(0), x)
    jl.ConvTranspose(3, 3, strides=2, impl="lax:mac").init(jax.random.key(0), x)
    assert seen == [("conv2d", "lax:taps"), ("conv_general_dilated", "lax:mac")]


@pytest.mark.parametrize("kwargs,exc,msg", [
    (dict(padding="CAUSAL"), ValueError, "Conv2D: padding (='CAUSAL') is only defined for 1-D"),
    (dict(padding="CIRCULAR", padding_mode="reflect"), ValueError, "conflicts with padding_mode (='reflect')"),
    (dict(padding=1, input_dilation=2, padding_mode="reflect"), NotImplementedError, "Conv2D: input_dilation"),
    (dict(kernel_size=(3, 3, 3)), ValueError, "Conv2D: kernel_size (=(3, 3, 3))"),
    (dict(feature_group_count=3), ValueError, "conv2d: groups (=3) must divide input channels (=4)"),
    (dict(mask=jnp.ones((3, 3, 4, 5))), ValueError, "Conv2D: mask.shape (=(3, 3, 4, 5)) must equal"),
    (dict(padding="FULL"), ValueError, "padding (='FULL')"),
    (dict(impl="cuda"), ValueError, "impl (='cuda')"),
    (dict(padding="SAME", input_dilation=2), ValueError, "padding (='SAME') must be explicit"),
    (dict(strides=0), ValueError, "Conv2D: strides (=0) must be >= 1"),
    (dict(kernel_dilation=(1, 2, 3)), ValueError, "Conv2D: kernel_dilation (=(1, 2, 3))"),
    (dict(padding=((1, 1), (1, 1), (1, 1))), ValueError, "Conv2D: padding (=((1, 1), (1, 1), (1, 1))) must have one entry per spatial axis (2)"),
    (dict(padding=(1, (2, 3, 4))), TypeError, "Conv2D: padding (=(1, (2, 3, 4)))"),
    (dict(feature_group_count=0), ValueError, "Conv2D: feature_group_count (=0) must be >= 1"),
])
def test_errors_name_the_argument(kwargs, exc, msg):
    kwargs = {"kernel_size": 3, **kwargs}
    with pytest.raises(exc) as e:
        jl.Conv2D(6, **kwargs).init(jax.random.key(0), jnp.ones((1, 6, 6, 4)))
    assert msg in str(e.value)


def _int_init(key, shape, dtype):
    """An initialiser for integer parameters (flax's defaults draw floats)."""
    return jax.random.randint(key, shape, -4, 5).astype(dtype)


@pytest.mark.parametrize("module", ["Conv", "ConvTranspose"])
def test_integer_inputs_and_kernels_as_flax(module):
    """Integer inputs and kernels as nn.Conv takes them: the default promote_dtype computes in
    float32; a promote_dtype that keeps integers runs an integer convolution (int8 wraps, as
    lax's does), and ``preferred_element_type=int32`` (a jconv extra here) accumulates in int32
    with the int8 bias added there."""
    from flax.linen.dtypes import promote_dtype

    x = jax.random.randint(jax.random.key(1), (2, 6, 6, 3), -8, 9).astype(jnp.int8)
    kw = dict(param_dtype=jnp.int8, kernel_init=_int_init, bias_init=_int_init, padding="SAME", strides=2)
    keep_ints = dict(promote_dtype=lambda *a, dtype=None: promote_dtype(*a, dtype=dtype, inexact=False))
    for extra in (dict(), keep_ints):
        ref_mod, mod = getattr(nn, module)(4, (3, 3), **kw, **extra), getattr(jl, module)(4, (3, 3), **kw, **extra)
        params = ref_mod.init(jax.random.key(0), x)
        assert jax.tree.map(lambda a: a.dtype, params) == jax.tree.map(lambda a: a.dtype, mod.init(jax.random.key(0), x))
        ref_y, y = ref_mod.apply(params, x), mod.apply(params, x)
        assert y.dtype == ref_y.dtype == (jnp.int8 if extra else jnp.float32)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(ref_y))
    wide = getattr(jl, module)(4, (3, 3), **kw, **keep_ints, preferred_element_type=jnp.int32).apply(params, x)
    ref_wide = getattr(nn, module)(4, (3, 3), **kw, promote_dtype=lambda *a, dtype=None: promote_dtype(
        *a, dtype=jnp.int32, inexact=False)).apply(params, x)  # the same conv of int32 operands
    assert wide.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(wide), np.asarray(ref_wide))
