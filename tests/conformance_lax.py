"""JAX's own convolution tests, run against every backend (a base of tests/conformance.py).

Each test takes one grid of tests/lax_cases.py (the cases of a JAX test, restated) and checks
``jconv.conv_general_dilated(..., impl=impl)`` against ``lax.conv_general_dilated`` itself:

* values, for every dtype lax takes: integer and boolean results exact (lax's wrap-around
  included), floating and complex ones within the dtype's tolerance; the result's dtype and
  shape equal (empty results included);
* derivatives, for the inexact dtypes: ``jvp``, ``vjp``, forward-over-reverse and
  reverse-over-reverse, element by element against lax's; in the slow grid also JAX's
  ``check_grads`` (finite differences, order 2, both modes, one operand at a time);
* the other references JAX's tests use: ``lax.conv_transpose`` and the gradient of a forward
  conv for transposed convolutions, ``lax.conv_general_dilated_patches`` for one-hot kernels.

Every level-``"values"`` grid runs in ``make test`` (each value of each axis at least once); the
``"pairs"`` grids (every pair of values) are marked ``slow``. The cases of one grid run as
jitted programs of up to ``CHUNK`` cases each (a few compiles per grid); the cases an impl
cannot run (its plan says why: a dtype, input dilation) are left out, and a grid it runs none
of is skipped. lax's results are computed once per process for every impl.
docs/conformance.md maps JAX's tests to these.
"""

from __future__ import annotations

import contextlib
import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

import jconv
import lax_cases as lc
from jconv.geometry import dtype_kind
from jconv.testing import assert_close
from oracle import conv2d_ref

LEVELS = ["values", pytest.param("pairs", marks=pytest.mark.slow)]
#: cases of one jitted program (a few compiles per grid, none too large)
CHUNK = 48


def _x64(flag: bool):
    return jax.enable_x64(True) if flag else contextlib.nullcontext()


def _device_skip(dtype: str, pet=None) -> str | None:
    """What lax itself does not run on this platform (JAX's tests skip the same)."""
    platform = jax.default_backend()
    if platform == "gpu" and dtype_kind(dtype) in ("int", "uint", "bool"):
        return "XLA:GPU has no integer convolution (JAX's tests skip it there too)"
    if platform == "tpu" and lc.is_x64(dtype, pet):
        return "TPUs do not compute 64-bit types"
    return None


def why_not_case(impl: str, c: lc.Case) -> str | None:
    """None when ``impl`` runs case ``c`` here, else the reason (the plan's refusal)."""
    why = _device_skip(c.dtype, c.kwargs.get("preferred_element_type"))
    if why:
        return why
    args = (jax.ShapeDtypeStruct(c.lhs, c.dtype), jax.ShapeDtypeStruct(c.rhs, c.dtype))
    try:
        with _x64(c.x64):
            jax.eval_shape(functools.partial(jconv.conv_general_dilated, impl=impl, **c.kwargs), *args)
    except (NotImplementedError, ValueError) as e:
        if "cannot run this convolution" in str(e) or "cannot be compiled" in str(e):
            return str(e)
        raise
    return None


def runnable(impl: str, cases: list, share: int = 1) -> list:
    """The cases ``impl`` runs (every ``share``-th one; skip when none)."""
    ok = [c for k, c in enumerate(cases) if k % share == 0 and why_not_case(impl, c) is None]
    if not ok:
        pytest.skip(f"{impl} runs none of these {len(cases)} cases")
    return ok


def arrays(c: lc.Case, salt: int = 0):
    """The operands of case ``c`` (the same for every impl: seeded by the case itself)."""
    rng = np.random.default_rng(zlib.crc32(f"{c}|{salt}".encode()))
    return lc.array(c.lhs, c.dtype, rng), lc.array(c.rhs, c.dtype, rng)


def _chunks(items, x64=lambda it: it.x64):
    """Groups of at most CHUNK items, the 64-bit ones apart (they run under enable_x64)."""
    for flag in (False, True):
        group = [it for it in items if x64(it) == flag]
        for k in range(0, len(group), CHUNK):
            yield flag, tuple(group[k:k + CHUNK])


def _batched(fn, cases):
    """One jitted program running ``fn(x, w, **kwargs)`` for every case."""
    return jax.jit(lambda xs, ws: [fn(x, w, **c.kwargs) for c, x, w in zip(cases, xs, ws)])


def _upcast(x, w, preferred_element_type, **kw):
    """testConvPreferredElement's identity: the conv of the inputs cast to the preferred type."""
    t = preferred_element_type
    return lax.conv_general_dilated(x.astype(t), w.astype(t), **kw, precision="highest")


@functools.lru_cache(maxsize=256)
def _lax_forward(cases: tuple, upcast: bool = False) -> list:
    """lax's results for a chunk (computed once for every impl of the process)."""
    xs, ws = zip(*map(arrays, cases))
    return jax.device_get(_batched(_upcast if upcast else lax.conv_general_dilated, cases)(xs, ws))


def check_value(got, want, c, what: str) -> None:
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != lax's {want.dtype} for {c}"
    assert got.shape == want.shape, f"{what}: shape {got.shape} != lax's {want.shape} for {c}"
    prec = c.kwargs.get("precision")
    prec = prec[0] if isinstance(prec, tuple) else prec
    assert_close(got, want, c.dtype, got.dtype, factor=4, precision=prec, what=f"{what} for {c}")


def numpy_oracle(c: lc.Case, x, w):
    """The float64 NumPy oracle (tests/oracle.py) of a case in lax.conv's layout (NCHW/OIHW)."""
    kw = c.kwargs
    assert kw["dimension_numbers"] == lc.NCHW
    dil = kw.get("rhs_dilation", (1, 1))
    pads = kw["padding"]
    if isinstance(pads, str):
        k_eff = [(k - 1) * d + 1 for k, d in zip(w.shape[2:], dil)]
        pads = lax.padtype_to_pads(x.shape[2:], k_eff, kw["window_strides"], pads)
    return conv2d_ref(x, w, stride=kw["window_strides"], padding=tuple(map(tuple, pads)), dilation=dil,
                      lhs_dilation=kw.get("lhs_dilation", (1, 1)), layout="NCHW")


def check_forward(impl: str, cases: list, share: int = 1, upcast: bool = False, oracle: bool = False) -> int:
    """Forward of every runnable case against lax's; with ``upcast``, every third also against
    lax's conv of the inputs cast to ``preferred_element_type``; with ``oracle``, the float32 cases also
    against the float64 NumPy oracle (JAX's ...AgainstNumpy tests). Returns the count run."""
    ran = runnable(impl, cases, share)
    results = {}
    for flag, group in _chunks(ran):
        with _x64(flag):
            xs, ws = zip(*map(arrays, group))
            got = _batched(functools.partial(jconv.conv_general_dilated, impl=impl), group)(xs, ws)
            for c, g, r in zip(group, got, _lax_forward(group)):
                check_value(g, r, c, impl)
                results[c] = g
            for c, g, x, w in zip(group, got, xs, ws):
                if oracle and c.dtype == "float32":
                    assert_close(g, numpy_oracle(c, x, w), np.float32, factor=4, what=f"{impl} vs NumPy for {c}")
    for flag, group in _chunks(ran[::3] if upcast else ()):  # a third: the identity is lax's
        with _x64(flag):
            for c, r in zip(group, _lax_forward(group, True)):
                check_value(results[c], r, c, f"{impl} vs the conv of upcast inputs")
    return len(ran)


def derivatives(conv, x, w, tx, tw, ct, cx, cw):
    """Order 1 and 2 of a bilinear ``conv``: jvp, vjp, jvp of the vjp, vjp of the vjp."""
    y, ty = jax.jvp(conv, (x, w), (tx, tw))

    def pull(a, b):
        return jax.vjp(conv, a, b)[1](ct)

    dx, dw = pull(x, w)
    _, (tdx, tdw) = jax.jvp(pull, (x, w), (tx, tw))
    rx, rw = jax.vjp(pull, x, w)[1]((cx, cw))
    return y, ty, dx, dw, tdx, tdw, rx, rw


DERIVATIVES = ("value", "jvp", "dx", "dw", "jvp of dx", "jvp of dw", "vjp of dx", "vjp of dw")


def _derivative_args(c: lc.Case):
    (x, w), (tx, tw), (cx, cw) = arrays(c), arrays(c, 1), arrays(c, 2)
    y = jax.eval_shape(functools.partial(lax.conv_general_dilated, **c.kwargs), x, w)
    ct = lc.array(y.shape, y.dtype.name, np.random.default_rng(zlib.crc32(f"{c}|3".encode())))
    return x, w, tx, tw, ct, cx, cw


def _derivatives_of(conv, cases):
    run = jax.jit(lambda args: [derivatives(functools.partial(conv, **c.kwargs), *a) for c, a in zip(cases, args)])
    return run([_derivative_args(c) for c in cases])


@functools.lru_cache(maxsize=64)
def _lax_derivatives(cases: tuple) -> list:
    return jax.device_get(_derivatives_of(lax.conv_general_dilated, cases))


def check_derivatives(impl: str, cases: list, share: int = 1, finite: tuple = ()) -> int:
    """Derivatives of every runnable case against lax's, element by element; then JAX's
    ``check_grads`` on the cases whose dtype is in ``finite``."""
    ran = runnable(impl, cases, share)
    for flag, group in _chunks(ran):
        with _x64(flag):
            got = _derivatives_of(functools.partial(jconv.conv_general_dilated, impl=impl), group)
            for c, gs, rs in zip(group, got, _lax_derivatives(group)):
                for name, g, r in zip(DERIVATIVES, gs, rs):
                    check_value(g, r, c, f"{impl} {name}")
            for c in group:
                if c.dtype in finite:
                    check_grads_bilinear(impl, c)
    return len(ran)


def check_grads_bilinear(impl: str, c: lc.Case) -> None:
    """JAX's check for a bilinear op: ``check_grads`` (order 2, fwd and rev) in each operand with
    the other fixed, eps=1 (central differences are exact there), at JAX's scale (rand_small)
    and tolerances."""
    x, w = (jnp.asarray(a) * 1e-2 for a in arrays(c))
    conv = jax.jit(functools.partial(jconv.conv_general_dilated, impl=impl, **c.kwargs))
    tol = {np.float32: 1e-3, np.float64: 1e-5, np.complex64: 1e-3, np.complex128: 1e-5,
           jnp.bfloat16: 1.0, np.float16: 0.5}
    check_grads(lambda a: conv(a, w), (x,), order=2, modes=("fwd", "rev"), atol=tol, rtol=tol, eps=1.0)
    check_grads(lambda b: conv(x, b), (w,), order=2, modes=("fwd", "rev"), atol=tol, rtol=tol, eps=1.0)


def _finite(level: str) -> tuple:
    """The dtypes JAX's check_grads runs on, at the slow level (``make test`` compares every
    derivative with lax's instead; each backend's check_grads in float64: tests/conformance.py)."""
    return lc.FLOATS + lc.COMPLEX if level == "pairs" else ()


class LaxConformance:
    """JAX's convolution tests for one backend (``impl`` from the subclass's IMPLS)."""

    #: every ``GRID_SHARE``-th case of each grid (interpreted backends run a subset)
    GRID_SHARE = 1

    def share(self, impl: str) -> int:
        return self.GRID_SHARE

    # ---- lax_test.py ---------------------------------------------------------------------------

    @pytest.mark.parametrize("level", LEVELS)
    def test_lax_conv(self, impl, level):
        """testConv, testConvAgainstNumpy: lax.conv's NCHW with VALID/SAME/SAME_LOWER."""
        check_forward(impl, lc.conv_cases(level), self.share(impl), oracle=True)

    @pytest.mark.parametrize("level", LEVELS)
    def test_conv_with_general_padding(self, impl, level):
        """testConvWithGeneralPadding(+AgainstNumpy): explicit pads, input and kernel dilation."""
        check_forward(impl, lc.general_padding_cases(level), self.share(impl), oracle=True)

    @pytest.mark.parametrize("level", LEVELS)
    def test_conv_general_dilated(self, impl, level):
        """testConvGeneralDilated: every dtype, batch and feature groups, zero width, three
        dimension numbers, pads larger than the input."""
        check_forward(impl, lc.general_dilated_cases(level), self.share(impl))

    @pytest.mark.parametrize("level", LEVELS)
    def test_preferred_element_type(self, impl, level):
        """testConvPreferredElement: every pair JAX lists; the result in the preferred type
        equals lax's, and matches the conv of inputs cast to that type."""
        check_forward(impl, lc.preferred_cases(level), self.share(impl), upcast=True)

    @pytest.mark.parametrize("level", LEVELS)
    def test_dimension_numbers(self, impl, level):
        """testConvGeneralDilatedLocal's convolution: every permutation of the lhs, rhs and
        output specs, inexact dtypes, five precisions."""
        check_forward(impl, lc.dimension_numbers_cases(level), self.share(impl))

    def test_patches(self, impl):
        """testConvGeneralDilatedPatches*: the one-hot depthwise conv that extracts patches,
        run by jconv, equals lax.conv_general_dilated_patches, for every dtype kind."""
        ran = [it for it in patches_grid() if why_not_case(impl, it[0]) is None]
        if not ran:
            pytest.skip(f"{impl} runs none of the patch extractions")
        cases, xs, kernels, wants = zip(*ran)
        got = _batched(functools.partial(jconv.conv_general_dilated, impl=impl), cases)(xs, kernels)
        for c, g, r in zip(cases, got, wants):  # exact but for complex (the engine's products round)
            check_value(g, r, c, f"{impl} patches")

    def test_padding_list_and_preferred_gradient(self, impl):
        """testConvTransposePaddingList (padding as a list, the default dimension numbers) and
        testConvPreferredElementType (the gradient of a bfloat16 conv with a float32 result)."""
        ones = jnp.ones((28, 28))
        case = lc.case((1, 1, 28, 28), (1, 1, 3, 3), "float32", window_strides=(1, 1), padding=((0, 0), (0, 0)))
        if why_not_case(impl, case) is None:
            y = jconv.conv_general_dilated(ones[None, None], jnp.ones((3, 3))[None, None], (1, 1), [(0, 0), (0, 0)],
                                           (1, 1), impl=impl)
            np.testing.assert_array_equal(np.asarray(y), 9 * np.ones((1, 1, 26, 26), np.float32))
        x = jnp.ones((1, 8, 4, 4), jnp.bfloat16)
        w = jnp.ones((3, 3, 4, 8), jnp.bfloat16)
        kw = dict(window_strides=(1, 1), padding="VALID", rhs_dilation=(1, 1),
                  dimension_numbers=("NHWC", "HWIO", "NHWC"), preferred_element_type=jnp.float32)
        if why_not_case(impl, lc.case(x.shape, w.shape, "bfloat16", **kw)) is None:
            got = jax.grad(lambda a, b: jconv.conv_general_dilated(a, b, impl=impl, **kw).sum(), (0, 1))(x, w)
            want = jax.grad(lambda a, b: lax.conv_general_dilated(a, b, **kw).sum(), (0, 1))(x, w)
            for g, r in zip(got, want):
                assert g.dtype == r.dtype == jnp.bfloat16
                np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(r, np.float32))

    @pytest.mark.parametrize("level", LEVELS)
    def test_conv_transpose(self, impl, level):
        """testConvTranspose2DT / 2D: jconv's input-dilated conv equals lax.conv_transpose
        (use_consistent_padding) and the gradient of lax's forward conv."""
        grid = transpose_grid(level)
        ran = [it for k, it in enumerate(grid) if k % self.share(impl) == 0 and why_not_case(impl, it[0]) is None]
        if not ran:
            pytest.skip(f"{impl} runs none of these {len(grid)} transposed convolutions")
        for flag, group in _chunks(ran, lambda it: it[0].x64):
            with _x64(flag):
                cases, xs, kernels, refs = zip(*group)
                got = _batched(functools.partial(jconv.conv_general_dilated, impl=impl), cases)(xs, kernels)
                for c, g, (transposed, via_grad) in zip(cases, got, refs):
                    check_value(g, transposed, c, f"{impl} vs lax.conv_transpose")
                    check_value(g, via_grad, c, f"{impl} vs the gradient of the forward conv")

    # ---- lax_autodiff_test.py ------------------------------------------------------------------

    @pytest.mark.parametrize("level", LEVELS)
    def test_grad_conv(self, impl, level):
        """testConvGrad: derivatives of lax.conv's, order 2."""
        check_derivatives(impl, lc.grad_conv_cases(level), self.share(impl), finite=_finite(level))

    @pytest.mark.parametrize("level", LEVELS)
    def test_grad_conv_with_general_padding(self, impl, level):
        """testConvWithGeneralPaddingGrad: cropping pads and input dilation, order 2."""
        check_derivatives(impl, lc.grad_general_padding_cases(level), self.share(impl), finite=_finite(level))

    @pytest.mark.parametrize("level", LEVELS)
    def test_grad_conv_general_dilated(self, impl, level):
        """testConvGeneralDilatedGrad: both group kinds, a zero-height input, complex dtypes."""
        check_derivatives(impl, lc.grad_general_dilated_cases(level), self.share(impl), finite=_finite(level))


@functools.lru_cache(maxsize=1)
def patches_grid() -> list:
    """``(case, x, one-hot kernel, lax.conv_general_dilated_patches's result)`` per patch case,
    the dtypes taken in turn."""
    out = []
    for k, p in enumerate(lc.patches_cases()):
        dtype = ("float32", "bfloat16", "int8", "bool", "complex64")[k % 5]
        if _device_skip(dtype):
            continue
        x = lc.array(p["lhs"], dtype, np.random.default_rng(k))
        want = lax.conv_general_dilated_patches(x, p["filter_shape"], p["strides"], p["padding"],
                                                dimension_numbers=p["dn"])
        dn = lax.conv_dimension_numbers(x.shape, (1, 1) + p["filter_shape"], p["dn"])
        taps, chans = int(np.prod(p["filter_shape"])), x.shape[dn.lhs_spec[1]]
        eye = np.eye(taps, dtype=dtype).reshape((taps, 1) + p["filter_shape"])
        rhs = np.moveaxis(np.concatenate([eye] * chans, axis=0), (0, 1), (dn.rhs_spec[0], dn.rhs_spec[1]))
        c = lc.case(x.shape, rhs.shape, dtype, window_strides=p["strides"], padding=p["padding"],
                    dimension_numbers=dn, feature_group_count=chans)
        out.append((c, x, rhs, np.asarray(want)))
    return out


@functools.lru_cache(maxsize=2)
def transpose_grid(level: str) -> list:
    """``(case, x, kernel, (lax.conv_transpose's result, JAX's via-grad reference))`` per
    transposed case: ``case`` the input-dilated conv jconv runs on ``x`` and ``kernel``; the
    references computed once for every impl."""
    items = []
    for k, m in enumerate(lc.transpose_cases(level)):
        if _device_skip(m["dtype"]):
            continue
        b, i, j, ks = m["b"], m["i"], m["j"], m["k"]
        dil = m["rhs_dilation"] or (1, 1)
        per_axis = [m["padding"]] * 2 if isinstance(m["padding"], str) else m["padding"]
        pads = tuple(lc.transpose_pads(n, (ks - 1) * d + 1, s, p)
                     for n, d, s, p in zip((9, 10), dil, m["strides"], per_axis))
        c = lc.case((b, 9, 10, i), (ks, ks, i, j), m["dtype"], window_strides=(1, 1), padding=pads,
                    lhs_dilation=m["strides"], rhs_dilation=dil, dimension_numbers=lc.NHWC)
        rng = np.random.default_rng(k)
        x = lc.array(c.lhs, c.dtype, rng)
        w = lc.array((ks, ks, j, i) if m["transpose_kernel"] else (ks, ks, i, j), c.dtype, rng)
        items.append((c, m, x, w))
    out = []
    for flag, group in _chunks(items, lambda it: it[0].x64):
        with _x64(flag):
            refs = jax.jit(lambda xs, ws, group=group: [_transpose_refs(m, x, w) for (_, m, _, _), x, w
                                                        in zip(group, xs, ws)])([it[2] for it in group],
                                                                                [it[3] for it in group])
        for (c, m, x, w), ref in zip(group, refs):
            out.append((c, x, np.swapaxes(w[::-1, ::-1], 2, 3) if m["transpose_kernel"] else w, tuple(ref)))
    return out


def _transpose_refs(m: dict, x, w):
    """lax.conv_transpose of case ``m``, and (JAX's via-grad reference) the input gradient of
    the forward conv, with the original padding, whose input has the transposed output's shape."""
    transposed = lax.conv_transpose(x, w, m["strides"], m["padding"], rhs_dilation=m["rhs_dilation"],
                                    dimension_numbers=lc.NHWC, transpose_kernel=m["transpose_kernel"],
                                    use_consistent_padding=True)
    fwd_kernel = w if m["transpose_kernel"] else jnp.swapaxes(w[::-1, ::-1], 2, 3)
    fwd = functools.partial(lax.conv_general_dilated, window_strides=m["strides"], padding=m["padding"],
                            rhs_dilation=m["rhs_dilation"], dimension_numbers=lc.NHWC)
    placeholder = jnp.zeros(transposed.shape[:3] + (fwd_kernel.shape[2],), x.dtype)
    (via_grad,) = jax.vjp(lambda a: fwd(a, fwd_kernel), placeholder)[1](x)
    return transposed, via_grad
