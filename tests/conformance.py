"""The conformance base every backend's tests subclass (tests/test_backend_<name>.py).

A backend registers itself (jconv.impls.registry) and supplies three functions of a spec; this
class checks what a user relies on, for each impl string its test file lists in ``IMPLS``:

* forward against the float64 oracle and XLA at HIGHEST, on geometries covering stride,
  dilation, asymmetric padding, groups, depthwise with a multiplier, 1x1, input dilation and
  negative padding (a geometry the algorithm cannot run is skipped when the registry says why);
* the VJP (dx, dw, db) against XLA's;
* forward mode and higher orders through the convolution primitive: ``jvp``, ``linearize``,
  ``jacfwd``, ``hessian``, ``grad`` of ``grad`` (float64 ``check_grads``, both modes, order 2);
* ``vmap`` of an activation, of a kernel, of both, and of ``grad``;
* bad inputs (the parser's errors, before any tracing) and edge cases: zero batch, a kernel as
  large as the padded input, NaN propagation, unbatched input, NCHW;
* what lax does with integer operands (no gradient: float0), empty shapes (zero batch, size or
  channels: lax's empty or zero result, zero gradients) and NumPy float64 without x64;
* JAX's own convolution tests, restated (:class:`conformance_lax.LaxConformance`; the map from
  JAX's test names to these: docs/conformance.md).

Shapes are tiny: interpreted backends (Pallas on the CPU) run every one of these (of JAX's grids,
a share: ``GRID_SHARE``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

import jconv
from jconv.impls import registry
from jconv.testing import assert_close
import lax_cases as lc
from conformance_lax import LaxConformance, check_value, why_not_case
from conformance_lax import arrays as lc_arrays
from oracle import conv2d_ref

DN = ("NHWC", "HWIO", "NHWC")

# (name, (C_in, C_out, groups), kernel, stride, dilation, lhs_dilation, padding ((t, b), (l, r)))
GEOMETRIES = [
    ("dense_s2_asym", (3, 4, 1), (3, 2), (2, 1), (1, 1), (1, 1), ((1, 0), (2, 1))),
    ("dense_dilated", (2, 3, 1), (3, 3), (1, 1), (2, 1), (1, 1), ((2, 2), (1, 1))),
    ("grouped", (4, 6, 2), (3, 3), (1, 2), (1, 1), (1, 1), ((1, 1), (1, 1))),
    ("depthwise_x2", (3, 6, 3), (3, 3), (2, 2), (1, 1), (1, 1), ((1, 1), (0, 2))),
    ("pointwise", (5, 3, 1), (1, 1), (1, 1), (1, 1), (1, 1), ((0, 0), (0, 0))),
    ("transposed", (3, 2, 1), (3, 3), (1, 1), (1, 1), (2, 2), ((1, 2), (1, 2))),
    ("negative_pad", (2, 3, 1), (2, 3), (1, 1), (1, 1), (1, 1), ((-1, 1), (1, -1))),
]


def _ids(g):
    return g[0]


def _inputs(geom, dtype=np.float32, seed=0, hw=(6, 5), batch=2):
    _, (ci, co, g), (kh, kw), *_ = geom
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch,) + hw + (ci,)).astype(dtype)
    w = rng.normal(size=(kh, kw, ci // g, co)).astype(dtype)
    return x, w


def _conv(geom, impl, precision="highest"):
    _, (_, _, g), _, s, d, l, pad = geom
    return functools.partial(jconv.conv_general_dilated, window_strides=s, padding=pad, lhs_dilation=l,
                             rhs_dilation=d, dimension_numbers=DN, feature_group_count=g, precision=precision,
                             impl=impl)


def _xla(geom, precision="highest"):
    _, (_, _, g), _, s, d, l, pad = geom
    return functools.partial(lax.conv_general_dilated, window_strides=s, padding=pad, lhs_dilation=l,
                             rhs_dilation=d, dimension_numbers=DN, feature_group_count=g, precision=precision)


def _why_not(impl: str, geom, x, w) -> str | None:
    """The registry's reason ``impl`` cannot run ``geom`` (None: it can)."""
    _, (_, _, g), _, s, d, l, pad = geom
    spec = jconv.parse_conv2d(x.shape, x.dtype, w.shape, w.dtype, stride=s, padding=pad, dilation=d,
                              lhs_dilation=l, groups=g, allow_negative_padding=True, fn="test").execute_spec()
    try:
        jconv.select.plan(spec, impl)
    except (ValueError, NotImplementedError) as e:
        return str(e)
    return None


class BackendConformance(LaxConformance):
    """Subclass with ``IMPLS = [...]`` (impl strings of one backend); tests/conftest.py
    parametrises every test's ``impl`` argument with them. JAX's own convolution tests come
    from :class:`conformance_lax.LaxConformance`."""

    IMPLS: list[str] = []
    #: float64 checks (check_grads) run only for backends that compute float64
    FLOAT64 = True
    #: the tests each forced algorithm (``"lax:taps"``...) runs in ``make test``: values and
    #: derivatives on the geometries and JAX's main grids, transposed, edge and empty cases; the
    #: others run for the backend's own choice (``IMPLS[0]``) in ``make test`` and for each forced
    #: algorithm in ``make test-all`` (tests/conftest.py). Per algorithm, tests/test_algorithms.py
    #: covers bias and layouts, dtypes (preferred, integer, complex, float16/bfloat16/float64) and
    #: second order; padding forms, dimension numbers and NumPy inputs are resolved by the parser
    #: before any algorithm is chosen
    ALGORITHMS_QUICK = ("test_forward_and_vjp", "test_lax_conv", "test_grad_conv", "test_conv_general_dilated",
                        "test_grad_conv_general_dilated", "test_conv_transpose", "test_edge_cases",
                        "test_empty_shapes")

    def _runnable(self, impl, geoms, **kw):
        """The first of ``geoms`` ``impl`` can run, with its inputs (skip when none)."""
        for geom in geoms:
            x, w = _inputs(geom, **kw)
            if _why_not(impl, geom, x, w) is None:
                return geom, x, w
        pytest.skip(f"{impl} runs none of {[g[0] for g in geoms]}")

    def _skip_unless_runs(self, impl, geom, x, w):
        why = _why_not(impl, geom, x, w)
        if why is not None:
            pytest.skip(f"{impl} cannot run {geom[0]}: {why}")

    # ---- values ------------------------------------------------------------------------------

    @pytest.mark.parametrize("geom", GEOMETRIES, ids=_ids)
    def test_forward_and_vjp(self, impl, geom):
        x, w = _inputs(geom)
        self._skip_unless_runs(impl, geom, x, w)
        _, (_, _, g), _, s, d, l, pad = geom
        ref = conv2d_ref(x, w, stride=s, padding=pad, dilation=d, groups=g, lhs_dilation=l)
        y_ref, vjp_ref = jax.vjp(_xla(geom), jnp.asarray(x), jnp.asarray(w))
        y, vjp = jax.vjp(_conv(geom, impl), jnp.asarray(x), jnp.asarray(w))
        assert y.shape == ref.shape and y.dtype == jnp.float32
        assert_close(y, ref, np.float32, precision="highest", what=f"{impl} vs oracle")
        assert_close(y, y_ref, np.float32, precision="highest", what=f"{impl} vs XLA")
        ct = jnp.asarray(np.random.default_rng(1).normal(size=y.shape), jnp.float32)
        for name, got, want in zip(("dx", "dw"), vjp(ct), vjp_ref(ct)):
            assert got.shape == want.shape
            assert_close(got, want, np.float32, factor=2, precision="highest", what=f"{impl} {name}")

    def test_bias_and_layouts(self, impl):
        """conv2d's own arguments around the backend: NCHW, bias (and its gradient), padding
        modes, flip, unbatched input."""
        rng = np.random.default_rng(2)
        x = jnp.asarray(rng.normal(size=(4, 6, 5)), jnp.float32)  # unbatched NCHW
        w = jnp.asarray(rng.normal(size=(6, 2, 3, 3)), jnp.float32)
        b = jnp.asarray(rng.normal(size=(6,)), jnp.float32)
        kw = dict(stride=(2, 1), padding=1, groups=2, layout="NCHW", padding_mode="reflect", flip_kernel=True)
        spec = jconv.parse_conv2d(x.shape, x.dtype, w.shape, w.dtype, b.shape, b.dtype, **kw).execute_spec()
        try:
            jconv.select.plan(spec, impl)
        except (ValueError, NotImplementedError) as e:
            pytest.skip(str(e))

        def loss(impl_, *a):
            return jnp.sum(jnp.sin(jconv.conv2d(*a, impl=impl_, precision="highest", **kw)))

        assert_close(loss(impl, x, w, b), loss("xla", x, w, b), np.float32, precision="highest")
        got = jax.grad(functools.partial(loss, impl), argnums=(0, 1, 2))(x, w, b)
        want = jax.grad(functools.partial(loss, "xla"), argnums=(0, 1, 2))(x, w, b)
        for name, g, r in zip(("dx", "dw", "db"), got, want):
            assert_close(g, r, np.float32, factor=2, precision="highest", what=f"{impl} {name}")

    # ---- transformations -------------------------------------------------------------------

    def test_forward_mode_and_higher_order(self, impl):
        """jvp, linearize, jacfwd, hessian and grad of grad: from the primitive's rules."""
        geom, x, w = self._runnable(impl, [GEOMETRIES[0], GEOMETRIES[3]], seed=3, hw=(4, 4), batch=1)
        x, w = jnp.asarray(x), jnp.asarray(w)
        f, f_ref = _conv(geom, impl), _xla(geom)
        tx, tw = jnp.ones_like(x) * 0.5, jnp.ones_like(w) * -0.25
        (y, t), (y_ref, t_ref) = jax.jvp(f, (x, w), (tx, tw)), jax.jvp(f_ref, (x, w), (tx, tw))
        assert_close(y, y_ref, np.float32, precision="highest", what="jvp primal")
        assert_close(t, t_ref, np.float32, factor=2, precision="highest", what="jvp tangent")
        y_lin, lin = jax.linearize(lambda a: f(a, w), x)
        assert_close(lin(tx), jax.jvp(lambda a: f_ref(a, w), (x,), (tx,))[1], np.float32, factor=2,
                     precision="highest", what="linearize")
        jf = jax.jacfwd(lambda c: f(x, c).sum(axis=(0, 1, 2)))(w)
        assert_close(jf, jax.jacfwd(lambda c: f_ref(x, c).sum(axis=(0, 1, 2)))(w), np.float32, factor=2,
                     precision="highest", what="jacfwd")

        def energy(fn):
            return lambda c: jnp.sum(jnp.tanh(fn(x, c)) ** 2)

        h = jax.hessian(energy(f))(w)
        assert_close(h, jax.hessian(energy(f_ref))(w), np.float32, factor=8, precision="highest", what="hessian")
        gg = jax.grad(lambda a: jnp.sum(jax.grad(lambda c: jnp.sum(jnp.sin(f(a, c))))(w) ** 2))(x)
        gg_ref = jax.grad(lambda a: jnp.sum(jax.grad(lambda c: jnp.sum(jnp.sin(f_ref(a, c))))(w) ** 2))(x)
        assert_close(gg, gg_ref, np.float32, factor=8, precision="highest", what="grad of grad")

    def test_check_grads_float64(self, impl):
        if not self.FLOAT64:
            pytest.skip("this backend does not compute float64")
        if jax.default_backend() == "tpu":
            pytest.skip("TPUs do not compute float64")
        geom = GEOMETRIES[3]  # depthwise with a multiplier, strided, asymmetric padding
        with jax.enable_x64(True):
            x, w = _inputs(geom, dtype=np.float64, seed=4, hw=(5, 5), batch=1)
            if _why_not(impl, geom, x, w):
                pytest.skip(_why_not(impl, geom, x, w))
            check_grads(_conv(geom, impl, precision=None), (jnp.asarray(x), jnp.asarray(w)), order=2,
                        modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)

    def test_vmap(self, impl):
        """vmap of the activation, of the kernel, of both, and of grad (per-example gradients)."""
        # grouped: the batching rule's groups trick must keep the grouping
        geom, x, w = self._runnable(impl, [GEOMETRIES[2], GEOMETRIES[3]], seed=5, hw=(5, 4), batch=2)
        rng = np.random.default_rng(6)
        xs = jnp.asarray(rng.normal(size=(3,) + x.shape), jnp.float32)
        ws = jnp.asarray(rng.normal(size=(3,) + w.shape), jnp.float32)
        f, f_ref = _conv(geom, impl), _xla(geom)
        for axes, args in (((0, None), (xs, ws[0])), ((None, 0), (xs[0], ws)), ((0, 0), (xs, ws))):
            assert_close(jax.vmap(f, axes)(*args), jax.vmap(f_ref, axes)(*args), np.float32, precision="highest",
                         what=f"vmap {axes}")

        def per_example(fn):
            return jax.vmap(jax.grad(lambda a, c: jnp.sum(fn(a[None], c) ** 2), argnums=(0, 1)), (0, None))

        for got, want in zip(per_example(f)(xs[0], ws[0]), per_example(f_ref)(xs[0], ws[0])):
            assert_close(got, want, np.float32, factor=2, precision="highest", what="vmap of grad")

    def test_jit_of_everything(self, impl):
        geom, x, w = self._runnable(impl, [GEOMETRIES[0], GEOMETRIES[3]], seed=7)
        f = jax.jit(jax.value_and_grad(lambda a, c: jnp.sum(_conv(geom, impl)(a, c) ** 2), argnums=(0, 1)))
        g = jax.value_and_grad(lambda a, c: jnp.sum(_xla(geom)(a, c) ** 2), argnums=(0, 1))
        (v, (dx, dw)), (v_ref, (dx_ref, dw_ref)) = f(x, w), g(x, w)
        assert_close(v, v_ref, np.float32, factor=2, precision="highest")
        assert_close(dx, dx_ref, np.float32, factor=2, precision="highest")
        assert_close(dw, dw_ref, np.float32, factor=2, precision="highest")

    # ---- bad inputs and edge cases ---------------------------------------------------------

    def test_bad_inputs_are_the_parsers_errors(self, impl):
        x, w = jnp.ones((2, 6, 6, 4)), jnp.ones((3, 3, 4, 8))
        with pytest.raises(ValueError, match=r"conv2d: groups \(=3\) must divide input channels \(=4\)"):
            jconv.conv2d(x, w, groups=3, impl=impl)
        with pytest.raises(TypeError, match=r"conv2d: stride \(=1.5\)"):
            jconv.conv2d(x, w, stride=1.5, impl=impl)
        with pytest.raises(ValueError, match=r"conv2d: the kernel \(dilated height 5\) is larger"):
            jconv.conv2d(x[:, :4, :4], w, dilation=2, impl=impl)

    def test_edge_cases(self, impl):
        """Zero batch, a kernel as large as the padded input, NaN propagation (depthwise with a
        multiplier: a geometry every algorithm runs)."""
        kw = dict(groups=2, impl=impl)
        w = jnp.asarray(np.random.default_rng(8).normal(size=(3, 3, 1, 4)), jnp.float32)
        empty = jconv.conv2d(jnp.ones((0, 5, 5, 2)), w, padding=1, **kw)
        assert empty.shape == (0, 5, 5, 4)
        x = jnp.asarray(np.random.default_rng(9).normal(size=(2, 3, 3, 2)), jnp.float32)
        full = jconv.conv2d(x, w, precision="highest", **kw)
        assert full.shape == (2, 1, 1, 4)
        assert_close(full, jconv.conv2d(x, w, groups=2, impl="xla", precision="highest"), np.float32,
                     precision="highest")
        xn = x.at[0, 1, 1, 0].set(jnp.nan)
        y = jconv.conv2d(xn, w, padding=1, **kw)
        assert bool(jnp.isnan(y[0]).any()) and not bool(jnp.isnan(y[1]).any())

    # ---- what lax does with integers, empty shapes and NumPy float64 ---------------------------

    def test_integer_operands_have_no_gradient(self, impl):
        """As lax: ``jax.grad`` refuses integer operands (JAX's own check), ``vjp`` and ``jvp``
        give float0 (the conv is still bilinear: no derivative flows through integers)."""
        c = lc.case((2, 5, 5, 3), (3, 3, 3, 4), "int8", window_strides=(1, 1), padding="SAME",
                    dimension_numbers=lc.NHWC, preferred_element_type="int32")
        if why_not_case(impl, c):
            pytest.skip(why_not_case(impl, c))
        x, w = lc_arrays(c)
        f = functools.partial(jconv.conv_general_dilated, impl=impl, **c.kwargs)
        with pytest.raises(TypeError, match="grad requires real- or complex-valued inputs"):
            jax.grad(lambda a: f(a, w).sum().astype(jnp.float32))(x)
        y, pull = jax.vjp(f, x, w)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(lax.conv_general_dilated(x, w, **c.kwargs)))
        for g, a in zip(pull(jnp.ones(y.shape, y.dtype)), (x, w)):
            assert g.dtype == jax.dtypes.float0 and g.shape == a.shape
        zero = lambda a: np.zeros(a.shape, jax.dtypes.float0)  # noqa: E731
        _, t = jax.jvp(f, (x, w), (zero(x), zero(w)))
        assert t.dtype == jax.dtypes.float0 and t.shape == y.shape

    @pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
    def test_empty_shapes(self, impl, layout):
        """Zero batch, zero height, zero input or output channels, a kernel larger than the
        padded input: lax's empty (or all-zero) result, zero gradients of the right shapes; in
        conv2d the bias alone where every product is empty."""
        cases = [((0, 5, 5, 2), (3, 3, 2, 4), ((1, 1), (1, 1))), ((2, 0, 5, 2), (3, 3, 2, 4), ((2, 1), (1, 1))),
                 ((2, 5, 5, 0), (3, 3, 0, 4), ((1, 1), (1, 1))), ((2, 5, 5, 2), (3, 3, 2, 0), ((0, 0), (0, 0))),
                 ((2, 2, 5, 2), (3, 3, 2, 4), ((0, 0), (0, 0))), ((2, 3, 3, 2), (3, 3, 2, 4), ((-2, 0), (0, 0)))]
        dn = lc.NHWC if layout == "NHWC" else lc.NCHW
        to = (lambda s: s) if layout == "NHWC" else (lambda s: (s[0], s[3], s[1], s[2]))  # noqa: E731
        kto = (lambda s: s) if layout == "NHWC" else (lambda s: (s[3], s[2], s[0], s[1]))  # noqa: E731
        for xs, ws, pads in cases:
            c = lc.case(to(xs), kto(ws), "float32", window_strides=(1, 1), padding=pads, dimension_numbers=dn)
            if why_not_case(impl, c):
                continue
            x, w = lc_arrays(c)
            f = functools.partial(jconv.conv_general_dilated, impl=impl, **c.kwargs)
            want, want_pull = jax.vjp(functools.partial(lax.conv_general_dilated, **c.kwargs), x, w)
            got, pull = jax.vjp(f, x, w)
            check_value(got, want, c, f"{impl} empty")
            ct = jnp.ones(got.shape, got.dtype)
            for g, r in zip(pull(ct), want_pull(ct)):
                check_value(g, r, c, f"{impl} empty, gradient")
                assert not np.asarray(g).any()
            if min(xs[1], xs[2], xs[3]) == 0 and pads != ((0, 0), (0, 0)):  # conv2d: the bias alone
                b = jnp.arange(ws[3], dtype=jnp.float32)
                y = jconv.conv2d(x, w, b, padding=pads, layout=layout, impl=impl)
                np.testing.assert_array_equal(np.asarray(y), np.broadcast_to(
                    np.asarray(b).reshape((-1,) if layout == "NHWC" else (-1, 1, 1)), y.shape))

    def test_numpy_float64_without_x64(self, impl):
        """A NumPy float64 array with x64 disabled computes in float32, as lax does."""
        if jax.config.jax_enable_x64:
            pytest.skip("x64 is enabled")
        c = lc.case((2, 6, 5, 3), (3, 3, 3, 4), "float32", window_strides=(1, 2), padding="SAME",
                    dimension_numbers=lc.NHWC, precision="highest")
        if why_not_case(impl, c):
            pytest.skip(why_not_case(impl, c))
        x, w = (a.astype(np.float64) for a in lc_arrays(c))
        got = jconv.conv_general_dilated(x, w, impl=impl, **c.kwargs)
        want = lax.conv_general_dilated(x, w, **c.kwargs)
        assert got.dtype == want.dtype == np.float32
        check_value(got, want, c, f"{impl} float64 input without x64")
        assert jconv.conv2d(x, w, impl=impl, padding="SAME").dtype == np.float32


def backend_impls(name: str) -> list[str]:
    """``name`` and each of its algorithms (empty when the backend is not available here)."""
    if name not in registry.names():
        return []
    backend = registry.get(name)
    if len(backend.algorithms) == 1:
        return [name]
    return [name] + [f"{name}:{a}" for a in backend.algorithms]
