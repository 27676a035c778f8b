"""The one argument parser.

Everything a user passes to :func:`jconv.conv2d` or :func:`jconv.conv_general_dilated` is
checked here, once, and turned into a frozen, hashable :class:`~jconv.spec.ConvSpec`. No jax arrays are
touched: only shapes, dtypes and Python values. All user-facing errors live in this module.

Error style: ``<fn>: <argument> (=<value>) <rule>``. TypeError for a wrong kind of value,
ValueError for a wrong value, NotImplementedError for a valid request jconv does not support.
"""

from __future__ import annotations

import dataclasses
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


def _dtype_name(fn: str, name: str, dtype: Any) -> str:
    try:
        d = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"{fn}: {name} (={fmt(dtype)}) is not a dtype") from e
    if d.name not in FLOAT_DTYPES:
        raise TypeError(
            f"{fn}: {name} (={d.name}) must be a floating dtype: one of {', '.join(FLOAT_DTYPES)}"
        )
    return d.name


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
    """``(dtype, out_dtype)`` of a call."""
    xd = _dtype_name(fn, "x.dtype", x_dtype)
    wd = _dtype_name(fn, "w.dtype", w_dtype)
    if xd != wd:
        raise TypeError(f"{fn}: x.dtype (={xd}) and w.dtype (={wd}) must match; cast one of them")
    out = xd if preferred_element_type is None else _dtype_name(fn, "preferred_element_type", preferred_element_type)
    return xd, out


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
    if min(h, w_, c) < 1:
        raise ValueError(f"{fn}: x.shape (={x_shape}) must have non-zero spatial and channel sizes")
    if min(kh, kw, ci, co) < 1:
        raise ValueError(f"{fn}: w.shape (={w_shape}) must have non-zero sizes")
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


def _bias(fn: str, b_shape, b_dtype, co: int, dtype: str) -> None:
    b_shape = tuple(int(s) for s in b_shape)
    if b_shape != (co,):
        raise ValueError(f"{fn}: b.shape (={b_shape}) must be (C_out,) = ({co},)")
    bd = _dtype_name(fn, "b.dtype", b_dtype)
    if bd != dtype:
        raise TypeError(f"{fn}: b.dtype (={bd}) must match x.dtype (={dtype})")


def _check_padding(fn: str, padding: Any, pads: Pads, mode: str, in_size: Pair, dil_in: Pair, k_eff: Pair) -> None:
    """The padding mode's limits, and a kernel that fits the padded input."""
    if mode in ("reflect", "circular"):
        for (lo, hi), size, axis in zip(pads, in_size, ("height", "width")):
            if max(lo, hi) >= size:
                raise ValueError(
                    f"{fn}: padding (={fmt(padding)}) with padding_mode={mode!r} must be smaller than "
                    f"the input {axis} (={size}); got {max(lo, hi)}"
                )
    for (lo, hi), size, k, axis in zip(pads, dil_in, k_eff, ("height", "width")):
        if size + lo + hi < k:
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
    fn: str = "conv2d",
) -> ConvSpec:
    """Check every argument of a Conv2D call and return its :class:`~jconv.spec.ConvSpec`."""
    lay, mode = _layout_and_mode(fn, layout, padding_mode, flip_kernel)
    groups = _groups(fn, groups)
    stride = pair(fn, "stride", stride)
    dilation = pair(fn, "dilation", dilation)
    lhs_dilation = pair(fn, "lhs_dilation", lhs_dilation)
    prec = canonical_precision(fn, precision)
    dtype, out_dtype = _dtypes(fn, x_dtype, w_dtype, preferred_element_type)
    batched, (n, h, w_, c), (kh, kw, _, co) = _shapes(fn, lay, x_shape, w_shape, groups)
    if b_shape is not None:
        _bias(fn, b_shape, b_dtype, co, dtype)
    k_eff = ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
    dil_in = ((h - 1) * lhs_dilation[0] + 1, (w_ - 1) * lhs_dilation[1] + 1)
    pads = resolve_padding(fn, padding, dil_in, k_eff, stride, allow_negative=allow_negative_padding)
    _check_padding(fn, padding, pads, mode, (h, w_), dil_in, k_eff)
    return ConvSpec(
        batch=n, in_size=(h, w_), in_channels=c, out_channels=co, kernel_size=(kh, kw), stride=stride,
        padding=pads, dilation=dilation, lhs_dilation=lhs_dilation, groups=groups, layout=lay,
        batched=batched, padding_mode=mode, flip_kernel=bool(flip_kernel), has_bias=b_shape is not None,
        dtype=dtype, out_dtype=out_dtype, precision=prec,
    )


__all__ = [
    "parse_conv2d", "resolve_padding", "axis_pads", "LAYOUTS", "PADDING_MODES", "FLOAT_DTYPES",
    "pair", "is_int", "fmt", "canonical_precision",
]
