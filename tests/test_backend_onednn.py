"""The conformance tests (tests/conformance.py) for impl="onednn": oneDNN through XLA's FFI (skipped when the jconv-onednn plugin is not installed)."""

import contextlib
import functools
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import jconv
from conformance import BackendConformance, backend_impls
from jconv import select
from jconv.impls import registry
from jconv_experiments.suite import CASES
from jconv.testing import assert_close


class TestConformance(BackendConformance):
    #: the backend's choice and ``f32``; ``onednn:onednn`` is what ``"onednn"`` runs but for
    #: bfloat16 on a CPU without bfloat16 instructions (where it refuses it: test_bfloat16_...)
    IMPLS = [impl for impl in backend_impls("onednn") if impl != "onednn:onednn"]
    FLOAT64 = False  # oneDNN computes float32 and bfloat16

needs_plugin = pytest.mark.skipif("onednn" not in registry.names(),
                                  reason="the jconv-onednn plugin is not installed here")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@needs_plugin
@pytest.mark.parametrize("in_context", [False, True], ids=["xla_partitioner", "set_mesh"])
def test_batch_sharding_is_kept(in_context):
    """A batch-sharded input on 4 CPU devices stays split: XLA's partitioner splits the FFI
    calls (custom_partitioning), or shard_map does inside jax.set_mesh; dw is summed."""
    mesh = jax.make_mesh((4,), ("batch",), devices=jax.devices()[:4], axis_types=(jax.sharding.AxisType.Auto,))
    sharding = NamedSharding(mesh, P("batch"))
    rng = np.random.default_rng(3)
    x_np = rng.normal(size=(8, 7, 7, 4)).astype(np.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 2, 6)), jnp.float32)
    x = jax.device_put(jnp.asarray(x_np), sharding)
    f = functools.partial(jconv.conv2d, padding=1, stride=(2, 1), groups=2, impl="onednn")
    ref = functools.partial(jconv.conv2d, padding=1, stride=(2, 1), groups=2, impl="xla", precision="highest")
    grad = jax.jit(jax.grad(lambda a, c: jnp.sum(f(a, c) ** 2), argnums=(0, 1)))
    ctx = jax.set_mesh(mesh) if in_context else contextlib.nullcontext()
    with ctx:
        y = jax.jit(f)(x, k)
        gx, gk = grad(x, k)
        hlo = grad.lower(x, k).compile().as_text()
    assert y.sharding.is_equivalent_to(sharding, y.ndim), y.sharding
    assert gx.sharding.is_equivalent_to(sharding, gx.ndim), gx.sharding
    assert "all-gather" not in hlo
    assert_close(y, ref(x_np, k), np.float32)
    gx_ref, gk_ref = jax.grad(lambda a, c: jnp.sum(ref(a, c) ** 2), argnums=(0, 1))(x_np, k)
    assert_close(gx, gx_ref, np.float32, factor=2)
    assert_close(gk, gk_ref, np.float32, factor=2)


@needs_plugin
def test_export_says_a_native_call_is_not_portable():
    f = jax.jit(functools.partial(jconv.conv2d, impl="onednn"))
    args = (jax.ShapeDtypeStruct((1, 5, 5, 2), jnp.float32), jax.ShapeDtypeStruct((3, 3, 2, 2), jnp.float32))
    with pytest.raises(NotImplementedError, match=r"impl='onednn' cannot be compiled for tpu.*native CPU library"):
        jax.export.export(f, platforms=["tpu"])(*args)
    with pytest.raises(ValueError, match=r"jconv_onednn_conv_fwd"):  # CPU: jax refuses the custom call
        jax.export.export(f, platforms=["cpu"])(*args)


def test_without_the_plugin_onednn_is_a_clear_error_and_auto_is_unchanged():
    """A machine without the plugin (its import blocked): impl='onednn' says it is not installed
    and how to install it; auto plans what the lax/xla rules plan."""
    code = r"""
import sys
sys.modules["jconv_onednn"] = None  # the import fails as on a machine without the plugin
import jconv
from jconv import select
from jconv.impls import registry
from jconv_experiments.suite import CASES
from jconv_experiments.suite import CASES
assert "onednn" not in registry.names() and "onednn" in registry.unavailable()
try:
    jconv.conv2d(__import__("jax.numpy").numpy.ones((1, 4, 4, 1)), __import__("jax.numpy").numpy.ones((3, 3, 1, 1)),
                 impl="onednn")
except ValueError as e:
    print("ERROR", e)
for name in ("mobilenetv2_dw3x3_s1", "resnet50_s2_3x3", "resnet50_s4_3x3", "resnext_g32_3x3"):
    p = jconv.plan_for(CASES[name].spec(4), "auto", platform="cpu")
    print("PLAN", name, p.impl, p.algorithm)
"""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ERROR conv2d: impl (='onednn') is not available here: the jconv-onednn plugin is not installed" in out.stdout
    assert "pip install ./plugins/onednn" in out.stdout
    plans = dict(line.split(" ", 2)[1:] for line in out.stdout.splitlines() if line.startswith("PLAN"))
    assert plans == {"mobilenetv2_dw3x3_s1": "lax depthwise", "resnet50_s2_3x3": "lax xla_fwd",
                     "resnet50_s4_3x3": "xla xla", "resnext_g32_3x3": "lax mac"}


@needs_plugin
@pytest.mark.parametrize("dtype,impl", [("float32", "onednn"), ("bfloat16", "onednn"), ("bfloat16", "onednn:f32")])
def test_algorithm_grid(dtype, impl):
    """tests/test_algorithms.py's geometries (every engine path: stride, dilation, groups,
    depthwise x2, asymmetric and negative padding, 1x1, input dilation: dense, grouped with
    kernel dilation, depthwise): forward and VJP against XLA. Input dilation with a window
    stride, or with padding beyond dilation * (k - 1), is refused (test below). bfloat16: the
    backend's choice (bfloat16 kernels, or ``f32`` on a CPU without bfloat16 instructions) and
    ``f32``."""
    from test_algorithms import GEOMS, _inputs, _run, _xla

    ran = []
    for geom in GEOMS:
        x, w = _inputs(geom)
        if geom[0] in _REFUSED_TRANSPOSED:
            continue
        xa, wa = jnp.asarray(x, dtype), jnp.asarray(w, dtype)
        y_ref, vjp_ref = jax.vjp(functools.partial(_xla, geom), xa.astype(jnp.float32), wa.astype(jnp.float32))
        y, vjp = jax.vjp(functools.partial(_run, geom, impl), xa, wa)
        assert y.dtype == jnp.dtype(dtype)
        assert_close(y, y_ref, dtype, precision="highest", what=f"{geom[0]} forward")
        ct = jnp.asarray(np.random.default_rng(1).normal(size=y.shape), jnp.float32)
        for name, got, want in zip(("dx", "dw"), vjp(ct.astype(dtype)), vjp_ref(ct)):
            assert_close(got, want, dtype, factor=2, precision="highest", what=f"{geom[0]} {name}")
        ran.append(geom[0])
    assert len(ran) == len(GEOMS) - len(_REFUSED_TRANSPOSED), ran


#: tests/test_algorithms.py's input-dilated geometries oneDNN does not run, and why
_REFUSED_TRANSPOSED = {"lhs2_stride2": r"window stride 1, not \(2, 2\)",
                       "lhs3_k1_empty_phases": r"padding up to dilation \* \(kernel - 1\)"}


@needs_plugin
def test_transposed_runs_as_backward_data_and_says_what_it_refuses():
    """Input dilation runs as oneDNN's backward-data of a strided convolution (one custom call
    per pass, no zeros inserted); a window stride, or padding beyond dilation * (k - 1), is a
    clear refusal naming the reason."""
    from test_algorithms import GEOMS, _inputs, _run

    case = CASES["unet_up_transposed"]
    x = jnp.ones(case.x_shape(2), jnp.float32)
    w = jnp.ones(case.w_shape(), jnp.float32)

    def calls(f):
        return sorted(re.findall(r"@jconv_onednn_(\w+)\(", jax.jit(f).lower(x, w).as_text()))

    assert calls(lambda a, c: case.apply(a, c, impl="onednn")) == ["conv_bwd_data"]
    grad = jax.grad(lambda a, c: jnp.sum(case.apply(a, c, impl="onednn") ** 2), argnums=(0, 1))
    assert calls(grad) == ["conv_bwd_data", "conv_bwd_weights", "conv_fwd"]
    for geom in GEOMS:
        if geom[0] in _REFUSED_TRANSPOSED:
            x, w = _inputs(geom)
            with pytest.raises(NotImplementedError, match=_REFUSED_TRANSPOSED[geom[0]]):
                _run(geom, "onednn", x, w)


@needs_plugin
def test_auto_on_the_cpu_runs_onednn_where_it_can_and_the_lax_rules_elsewhere():
    """With the plugin, auto plans oneDNN for what it runs and says so; what it cannot run
    (float16) keeps the lax/XLA rules; other platforms are untouched; and
    select.auto_excluded / JCONV_AUTO_EXCLUDE give back the plans without it."""
    for name in ("mobilenetv2_dw3x3_s1", "resnet50_s2_3x3", "resnet50_s4_3x3", "resnext_g32_3x3",
                 "resnet50_s2_1x1_expand", "convnext_dw7x7"):
        p = jconv.plan_for(CASES[name].spec(4), "auto", platform="cpu")
        assert (p.impl, p.algorithm) == ("onednn", "onednn"), (name, p)
        assert p.reason.startswith("auto: ") and "oneDNN" in p.reason
        assert jconv.plan_for(CASES[name].spec(4), "auto", platform="tpu").impl == "xla"
    p = jconv.plan_for(CASES["unet_up_transposed"].spec(1), "auto", platform="cpu")
    assert (p.impl, p.algorithm) == ("onednn", "onednn") and "transposed" in p.reason, p
    p = jconv.plan_for(CASES["resnet50_s2_3x3"].spec(2, "float16"), "auto", platform="cpu")
    assert p.impl != "onednn", p
    with select.auto_excluded("onednn"):
        assert jconv.plan_for(CASES["resnext_g32_3x3"].spec(4), "auto", platform="cpu").algorithm == "mac"
    assert jconv.plan_for(CASES["resnext_g32_3x3"].spec(4), "auto", platform="cpu").impl == "onednn"


# ---- NCHW callers: the arrays reach oneDNN as they are (select.operand_layout) -------------

_NCHW_KW = dict(stride=(2, 1), padding=((1, 0), (2, 1)), groups=2, layout="NCHW")


def _nchw_inputs(seed=11, batch=2):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=(batch, 4, 7, 6)), jnp.float32),
            jnp.asarray(rng.normal(size=(6, 2, 3, 2)), jnp.float32))


@needs_plugin
def test_nchw_reaches_onednn_without_transposes():
    """An NCHW conv2d planned on oneDNN (explicitly or by auto) runs on the NCHW / OIHW arrays:
    no transpose in the program, forward and gradients; a backend that takes only NHWC keeps
    its transposes; the operand layout is decided in one place."""
    x, w = _nchw_inputs()

    def hlo(impl, grad=False):
        f = functools.partial(jconv.conv2d, impl=impl, **_NCHW_KW)
        if grad:
            f = jax.grad(lambda a, c, f=f: jnp.sum(jnp.sin(f(a, c))), argnums=(0, 1))
        return jax.jit(f).lower(x, w).as_text()

    for impl in ("onednn", "auto"):
        assert "transpose" not in hlo(impl) and "transpose" not in hlo(impl, grad=True), impl
    assert "transpose" in hlo("lax")
    spec = jconv.parse_conv2d(x.shape, x.dtype, w.shape, w.dtype, **_NCHW_KW).execute_spec()
    assert spec.layout == "NHWC" and spec.caller_layout == "NCHW"
    assert select.operand_layout(spec, "onednn", "onednn").layout == "NCHW"
    assert select.operand_layout(spec, "onednn", "onednn").w_shape == w.shape
    assert select.operand_layout(spec, "xla", "xla") is spec


@needs_plugin
def test_nchw_values_gradients_and_transformations():
    """Forward, grad, jvp, hessian and vmap (of the activation, the kernel, both: the batching
    rule regroups channels through NHWC) of an NCHW oneDNN convolution against XLA's."""
    x, w = _nchw_inputs()
    f = functools.partial(jconv.conv2d, impl="onednn", precision="highest", **_NCHW_KW)
    ref = functools.partial(jconv.conv2d, impl="xla", precision="highest", **_NCHW_KW)
    assert_close(f(x, w), ref(x, w), np.float32, precision="highest")
    loss = lambda fn: lambda a, c: jnp.sum(jnp.sin(fn(a, c)))  # noqa: E731
    for got, want in zip(jax.grad(loss(f), argnums=(0, 1))(x, w), jax.grad(loss(ref), argnums=(0, 1))(x, w)):
        assert_close(got, want, np.float32, factor=2, precision="highest")
    t = (jnp.ones_like(x) * 0.5, jnp.ones_like(w) * -0.25)
    assert_close(jax.jvp(f, (x, w), t)[1], jax.jvp(ref, (x, w), t)[1], np.float32, factor=2, precision="highest")
    h = jax.hessian(lambda c: jnp.sum(jnp.tanh(f(x[:1], c)) ** 2))(w)
    h_ref = jax.hessian(lambda c: jnp.sum(jnp.tanh(ref(x[:1], c)) ** 2))(w)
    assert_close(h, h_ref, np.float32, factor=8, precision="highest")
    rng = np.random.default_rng(12)
    xs = jnp.asarray(rng.normal(size=(3,) + x.shape), jnp.float32)
    ws = jnp.asarray(rng.normal(size=(3,) + w.shape), jnp.float32)
    for axes, args in (((0, None), (xs, w)), ((None, 0), (x, ws)), ((0, 0), (xs, ws)), ((1, 3), (
            jnp.moveaxis(xs, 0, 1), jnp.moveaxis(ws, 0, 3)))):
        assert_close(jax.vmap(f, axes)(*args), jax.vmap(ref, axes)(*args), np.float32, precision="highest",
                     what=f"vmap {axes}")
    per_example = lambda fn: jax.vmap(jax.grad(lambda a, c: jnp.sum(fn(a[None], c) ** 2), argnums=(0, 1)),  # noqa: E731
                                      (0, None))
    for got, want in zip(per_example(f)(x, w), per_example(ref)(x, w)):
        assert_close(got, want, np.float32, factor=2, precision="highest", what="vmap of grad")


@needs_plugin
def test_nchw_batch_sharding_is_kept():
    mesh = jax.make_mesh((4,), ("batch",), devices=jax.devices()[:4], axis_types=(jax.sharding.AxisType.Auto,))
    x, w = _nchw_inputs(batch=8)
    xs = jax.device_put(x, NamedSharding(mesh, P("batch")))
    f = functools.partial(jconv.conv2d, impl="onednn", **_NCHW_KW)
    ref = functools.partial(jconv.conv2d, impl="xla", precision="highest", **_NCHW_KW)
    grad = jax.jit(jax.grad(lambda a, c: jnp.sum(f(a, c) ** 2), argnums=(0, 1)))
    y, (gx, gw) = jax.jit(f)(xs, w), grad(xs, w)
    assert y.sharding.is_equivalent_to(NamedSharding(mesh, P("batch")), 4)
    assert "all-gather" not in grad.lower(xs, w).compile().as_text()
    assert_close(y, ref(x, w), np.float32)
    for got, want in zip((gx, gw), jax.grad(lambda a, c: jnp.sum(ref(a, c) ** 2), argnums=(0, 1))(x, w)):
        assert_close(got, want, np.float32, factor=2)


@needs_plugin
def test_nchw_empty_batch_and_padding_modes():
    x, w = _nchw_inputs()
    for kw in (dict(padding_mode="circular", flip_kernel=True), dict()):
        args = dict(_NCHW_KW, **kw)
        got = jconv.conv2d(x[:, :, :5], w, impl="onednn", precision="highest", **args)
        assert_close(got, jconv.conv2d(x[:, :, :5], w, impl="xla", precision="highest", **args), np.float32,
                     precision="highest")
        assert jconv.conv2d(x[:0, :, :5], w, impl="onednn", **args).shape == (0,) + got.shape[1:]


@needs_plugin
@pytest.mark.parametrize("native", [False, True], ids=["no_bf16_instructions", "bf16_instructions"])
def test_bfloat16_runs_in_float32_without_bfloat16_instructions(monkeypatch, native):
    """impl='onednn' on bfloat16: oneDNN's bfloat16 kernels where the CPU has the instructions,
    else ``f32``: the float32 primitives on float32 copies (exact), the result rounded once to
    bfloat16, the same numbers as the float32 convolution of the upcast operands rounded; the
    forced bfloat16 algorithm on such a CPU is a clear error that names ``f32``."""
    jo = __import__("jconv_onednn")
    monkeypatch.setattr(jo, "bf16_supported", lambda: native)
    spec = CASES["mnist_conv2"].spec(2, "bfloat16")
    plan = jconv.plan_for(spec, "onednn", platform="cpu")
    assert plan.algorithm == ("onednn" if native else "f32"), plan
    if not native:
        assert "no bfloat16 instructions" in plan.reason
        with pytest.raises(ValueError, match=r"impl='onednn:onednn' bfloat16 needs a CPU with bfloat16 "
                                             r"instructions.*'onednn:f32' computes it in float32"):
            jconv.conv2d(jnp.ones((1, 5, 5, 2), jnp.bfloat16), jnp.ones((3, 3, 2, 2), jnp.bfloat16),
                         impl="onednn:onednn")
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(2, 9, 8, 6)), jnp.bfloat16)
        w = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.bfloat16)
        f = functools.partial(jconv.conv2d, padding=1, stride=(2, 1), groups=2)
        y = jax.jit(functools.partial(f, impl="onednn"))(x, w)
        want = f(x.astype(jnp.float32), w.astype(jnp.float32), impl="onednn").astype(jnp.bfloat16)
        assert y.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(want, np.float32))
