"""The one argument parser.

Everything a user passes to :func:`jconv.conv2d` or :func:`jconv.conv_general_dilated` is
checked here, once, and turned into a frozen, hashable :class:`~jconv.spec.ConvSpec`. No jax arrays are
touched: only shapes, dtypes and Python values. All user-facing errors live in this module.

Error style: ``<fn>: <argument> (=<value>) <rule>``. TypeError for a wrong kind of value,
ValueError for a wrong value, NotImplementedError for a valid request jconv does not support.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from jconv.spec import ConvSpec, Pads, Pair

LAYOUTS = ("NHWC", "NCHW")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


# --------------------------------------------------------------------------------------------
# Small validators (shared by every public function)
# --------------------------------------------------------------------------------------------


def is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def fmt(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def pair(fn: str, name: str, value: Any, *, minimum: int = 1) -> Pair:
    """An int or a length-2 sequence of ints, each >= minimum, as a tuple."""
    if is_int(value):
        items = (int(value), int(value))
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 2:
            raise ValueError(
                f"{fn}: {name} (={fmt(value)}) must be an int or a pair of ints, "
                f"got {len(value)} values"
            )
        if not all(is_int(v) for v in value):
            raise TypeError(f"{fn}: {name} (={fmt(value)}) must contain ints")
        items = (int(value[0]), int(value[1]))
    else:
        raise TypeError(
            f"{fn}: {name} (={fmt(value)}) must be an int or a pair of ints, "
            f"not {type(value).__name__}"
        )
    for v in items:
        if v < minimum:
            raise ValueError(f"{fn}: {name} (={fmt(value)}) must be >= {minimum}")
    return items


#: the dtype kinds ``lax.conv_general_dilated`` accepts, each with the NumPy type that tests it
_KINDS = (("bool", np.bool_), ("uint", np.unsignedinteger), ("int", np.signedinteger), ("float", np.floating),
          ("complex", np.complexfloating))


@functools.lru_cache(maxsize=None)
def dtype_kind(dtype: Any) -> str | None:
    """``"bool"``, ``"int"``, ``"uint"``, ``"float"`` (bfloat16 and the float8 types included)
    or ``"complex"``: the kind of a dtype (or its name); None for anything else."""
    from jax import dtypes  # local: geometry stays importable without touching a backend

    try:
        d = np.dtype(dtype)
    except TypeError:
        return None
    return next((kind for kind, t in _KINDS if dtypes.issubdtype(d, t)), None)


def batch_groups(fn: str, batch_group_count: Any, feature_group_count: Any, batch: int, out_channels: int) -> int:
    """``lax.conv_general_dilated``'s ``batch_group_count``, checked as lax checks it: a positive
    int dividing the batch and the output features, never together with feature groups."""
    if not is_int(batch_group_count):
        raise TypeError(f"{fn}: batch_group_count (={fmt(batch_group_count)}) must be an int")
    count = int(batch_group_count)
    if count < 1:
        raise ValueError(f"{fn}: batch_group_count (={count}) must be >= 1")
    if count > 1 and feature_group_count != 1:
        raise ValueError(f"{fn}: batch_group_count (={count}) and feature_group_count (={feature_group_count}) "
                         "cannot both be > 1, as in lax")
    if batch % count:
        raise ValueError(f"{fn}: batch_group_count (={count}) must divide the batch (={batch})")
    if out_channels % count:
        raise ValueError(f"{fn}: batch_group_count (={count}) must divide the output features (={out_channels})")
    return count


def _dtype(fn: str, name: str, dtype: Any) -> np.dtype:
    """A dtype lax's convolution accepts, canonicalised as JAX computes it (float64 is float32
    with x64 disabled)."""
    from jax import dtypes  # local, as above

    try:
        d = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"{fn}: {name} (={fmt(dtype)}) is not a dtype") from e
    if dtype_kind(d) is None or d == dtypes.float0:
        raise TypeError(f"{fn}: {name} (={d.name}) must be a boolean, integer, floating or complex dtype")
    return np.dtype(dtypes.canonicalize_dtype(d))


def _check_preferred(fn: str, dtype: np.dtype, preferred: np.dtype) -> None:
    """``lax.conv_general_dilated``'s rule for ``preferred_element_type``: the kinds (input,
    preferred) are (integer, integer), (integer, floating), (floating, floating) or
    (complex, complex); a signed integer input keeps its sign; the preferred type is never
    narrower than the input."""
    kind, pkind = dtype_kind(dtype), dtype_kind(preferred)
    family = {"int": "integer", "uint": "integer"}
    what = f"{fn}: preferred_element_type (={preferred.name})"
    if kind in ("int", "uint") and pkind == "float":
        pass  # integer operands, a floating result (either sign)
    elif kind != "bool" and family.get(kind, kind) != family.get(pkind, pkind):
        raise TypeError(f"{what} cannot hold a {dtype.name} convolution: (input, preferred) must be (integer, "
                        "integer), (integer, floating), (floating, floating) or (complex, complex), as in lax")
    elif kind == "int" and pkind != "int":
        raise TypeError(f"{what} must be a signed integer type for a signed input ({dtype.name}), as in lax")
    if preferred.itemsize < dtype.itemsize:
        raise TypeError(f"{what} must not be narrower than the input dtype (={dtype.name})")


def _same_pads(size: int, k_eff: int, stride: int) -> tuple[int, int]:
    """TF/XLA 'SAME': output ceil(size / stride), the extra pad after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k_eff - size, 0)
    return total // 2, total - total // 2


def axis_pads(fn: str, name: str, value: Any, *, allow_negative: bool) -> tuple[int, int]:
    """One axis of padding: an int or a (lo, hi) pair."""
    if is_int(value):
        lo = hi = int(value)
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        if not all(is_int(v) for v in value):
            raise TypeError(f"{fn}: {name} (={fmt(value)}) must contain ints")
        lo, hi = int(value[0]), int(value[1])
    else:
        raise TypeError(
            f"{fn}: {name} (={fmt(value)}) must be 'VALID', 'SAME', an int, a pair or "
            "((top, bottom), (left, right))"
        )
    if not allow_negative and (lo < 0 or hi < 0):
        raise ValueError(f"{fn}: {name} (={fmt(value)}) must not be negative")
    return lo, hi


def resolve_padding(
    fn: str,
    padding: Any,
    in_size: Pair,
    k_eff: Pair,
    stride: Pair,
    *,
    allow_negative: bool = False,
    name: str = "padding",
) -> Pads:
    """Any accepted padding form -> ((top, bottom), (left, right)).

    ``in_size`` is the (possibly input-dilated) spatial size, ``k_eff`` the dilated kernel.
    """
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return (0, 0), (0, 0)
        if mode == "SAME":
            return tuple(_same_pads(in_size[i], k_eff[i], stride[i]) for i in range(2))  # type: ignore[return-value]
        if mode == "SAME_LOWER":
            return tuple(_same_pads(in_size[i], k_eff[i], stride[i])[::-1] for i in range(2))  # type: ignore[return-value]
        raise ValueError(
            f"{fn}: {name} (={padding!r}) must be 'VALID', 'SAME' or 'SAME_LOWER' (any case), an int, "
            "a pair (ph, pw) or ((top, bottom), (left, right))"
        )
    if is_int(padding):
        p = axis_pads(fn, name, padding, allow_negative=allow_negative)
        return p, p
    if isinstance(padding, Sequence) and len(padding) == 2:
        a, b = padding
        if is_int(a) and is_int(b):  # (ph, pw): symmetric per axis
            ph = axis_pads(fn, name, a, allow_negative=allow_negative)
            pw = axis_pads(fn, name, b, allow_negative=allow_negative)
            return ph, pw
        return (
            axis_pads(fn, name, a, allow_negative=allow_negative),
            axis_pads(fn, name, b, allow_negative=allow_negative),
        )
    if isinstance(padding, Sequence):
        raise ValueError(
            f"{fn}: {name} (={fmt(padding)}) must have 2 entries (one per spatial axis), "
            f"got {len(padding)}"
        )
    raise TypeError(
        f"{fn}: {name} (={fmt(padding)}) must be 'VALID', 'SAME', an int, a pair or "
        f"((top, bottom), (left, right)), not {type(padding).__name__}"
    )


_PRECISION_NAMES = {"default", "high", "highest", "fastest", "bfloat16", "tensorfloat32", "float32"}


def canonical_precision(fn: str, precision: Any):
    """None, a lax.Precision, its name, or a pair of them -> a hashable value."""
    from jax import lax  # local: geometry stays importable without touching a backend

    def one(p):
        if p is None or isinstance(p, lax.Precision):
            return p
        if isinstance(p, str) and p.lower() in _PRECISION_NAMES:
            return lax.Precision(p.lower())
        raise ValueError(
            f"{fn}: precision (={fmt(precision)}) must be None, a jax.lax.Precision, one of "
            f"{sorted(_PRECISION_NAMES)}, or a pair of those"
        )

    if isinstance(precision, (tuple, list)):
        if len(precision) != 2:
            raise ValueError(f"{fn}: precision (={fmt(precision)}) must be a pair when a sequence")
        return (one(precision[0]), one(precision[1]))
    return one(precision)


# --------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------


def _layout_and_mode(fn: str, layout: Any, padding_mode: Any, flip_kernel: Any) -> tuple[str, str]:
    if not isinstance(layout, str):
        raise TypeError(f"{fn}: layout (={fmt(layout)}) must be a string")
    lay = layout.upper()
    if lay not in LAYOUTS:
        raise ValueError(f"{fn}: layout (={layout!r}) must be 'NHWC' (kernel HWIO) or 'NCHW' (kernel OIHW)")
    if not isinstance(padding_mode, str):
        raise TypeError(f"{fn}: padding_mode (={fmt(padding_mode)}) must be a string")
    mode = padding_mode.lower()
    if mode not in PADDING_MODES:
        raise ValueError(f"{fn}: padding_mode (={padding_mode!r}) must be one of {', '.join(map(repr, PADDING_MODES))}")
    if not isinstance(flip_kernel, (bool, np.bool_)):
        raise TypeError(f"{fn}: flip_kernel (={fmt(flip_kernel)}) must be a bool")
    return lay, mode


def _groups(fn: str, groups: Any) -> int:
    if not is_int(groups):
        raise TypeError(f"{fn}: groups (={fmt(groups)}) must be an int")
    if groups < 1:
        raise ValueError(f"{fn}: groups (={groups}) must be >= 1")
    return int(groups)


def _dtypes(fn: str, x_dtype: Any, w_dtype: Any, preferred_element_type: Any) -> tuple[str, str]:
    """``(dtype, out_dtype)`` of a call: lax's rules (one dtype for both operands, no implicit
    promotion; the result in ``preferred_element_type`` when given, else in that dtype)."""
    xd = _dtype(fn, "x.dtype", x_dtype)
    wd = _dtype(fn, "w.dtype", w_dtype)
    if xd != wd:
        raise TypeError(f"{fn}: x.dtype (={xd.name}) and w.dtype (={wd.name}) must match; cast one of them")
    if preferred_element_type is None:
        return xd.name, xd.name
    out = _dtype(fn, "preferred_element_type", preferred_element_type)
    _check_preferred(fn, xd, out)
    return xd.name, out.name


def _shapes(fn: str, lay: str, x_shape, w_shape, groups: int):
    """``(batched, (n, h, w, c), (kh, kw, ci, co))`` of the arrays, checked against each other."""
    x_shape = tuple(int(s) for s in x_shape)
    w_shape = tuple(int(s) for s in w_shape)
    if len(x_shape) not in (3, 4):
        hint = "(N, H, W, C) or unbatched (H, W, C)" if lay == "NHWC" else "(N, C, H, W) or unbatched (C, H, W)"
        raise ValueError(f"{fn}: x.shape (={x_shape}) must be rank 4 {hint} for layout {lay}, got rank {len(x_shape)}")
    if len(w_shape) != 4:
        hint = "(KH, KW, C_in/groups, C_out) [HWIO]" if lay == "NHWC" else "(C_out, C_in/groups, KH, KW) [OIHW]"
        raise ValueError(f"{fn}: w.shape (={w_shape}) must be rank 4 {hint} for layout {lay}, got rank {len(w_shape)}")
    batched = len(x_shape) == 4
    xs = x_shape if batched else (1,) + x_shape
    if lay == "NHWC":
        n, h, w_, c = xs
        kh, kw, ci, co = w_shape
    else:
        n, c, h, w_ = xs
        co, ci, kh, kw = w_shape
    if min(kh, kw) < 1:  # zero sizes elsewhere give lax's empty (or zero) result
        raise ValueError(f"{fn}: w.shape (={w_shape}) must have a non-zero kernel height and width "
                         f"(got {kh}x{kw}; XLA cannot compile a convolution window without taps)")
    if c % groups:
        raise ValueError(f"{fn}: groups (={groups}) must divide input channels (={c})")
    if co % groups:
        raise ValueError(f"{fn}: groups (={groups}) must divide output channels (={co}, from w.shape={w_shape})")
    if ci * groups != c:
        raise ValueError(
            f"{fn}: w.shape (={w_shape}) has {ci} input channels per group, but x has {c} channels "
            f"and groups={groups}, so the kernel needs {c // groups}"
        )
    return batched, (n, h, w_, c), (kh, kw, ci, co)


def _bias(fn: str, b_shape, b_dtype, co: int, dtype: str, out_dtype: str) -> None:
    """The bias: ``(C_out,)``, in the input's dtype or the result's (an int32 bias of an int8
    convolution with ``preferred_element_type=int32``); it is added in the result's dtype."""
    b_shape = tuple(int(s) for s in b_shape)
    if b_shape != (co,):
        raise ValueError(f"{fn}: b.shape (={b_shape}) must be (C_out,) = ({co},)")
    bd = _dtype(fn, "b.dtype", b_dtype).name
    if bd not in (dtype, out_dtype):
        also = "" if out_dtype == dtype else f" or the result's dtype (={out_dtype})"
        raise TypeError(f"{fn}: b.dtype (={bd}) must match x.dtype (={dtype}){also}")


def _check_padding(fn: str, padding: Any, pads: Pads, mode: str, in_size: Pair, dil_in: Pair, k_eff: Pair,
                   allow_empty_output: bool) -> None:
    """The padding mode's limits, and (unless ``allow_empty_output``) a kernel that fits the
    padded input wherever the input is not empty."""
    for (lo, hi), size, axis in zip(pads, in_size, ("height", "width")):
        if mode in ("reflect", "circular") and max(lo, hi) >= max(size, 1):
            raise ValueError(
                f"{fn}: padding (={fmt(padding)}) with padding_mode={mode!r} must be smaller than "
                f"the input {axis} (={size}); got {max(lo, hi)}"
            )
        if mode == "replicate" and size == 0 and max(lo, hi) > 0:
            raise ValueError(f"{fn}: padding (={fmt(padding)}) with padding_mode='replicate' needs a non-empty "
                             f"input {axis} to repeat (got 0)")
    for (lo, hi), size, axis in zip(pads, dil_in, ("height", "width")):
        if size + lo + hi < 0:  # lax's ValueError
            raise ValueError(f"{fn}: padding (={fmt(padding)}) crops more than the (input-dilated) {axis} "
                             f"(={size}): {lo} + {hi} leaves {size + lo + hi} rows")
    if allow_empty_output:
        return
    for (lo, hi), size, k, axis in zip(pads, dil_in, k_eff, ("height", "width")):
        if size > 0 and size + lo + hi < k:
            raise ValueError(
                f"{fn}: the kernel (dilated {axis} {k}) is larger than the padded input {axis} "
                f"(={size + lo + hi}, from input {size} and padding {(lo, hi)}); "
                "pad more, or use a smaller kernel or dilation"
            )


def parse_conv2d(
    x_shape: Sequence[int],
    x_dtype: Any,
    w_shape: Sequence[int],
    w_dtype: Any,
    b_shape: Sequence[int] | None = None,
    b_dtype: Any = None,
    *,
    stride: Any = 1,
    padding: Any = "VALID",
    dilation: Any = 1,
    lhs_dilation: Any = 1,
    groups: Any = 1,
    layout: Any = "NHWC",
    padding_mode: Any = "zeros",
    flip_kernel: Any = False,
    precision: Any = None,
    preferred_element_type: Any = None,
    allow_negative_padding: bool = False,
    allow_empty_output: bool = False,
    fn: str = "conv2d",
) -> ConvSpec:
    """Check every argument of a Conv2D call and return its :class:`~jconv.spec.ConvSpec`.

    ``allow_negative_padding`` and ``allow_empty_output`` give ``lax.conv_general_dilated``'s
    rules (:func:`jconv.conv_general_dilated`): padding may crop, and a kernel larger than the
    padded input gives an empty output instead of an error. Zero batch, input or channel sizes
    are valid either way: the result is lax's (empty, or zeros of the output shape)."""
    lay, mode = _layout_and_mode(fn, layout, padding_mode, flip_kernel)
    groups = _groups(fn, groups)
    stride = pair(fn, "stride", stride)
    dilation = pair(fn, "dilation", dilation)
    lhs_dilation = pair(fn, "lhs_dilation", lhs_dilation)
    prec = canonical_precision(fn, precision)
    dtype, out_dtype = _dtypes(fn, x_dtype, w_dtype, preferred_element_type)
    batched, (n, h, w_, c), (kh, kw, _, co) = _shapes(fn, lay, x_shape, w_shape, groups)
    if b_shape is not None:
        _bias(fn, b_shape, b_dtype, co, dtype, out_dtype)
    k_eff = ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
    dil_in = tuple((s - 1) * d + 1 if s > 0 else 0 for s, d in zip((h, w_), lhs_dilation))
    pads = resolve_padding(fn, padding, dil_in, k_eff, stride, allow_negative=allow_negative_padding)
    _check_padding(fn, padding, pads, mode, (h, w_), dil_in, k_eff, allow_empty_output)
    return ConvSpec(
        batch=n, in_size=(h, w_), in_channels=c, out_channels=co, kernel_size=(kh, kw), stride=stride,
        padding=pads, dilation=dilation, lhs_dilation=lhs_dilation, groups=groups, layout=lay,
        batched=batched, padding_mode=mode, flip_kernel=bool(flip_kernel), has_bias=b_shape is not None,
        dtype=dtype, out_dtype=out_dtype, precision=prec,
    )


__all__ = [
    "parse_conv2d", "resolve_padding", "axis_pads", "LAYOUTS", "PADDING_MODES", "FLOAT_DTYPES",
    "pair", "is_int", "fmt", "canonical_precision", "dtype_kind", "batch_groups",
]
