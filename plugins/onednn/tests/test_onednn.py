"""Tests of the jconv_onednn plugin against XLA's own convolution.

Run after installing the plugin:  pip install ./plugins/onednn
                                  python -m pytest plugins/onednn/tests
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import subprocess
import sys
import textwrap
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

DTYPES = {
    # dtype: tolerance on max|err| / max|ref|
    "float32": 1e-5,
    "bfloat16": 2e-2,
}


def _needs_bf16(dtype):
    if dtype == "bfloat16" and not jo.bf16_supported():
        pytest.skip("this CPU has no native bfloat16")


def _make(case, dtype, seed=0):
    n, h, w, ci, co, (kh, kw), stride, dil, pad, groups = case
    # numpy's generator: jax.random would compile a kernel per new shape.
    rng = np.random.default_rng(seed)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape, np.float32)).astype(dtype)
    x = normal(n, h, w, ci)
    wt = normal(kh, kw, ci // groups, co)
    b = normal(co)
    geo = dict(stride=stride, padding=pad, dilation=dil, groups=groups)
    y_shape = jo.conv_output_shape(x.shape, wt.shape, stride=stride, padding=pad, dilation=dil)
    dy = normal(*y_shape)
    return x, wt, b, dy, geo


def _ref_conv(x, w, geo):
    """XLA's convolution in float32 at full precision."""
    return lax.conv_general_dilated(
        x.astype(jnp.float32), w.astype(jnp.float32), geo["stride"], geo["padding"],
        rhs_dilation=geo["dilation"], dimension_numbers=DN,
        feature_group_count=geo["groups"], precision="highest")


def _close(got, ref, tol, what):
    got = np.asarray(jnp.asarray(got, jnp.float32))
    ref = np.asarray(jnp.asarray(ref, jnp.float32))
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    scale = max(float(np.max(np.abs(ref))), 1e-30) if ref.size else 1.0
    err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    assert err <= tol * scale, f"{what}: max|err| {err:.3g} > {tol} * max|ref| {scale:.3g}"


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("name", list(CASES))
def test_forward(name, dtype):
    _needs_bf16(dtype)
    x, w, b, _, geo = _make(CASES[name], dtype)
    tol = DTYPES[dtype]
    ref = _ref_conv(x, w, geo)
    y = jax.jit(lambda x, w: jo.conv_forward(x, w, **geo))(x, w)
    assert y.dtype == jnp.dtype(dtype)
    _close(y, ref, tol, "forward")
    yb = jax.jit(lambda x, w, b: jo.conv_forward(x, w, b, **geo))(x, w, b)
    _close(yb, ref + b.astype(jnp.float32).reshape(1, 1, 1, -1), tol, "forward+bias")


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("name", list(CASES))
def test_backward(name, dtype):
    _needs_bf16(dtype)
    x, w, _, dy, geo = _make(CASES[name], dtype, seed=1)
    tol = DTYPES[dtype]
    _, vjp = jax.vjp(lambda x, w: _ref_conv(x, w, geo), x.astype(jnp.float32),
                     w.astype(jnp.float32))
    dx_ref, dw_ref = vjp(dy.astype(jnp.float32))
    db_ref = jnp.sum(dy.astype(jnp.float32), axis=(0, 1, 2))

    dx = jax.jit(lambda dy, w: jo.conv_backward_data(dy, w, x_shape=x.shape, **geo))(dy, w)
    assert dx.dtype == jnp.dtype(dtype) and dx.shape == x.shape
    _close(dx, dx_ref, tol, "backward-data")

    dw = jax.jit(lambda x, dy: jo.conv_backward_weights(x, dy, w_shape=w.shape, **geo))(x, dy)
    assert dw.dtype == jnp.dtype(dtype) and dw.shape == w.shape
    _close(dw, dw_ref, tol, "backward-weights")

    dw2, db = jax.jit(lambda x, dy: jo.conv_backward_weights(
        x, dy, w_shape=w.shape, with_bias=True, **geo))(x, dy)
    _close(dw2, dw_ref, tol, "backward-weights (with bias)")
    _close(db, db_ref, tol, "bias gradient")


def test_padding_forms_and_plain_weights_layout():
    """int / (ph, pw) / ((t, b), (l, r)) paddings; strings are jconv's to resolve (a clear error);
    and the 'plain' weight layout knob."""
    x, w, _, _, _ = _make(CASES["dense3x3"], "float32")
    geo = dict(stride=(1, 1), padding=((1, 1), (1, 1)), dilation=(1, 1), groups=1)
    ref = _ref_conv(x, w, geo)
    _close(jo.conv_forward(x, w, padding=1), ref, 1e-5, "padding=int")
    _close(jo.conv_forward(x, w, padding=(1, 1)), ref, 1e-5, "padding=pair")
    _close(jo.conv_forward(x, w, padding=((1, 1), (1, 1))), ref, 1e-5, "padding=pairs")
    with pytest.raises(TypeError, match=r"padding \(='SAME'\) must be explicit.*jconv.conv2d resolves"):
        jo.conv_forward(x, w, padding="SAME")
    assert jo.conv_output_shape(x.shape, w.shape, stride=2, padding=((0, 1), (0, 1))) == (2, 4, 4, 16)
    assert jo.conv_output_shape(x.shape, w.shape, padding=0) == (2, 6, 6, 16)
    try:
        jo.set_weights_layout("plain")
        _close(jax.jit(lambda x, w: jo.conv_forward(x, w, padding=1))(x, w), ref, 1e-5,
               "plain weights")
    finally:
        jo.set_weights_layout("any")


def test_nan_propagation():
    x = jnp.ones((1, 6, 6, 2)).at[0, 2, 3, 1].set(jnp.nan)
    w = jnp.ones((3, 3, 2, 2))
    y = jo.conv_forward(x, w, padding=1)
    ref = jnp.isnan(_ref_conv(x, w, dict(stride=(1, 1), padding=((1, 1), (1, 1)),
                                          dilation=(1, 1), groups=1)))
    np.testing.assert_array_equal(np.isnan(np.asarray(y)), np.asarray(ref))
    assert int(jnp.sum(jnp.isnan(y))) == 9 * 2
    dy = jnp.ones((1, 6, 6, 2))
    dw = jo.conv_backward_weights(x, dy, w_shape=w.shape, padding=1)
    assert bool(jnp.all(jnp.isnan(dw[..., 1, :])))  # every tap sees the NaN
    assert not bool(jnp.any(jnp.isnan(dw[..., 0, :])))
    dx = jo.conv_backward_data(dy.at[0, 0, 0, 0].set(jnp.nan), w, x_shape=x.shape, padding=1)
    assert int(jnp.sum(jnp.isnan(dx))) == 4 * 2  # the 2x2 inputs that reach y[0,0]


@pytest.mark.parametrize("dtype", ["float16", "int32"])
def test_unsupported_dtype_python_error(dtype):
    x = jnp.ones((1, 5, 5, 2), dtype)
    w = jnp.ones((3, 3, 2, 2), dtype)
    with pytest.raises(TypeError, match="unsupported dtype"):
        jo.conv_forward(x, w)
    with pytest.raises(TypeError, match="unsupported dtype"):
        jo.conv_backward_data(jnp.ones((1, 3, 3, 2), dtype), w, x_shape=x.shape)
    with pytest.raises(TypeError, match="unsupported dtype"):
        jo.conv_backward_weights(x, jnp.ones((1, 3, 3, 2), dtype), w_shape=w.shape)


def test_float64_error():
    with jax.enable_x64(True):
        x = jnp.ones((1, 5, 5, 2), jnp.float64)
        w = jnp.ones((3, 3, 2, 2), jnp.float64)
        assert x.dtype == jnp.float64
        with pytest.raises(TypeError, match="unsupported dtype float64"):
            jo.conv_forward(x, w)


def test_mixed_dtypes_error():
    with pytest.raises(TypeError, match="same dtype|share one dtype"):
        jo.conv_forward(jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 2), jnp.bfloat16))


def test_native_error_path_is_an_exception():
    """Bypass the Python checks: the handler itself must fail cleanly."""
    attrs = dict(stride=np.array([1, 1], np.int64), padding=np.array([0, 0, 0, 0], np.int64),
                 dilation=np.array([1, 1], np.int64), groups=np.int64(1), layout=np.int64(0),
                 activation=np.int64(0))
    call = jax.ffi.ffi_call(jo.TARGETS["fwd"], jax.ShapeDtypeStruct((1, 3, 3, 2), jnp.float16),
                            vmap_method="sequential")
    with pytest.raises(Exception, match="unsupported dtype float16"):
        jax.block_until_ready(call(jnp.ones((1, 5, 5, 2), jnp.float16),
                                   jnp.ones((3, 3, 2, 2), jnp.float16), **attrs))
    # Wrong output shape for the geometry.
    call = jax.ffi.ffi_call(jo.TARGETS["fwd"], jax.ShapeDtypeStruct((1, 4, 3, 2), jnp.float32),
                            vmap_method="sequential")
    with pytest.raises(Exception, match="does not match the geometry"):
        jax.block_until_ready(call(jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 2)), **attrs))
    # Channels that do not fit groups.
    bad = dict(attrs, groups=np.int64(3))
    call = jax.ffi.ffi_call(jo.TARGETS["fwd"], jax.ShapeDtypeStruct((1, 3, 3, 2), jnp.float32),
                            vmap_method="sequential")
    with pytest.raises(Exception, match="groups"):
        jax.block_until_ready(call(jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 2)), **bad))
    # An unknown layout code.
    call = jax.ffi.ffi_call(jo.TARGETS["fwd"], jax.ShapeDtypeStruct((1, 3, 3, 2), jnp.float32),
                            vmap_method="sequential")
    with pytest.raises(Exception, match=r"layout must be 0 \(NHWC\) or 1 \(NCHW\), got 2"):
        jax.block_until_ready(call(jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 2)), **dict(attrs, layout=np.int64(2))))
    # The process is still healthy.
    assert float(jo.conv_forward(jnp.ones((1, 3, 3, 1)), jnp.ones((3, 3, 1, 1)))[0, 0, 0, 0]) == 9.0


def test_python_geometry_errors():
    x = jnp.ones((1, 5, 5, 4))
    with pytest.raises(ValueError, match="groups"):
        jo.conv_forward(x, jnp.ones((3, 3, 4, 6)), groups=4)
    with pytest.raises(ValueError, match="negative"):
        jo.conv_forward(x, jnp.ones((3, 3, 4, 4)), padding=((-1, 0), (0, 0)))
    with pytest.raises(ValueError, match="stride"):
        jo.conv_forward(x, jnp.ones((3, 3, 4, 4)), stride=0)
    with pytest.raises(ValueError, match="dy shape"):
        jo.conv_backward_data(jnp.ones((1, 4, 4, 4)), jnp.ones((3, 3, 4, 4)), x_shape=x.shape)


def test_bf16_refused_without_native_support(monkeypatch):
    monkeypatch.setattr(jo.settings, "bf16_supported", lambda: False)
    with pytest.raises(TypeError, match="bfloat16"):
        jo.conv_forward(jnp.ones((1, 5, 5, 2), jnp.bfloat16), jnp.ones((3, 3, 2, 2), jnp.bfloat16))


def test_zero_batch():
    x = jnp.ones((0, 6, 6, 4))
    w = jnp.ones((3, 3, 4, 8))
    b = jnp.arange(8.0)
    assert jo.conv_forward(x, w, b, padding=1).shape == (0, 6, 6, 8)
    dy = jnp.ones((0, 6, 6, 8))
    assert jo.conv_backward_data(dy, w, x_shape=x.shape, padding=1).shape == x.shape
    dw, db = jo.conv_backward_weights(x, dy, w_shape=w.shape, padding=1, with_bias=True)
    assert dw.shape == w.shape and db.shape == (8,)
    assert not bool(jnp.any(dw)) and not bool(jnp.any(db))


def test_kernel_larger_than_padded_input_gives_empty_output():
    """As in XLA: a zero-size output, and zero gradients."""
    x, w = jnp.ones((2, 4, 4, 3)), jnp.ones((7, 7, 3, 2))
    ref = lax.conv_general_dilated(x, w, (1, 1), ((1, 0), (0, 0)), dimension_numbers=DN)
    y = jo.conv_forward(x, w, padding=((1, 0), (0, 0)))
    assert y.shape == ref.shape == (2, 0, 0, 2)
    dx = jo.conv_backward_data(y, w, x_shape=x.shape, padding=((1, 0), (0, 0)))
    dw, db = jo.conv_backward_weights(x, y, w_shape=w.shape, padding=((1, 0), (0, 0)),
                                      with_bias=True)
    assert dx.shape == x.shape and not bool(jnp.any(dx))
    assert dw.shape == w.shape and not bool(jnp.any(dw)) and not bool(jnp.any(db))


def test_zero_input_channels_gives_bias():
    y = jo.conv_forward(jnp.ones((2, 4, 4, 0)), jnp.ones((3, 3, 0, 3)), jnp.arange(3.0), padding=1)
    np.testing.assert_array_equal(np.asarray(y), np.broadcast_to(np.arange(3.0), (2, 4, 4, 3)))


def test_vmap_sequential():
    x, w, b, _, geo = _make(CASES["grouped"], "float32")
    xs = jnp.stack([x, 2 * x, -x])
    ys = jax.jit(jax.vmap(lambda x: jo.conv_forward(x, w, b, **geo)))(xs)
    for i in range(3):
        _close(ys[i], _ref_conv(xs[i], w, geo) + b.reshape(1, 1, 1, -1), 1e-5, f"vmap[{i}]")
    ws = jnp.stack([w, 0.5 * w])
    yw = jax.vmap(lambda w: jo.conv_forward(x, w, **geo))(ws)
    _close(yw[1], _ref_conv(x, ws[1], geo), 1e-5, "vmap over weights")


def test_cache_is_used_and_bounded():
    x, w, _, _, geo = _make(CASES["dense3x3"], "float32")
    f = jax.jit(lambda x, w: jo.conv_forward(x, w, **geo))
    jax.block_until_ready(f(x, w))
    before = jo.cache_info()
    for _ in range(3):
        jax.block_until_ready(f(x, w))
    after = jo.cache_info()
    assert after["hits"] >= before["hits"] + 3
    assert after["misses"] == before["misses"]
    old = after["capacity"]
    try:
        jo.set_cache_capacity(2)
        for c in range(1, 6):
            jax.block_until_ready(jo.conv_forward(jnp.ones((1, 5, 5, c)), jnp.ones((3, 3, c, 2))))
            assert jo.cache_info()["entries"] <= 2
        jo.set_cache_capacity(0)  # caching off: still correct
        y = jo.conv_forward(jnp.ones((1, 3, 3, 1)), jnp.ones((3, 3, 1, 1)))
        assert float(y[0, 0, 0, 0]) == 9.0 and jo.cache_info()["entries"] == 0
    finally:
        jo.set_cache_capacity(old)


def test_set_num_threads():
    x, w, b, dy, geo = _make(CASES["dense3x3"], "float32")
    f = jax.jit(lambda x, w, b: jo.conv_forward(x, w, b, **geo))
    default = jo.get_num_threads()
    assert default >= 1
    ref = np.asarray(f(x, w, b))
    try:
        jo.set_num_threads(1)
        assert jo.get_num_threads() == 1
        np.testing.assert_allclose(np.asarray(f(x, w, b)), ref, rtol=1e-6, atol=1e-6)
    finally:
        jo.set_num_threads(None)
    assert jo.get_num_threads() == default


def test_concurrent_calls_from_threads():
    """Several threads run the same cached primitive at once (user scratchpad)."""
    x, w, b, dy, geo = _make(CASES["stride2"], "float32")
    fwd = jax.jit(lambda x, w, b: jo.conv_forward(x, w, b, **geo))
    bwd = jax.jit(lambda x, dy: jo.conv_backward_weights(x, dy, w_shape=w.shape, **geo))
    y_ref = np.asarray(fwd(x, w, b))
    dw_ref = np.asarray(bwd(x, dy))
    errors = []

    def work(seed):
        try:
            for _ in range(10):
                np.testing.assert_array_equal(np.asarray(fwd(x, w, b)), y_ref)
                np.testing.assert_array_equal(np.asarray(bwd(x, dy)), dw_ref)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_version_and_describe():
    assert jo.onednn_version()[:2] == (3, 2)
    assert jo.unavailable_reason() is None
    text = jo.describe("fwd", (2, 8, 8, 16), (3, 3, 16, 16), padding=1)
    assert "scratch=" in text


def _run_python(code, env_extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **env_extra)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_import_without_library_does_not_crash():
    out = _run_python("""
        import jconv_onednn as jo
        print(jo.available(), '|', jo.unavailable_reason())
        try:
            import jax.numpy as jnp
            jo.conv_forward(jnp.ones((1, 3, 3, 1)), jnp.ones((1, 1, 1, 1)))
        except RuntimeError as e:
            print('raised', e)
    """, {"JCONV_ONEDNN_LIBRARY": "/nonexistent/libjconv_onednn.so"})
    assert out.startswith("False |") and "could not load" in out and "raised" in out


def test_batch_sharded_inputs_give_correct_results():
    """4 host devices, x sharded over the batch: results must be right.

    The calls are plain custom calls without a partitioning rule, so XLA
    gathers the batch and runs the whole convolution on every device (see
    README: XLA's generic batch partitioner would also split the weights'
    leading dimension, which is wrong for convolutions).
    """
    out = _run_python("""
        import numpy as np, jax, jax.numpy as jnp
        from jax import lax
        from jax.sharding import NamedSharding, PartitionSpec as P
        import jconv_onednn as jo
        assert jax.device_count() == 4
        mesh = jax.make_mesh((4,), ("batch",))
        xs, rep = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())
        rng = np.random.default_rng(0)
        x = jax.device_put(rng.standard_normal((8, 10, 10, 4), np.float32), xs)
        w = jax.device_put(rng.standard_normal((3, 3, 4, 6), np.float32), rep)
        dy = jax.device_put(rng.standard_normal((8, 10, 10, 6), np.float32), xs)
        geo = dict(stride=1, padding=1, dilation=1, groups=1)
        y = jax.jit(lambda x, w: jo.conv_forward(x, w, **geo))(x, w)
        dx = jax.jit(lambda dy, w: jo.conv_backward_data(dy, w, x_shape=x.shape, **geo))(dy, w)
        dw = jax.jit(lambda x, dy: jo.conv_backward_weights(x, dy, w_shape=w.shape, **geo))(x, dy)
        f = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest")
        yr, vjp = jax.vjp(f, x, w)
        dxr, dwr = vjp(dy)
        for a, r in ((y, yr), (dx, dxr), (dw, dwr)):
            assert float(jnp.max(jnp.abs(a - r))) <= 1e-5 * float(jnp.max(jnp.abs(r)))
        print("ok")
    """, {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert "ok" in out
