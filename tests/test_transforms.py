"""conv2d under jax transformations: grad (1st and 2nd order), vjp vs XLA's, vmap, jit, sharding."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jax.test_util import check_grads

import jconv
from jconv.impls.lax import ALGORITHMS
from jconv.testing import assert_close
from test_conv import GRID, _ids, kwargs_of, make_inputs
from grids import share


@pytest.mark.parametrize("c", share(GRID[1::2], every=3), ids=_ids)
def test_vjp_matches_xla(c):
    x, k, b = make_inputs(c, seed=7, hw=(7, 6))
    args = [jnp.asarray(x), jnp.asarray(k)] + ([] if b is None else [jnp.asarray(b)])

    def f(impl, *a):
        return jconv.conv2d(*a, impl=impl, precision="highest", **kwargs_of(c))

    y_ref, vjp_ref = jax.vjp(functools.partial(f, "xla"), *args)
    ct = jnp.asarray(np.random.default_rng(8).normal(size=y_ref.shape), jnp.float32)
    grads_ref = vjp_ref(ct)
    for impl in ("lax",) + tuple(f"lax:{a}" for a in ALGORITHMS if a != "depthwise"):
        y, vjp = jax.vjp(functools.partial(f, impl), *args)
        assert_close(y, y_ref, np.float32, what=f"{impl} forward")
        for name, g, g_ref in zip(("dx", "dw", "db"), vjp(ct), grads_ref):
            assert g.shape == g_ref.shape
            assert_close(g, g_ref, np.float32, factor=2, what=f"{impl} {name}")


SECOND_ORDER = [GRID[i] for i in (1, 6, 11, 17, 24, 33)]


@pytest.mark.cpu_only
@pytest.mark.parametrize("impl", ["lax", "lax:im2col", "lax:taps"])
@pytest.mark.parametrize("c", share(SECOND_ORDER, every=2), ids=_ids)
def test_check_grads_second_order(c, impl):
    with jax.enable_x64(True):
        x, k, b = make_inputs(c, dtype=np.float64, seed=9, hw=(6, 5), batch=1)
        args = (jnp.asarray(x), jnp.asarray(k)) + (() if b is None else (jnp.asarray(b),))
        f = functools.partial(jconv.conv2d, impl=impl, **kwargs_of(c))
        check_grads(f, args, order=2, modes=("rev",), atol=1e-5, rtol=1e-5)


@pytest.mark.cpu_only
def test_check_grads_depthwise_second_order():
    with jax.enable_x64(True):
        rng = np.random.default_rng(10)
        x = jnp.asarray(rng.normal(size=(1, 6, 6, 3)))
        k = jnp.asarray(rng.normal(size=(3, 3, 1, 6)))
        f = functools.partial(jconv.conv2d, groups=3, padding="SAME", stride=2, impl="lax:depthwise")
        check_grads(f, (x, k), order=2, modes=("rev",), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["xla", "lax"])
def test_vmap_over_unbatched_examples(impl):
    rng = np.random.default_rng(11)
    x = jnp.asarray(rng.normal(size=(5, 3, 9, 9)), jnp.float32)  # NCHW batch of 5
    k = jnp.asarray(rng.normal(size=(4, 3, 3, 3)), jnp.float32)
    f = functools.partial(jconv.conv2d, layout="NCHW", padding=1, stride=2, impl=impl)
    batched = f(x, k)
    mapped = jax.vmap(lambda xi: f(xi, k))(x)  # each xi is unbatched (C, H, W)
    assert_close(mapped, batched, np.float32)
    # vmap over kernels too (per-example weights)
    ks = jnp.stack([k, 2 * k])
    per_k = jax.vmap(lambda kk: f(x, kk))(ks)
    assert_close(per_k[1], 2 * batched, np.float32)


def test_jit_of_conv_is_cached_per_spec():
    rng = np.random.default_rng(12)
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
    f = jax.jit(functools.partial(jconv.conv2d, padding="SAME", impl="lax"))
    y1 = f(x, k)
    y2 = f(x + 1, k)
    assert y1.shape == y2.shape == (2, 8, 8, 4)
    assert f._cache_size() == 1


@pytest.mark.multi_device
@pytest.mark.parametrize("impl", ["xla", "lax", "lax:im2col", "lax:taps", "lax:depthwise"])
def test_batch_sharding_is_kept(impl):
    devices = jax.devices()
    assert len(devices) >= 4, "tests/conftest.py forces 4 host devices"
    mesh = Mesh(np.array(devices[:4]), ("batch",))
    sharding = NamedSharding(mesh, P("batch"))
    rng = np.random.default_rng(13)
    x = jax.device_put(jnp.asarray(rng.normal(size=(8, 10, 10, 4)), jnp.float32), sharding)
    k = jnp.asarray(rng.normal(size=(3, 3, 1, 8)), jnp.float32)
    f = jax.jit(functools.partial(jconv.conv2d, groups=4, padding="SAME", impl=impl))
    y = f(x, k)
    assert y.sharding.is_equivalent_to(sharding, y.ndim), y.sharding
    assert_close(y, jconv.conv2d(np.asarray(x), k, groups=4, padding="SAME", impl="xla"), np.float32)
    # the compiled program keeps the batch split: no all-gather of the input
    hlo = f.lower(x, k).compile().as_text()
    assert "all-gather" not in hlo and "all-to-all" not in hlo
    # and the gradient w.r.t. the input stays batch-sharded too
    gx = jax.jit(jax.grad(lambda xx: jnp.sum(f(xx, k) ** 2)))(x)
    assert gx.sharding.is_equivalent_to(sharding, gx.ndim)


@pytest.mark.cpu_only
def test_forward_mode_through_auto_on_the_cpu():
    """impl="auto" on the CPU picks a jconv backend here (oneDNN where its plugin is installed, the
    lax engine's depthwise without it); jax.jvp, jacfwd and hessian go through it (the
    convolution primitive's rules), matching XLA's."""
    rng = np.random.default_rng(21)
    x = jnp.asarray(rng.normal(size=(1, 5, 5, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 1, 3)), jnp.float32)
    kw = dict(groups=3, padding=1, precision="highest")
    spec = jconv.parse_conv2d(x.shape, x.dtype, w.shape, w.dtype, groups=3, padding=1)
    assert jconv.plan_for(spec, "auto").impl in ("lax", "onednn")

    def f(impl):
        return lambda c: jnp.sum(jnp.tanh(jconv.conv2d(x, c, impl=impl, **kw)) ** 2)

    t, t_ref = jax.jvp(f("auto"), (w,), (jnp.ones_like(w),))[1], jax.jvp(f("xla"), (w,), (jnp.ones_like(w),))[1]
    assert_close(t, t_ref, np.float32, factor=2, precision="highest")
    assert_close(jax.jacfwd(f("auto"))(w), jax.jacfwd(f("xla"))(w), np.float32, factor=2, precision="highest")
    assert_close(jax.hessian(f("auto"))(w), jax.hessian(f("xla"))(w), np.float32, factor=8, precision="highest")
