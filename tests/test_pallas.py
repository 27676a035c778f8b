"""impl="pallas": forward and VJP vs XLA, TPU interpret mode with race / out-of-bounds checks,
cross-lowering (jax.export for TPU and CUDA), tile rules, batch sharding.

The real TPU compiler (libtpu, compile-only) is exercised in test_pallas_tpu.py.
Interpret mode is slow on CPU: shapes are tiny and the grid is a subset of the core's.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import NamedSharding, PartitionSpec as P

import jconv
from jconv import primitive, targets
from jconv.geometry import parse_conv2d
from jconv.spec import ExecSpec
from jconv.impls import xla
from jconv.impls.pallas import calls, ops
from jconv.impls.pallas import tiling as tiling_mod
from jconv.impls.pallas.tiling import BlockSizes, KernelFitError, get_default, make_tiling
from jconv_experiments.suite import CASES, SUITES
from jconv.testing import assert_close
from test_conv import GRID, _ids, kwargs_of, make_inputs
from grids import share


def _vjp_check(c, impl="pallas", dtype=np.float32, hw=(7, 6)):
    x, k, b = make_inputs(c, seed=7, hw=hw)
    args = [jnp.asarray(a, dtype) for a in (x, k) + (() if b is None else (b,))]

    def f(impl_, *a):
        return jconv.conv2d(*a, impl=impl_, precision="highest", **kwargs_of(c))

    ref_args = [a.astype(jnp.float32) for a in args]
    y_ref, vjp_ref = jax.vjp(functools.partial(f, "xla"), *ref_args)
    y, vjp = jax.vjp(functools.partial(f, impl), *args)
    assert y.dtype == dtype and y.shape == y_ref.shape
    assert_close(y, y_ref, dtype, what="pallas forward")
    ct = jnp.asarray(np.random.default_rng(8).normal(size=y_ref.shape), jnp.float32)
    for name, g, g_ref, a in zip(("dx", "dw", "db"), vjp(ct.astype(dtype)), vjp_ref(ct), args):
        assert g.shape == g_ref.shape and g.dtype == a.dtype, name
        assert_close(g, g_ref, dtype, factor=2, what=f"pallas {name}")


# every value of every factor of the core's grid appears (greedy cover: 0, 8, 14, 17, 31),
# plus unbatched / depthwise-multiplier / NCHW-grouped combinations
PALLAS_GRID = [GRID[i] for i in (0, 8, 14, 17, 31, 3, 22, 26, 37)]


@pytest.mark.parametrize("c", PALLAS_GRID, ids=_ids)
def test_forward_and_vjp_match_xla(c):
    """Layouts, padding forms and modes, stride, dilation, groups/depthwise, bias, flip, unbatched."""
    _vjp_check(c)


@pytest.mark.parametrize("dtype,ci", [(jnp.bfloat16, 5), (jnp.bfloat16, 11), (jnp.float16, 17)],
                         ids=["bf16-grouped", "bf16-depthwise", "f16-depthwise-x2"])
def test_half_precision(dtype, ci):
    _vjp_check(GRID[ci], dtype=dtype)


def test_preferred_element_type_and_odd_sizes():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(3, 11, 13, 5)), jnp.bfloat16)
    w = jnp.asarray(rng.normal(size=(2, 3, 5, 7)), jnp.bfloat16)
    kw = dict(stride=(2, 3), padding=((2, 1), (0, 3)), preferred_element_type=jnp.float32)
    y = jconv.conv2d(x, w, impl="pallas", **kw)
    ref = jconv.conv2d(x.astype(jnp.float32), w.astype(jnp.float32), impl="xla", precision="highest",
                       stride=(2, 3), padding=((2, 1), (0, 3)))
    assert y.dtype == jnp.float32
    assert_close(y, ref, jnp.bfloat16)


def test_transposed_conv_and_negative_padding():
    """conv_general_dilated: input dilation (transposed conv) and negative (cropping) padding."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 5, 6, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
    for pads, lhs in ((((1, 2), (1, 2)), (2, 2)), (((-1, 2), (2, -1)), (1, 1))):
        def f(impl, x_, w_):
            return jconv.conv_general_dilated(x_, w_, (1, 1), pads, lhs_dilation=lhs,
                                              dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                              precision="highest", impl=impl)
        y_ref, vjp_ref = jax.vjp(functools.partial(f, "xla"), x, w)
        y, vjp = jax.vjp(functools.partial(f, "pallas"), x, w)
        assert_close(y, y_ref, np.float32)
        ct = jnp.ones_like(y_ref)
        for g, g_ref in zip(vjp(ct), vjp_ref(ct)):
            assert_close(g, g_ref, np.float32, factor=2)


def _pallas_calls(jaxpr) -> int:
    """pallas_calls in what the convolution primitives of ``jaxpr`` lower to on the CPU."""
    return sum(str(k).count("pallas_call") for k in primitive.kernel_jaxprs(jaxpr))


def test_really_pallas_no_xla_conv():
    """Forward, dx and dw are pallas_calls; no XLA convolution anywhere (no silent fallback)."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 4)), jnp.float32)
    for w_shape, groups in (((3, 3, 4, 8), 1), ((3, 3, 1, 4), 4), ((3, 3, 2, 6), 2)):
        w = jnp.asarray(rng.normal(size=w_shape), jnp.float32)
        f = functools.partial(jconv.conv2d, padding="SAME", stride=2, groups=groups, impl="pallas")
        fwd = jax.make_jaxpr(f)(x, w)
        grad = jax.make_jaxpr(jax.grad(lambda a, b: jnp.sum(f(a, b) ** 2), argnums=(0, 1)))(x, w)
        for jaxpr in (fwd, grad):
            assert "conv_general_dilated" not in str(jaxpr)
            assert all("conv_general_dilated" not in str(k) for k in primitive.kernel_jaxprs(jaxpr))
            assert {e.params["impl"] for e in primitive.conv_eqns(jaxpr)} == {"pallas"}
        assert _pallas_calls(fwd) == 1
        assert _pallas_calls(grad) == 3  # forward, input gradient, weight gradient


@pytest.mark.parametrize("kw,w_shape", [
    # (make test: depthwise x2; the conformance tests' higher order covers the dense geometries)
    pytest.param(dict(stride=2, padding=((1, 0), (2, 1)), dilation=(1, 2)), (3, 2, 2, 4), marks=pytest.mark.slow),
    (dict(groups=2, padding="SAME"), (3, 3, 1, 4)),                  # depthwise x2
    pytest.param(dict(groups=2, stride=(1, 2), padding=1), (2, 3, 1, 2), marks=pytest.mark.slow),  # x1, strided
], ids=["dense-s2-d", "depthwise-x2", "depthwise-s12"])
def test_second_order_matches_xla(kw, w_shape):
    """Every derivative of the Pallas ops is again a Pallas op: grad-of-grad matches XLA's."""
    rng = np.random.default_rng(12)
    x = jnp.asarray(rng.normal(size=(2, 6, 7, 2)), jnp.float32)
    w = jnp.asarray(rng.normal(size=w_shape), jnp.float32)

    def second(impl):
        f = functools.partial(jconv.conv2d, impl=impl, precision="highest", **kw)
        gx = lambda a, c: jax.grad(lambda a_: jnp.sum(f(a_, c) ** 2))(a)  # noqa: E731
        gw = lambda a, c: jax.grad(lambda c_: jnp.sum(jnp.sin(f(a, c_))))(c)  # noqa: E731
        return (jax.grad(lambda c: jnp.sum(gx(x, c) ** 2))(w), jax.grad(lambda a: jnp.sum(gw(a, w) ** 2))(x))

    jaxpr = jax.make_jaxpr(lambda: second("pallas"))()
    kernels = [str(k) for k in primitive.kernel_jaxprs(jaxpr)]
    assert "conv_general_dilated" not in str(jaxpr) and len(kernels) >= 4
    assert all("pallas_call" in k and "conv_general_dilated" not in k for k in kernels)
    for got, want in zip(second("pallas"), second("xla")):
        assert_close(got, want, np.float32, factor=4)


@pytest.mark.cpu_only
@pytest.mark.parametrize("fold", [True, False], ids=["folded", "windows"])
def test_folded_taps_match_xla(fold):
    """Few input channels: taps folded into the contraction (XLA im2col + 1x1 kernel) or not."""
    spec = ExecSpec(2, (9, 8), 3, 5, (3, 2), stride=(2, 1), dilation=(1, 2))
    rng = np.random.default_rng(6)
    xp = jnp.asarray(rng.normal(size=(2, 9, 8, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 2, 3, 5)), jnp.float32)

    def ref(a, c):
        return jax.lax.conv_general_dilated(a, c, (2, 1), "VALID", rhs_dilation=(1, 2),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest")

    y_ref, vjp = jax.vjp(ref, xp, w)
    g = jnp.asarray(rng.normal(size=y_ref.shape), jnp.float32)
    y = calls.forward_valid(xp, w, spec, target=targets.CPU, out_dtype=jnp.float32, fold=fold)
    dw = calls.weight_grad_valid(xp, g, w.shape, spec, target=targets.CPU, fold=fold)
    assert_close(y, y_ref, np.float32)
    assert_close(dw, vjp(g)[1], np.float32, factor=2)


def test_fold_rule():
    stem = ExecSpec(1, (230, 230), 3, 64, (7, 7), stride=(2, 2))
    wide = ExecSpec(1, (16, 16), 256, 256, (3, 3))
    assert tiling_mod.fold_taps(stem, "tpu") and tiling_mod.fold_taps(stem, "cuda")
    assert not tiling_mod.fold_taps(stem, "cpu")
    assert not tiling_mod.fold_taps(wide, "tpu")
    assert tiling_mod.folded(stem).in_channels == 147 and tiling_mod.folded(stem).out_size == stem.out_size


def test_float64_is_refused():
    with jax.enable_x64(True):
        x = jnp.ones((1, 4, 4, 2), jnp.float64)
        w = jnp.ones((3, 3, 2, 2), jnp.float64)
        with pytest.raises(NotImplementedError, match="impl='pallas' does not support float64"):
            jconv.conv2d(x, w, impl="pallas")


# ------------------------------------------------------------------------------------------
# TPU semantics in interpret mode: race detection, out-of-bounds reads raise, NaN-filled
# uninitialised memory (a read of an unwritten accumulator would poison the result)
# ------------------------------------------------------------------------------------------

INTERPRET_CASES = [
    # (x shape, w shape, conv kwargs, forward BlockSizes or None)
    pytest.param((1, 7, 6, 3), (3, 2, 3, 8), dict(stride=2, padding="SAME"), None, marks=pytest.mark.slow),
    ((1, 6, 6, 4), (3, 3, 1, 8), dict(groups=4, padding=1, stride=(1, 2)), None),
    # two input-channel blocks (the "arbitrary" reduction axis) and two output-channel blocks,
    # taps as shifted windows of the stride's phases (256 channels: no folding)
    ((1, 6, 5, 256), (2, 3, 256, 130), dict(stride=(2, 1), padding=1), BlockSizes(2, 128, 128, 128, 128, 8, "tpu")),
]


@pytest.mark.cpu_only
@pytest.mark.parametrize("xs,ws,kw,blocks", INTERPRET_CASES, ids=lambda v: str(v).replace(" ", ""))
def test_tpu_interpret_races_and_bounds(xs, ws, kw, blocks):
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call as tpu_interpret

    params = pltpu.InterpretParams(detect_races=True, out_of_bounds_reads="raise", num_cores_or_threads=2)
    pltpu.reset_tpu_interpret_mode_state()
    spec = parse_conv2d(xs, "float32", ws, "float32", precision="highest", **kw).execute_spec()
    rng = np.random.default_rng(0)
    x, w = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in (xs, ws))
    y_ref, vjp = jax.vjp(lambda a, c: xla.forward(a, c, spec), x, w)
    g = jnp.asarray(rng.normal(size=y_ref.shape), jnp.float32)
    dx_ref, dw_ref = vjp(g)
    kw = dict(spec=spec, target=targets.get("v5e"), interpret=params)
    y = jax.jit(lambda a, c: ops.spec_forward(a, c, blocks=blocks, **kw))(x, w)
    dx = jax.jit(lambda a, c: ops.spec_input_grad(a, c, **kw))(g, w)
    dw = jax.jit(lambda a, c: ops.spec_weight_grad(a, c, **kw))(x, g)
    assert tpu_interpret.races is not None and not tpu_interpret.races.races_found
    assert_close(y, y_ref, np.float32, what="forward")
    assert_close(dx, dx_ref, np.float32, factor=2, what="dx")
    assert_close(dw, dw_ref, np.float32, factor=2, what="dw")


@pytest.mark.cpu_only
def test_race_detector_catches_a_parallel_reduction(monkeypatch):
    """Negative control: marking the weight gradient's reduction axes "parallel" (two simulated
    cores write the same output block) is reported as a race, so the test above can fail."""
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call as tpu_interpret

    real = calls.call_kwargs
    monkeypatch.setattr(calls, "call_kwargs", lambda t, i, sem: real(t, i, ("parallel",) * len(sem)))
    params = pltpu.InterpretParams(detect_races=True, out_of_bounds_reads="raise", num_cores_or_threads=2)
    pltpu.reset_tpu_interpret_mode_state()
    spec = parse_conv2d((2, 6, 5, 3), "float32", (3, 3, 3, 8), "float32", padding=1).execute_spec()
    fn = functools.partial(ops.spec_weight_grad, spec=spec, target=targets.get("v5e"), interpret=params)
    jax.block_until_ready(jax.jit(fn)(jnp.ones((2, 6, 5, 3)), jnp.ones((2, 6, 5, 8))))
    assert tpu_interpret.races.races_found
    pltpu.reset_tpu_interpret_mode_state()


# ------------------------------------------------------------------------------------------
# cross-lowering: the exported module holds the Pallas kernels for the target platform
# ------------------------------------------------------------------------------------------

_TRITON = "__gpu$xla.gpu.triton"
EXPORT_CASES = ["mnist_conv1", "tiny_depthwise", "tiny_grouped_s2_nchw", "resnet50_s3_3x3s2"]


def _export(fn, platform, *args):
    checks = [export.DisabledSafetyCheck.custom_call(_TRITON)] if platform == "cuda" else []
    return export.export(jax.jit(fn), platforms=[platform], disabled_checks=checks)(*args).mlir_module()


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
@pytest.mark.parametrize("name", EXPORT_CASES)
def test_export_contains_pallas_kernels(name, platform):
    case = CASES[name]
    xs = jax.ShapeDtypeStruct(case.x_shape(2), jnp.float32)
    ws = jax.ShapeDtypeStruct(case.w_shape(), jnp.float32)

    def f(x, w):
        return case.apply(x, w, impl="pallas")

    def loss(x, w):
        return jnp.sum(f(x, w) ** 2)  # needs the forward, dx and dw

    marker = "tpu_custom_call" if platform == "tpu" else _TRITON
    fwd = _export(f, platform, xs, ws)
    grad = _export(jax.grad(loss, argnums=(0, 1)), platform, xs, ws)
    assert fwd.count(marker) == 1
    assert grad.count(marker) == 3  # forward, input gradient, weight gradient
    for text in (fwd, grad):
        assert "stablehlo.convolution" not in text


# ------------------------------------------------------------------------------------------
# tile sizes: validation, per-target rules, full coverage (a grid never truncates)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    (dict(block_h=0), "block_h"),
    (dict(block_ci=100, chunk_ci=100), "multiple of 128"),
    (dict(block_ci=256, chunk_ci=96), "chunk_ci"),
    (dict(w_multiple=4), "multiple of 8"),
    (dict(target="rocm"), "target"),
])
def test_block_sizes_validation(kwargs, match):
    base = dict(block_h=4, block_ci=256, chunk_ci=256, block_co=128, lane=128, w_multiple=8, target="tpu")
    with pytest.raises(ValueError, match=match):
        BlockSizes(**{**base, **kwargs})


def test_block_sizes_triton_powers_of_two():
    with pytest.raises(ValueError, match="power of 2"):
        BlockSizes(4, 48, 16, 32, 16, 8, "cuda")
    with pytest.raises(ValueError, match=">= 16"):
        BlockSizes(4, 8, 8, 32, 16, 8, "cuda")


@pytest.mark.parametrize("name", list(SUITES["default"]) + ["mnist_conv2", "tiny_grouped_s2_nchw"])
def test_default_tiles_cover_every_layer(name):
    case = CASES[name]
    problem = case.spec(2).execute_spec().valid_spec()
    ho, wo = problem.out_size
    for target in (targets.get("v5e"), targets.get("v4"), targets.get("l4"), targets.CPU):
        tl = make_tiling(problem, get_default(problem, target), target)
        b = tl.blocks
        assert tl.out_rows >= ho and tl.out_rows - tl.rows < ho  # covers, no empty tile
        assert tl.out_w >= wo and tl.out_w % b.w_multiple == 0
        assert tl.cin_block_total % b.block_ci == 0 and tl.cout_block_total % b.block_co == 0
        g = problem.groups
        assert tl.bundles * tl.group_bundle >= g or tl.depthwise
        assert len(tl.taps) == problem.taps
        assert tiling_mod.fits(tl, target) is None
        target = target.platform
        if target == "tpu":
            assert b.block_ci % 128 == 0 and b.block_co % 128 == 0 and tl.out_w % 8 == 0
        if target == "cuda":
            for v in (b.block_ci, b.chunk_ci, b.block_co, tl.rows, tl.out_w, tl.cin_block_total):
                assert v & (v - 1) == 0, (name, v)
            assert tl.rows * tl.out_w >= 16 and b.chunk_ci >= 16


# ------------------------------------------------------------------------------------------
# sharding: a batch-sharded input keeps its sharding (shard_map over the batch axis)
# ------------------------------------------------------------------------------------------


@pytest.mark.multi_device
@pytest.mark.parametrize("axis_type", ["Explicit", "Auto"])
def test_batch_sharding_is_kept(axis_type):
    """Inside jax.set_mesh: explicit batch sharding, or auto sharding (split over the mesh)."""
    devices = jax.devices()
    assert len(devices) >= 4, "tests/conftest.py forces 4 host devices"
    mesh = jax.make_mesh((4,), ("batch",), devices=devices[:4],
                         axis_types=(getattr(jax.sharding.AxisType, axis_type),))
    sharding = NamedSharding(mesh, P("batch"))
    rng = np.random.default_rng(13)
    x_np = rng.normal(size=(8, 10, 10, 4)).astype(np.float32)
    k_np = rng.normal(size=(3, 3, 1, 8)).astype(np.float32)
    f = jax.jit(functools.partial(jconv.conv2d, groups=4, padding="SAME", impl="pallas"))
    with jax.set_mesh(mesh):
        x = jax.device_put(jnp.asarray(x_np), sharding)
        k = jnp.asarray(k_np)
        y = f(x, k)
        assert y.sharding.is_equivalent_to(sharding, y.ndim), y.sharding
        hlo = f.lower(x, k).compile().as_text()
        assert "all-gather" not in hlo and "all-to-all" not in hlo
        gx, gk = jax.jit(jax.grad(lambda a, c: jnp.sum(f(a, c) ** 2), argnums=(0, 1)))(x, k)
        assert gx.sharding.is_equivalent_to(sharding, gx.ndim)
        gk_closure = jax.jit(jax.grad(lambda c: jnp.sum(f(x, c) ** 2)))(k)  # x closed over
    ref = functools.partial(jconv.conv2d, groups=4, padding="SAME", impl="xla", precision="highest")
    assert_close(y, ref(x_np, k_np), np.float32)
    gx_ref, gk_ref = jax.grad(lambda a, c: jnp.sum(ref(a, c) ** 2), argnums=(0, 1))(x_np, k_np)
    assert_close(gx, gx_ref, np.float32, factor=2)
    assert_close(gk, gk_ref, np.float32, factor=2)
    assert_close(gk_closure, gk_ref, np.float32, factor=2)


@pytest.mark.multi_device
def test_auto_sharding_without_mesh_context_is_split_by_xla():
    """The common case: an auto-sharded input, no mesh in context (the mesh unknown when
    tracing). XLA's partitioner splits the Pallas ops (custom_partitioning) along the batch:
    output and dx keep the batch sharding, no all-gather; dw is all-reduced over the shards."""
    mesh = jax.make_mesh((4,), ("batch",), devices=jax.devices()[:4], axis_types=(jax.sharding.AxisType.Auto,))
    sharding = NamedSharding(mesh, P("batch"))
    rng = np.random.default_rng(14)
    x_np = rng.normal(size=(4, 6, 6, 2)).astype(np.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(4,)), jnp.float32)
    x = jax.device_put(jnp.asarray(x_np), sharding)
    f = functools.partial(jconv.conv2d, padding=1, stride=(1, 2), impl="pallas")
    ref = functools.partial(jconv.conv2d, padding=1, stride=(1, 2), impl="xla", precision="highest")
    fwd = jax.jit(f)
    grad = jax.jit(jax.grad(lambda a, c, d: jnp.sum(f(a, c, d) ** 2), argnums=(0, 1, 2)))
    y = fwd(x, k, b)
    gx, gk, gb = grad(x, k, b)
    assert y.sharding.is_equivalent_to(sharding, y.ndim), y.sharding
    assert gx.sharding.is_equivalent_to(sharding, gx.ndim), gx.sharding
    fwd_hlo = fwd.lower(x, k, b).compile().as_text()
    grad_hlo = grad.lower(x, k, b).compile().as_text()
    for hlo in (fwd_hlo, grad_hlo):
        assert "all-gather" not in hlo and "all-to-all" not in hlo
    assert "all-reduce" in grad_hlo  # dw (and db): per-shard sums added up
    assert_close(y, ref(x_np, k, b), np.float32)
    refs = jax.grad(lambda a, c, d: jnp.sum(ref(a, c, d) ** 2), argnums=(0, 1, 2))(x_np, k, b)
    for name, got, want in zip(("dx", "dw", "db"), (gx, gk, gb), refs):
        assert_close(got, want, np.float32, factor=2, what=name)
    # an input closed over (a jit constant), and a batch that does not divide over the mesh
    # (runs unsplit: XLA's padded shards must not enter dw)
    gk_closure = jax.jit(jax.grad(lambda c: jnp.sum(f(x, c) ** 2)))(k)
    assert_close(gk_closure, jax.grad(lambda c: jnp.sum(ref(x_np, c) ** 2))(k), np.float32, factor=2)
    x8_np = rng.normal(size=(8, 6, 6, 2)).astype(np.float32)
    x8 = jax.device_put(jnp.asarray(x8_np), sharding)
    gk6 = jax.jit(jax.grad(lambda a, c: jnp.sum(f(a[:6], c) ** 2), argnums=1))(x8, k)
    assert_close(gk6, jax.grad(lambda c: jnp.sum(ref(x8_np[:6], c) ** 2))(k), np.float32, factor=2)


@pytest.mark.multi_device
@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_export_batch_sharded_inside_set_mesh(platform):
    """jax.export of a multi-device auto-sharded program: inside set_mesh (shard_map; without it
    the custom_partitioning callback cannot be serialized), one kernel, batch kept sharded."""
    mesh = jax.make_mesh((4,), ("batch",), devices=jax.devices()[:4], axis_types=(jax.sharding.AxisType.Auto,))
    xs = jax.ShapeDtypeStruct((8, 6, 6, 2), jnp.float32, sharding=NamedSharding(mesh, P("batch")))
    ws = jax.ShapeDtypeStruct((3, 3, 2, 4), jnp.float32, sharding=NamedSharding(mesh, P()))
    f = functools.partial(jconv.conv2d, padding=1, impl="pallas")
    with jax.set_mesh(mesh):
        text = _export(f, platform, xs, ws)
    assert text.count("tpu_custom_call" if platform == "tpu" else _TRITON) == 1
    assert "all_gather" not in text and "CustomSPMDPartitioning" not in text


def test_vmap():
    """custom_partitioning has no batching rule: under vmap the ops run unpartitioned."""
    rng = np.random.default_rng(15)
    x = jnp.asarray(rng.normal(size=(3, 2, 5, 5)), jnp.float32)  # NCHW, vmapped per example
    k = jnp.asarray(rng.normal(size=(4, 2, 3, 3)), jnp.float32)
    f = functools.partial(jconv.conv2d, layout="NCHW", padding=1, impl="pallas")
    ref = functools.partial(jconv.conv2d, layout="NCHW", padding=1, impl="xla", precision="highest")
    assert_close(jax.vmap(lambda xi: f(xi, k))(x), ref(x, k), np.float32)

    def grads(fn):
        return jax.vmap(jax.grad(lambda xi, c: jnp.sum(fn(xi, c) ** 2), argnums=(0, 1)), in_axes=(0, None))(x, k)

    for got, want in zip(grads(f), grads(ref)):
        assert_close(got, want, np.float32, factor=2)


# ------------------------------------------------------------------------------------------
# the Triton kernel forms, interpreted on the CPU with a GPU target's tiles (the deviceless
# compile in test_aot_cuda.py checks they compile; this checks what they compute)
# ------------------------------------------------------------------------------------------

TRITON_CASES = [
    # (x shape, w shape, conv kwargs): dense strided, grouped, depthwise x2, 1x1, dilated
    ((3, 9, 7, 5), (3, 3, 5, 6), dict(stride=2, padding=1)),
    ((2, 6, 6, 8), (3, 3, 2, 8), dict(groups=4, padding="SAME")),
    ((2, 7, 6, 3), (3, 2, 1, 6), dict(groups=3, padding=((1, 0), (2, 1)))),
    ((2, 5, 5, 40), (1, 1, 40, 24), dict()),
    ((1, 9, 9, 4), (3, 3, 4, 4), dict(dilation=2, padding=2)),
]
#: more taps than Triton unrolls: a loop over the tap grid (5x5 input gradient; 7x7 dilated);
#: then geometries of tests/test_lowering_properties.py whose tap loop has one input-channel chunk
#: (a constant channel offset, which crashed Triton's lowering): 7x7 stride 3 (its input
#: gradient), 5x5 grouped (an NCHW caller's, as the kernel sees it)
TRITON_TAP_LOOP_CASES = [
    ((1, 9, 8, 6), (5, 5, 6, 8), dict(stride=2, padding=2)),
    ((1, 14, 10, 4), (7, 7, 4, 4), dict(dilation=(2, 1), padding=((6, 5), (3, 2)))),
    ((4, 12, 12, 8), (7, 7, 8, 16), dict(stride=3)),
    ((1, 32, 40, 8), (5, 5, 4, 8), dict(groups=2)),
]


def test_tap_grid():
    """Triton loops over the taps of a regular one-phase grid; anything else stays unrolled."""
    from jconv.impls.pallas.kernels import _tap_grid

    taps = tuple((0, 2 * i, j) for i in range(7) for j in range(7))
    assert _tap_grid(taps) == (7, 0, 0, 2, 1)
    assert _tap_grid(((0, 1, 1),)) == (1, 1, 1, 0, 0)
    assert _tap_grid(((0, 0, 0), (1, 0, 0))) is None  # two phases (a strided forward)
    assert _tap_grid(((0, 0, 0), (0, 0, 2), (0, 1, 0), (0, 1, 1))) is None  # irregular
    tl = make_tiling(parse_conv2d((1, 16, 12, 4), "float32", (7, 7, 4, 4), "float32", dilation=(2, 1))
                     .execute_spec().valid_spec(), target=targets.get("l4"))
    assert _tap_grid(tl.taps) == (7, 0, 0, 2, 1)


@pytest.mark.cpu_only
@pytest.mark.parametrize("xs,ws,kw", share(TRITON_CASES + TRITON_TAP_LOOP_CASES, every=3, keep=(8,), args=3),
                         ids=lambda v: str(v).replace(" ", ""))
def test_triton_kernel_forms_interpreted(xs, ws, kw):
    spec = parse_conv2d(xs, "float32", ws, "float32", precision="highest", **kw).execute_spec()
    rng = np.random.default_rng(1)
    x, w = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in (xs, ws))
    y_ref, vjp = jax.vjp(lambda a, c: xla.forward(a, c, spec), x, w)
    g = jnp.asarray(rng.normal(size=y_ref.shape), jnp.float32)
    dx_ref, dw_ref = vjp(g)
    # l4 / h100: their SM counts split each weight-gradient reduction over several programs;
    # "few_sms": two programs share an odd number of steps (the clamped, masked last step)
    few_sms = dataclasses.replace(targets.get("l4"), sm_count=1)
    gpus = (("l4", targets.get("l4")), ("h100", targets.get("h100")), ("few_sms", few_sms))
    if (xs, ws, kw) in TRITON_TAP_LOOP_CASES:
        gpus = gpus[:1]  # the tap loop (forward kernel) does not depend on the SM count
    for name, target in gpus:
        kwargs = dict(spec=spec, target=target, interpret=True)
        assert_close(ops.spec_forward(x, w, **kwargs), y_ref, np.float32, what=f"{name} forward")
        assert_close(ops.spec_input_grad(g, w, **kwargs), dx_ref, np.float32, factor=2, what=f"{name} dx")
        assert_close(ops.spec_weight_grad(x, g, **kwargs), dw_ref, np.float32, factor=2, what=f"{name} dw")


@pytest.mark.cpu_only
def test_a_batch_over_the_memory_budget_runs_in_chunks():
    """A target whose memory holds one example's operands per call: the batch runs in chunks
    (forward, input gradient, weight gradient alike; 3 examples: one padded example), with the
    same results; one example too big for the device is a clear error."""
    xs, ws, kw = TRITON_CASES[0]
    spec = parse_conv2d(xs, "float32", ws, "float32", precision="highest", **kw).execute_spec()
    l4 = targets.get("l4")
    one = calls.working_set(dataclasses.replace(spec.valid_spec(), batch=1), l4, "fwd", jnp.float32)
    small = dataclasses.replace(l4, memory_bytes=int(1.5 * one / calls.HBM_BUDGET))
    assert calls.batch_chunk(spec.valid_spec(), small, "fwd", jnp.float32) == 1
    rng = np.random.default_rng(2)
    x, w = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in (xs, ws))
    y_ref, vjp = jax.vjp(lambda a, c: xla.forward(a, c, spec), x, w)
    g = jnp.asarray(rng.normal(size=y_ref.shape), jnp.float32)
    dx_ref, dw_ref = vjp(g)
    kwargs = dict(spec=spec, target=small, interpret=True)
    fwd = jax.make_jaxpr(lambda a, c: ops.spec_forward(a, c, **kwargs))(x, w)
    assert "scan" in str(fwd)  # lax.map over the chunks
    assert_close(ops.spec_forward(x, w, **kwargs), y_ref, np.float32, what="forward")
    assert_close(ops.spec_input_grad(g, w, **kwargs), dx_ref, np.float32, factor=2, what="dx")
    assert_close(ops.spec_weight_grad(x, g, **kwargs), dw_ref, np.float32, factor=2, what="dw")
    tiny = dataclasses.replace(l4, memory_bytes=one // 4)
    with pytest.raises(KernelFitError, match=r"one example's operands take .* GiB"):
        ops.spec_forward(x, w, spec=spec, target=tiny)


def test_kernels_that_cannot_fit_are_clear_errors_at_trace_time():
    """Tiles are sized from the target; when even the smallest do not fit, the error names the
    target and the limit before anything is compiled. A GPU older than Triton's minimum is
    refused the same way."""
    spec = CASES["vgg16_conv4_2"].spec(2).execute_spec()
    x = jax.ShapeDtypeStruct(spec.x_shape, jnp.float32)
    w = jax.ShapeDtypeStruct(spec.w_shape, jnp.float32)
    tiny_tpu = dataclasses.replace(targets.get("v5e"), vmem_bytes=1 << 20)
    with pytest.raises(KernelFitError, match=r"TPU v5 lite \(1 MiB VMEM per core\).*VMEM"):
        jax.eval_shape(lambda a, c: ops.forward(a, c, spec, tiny_tpu), x, w)
    tiny_gpu = dataclasses.replace(targets.get("l4"), smem_per_block=2 << 10)
    with pytest.raises(KernelFitError, match=r"NVIDIA L4 .*shared memory"):
        jax.eval_shape(lambda a, c: ops.forward(a, c, spec, tiny_gpu), x, w)
    with pytest.raises(NotImplementedError, match=r"compute capability 8.0 or newer; Tesla T4"):
        jax.eval_shape(lambda a, c: ops.forward(a, c, spec, targets.get("t4")), x, w)


def test_recording_tiles_reports_each_kernel_as_chosen():
    """``calls.recording_tiles`` reads back, while lowering, the tiles every kernel got (the
    table in docs/tiles.md): its role, kernel, blocks equal to ``get_default``'s for that
    target, the im2col fold and the batch chunks; nothing is recorded outside the block."""
    v5e, l4 = targets.get("v5e"), targets.get("l4")
    dense = CASES["resnet50_s3_3x3"].spec(4).execute_spec()
    dw_spec = CASES["mobilenetv2_dw3x3_s2"].spec(4).execute_spec()
    stem = CASES["resnet50_stem_7x7s2"].spec(4).execute_spec()

    def record(spec, target, which):
        x = jax.ShapeDtypeStruct(spec.x_shape, jnp.float32)
        w = jax.ShapeDtypeStruct(spec.w_shape, jnp.float32)
        g = jax.ShapeDtypeStruct(spec.out_shape, jnp.float32)
        fn, args = {"forward": (ops.spec_forward, (x, w)), "input gradient": (ops.spec_input_grad, (g, w)),
                    "weight gradient": (ops.spec_weight_grad, (x, g))}[which]
        with calls.recording_tiles() as log:
            jax.eval_shape(lambda *a: fn(*a, spec=spec, target=target), *args)
        return log

    for target in (v5e, l4):
        (fwd,) = record(dense, target, "forward")
        want = get_default(dense.valid_spec(), target)
        assert (fwd["role"], fwd["kernel"], fwd["examples"], fwd["folded"]) == ("forward", "conv_fwd", 4, False)
        assert (fwd["block_h"], fwd["block_ci"], fwd["block_co"]) == (want.block_h, want.block_ci, want.block_co)
        mem = "vmem" if target.platform == "tpu" else "smem"
        assert 0 < fwd[f"{mem}_model"] <= fwd[f"{mem}_budget"]
        (dx,) = record(dense, target, "input gradient")
        assert (dx["role"], dx["kernel"]) == ("input gradient", "conv_fwd")
        (dw,) = record(dw_spec, target, "weight gradient")
        assert (dw["role"], dw["kernel"]) == ("weight gradient", "depthwise_dw")
    (folded_fwd,) = record(stem, v5e, "forward")
    assert calls._should_fold(stem.valid_spec(), v5e, jnp.float32)
    assert folded_fwd["folded"] is True and folded_fwd["block_h"] >= 1
    one = calls.working_set(dataclasses.replace(dense.valid_spec(), batch=1), l4, "fwd", jnp.float32)
    small = dataclasses.replace(l4, memory_bytes=int(1.5 * one / calls.HBM_BUDGET))
    (chunked,) = record(dense, small, "forward")
    assert chunked["examples"] == 1
    x = jax.ShapeDtypeStruct(dense.x_shape, jnp.float32)
    w = jax.ShapeDtypeStruct(dense.w_shape, jnp.float32)
    jax.eval_shape(lambda a, c: ops.spec_forward(a, c, spec=dense, target=v5e), x, w)  # not recorded
    assert calls._TILE_LOG.get() is None
