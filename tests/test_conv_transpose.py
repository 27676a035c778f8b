"""jconv.linen.ConvTranspose / jconv.nnx.ConvTranspose against flax's own ConvTranspose modules:
the same parameters from the same key, the same outputs, the same gradients (params and input),
on a grid of kernel sizes (odd and even), strides 1-3, paddings (SAME, VALID, CIRCULAR, explicit,
cropping), kernel dilations, transpose_kernel and bias; batch dimensions, dtypes, mask, names,
errors; and the modules' transposed path through every registered impl."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jconv
import jconv.linen as jl
import jconv.nnx as jn
from conformance import backend_impls
from jconv.impls import registry
from jconv.testing import assert_close
from grids import forced_algorithm, share, slow_unless

# (flax ConvTranspose kwargs, kernel_size, input shape (N, H, W, C), features)
GRID = [
    (dict(), (3, 3), (2, 5, 6, 3), 4),  # flax defaults: strides None (1), SAME, dilation None
    (dict(strides=2), (3, 3), (2, 5, 6, 3), 4),
    (dict(strides=2, transpose_kernel=True), (4, 4), (2, 5, 5, 3), 4),  # even kernel
    (dict(strides=2, padding="VALID", use_bias=False), (2, 2), (2, 4, 5, 3), 4),  # k == s (U-Net)
    (dict(strides=(3, 1)), (3, 2), (2, 4, 5, 2), 3),  # stride 3, odd x even kernel
    (dict(strides=3, padding="VALID", kernel_dilation=(1, 2), transpose_kernel=True), (5, 3), (1, 4, 4, 2), 3),
    (dict(strides=1, padding="VALID"), (3, 3), (2, 5, 5, 3), 2),
    (dict(strides=2, kernel_dilation=2), (3, 3), (2, 4, 5, 3), 4),
    (dict(strides=2, padding=((1, 2), (1, 2))), (3, 3), (2, 5, 5, 4), 3),  # the suite's U-Net geometry
    (dict(strides=2, padding=1, transpose_kernel=True), (3, 3), (2, 4, 4, 3), 2),
    (dict(strides=(2, 1), padding=(2, 0)), (3, 3), (1, 4, 5, 3), 2),  # one int per axis
    (dict(strides=2, padding=((-1, 1), (0, 2))), (3, 3), (2, 4, 4, 2), 3),  # a negative pad crops
    (dict(strides=2, padding="CIRCULAR"), (3, 3), (2, 4, 5, 3), 4),
    (dict(strides=2, padding="CIRCULAR", transpose_kernel=True), (4, 4), (1, 4, 4, 2), 3),
    (dict(strides=3, padding="CIRCULAR", kernel_dilation=2), (2, 3), (1, 3, 4, 2), 2),
    (dict(strides=2), (1, 1), (2, 3, 3, 4), 2),  # pointwise
]
IDS = [f"k{k[0]}x{k[1]}," + (",".join(f"{a}={v}" for a, v in kw.items()) or "defaults") for kw, k, _, _ in GRID]


def _x(shape, seed=1, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


def _linen_loss(module):
    return lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))


@pytest.mark.parametrize("kwargs,kernel_size,shape,features", share(GRID, every=4, keep=(11, 12), args=4), ids=IDS)
def test_linen_same_params_outputs_and_gradients(kwargs, kernel_size, shape, features):
    x = _x(shape)
    ref = nn.ConvTranspose(features, kernel_size, **kwargs)
    ref_vars = ref.init(jax.random.key(0), x)
    ref_y = ref.apply(ref_vars, x)
    g_ref = jax.grad(_linen_loss(ref), argnums=(0, 1))(ref_vars, x)
    for impl in ("auto", "lax"):
        mod = jl.ConvTranspose(features, kernel_size, impl=impl, **kwargs)
        variables = mod.init(jax.random.key(0), x)
        assert jax.tree.structure(variables) == jax.tree.structure(ref_vars)
        jax.tree.map(np.testing.assert_array_equal, variables, ref_vars)
        y = mod.apply(ref_vars, x)
        assert y.shape == ref_y.shape and y.dtype == ref_y.dtype
        assert_close(y, ref_y, jnp.float32, what=f"impl={impl}")
        g = jax.grad(_linen_loss(mod), argnums=(0, 1))(ref_vars, x)
        jax.tree.map(lambda a, b: assert_close(a, b, jnp.float32, factor=5, what=f"grad impl={impl}"), g, g_ref)


def _nnx_value_and_grads(model, x):
    graphdef, state = nnx.split(model)

    def loss(state, x):
        return jnp.sum(jnp.sin(nnx.merge(graphdef, state)(x)))

    return nnx.merge(graphdef, state)(x), jax.grad(loss, argnums=(0, 1))(state, x)


@pytest.mark.parametrize("kwargs,kernel_size,shape,features", share(GRID[1:] + GRID[:1], every=4, keep=(10, 11), args=4),
                         ids=IDS[1:] + IDS[:1])
def test_nnx_same_params_outputs_and_gradients(kwargs, kernel_size, shape, features):
    x = _x(shape)
    ref = nnx.ConvTranspose(shape[-1], features, kernel_size, rngs=nnx.Rngs(0), **kwargs)
    mod = jn.ConvTranspose(shape[-1], features, kernel_size, rngs=nnx.Rngs(0), **kwargs)
    assert isinstance(mod, nnx.ConvTranspose)
    ref_state, state = nnx.state(ref, nnx.Param), nnx.state(mod, nnx.Param)
    assert jax.tree.structure(state) == jax.tree.structure(ref_state)
    jax.tree.map(np.testing.assert_array_equal, state, ref_state)
    (ref_y, g_ref), (y, g) = _nnx_value_and_grads(ref, x), _nnx_value_and_grads(mod, x)
    assert y.shape == ref_y.shape and y.dtype == ref_y.dtype
    assert_close(y, ref_y, jnp.float32)
    jax.tree.map(lambda a, b: assert_close(a, b, jnp.float32, factor=5, what="grad"), g, g_ref)


def test_batch_dims_unbatched_mask_and_jit():
    mask = jnp.tril(jnp.ones((3, 3, 3, 4)))
    x = _x((2, 3, 4, 5, 3))  # two leading batch dims, flattened and restored
    kw = dict(strides=2, mask=mask)
    ref, mod = nn.ConvTranspose(4, (3, 3), **kw), jl.ConvTranspose(4, (3, 3), **kw)
    params = ref.init(jax.random.key(0), x)
    y = jax.jit(mod.apply)(params, x)
    assert y.shape == (2, 3, 8, 10, 4)
    assert_close(y, ref.apply(params, x), jnp.float32)
    x1 = x[0, 0]  # one example, no batch dimension
    assert_close(mod.apply(params, x1), ref.apply(params, x1), jnp.float32)
    nref = nnx.ConvTranspose(3, 4, (3, 3), rngs=nnx.Rngs(0), **kw)
    nmod = jn.ConvTranspose(3, 4, (3, 3), rngs=nnx.Rngs(0), **kw)
    for xi in (x, x1):
        assert_close(nnx.jit(lambda m, a: m(a))(nmod, xi), nref(xi), jnp.float32)


@pytest.mark.parametrize("dtype,param_dtype,x_dtype,pet", [
    (None, jnp.float32, jnp.bfloat16, None),  # promoted to float32, as flax does
    (jnp.bfloat16, jnp.float32, jnp.float32, None),  # computed in bfloat16
    (jnp.bfloat16, jnp.float32, jnp.float32, jnp.float32),  # bfloat16 operands, float32 result
])
def test_dtypes_as_flax(dtype, param_dtype, x_dtype, pet):
    x = _x((2, 4, 4, 3)).astype(x_dtype)
    kw = dict(strides=2, dtype=dtype, param_dtype=param_dtype, preferred_element_type=pet)
    ref, mod = nn.ConvTranspose(4, (3, 3), **kw), jl.ConvTranspose(4, (3, 3), **kw)
    params = ref.init(jax.random.key(0), x)
    jax.tree.map(np.testing.assert_array_equal, mod.init(jax.random.key(0), x), params)
    ry, y = ref.apply(params, x), mod.apply(params, x)
    assert y.dtype == ry.dtype
    assert_close(y, ry, jnp.bfloat16)
    nref = nnx.ConvTranspose(3, 4, (3, 3), rngs=nnx.Rngs(0), **kw)
    nmod = jn.ConvTranspose(3, 4, (3, 3), rngs=nnx.Rngs(0), **kw)
    assert nmod(x).dtype == nref(x).dtype
    assert_close(nmod(x), nref(x), jnp.bfloat16)


def test_auto_names_and_checkpoint():
    """A decoder switched from nn.ConvTranspose to jconv.linen.ConvTranspose keeps its tree."""

    def decoder(up):
        class Decoder(nn.Module):
            @nn.compact
            def __call__(self, x):
                x = nn.relu(up(8, (2, 2), strides=2)(x))
                return up(3, (3, 3), strides=2, transpose_kernel=True)(x)

        return Decoder()

    x = _x((2, 4, 4, 5))
    ref, ours = decoder(nn.ConvTranspose), decoder(jl.ConvTranspose)
    params = ref.init(jax.random.key(0), x)
    assert set(params["params"]) == {"ConvTranspose_0", "ConvTranspose_1"}
    jax.tree.map(np.testing.assert_array_equal, ours.init(jax.random.key(0), x), params)
    assert_close(ours.apply(params, x), ref.apply(params, x), jnp.float32)


def test_state_moves_between_nnx_modules():
    x = _x((2, 4, 4, 3))
    ref = nnx.ConvTranspose(3, 5, (3, 3), strides=2, rngs=nnx.Rngs(3))
    ours = jn.ConvTranspose(3, 5, (3, 3), strides=2, rngs=nnx.Rngs(4))  # other params ...
    nnx.update(ours, nnx.state(ref, nnx.Param))  # ... replaced by flax's
    assert_close(ours(x), ref(x), jnp.float32)


#: (fields, exception, message, whether nnx raises it at construction: the fields alone decide)
@pytest.mark.parametrize("kwargs,exc,msg,static", [
    (dict(padding="same"), ValueError, "ConvTranspose: padding (='same') must be 'SAME', 'VALID' or 'CIRCULAR'", True),
    (dict(padding="REFLECT"), ValueError, "ConvTranspose: padding (='REFLECT')", True),
    (dict(padding=((1, 1), (1, 1), (1, 1))), ValueError, "ConvTranspose: padding (=((1, 1), (1, 1), (1, 1))) must have one entry per spatial axis (2)", True),
    (dict(padding=1.5), TypeError, "ConvTranspose: padding (=1.5)", True),
    (dict(kernel_size=(3, 3, 3)), ValueError, "ConvTranspose: kernel_size (=(3, 3, 3))", True),
    (dict(strides=0), ValueError, "ConvTranspose: strides (=0) must be >= 1", True),
    (dict(kernel_dilation=(1, 2.0)), TypeError, "ConvTranspose: kernel_dilation (=(1, 2.0)) must contain ints", True),
    (dict(mask=jnp.ones((3, 3, 4, 5))), ValueError, "ConvTranspose: mask.shape (=(3, 3, 4, 5)) must equal the kernel shape (=(3, 3, 4, 6))", False),
    (dict(impl="cuda"), ValueError, "impl (='cuda')", False),
])
def test_errors_name_the_field(kwargs, exc, msg, static):
    kwargs = {"kernel_size": (3, 3), **kwargs}
    with pytest.raises(exc) as e:
        jl.ConvTranspose(6, **kwargs).init(jax.random.key(0), jnp.ones((1, 2, 2, 4)))
    assert msg in str(e.value)
    if static:
        with pytest.raises(exc) as e:  # nnx: at construction
            jn.ConvTranspose(4, 6, rngs=nnx.Rngs(0), **kwargs)
        assert msg in str(e.value)


def test_crops_as_flax():
    """Pads that crop the whole dilated input leave no output row (lax's and flax's empty
    result); cropping more than all of it is lax's ValueError, as in flax."""
    x = jnp.ones((1, 2, 2, 4))
    ref = nn.ConvTranspose(6, (3, 3), padding=((-2, 0), (0, 0)))
    params = ref.init(jax.random.key(0), x)
    y, want = jl.ConvTranspose(6, (3, 3), padding=((-2, 0), (0, 0))).apply(params, x), ref.apply(params, x)
    assert y.shape == want.shape == (1, 0, 0, 6) and y.dtype == want.dtype
    with pytest.raises(ValueError, match="Negative padding is larger"):
        nn.ConvTranspose(6, (3, 3), padding=((-3, 0), (0, 0))).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"conv_general_dilated: padding \(=\(\(-3, 0\), \(0, 0\)\)\) crops more"):
        jl.ConvTranspose(6, (3, 3), padding=((-3, 0), (0, 0))).init(jax.random.key(0), x)


def test_rank_error():
    with pytest.raises(ValueError, match=r"ConvTranspose: inputs.shape \(=\(4, 3\)\) must be \(\*batch_dims, H, W, C\)"):
        jl.ConvTranspose(2, (3, 3)).init(jax.random.key(0), jnp.ones((4, 3)))


# ---- every registered impl (a conformance-style check of the modules' transposed path) ---------

#: (flax kwargs, kernel, input shape, features): an even kernel with transpose_kernel and SAME,
#: and a dilated stride-3 VALID one with bias off.
IMPL_CASES = [
    (dict(strides=2, transpose_kernel=True), (4, 4), (2, 4, 5, 3), 4),
    (dict(strides=3, padding="VALID", kernel_dilation=(2, 1), use_bias=False), (3, 2), (1, 3, 4, 2), 3),
]
#: Pallas runs interpreted on the CPU: its share is the first case at one example.
PALLAS_CASE = (dict(strides=2, transpose_kernel=True), (3, 3), (1, 3, 3, 2), 2)
ALL_IMPLS = ["auto"] + [i for name in registry.names() for i in backend_impls(name)]


def _why_not(impl, kernel_size, shape, features, kwargs):
    """The planner's reason ``impl`` cannot run this transposed conv (None: it can)."""
    args = jconv.flax_conv.parse_conv_transpose_args(
        "test", kernel_size=kernel_size, strides=kwargs.get("strides"), padding=kwargs.get("padding", "SAME"),
        kernel_dilation=kwargs.get("kernel_dilation"))
    spec = jconv.parse_conv2d(shape, "float32", kernel_size + (shape[-1], features), "float32", padding=args.pads,
                              dilation=args.kernel_dilation, lhs_dilation=args.strides,
                              allow_negative_padding=True).execute_spec()
    try:
        jconv.select.plan(spec, impl)
    except (ValueError, NotImplementedError) as e:
        return str(e)
    return None


#: each forced algorithm ("lax:taps"...) in make test-all (make test: each backend's own choice;
#: every algorithm's transposed path is tests/test_algorithms.py's and the conformance tests')
@pytest.mark.parametrize("impl", slow_unless(ALL_IMPLS, lambda impl: not forced_algorithm(impl)))
def test_every_impl_runs_the_transposed_path_or_says_why(impl):
    """Each impl string computes flax's values and gradients through both modules, or raises its
    planner's reason (never a silent switch to another implementation)."""
    cases = [PALLAS_CASE] if impl.startswith("pallas") else IMPL_CASES
    for kwargs, kernel_size, shape, features in cases:
        x = _x(shape)
        ref = nn.ConvTranspose(features, kernel_size, **kwargs)
        mod = jl.ConvTranspose(features, kernel_size, impl=impl, **kwargs)
        params = ref.init(jax.random.key(0), x)
        why = _why_not(impl, kernel_size, shape, features, kwargs)
        if why is not None:
            with pytest.raises((ValueError, NotImplementedError)) as e:
                mod.apply(params, x)
            assert str(e.value) == "conv_general_dilated: " + why.split(": ", 1)[1]
            continue
        assert_close(mod.apply(params, x), ref.apply(params, x), jnp.float32, what=impl)
        g = jax.grad(_linen_loss(mod), argnums=(0, 1))(params, x)
        g_ref = jax.grad(_linen_loss(ref), argnums=(0, 1))(params, x)
        jax.tree.map(lambda a, b: assert_close(a, b, jnp.float32, factor=5, what=f"{impl} grad"), g, g_ref)
        nref = nnx.ConvTranspose(shape[-1], features, kernel_size, rngs=nnx.Rngs(0), **kwargs)
        nmod = jn.ConvTranspose(shape[-1], features, kernel_size, rngs=nnx.Rngs(0), impl=impl, **kwargs)
        assert_close(nmod(x), nref(x), jnp.float32, what=f"nnx {impl}")
