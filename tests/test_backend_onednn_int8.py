"""jconv's ``onednn`` backend (jconv/impls/onednn.py) on integer specs: which it accepts, and
its forward's exact int32 results (ConvSpec built directly: jconv's parser takes floats)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import jax.numpy as jnp
from jax import lax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "plugins", "onednn", "tests"))
from onednn_cases import CASES, DN  # noqa: E402  (the plugin's int8 cases)

jo = pytest.importorskip("jconv_onednn")
geometry = pytest.importorskip("jconv.geometry")
from jconv.impls import registry  # noqa: E402

pytestmark = pytest.mark.skipif("onednn" not in registry.names(),
                                reason="jconv's onednn backend is not registered here")
needs_int8 = pytest.mark.skipif(not (jo.available() and jo.int8_supported()),
                                reason="this CPU has no VNNI/AMX: int8 convolutions are refused")


def _spec(name, dtype="int8", out_dtype="int32", **kw):
    n, h, w, ci, co, k, stride, dil, pad, groups = CASES[name]
    return geometry.ConvSpec(batch=n, in_size=(h, w), in_channels=ci, out_channels=co,
                             kernel_size=k, stride=stride, padding=pad, dilation=dil,
                             groups=groups, dtype=dtype, out_dtype=out_dtype, **kw)


def _onednn():
    """The backend's ``onednn`` algorithm (its forward, supports)."""
    from jconv.impls import onednn

    return onednn.ONEDNN


@needs_int8
def test_supports():
    supports = _onednn().supports
    assert supports(_spec("dense3x3")) is None
    assert supports(_spec("depthwise_m2", dtype="uint8")) is None
    assert "int32" in supports(_spec("dense3x3", out_dtype="int8"))
    assert "int32" in supports(_spec("dense3x3", out_dtype="float32"))
    assert "input dilation" in supports(_spec("dense3x3", lhs_dilation=(2, 2)))
    assert "int16" in supports(_spec("dense3x3", dtype="int16", out_dtype="int32"))


def test_supports_without_vnni(monkeypatch):
    monkeypatch.setattr(jo, "int8_supported", lambda: False)
    assert "VNNI" in _onednn().supports(_spec("dense3x3"))


@needs_int8
@pytest.mark.parametrize("xdt", ["int8", "uint8"])
@pytest.mark.parametrize("name", ["dense3x3", "depthwise_strided_dilated", "grouped_1x5", "stem7x7"])
def test_forward_exact(name, xdt):
    spec = _spec(name, dtype=xdt)
    rng = np.random.default_rng(0)
    lo, hi = (-128, 127) if xdt == "int8" else (0, 255)
    x = jnp.asarray(rng.integers(lo, hi, spec.x_shape, endpoint=True), xdt)
    w = jnp.asarray(rng.integers(-128, 127, spec.kernel_shape, endpoint=True), jnp.int8)
    y = _onednn().forward(x, w, spec)
    ref = lax.conv_general_dilated(x.astype(jnp.int32), w.astype(jnp.int32), spec.stride,
                                   spec.padding, rhs_dilation=spec.dilation, dimension_numbers=DN,
                                   feature_group_count=spec.groups,
                                   preferred_element_type=jnp.int32)
    assert y.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(y), np.asarray(ref))


@needs_int8
def test_forward_refuses_uint8_weights():
    spec = _spec("dense3x3", dtype="uint8")
    x = jnp.ones(spec.x_shape, jnp.uint8)
    with pytest.raises(TypeError, match="w dtype"):
        _onednn().forward(x, jnp.ones(spec.kernel_shape, jnp.uint8), spec)


@needs_int8
def test_forward_batch_sharded():
    """The forward's partitioning wrapper splits an int8 batch over 4 host devices, exactly."""
    code = textwrap.dedent("""
        import dataclasses, numpy as np, jax, jax.numpy as jnp
        from jax import lax
        from jax.sharding import NamedSharding, PartitionSpec as P
        from jconv.geometry import ConvSpec
        from jconv.impls import onednn
        mesh = jax.make_mesh((4,), ("batch",))
        spec = ConvSpec(batch=8, in_size=(9, 9), in_channels=8, out_channels=16, kernel_size=(3, 3),
                        padding=((1, 1), (1, 1)), stride=(2, 2), dtype="int8", out_dtype="int32")
        rng = np.random.default_rng(1)
        x = jax.device_put(jnp.asarray(rng.integers(-128, 128, spec.x_shape), jnp.int8),
                           NamedSharding(mesh, P("batch")))
        w = jnp.asarray(rng.integers(-128, 128, spec.kernel_shape), jnp.int8)
        y = jax.jit(lambda x, w: onednn.ONEDNN.forward(x, w, spec))(x, w)
        ref = lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), preferred_element_type=jnp.int32)
        assert y.sharding.is_equivalent_to(NamedSharding(mesh, P("batch")), 4), y.sharding
        np.testing.assert_array_equal(np.asarray(y), np.asarray(ref))
        print("ok")
    """)
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
