"""jconv.nnx.Conv2D and jconv.conv_general_dilated against the real flax.nnx.Conv."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jconv
import jconv.nnx as jn
from jconv.testing import assert_close

GRID = [
    (dict(), (2, 8, 8, 4), 6),
    (dict(padding="VALID", strides=2), (2, 9, 9, 4), 6),
    (dict(padding="CIRCULAR", kernel_dilation=2), (2, 9, 9, 4), 6),
    (dict(padding="REFLECT", strides=(1, 2)), (2, 9, 9, 4), 6),
    (dict(padding=((1, 0), (2, 1)), feature_group_count=2, use_bias=False), (2, 7, 7, 4), 6),
    (dict(padding=(1, 1), input_dilation=(2, 1)), (2, 5, 5, 3), 4),
    (dict(padding="VALID", feature_group_count=4), (2, 7, 7, 4), 4),  # depthwise
]
IDS = [",".join(f"{k}={v}" for k, v in kw.items()) or "defaults" for kw, _, _ in GRID]


def _x(shape, seed=1):
    return jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.parametrize("kwargs,shape,features", GRID, ids=IDS)
def test_same_params_and_outputs_as_nnx_conv(kwargs, shape, features):
    x = _x(shape)
    cin = shape[-1]
    ref = nnx.Conv(cin, features, (3, 3), rngs=nnx.Rngs(0), **kwargs)
    ref_y = ref(x)
    ref_state = nnx.state(ref, nnx.Param)
    for impl in ("xla", "lax", "auto"):
        mod = jn.Conv2D(cin, features, 3, rngs=nnx.Rngs(0), impl=impl, **kwargs)
        assert isinstance(mod, nnx.Conv)
        state = nnx.state(mod, nnx.Param)
        # same key -> same parameter names, shapes and values
        assert jax.tree.structure(state) == jax.tree.structure(ref_state)
        jax.tree.map(np.testing.assert_array_equal, state, ref_state)
        assert_close(mod(x), ref_y, jnp.float32, what=f"impl={impl}")


@pytest.mark.parametrize("kwargs,shape,features", GRID[:4] + GRID[5:], ids=IDS[:4] + IDS[5:])
def test_nnx_conv_with_jconv_conv_general_dilated(kwargs, shape, features):
    """flax's own nnx.Conv with jconv's primitive swapped in gives flax's outputs."""
    x = _x(shape)
    cin = shape[-1]
    ref = nnx.Conv(cin, features, (3, 3), rngs=nnx.Rngs(0), **kwargs)
    for impl in ("xla", "lax"):
        swapped = nnx.Conv(
            cin, features, (3, 3), rngs=nnx.Rngs(0),
            conv_general_dilated=lambda *a, impl=impl, **k: jconv.conv_general_dilated(*a, impl=impl, **k),
            **kwargs,
        )
        assert_close(swapped(x), ref(x), jnp.float32, what=f"impl={impl}")
    plain = nnx.Conv(cin, features, (3, 3), rngs=nnx.Rngs(0), conv_general_dilated=jconv.conv_general_dilated, **kwargs)
    assert_close(plain(x), ref(x), jnp.float32)


def test_state_loads_across_and_trains_under_jit():
    """nnx state from flax's Conv drives ours; a jitted nnx optimiser step matches flax's."""
    import optax

    x, t = _x((4, 8, 8, 2)), _x((4, 8, 8, 3), seed=2)
    ref = nnx.Conv(2, 3, (3, 3), rngs=nnx.Rngs(5))
    ours = jn.Conv2D(2, 3, 3, rngs=nnx.Rngs(7))  # different init ...
    nnx.update(ours, nnx.state(ref, nnx.Param))  # ... replaced by flax's params
    assert_close(ours(x), ref(x), jnp.float32)

    def step(model):
        opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

        @nnx.jit
        def train_step(model, opt):
            loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - t) ** 2))(model)
            opt.update(model, grads)
            return loss

        return [float(train_step(model, opt)) for _ in range(3)]

    np.testing.assert_allclose(step(ours), step(ref), rtol=1e-5)
    assert_close(ours.kernel[...], ref.kernel[...], jnp.float32)


def test_encoder_decoder_trains_under_jit_as_flax():
    """Conv2D down, ConvTranspose up: a jitted nnx optimiser loop matches flax's modules'."""
    import optax

    class AutoEncoder(nnx.Module):
        def __init__(self, conv, up, rngs):
            self.down = conv(2, 4, (3, 3), strides=2, rngs=rngs)
            self.up = up(4, 2, (4, 4), strides=2, transpose_kernel=True, rngs=rngs)

        def __call__(self, x):
            return self.up(nnx.relu(self.down(x)))

    x = _x((2, 8, 8, 2))

    def losses(model):
        opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

        @nnx.jit
        def step(model, opt):
            loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - x) ** 2))(model)
            opt.update(model, grads)
            return loss

        return [float(step(model, opt)) for _ in range(4)]

    ref = AutoEncoder(nnx.Conv, nnx.ConvTranspose, nnx.Rngs(0))
    ours = AutoEncoder(jn.Conv2D, jn.ConvTranspose, nnx.Rngs(0))
    np.testing.assert_allclose(losses(ours), losses(ref), rtol=1e-4)
    jax.tree.map(lambda a, b: assert_close(a, b, jnp.float32, factor=5), nnx.state(ours, nnx.Param),
                 nnx.state(ref, nnx.Param))


def test_dtype_promotion_and_preferred_element_type():
    x = _x((2, 6, 6, 3)).astype(jnp.bfloat16)
    for kw in (dict(), dict(dtype=jnp.bfloat16), dict(param_dtype=jnp.bfloat16),
               dict(dtype=jnp.bfloat16, preferred_element_type=jnp.float32)):
        ref = nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0), **kw)
        ours = jn.Conv2D(3, 4, 3, rngs=nnx.Rngs(0), **kw)
        ry, y = ref(x), ours(x)
        assert y.dtype == ry.dtype, kw
        assert_close(y, ry, jnp.bfloat16)


def test_pallas_matches_or_is_not_implemented():
    x = _x((1, 5, 5, 2))
    ref = nnx.Conv(2, 3, (3, 3), rngs=nnx.Rngs(0))
    ours = jn.Conv2D(2, 3, 3, rngs=nnx.Rngs(0), impl="pallas")
    try:
        y = ours(x)
    except NotImplementedError as e:
        assert "pallas" in str(e)
    else:
        assert_close(y, ref(x), jnp.float32)


def test_errors():
    with pytest.raises(ValueError, match=r"Conv2D: kernel_size \(=\(3, 3, 3\)\)"):
        jn.Conv2D(2, 3, (3, 3, 3), rngs=nnx.Rngs(0))
    with pytest.raises(NotImplementedError, match="out_sharding"):
        jn.Conv2D(2, 3, 3, rngs=nnx.Rngs(0))(jnp.ones((1, 5, 5, 2)), out_sharding="x")
    with pytest.raises(ValueError, match=r"Conv2D: strides \(=\(1, 0\)\) must be >= 1"):  # at construction
        jn.Conv2D(2, 3, 3, strides=(1, 0), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"Conv2D: padding \(='CIRCULAR'\) already sets padding_mode='circular'"):
        jn.Conv2D(2, 3, 3, padding="CIRCULAR", padding_mode="reflect", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"conv2d: groups \(=2\) must divide input channels \(=3\)"):
        jn.Conv2D(3, 4, 3, feature_group_count=2, rngs=nnx.Rngs(0))(jnp.ones((1, 5, 5, 3)))


def test_integer_inputs_and_kernels_as_nnx_conv():
    """Integer inputs and kernels as nnx.Conv takes them (jconv.nnx.Conv2D, and nnx.Conv with
    jconv's conv_general_dilated): promoted to float32 by default; kept by a promote_dtype
    without ``inexact``, with ``preferred_element_type=int32`` accumulating exactly."""
    from flax.nnx.nn import dtypes

    def int_init(key, shape, dtype):
        return jax.random.randint(key, shape, -4, 5).astype(dtype)

    x = jax.random.randint(jax.random.key(1), (2, 6, 6, 3), -8, 9).astype(jnp.int8)
    keep_ints = lambda args, dtype=None: dtypes.promote_dtype(args, dtype=dtype, inexact=False)  # noqa: E731
    for kw in (dict(), dict(promote_dtype=keep_ints), dict(promote_dtype=keep_ints, preferred_element_type=jnp.int32)):
        kw = dict(param_dtype=jnp.int8, kernel_init=int_init, bias_init=int_init, strides=(1, 2), **kw)
        ref = nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0), **kw)
        for ours in (jn.Conv2D(3, 4, 3, rngs=nnx.Rngs(0), **kw),
                     nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0), conv_general_dilated=jconv.conv_general_dilated, **kw)):
            y, ry = ours(x), ref(x)
            assert y.dtype == ry.dtype, kw
            np.testing.assert_array_equal(np.asarray(y), np.asarray(ry))
