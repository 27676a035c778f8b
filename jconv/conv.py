"""The public Conv2D: parse -> plan -> execute.

:func:`conv2d` is the seed's Conv2D with every argument the seed explains;
:func:`conv_general_dilated` is the 2-D subset of ``lax.conv_general_dilated`` (so it can be
handed to ``flax.nnx.Conv(conv_general_dilated=...)``). Both parse once into a
:class:`~jconv.spec.ConvSpec`, plan (:mod:`jconv.select`), bring the arrays to NHWC / HWIO,
apply the padding mode, and bind the convolution primitive (:mod:`jconv.primitive`) with the
planned backend and algorithm under ``jax.jit``, the spec static.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jconv import fused, primitive, select, targets
from jconv.geometry import batch_groups, fmt, is_int, parse_conv2d
from jconv.impls.common import add_bias
from jconv.impls.registry import check_impl
from jconv.spec import ConvSpec

_NP_PAD_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def check_array(fn: str, name: str, a: Any):
    """``a`` itself if it is an array (has shape and dtype), else a TypeError naming it."""
    if a is None or isinstance(a, (str, bytes)) or not hasattr(a, "shape") or not hasattr(a, "dtype"):
        if isinstance(a, (list, tuple)):
            raise TypeError(f"{fn}: {name} must be an array (jax.Array or numpy.ndarray), not a {type(a).__name__}; wrap it in jnp.asarray")
        raise TypeError(f"{fn}: {name} (={fmt(a)}) must be an array (jax.Array or numpy.ndarray), not {type(a).__name__}")
    return a


def array_dtype(a) -> np.dtype:
    """The dtype JAX computes ``a`` in: a NumPy float64 array is float32 with x64 off."""
    return jax.dtypes.canonicalize_dtype(a.dtype)


def target_platform(x) -> str:
    """The platform a call is planned for: the one of the mesh ``x`` is sharded over when its
    abstract mesh says (compiling ahead of time for a TPU or GPU topology from a CPU host),
    else JAX's default backend."""
    platform, _ = targets.mesh_device(getattr(jax.typeof(x), "sharding", None)) if isinstance(
        x, jax.Array) or hasattr(x, "aval") else (None, None)
    return targets.planning_platform(platform)


def parse_call(fn: str, x, w, b, **args) -> ConvSpec:
    """``conv2d``'s arguments, arrays checked, into a :class:`ConvSpec`."""
    check_array(fn, "x", x)
    check_array(fn, "w", w)
    if b is not None:
        check_array(fn, "b", b)
    return parse_conv2d(x.shape, array_dtype(x), w.shape, array_dtype(w),
                        None if b is None else b.shape, None if b is None else array_dtype(b), fn=fn, **args)


def _as_struct(fn: str, name: str, a, dtype):
    """An array, a ShapeDtypeStruct, or a shape (a tuple of ints, with ``dtype``)."""
    if isinstance(a, (tuple, list)) and all(is_int(v) for v in a):
        return jax.ShapeDtypeStruct(tuple(int(v) for v in a), jnp.dtype(dtype or "float32"))
    return check_array(fn, name, a)


def plan_for(x, w=None, b=None, *, impl: str = "auto", platform: str | None = None, dtype=None,
             **conv2d_args) -> select.Plan:
    """The plan ``conv2d`` would run: which backend and algorithm, and why.

    ``x``, ``w`` (and ``b``) as ``conv2d`` takes them: arrays, ``jax.ShapeDtypeStruct`` objects, or
    shapes (tuples of ints, in ``dtype``, default float32), with ``conv2d``'s keyword arguments;
    or ``x`` a :class:`ConvSpec` (from :func:`jconv.parse_conv2d`) alone. ``platform``: "cpu",
    "gpu" or "tpu" (default: JAX's default backend).

    >>> import jconv
    >>> p = jconv.plan_for((8, 56, 56, 64), (3, 3, 1, 64), groups=64, padding=1, platform="cpu")
    >>> p.impl in ("lax", "onednn"), p.reason.startswith("auto:")
    (True, True)
    """
    fn = "plan_for"
    if isinstance(x, ConvSpec):
        if isinstance(w, str) and impl == "auto":
            impl, w = w, None
        if w is not None or b is not None or conv2d_args or dtype is not None:
            raise TypeError(f"{fn}: with a ConvSpec, pass only the impl and platform=")
        spec = x
        impl = check_impl(fn, impl)
    else:
        if w is None:
            raise TypeError(f"{fn}: w is required with x (={fmt(x)}); or pass a ConvSpec alone")
        impl = check_impl(fn, impl)
        x, w = _as_struct(fn, "x", x, dtype), _as_struct(fn, "w", w, dtype)
        b = None if b is None else _as_struct(fn, "b", b, dtype)
        spec = parse_call(fn, x, w, b, **conv2d_args)
    return select.plan(spec.execute_spec(), impl, fn=fn, platform=platform)


def _spatial(layout: str, h, w, other):
    """A per-axis config of an activation in ``layout``: ``h``, ``w`` at its spatial axes."""
    return (other, other, h, w) if layout == "NCHW" else (other, h, w, other)


def _to_exec_layout(x, w, spec: ConvSpec, layout: str):
    """The user's arrays -> the execute spec's (``layout``: NHWC, or NCHW where the planned
    backend takes an NCHW caller's arrays as they are): batched ``x`` with the padding mode (or a
    negative padding's crop) applied, ``w`` flipped for ``flip_kernel``."""
    if not spec.batched:
        x = x[None]
    if spec.layout != layout:  # an NCHW caller, a backend on NHWC
        x = jnp.transpose(x, (0, 2, 3, 1))
        w = jnp.transpose(w, (2, 3, 1, 0))
    if spec.flip_kernel:
        w = jnp.flip(w, (2, 3) if layout == "NCHW" else (0, 1))
    (pt, pb), (pl, pr) = spec.padding
    if spec.padding_mode != "zeros":
        x = jnp.pad(x, _spatial(layout, (pt, pb), (pl, pr), (0, 0)), mode=_NP_PAD_MODE[spec.padding_mode])
    elif min(pt, pb, pl, pr) < 0:  # negative padding crops (conv_general_dilated only)
        lh, lw = spec.lhs_dilation
        x = lax.pad(x, jnp.zeros((), x.dtype), _spatial(layout, (pt, pb, lh - 1), (pl, pr, lw - 1), (0, 0, 0)))
    return x, w


@functools.partial(jax.jit, static_argnames=("spec", "impl", "algorithm", "activation"))
def _execute(x, w, b, *, spec: ConvSpec, impl: str, algorithm: str, activation: str | None = None):
    """Arrays in the user's layout -> result in the user's layout: transposed to NHWC and back
    only when the planned backend does not take the caller's layout (select.operand_layout);
    ``activation`` (``"relu"``) through :func:`jconv.fused.conv_relu`, the bias inside it."""
    espec = select.operand_layout(spec.execute_spec(), impl, algorithm)
    if spec.is_empty:  # nothing to compute: lax's result, zeros of the output shape (gradients zero)
        y = add_bias(jnp.zeros(espec.out_shape, spec.out_dtype), b, axis=espec.channel_axis)
        y = y if activation is None else fused.relu(y)
    elif activation is not None:  # the bias and ReLU as the convolution's epilogue (jconv.fused)
        x, w = _to_exec_layout(x, w, spec, espec.layout)
        b = jnp.zeros((spec.out_channels,), espec.out_dtype) if b is None else b.astype(espec.out_dtype)
        y = fused.conv_relu(x, w, b, spec=espec, impl=impl, algorithm=algorithm)
    else:
        x, w = _to_exec_layout(x, w, spec, espec.layout)
        y = add_bias(primitive.convolve(x, w, spec=espec, impl=impl, algorithm=algorithm), b, axis=espec.channel_axis)
    y = y.astype(spec.out_dtype)
    if spec.layout != espec.layout:
        y = jnp.transpose(y, (0, 3, 1, 2))
    return y if spec.batched else y[0]


def conv2d(
    x,
    w,
    b=None,
    *,
    stride=1,
    padding="VALID",
    dilation=1,
    groups=1,
    layout="NHWC",
    padding_mode="zeros",
    flip_kernel=False,
    impl="auto",
    precision=None,
    preferred_element_type=None,
    activation=None,
):
    """2-D convolution (cross-correlation, as every framework computes it).

    Args:
      x: input, ``(N, H, W, C)`` for ``layout="NHWC"`` or ``(N, C, H, W)`` for ``"NCHW"``; a
        rank-3 ``x`` is one unbatched example and gives a rank-3 result.
      w: kernel, HWIO ``(KH, KW, C_in/groups, C_out)`` for NHWC, OIHW for NCHW.
      b: optional bias ``(C_out,)``.
      stride, dilation: int or ``(h, w)``.
      padding: ``"VALID"``, ``"SAME"`` (TF/XLA: extra padding after), an int, ``(ph, pw)`` or
        ``((top, bottom), (left, right))``.
      groups: splits channels into independent groups; ``groups == C_in`` is depthwise.
      layout: ``"NHWC"`` or ``"NCHW"``.
      padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
      flip_kernel: True computes true convolution (kernel flipped in H and W).
      impl: ``"auto"``, ``"xla"`` (``lax.conv_general_dilated``), ``"lax"`` (built from lax
        primitives; ``"lax:<algorithm>"`` forces one), ``"pallas"``.
      precision, preferred_element_type: as in ``lax.conv_general_dilated``, whose dtype rules
        apply: ``x`` and ``w`` of one dtype (boolean, integer, floating or complex), the
        result in that dtype or ``preferred_element_type`` (int8 -> int32, bfloat16 -> float32);
        ``b`` in either. Zero sizes give lax's empty (or zero) result. Which backend runs which
        dtype: docs/conformance.md.
      activation: None, or ``"relu"``: ``max(0, conv + b)``, the bias and ReLU as the
        convolution's epilogue where the backend has one (oneDNN: one pass over the output;
        :mod:`jconv.fused`), with its gradients; the values of ``jax.nn.relu`` after, except
        that oneDNN's epilogue may turn a NaN into 0.

    Example (the seed's first MNIST layer, and the same call through XLA's own convolution):

    >>> import jax.numpy as jnp, numpy as np, jconv
    >>> x = jnp.arange(2 * 28 * 28, dtype=jnp.float32).reshape(2, 28, 28, 1) / 784
    >>> w = jnp.ones((3, 3, 1, 32)) / 9
    >>> y = jconv.conv2d(x, w, jnp.zeros(32))
    >>> y.shape
    (2, 26, 26, 32)
    >>> bool(np.allclose(y, jconv.conv2d(x, w, jnp.zeros(32), impl="xla"), atol=1e-5))
    True
    >>> jconv.conv2d(x, w, stride=2, padding="SAME").shape
    (2, 14, 14, 32)
    """
    fn = "conv2d"
    impl = check_impl(fn, impl)
    spec = parse_call(
        fn, x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups, layout=layout,
        padding_mode=padding_mode, flip_kernel=flip_kernel, precision=precision,
        preferred_element_type=preferred_element_type,
    )
    if activation is not None and activation not in fused.ACTIVATIONS:
        raise ValueError(f"{fn}: activation (={fmt(activation)}) must be None or one of {fused.ACTIVATIONS}")
    p = select.plan(spec.execute_spec(), impl, fn=fn, platform=target_platform(x))
    return _execute(x, w, b, spec=spec, impl=p.impl, algorithm=p.algorithm, activation=activation)


def _layout_perms(fn: str, lhs_shape, rhs_shape, dimension_numbers):
    try:
        dn = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{fn}: dimension_numbers (={fmt(dimension_numbers)}) are invalid: {e}") from e
    lhs, rhs, out = dn
    to_nhwc = (lhs[0], lhs[2], lhs[3], lhs[1])
    to_hwio = (rhs[2], rhs[3], rhs[1], rhs[0])
    from_nhwc = [0] * 4
    for src, dst in zip((0, 3, 1, 2), out):  # NHWC axes N, C, H, W -> their places in out
        from_nhwc[dst] = src
    return to_nhwc, to_hwio, tuple(from_nhwc)


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
    *,
    impl="auto",
    out_sharding=None,
    **kwargs,
):
    """The 2-D subset of ``jax.lax.conv_general_dilated``, run by jconv.

    Same signature and semantics (``lhs_dilation`` included: transposed convolution;
    ``batch_group_count``: the batch groups folded into feature groups), so it can be passed as
    ``flax.nnx.Conv(..., conv_general_dilated=jconv.conv_general_dilated)``. Every dtype lax takes
    (boolean, integer, floating, complex) with lax's ``preferred_element_type`` rules; zero-size
    dimensions and a kernel larger than the padded input give lax's (empty or zero) result.
    Raises NotImplementedError for 1-D and 3-D convolutions.
    """
    fn = "conv_general_dilated"
    if kwargs:
        raise TypeError(f"{fn}: unexpected keyword arguments {sorted(kwargs)}")
    if out_sharding is not None:  # flax.nnx.Conv always passes out_sharding (None by default)
        raise NotImplementedError(f"{fn}: out_sharding (={out_sharding}) is not supported; leave it None")
    check_array(fn, "lhs", lhs)
    check_array(fn, "rhs", rhs)
    if lhs.ndim != rhs.ndim:  # lax's ValueError
        raise ValueError(f"{fn}: lhs.shape (={tuple(lhs.shape)}) and rhs.shape (={tuple(rhs.shape)}) must have the "
                         "same number of dimensions")
    if lhs.ndim != 4:
        raise NotImplementedError(
            f"{fn}: only 2-D convolutions (rank-4 lhs and rhs) are supported; got lhs.shape="
            f"{tuple(lhs.shape)}, rhs.shape={tuple(rhs.shape)}"
        )
    impl = check_impl(fn, impl)
    to_nhwc, to_hwio, from_nhwc = _layout_perms(fn, lhs.shape, rhs.shape, dimension_numbers)
    x_shape = tuple(lhs.shape[i] for i in to_nhwc)
    w_shape = tuple(rhs.shape[i] for i in to_hwio)
    bgc = batch_groups(fn, batch_group_count, feature_group_count, x_shape[0], w_shape[3])
    if bgc > 1:  # batch group g (the g-th slice of the batch) is feature group g of a folded input
        n, h, w_, c = x_shape
        x_shape, feature_group_count = (n // bgc, h, w_, bgc * c), bgc
    if isinstance(padding, str):
        if lhs_dilation is not None and tuple(lhs_dilation) != (1,) * len(tuple(lhs_dilation)):
            raise ValueError(
                f"{fn}: padding (={padding!r}) must be explicit (low, high) pairs when lhs_dilation "
                f"(={tuple(lhs_dilation)}) is not 1, as in lax.conv_general_dilated"
            )
        pad_arg = padding
    else:
        try:
            pad_arg = tuple((int(lo), int(hi)) for lo, hi in padding)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{fn}: padding (={fmt(padding)}) must be a string or a sequence of (low, high) "
                             "pairs") from e
        if len(pad_arg) != 2:
            raise ValueError(f"{fn}: padding (={fmt(padding)}) must have one (low, high) pair per spatial axis (2)")
    spec = parse_conv2d(
        x_shape, array_dtype(lhs), w_shape, array_dtype(rhs),
        stride=window_strides, padding=pad_arg,
        dilation=1 if rhs_dilation is None else rhs_dilation,
        lhs_dilation=1 if lhs_dilation is None else lhs_dilation,
        groups=feature_group_count, layout="NHWC", precision=precision,
        preferred_element_type=preferred_element_type, allow_negative_padding=True, allow_empty_output=True,
        fn=fn,
    )
    p = select.plan(spec.execute_spec(), impl, fn=fn, platform=target_platform(lhs))
    return _execute_general(lhs, rhs, spec=spec, impl=p.impl, algorithm=p.algorithm, to_nhwc=to_nhwc,
                            to_hwio=to_hwio, from_nhwc=from_nhwc, batch_groups=bgc)


@functools.partial(jax.jit, static_argnames=("spec", "impl", "algorithm", "to_nhwc", "to_hwio", "from_nhwc",
                                             "batch_groups"))
def _execute_general(lhs, rhs, *, spec, impl, algorithm, to_nhwc, to_hwio, from_nhwc, batch_groups):
    x = jnp.transpose(lhs, to_nhwc)
    if batch_groups > 1:  # (G*N, H, W, C) -> (N, H, W, G*C)
        g = batch_groups
        x = x.reshape((g, x.shape[0] // g) + x.shape[1:])
        x = jnp.moveaxis(x, 0, 3).reshape(x.shape[1:4] + (g * x.shape[4],))
    y = _execute(x, jnp.transpose(rhs, to_hwio), None, spec=spec, impl=impl, algorithm=algorithm)
    return jnp.transpose(y, from_nhwc)
