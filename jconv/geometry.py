"""The seed's arithmetic and the one argument parser.

Everything a user passes to :func:`jconv.conv2d` or :func:`jconv.conv_general_dilated` is
checked here, once, and turned into a frozen, hashable :class:`ConvSpec`. No jax arrays are
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

LAYOUTS = ("NHWC", "NCHW")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")

Pair = tuple[int, int]
Pads = tuple[tuple[int, int], tuple[int, int]]


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


def _axis_pads(fn: str, name: str, value: Any, *, allow_negative: bool) -> tuple[int, int]:
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
            f"{fn}: {name} (={padding!r}) must be 'VALID' or 'SAME' (any case), an int, "
            "a pair (ph, pw) or ((top, bottom), (left, right))"
        )
    if is_int(padding):
        p = _axis_pads(fn, name, padding, allow_negative=allow_negative)
        return p, p
    if isinstance(padding, Sequence) and len(padding) == 2:
        a, b = padding
        if is_int(a) and is_int(b):  # (ph, pw): symmetric per axis
            ph = _axis_pads(fn, name, a, allow_negative=allow_negative)
            pw = _axis_pads(fn, name, b, allow_negative=allow_negative)
            return ph, pw
        return (
            _axis_pads(fn, name, a, allow_negative=allow_negative),
            _axis_pads(fn, name, b, allow_negative=allow_negative),
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
# ConvSpec
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """Everything about one Conv2D call except the arrays. Frozen and hashable.

    Spatial fields are (height, width) pairs. ``padding`` is per side, already resolved
    (``SAME`` turned into numbers); ``padding_mode`` says what fills it. ``lhs_dilation`` is
    input dilation (transposed convolution); ``dilation`` is kernel dilation.

    Implementations receive a spec from :meth:`for_execute`: NHWC arrays, kernel HWIO, already
    flipped, non-zero padding modes already applied, non-negative zero padding left to do.
    """

    batch: int
    in_size: Pair
    in_channels: int
    out_channels: int
    kernel_size: Pair
    stride: Pair = (1, 1)
    padding: Pads = ((0, 0), (0, 0))
    dilation: Pair = (1, 1)
    lhs_dilation: Pair = (1, 1)
    groups: int = 1
    layout: str = "NHWC"
    batched: bool = True
    padding_mode: str = "zeros"
    flip_kernel: bool = False
    has_bias: bool = False
    dtype: str = "float32"
    out_dtype: str = "float32"
    precision: Any = None

    # ---- derived geometry ----
    @property
    def dilated_in_size(self) -> Pair:
        return tuple((s - 1) * d + 1 if s > 0 else 0 for s, d in zip(self.in_size, self.lhs_dilation))  # type: ignore[return-value]

    @property
    def padded_size(self) -> Pair:
        return tuple(s + lo + hi for s, (lo, hi) in zip(self.dilated_in_size, self.padding))  # type: ignore[return-value]

    @property
    def effective_kernel_size(self) -> Pair:
        return tuple((k - 1) * d + 1 for k, d in zip(self.kernel_size, self.dilation))  # type: ignore[return-value]

    @property
    def out_size(self) -> Pair:
        return tuple(  # type: ignore[return-value]
            (p - k) // s + 1 for p, k, s in zip(self.padded_size, self.effective_kernel_size, self.stride)
        )

    @property
    def input_grad_padding(self) -> Pads:
        """Per-side padding of the stride-dilated cotangent whose VALID convolution with the
        flipped kernel (stride = ``lhs_dilation``) is the input gradient. May be negative (a crop)."""
        pads = []
        for size, k, s, (lo, _), ld, o in zip(self.in_size, self.effective_kernel_size, self.stride,
                                             self.padding, self.lhs_dilation, self.out_size):
            before = k - 1 - lo
            after = ((size - 1) * ld + 1) + k - 1 - ((o - 1) * s + 1) - before
            pads.append((before, after))
        return tuple(pads)  # type: ignore[return-value]

    @property
    def group_in_channels(self) -> int:
        return self.in_channels // self.groups

    @property
    def group_out_channels(self) -> int:
        return self.out_channels // self.groups

    @property
    def is_depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels

    @property
    def depth_multiplier(self) -> int:
        return self.out_channels // self.groups if self.is_depthwise else 1

    @property
    def is_pointwise(self) -> bool:
        return self.kernel_size == (1, 1) and self.dilation == (1, 1)

    @property
    def x_shape(self) -> tuple[int, ...]:
        h, w = self.in_size
        shape = (h, w, self.in_channels) if self.layout == "NHWC" else (self.in_channels, h, w)
        return ((self.batch,) + shape) if self.batched else shape

    @property
    def w_shape(self) -> tuple[int, ...]:
        kh, kw = self.kernel_size
        if self.layout == "NHWC":
            return (kh, kw, self.group_in_channels, self.out_channels)
        return (self.out_channels, self.group_in_channels, kh, kw)

    @property
    def out_shape(self) -> tuple[int, ...]:
        h, w = self.out_size
        shape = (h, w, self.out_channels) if self.layout == "NHWC" else (self.out_channels, h, w)
        return ((self.batch,) + shape) if self.batched else shape

    @property
    def flops(self) -> int:
        """Multiply-adds x 2 (bias not counted)."""
        ho, wo = self.out_size
        kh, kw = self.kernel_size
        return 2 * self.batch * ho * wo * self.out_channels * self.group_in_channels * kh * kw

    @property
    def params(self) -> int:
        kh, kw = self.kernel_size
        return kh * kw * self.group_in_channels * self.out_channels + (self.out_channels if self.has_bias else 0)

    def for_execute(self, in_size: Pair | None = None, padding: Pads | None = None) -> "ConvSpec":
        """The canonical spec an implementation sees (see class docstring)."""
        return dataclasses.replace(
            self,
            layout="NHWC",
            batched=True,
            padding_mode="zeros",
            flip_kernel=False,
            in_size=self.in_size if in_size is None else in_size,
            padding=self.padding if padding is None else padding,
        )

    def execute_spec(self) -> "ConvSpec":
        """The spec a backend runs for this call: NHWC, batched, the kernel already flipped, a
        non-zero padding mode already applied to ``x`` (its pads folded into ``in_size``),
        negative (cropping) padding already applied together with the input dilation. What is
        left is non-negative zero padding and, possibly, input dilation.
        (:func:`jconv.conv2d` does these array steps; this mirrors them on shapes.)"""
        pads, in_size, lhs_dil = self.padding, self.in_size, self.lhs_dilation
        if self.padding_mode != "zeros":
            in_size = tuple(s + lo + hi for s, (lo, hi) in zip(in_size, pads))
            pads = ((0, 0), (0, 0))
        elif any(p < 0 for side in pads for p in side):
            in_size = self.padded_size
            pads, lhs_dil = ((0, 0), (0, 0)), (1, 1)
        return dataclasses.replace(self.for_execute(in_size=in_size, padding=pads), lhs_dilation=lhs_dil)

    def input_grad_spec(self) -> "ConvSpec":
        """The convolution that computes this one's input gradient from the cotangent ``dy``:
        input ``dy`` (N, Ho, Wo, C_out), kernel :func:`jconv.impls.common.transpose_kernel` of
        ``w`` (flipped, in/out channels swapped per group), stride = this input dilation, input
        dilation = this stride, padding :attr:`input_grad_padding` (may be negative: a crop).
        Its output is ``x``'s shape; it runs in ``w``'s dtype and returns ``x``'s."""
        out = dataclasses.replace(
            self, batched=True, layout="NHWC", padding_mode="zeros", flip_kernel=False, has_bias=False,
            in_size=self.out_size, in_channels=self.out_channels, out_channels=self.in_channels,
            stride=self.lhs_dilation, lhs_dilation=self.stride, padding=self.input_grad_padding,
            out_dtype=self.dtype,
        )
        if out.out_size != tuple(self.in_size):  # holds by construction; a broken invariant is a bug
            raise AssertionError(f"input_grad_spec: size {out.out_size} != input {self.in_size}")
        return out

    def valid_spec(self) -> "ConvSpec":
        """This convolution on the zero-padded, input-dilated ``x``: no padding left (VALID)."""
        return dataclasses.replace(self.for_execute(in_size=self.padded_size, padding=((0, 0), (0, 0))),
                                   lhs_dilation=(1, 1))

    @property
    def taps(self) -> int:
        """Kernel positions, KH * KW."""
        return self.kernel_size[0] * self.kernel_size[1]

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        """HWIO kernel shape of the execute contract, (KH, KW, C_in/groups, C_out)."""
        return self.kernel_size + (self.group_in_channels, self.out_channels)


# --------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------


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
    """Check every argument of a Conv2D call and return its :class:`ConvSpec`."""
    # ---- kinds of the simple arguments ----
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
    if not is_int(groups):
        raise TypeError(f"{fn}: groups (={fmt(groups)}) must be an int")
    groups = int(groups)
    if groups < 1:
        raise ValueError(f"{fn}: groups (={groups}) must be >= 1")
    stride = pair(fn, "stride", stride)
    dilation = pair(fn, "dilation", dilation)
    lhs_dilation = pair(fn, "lhs_dilation", lhs_dilation)
    prec = canonical_precision(fn, precision)

    # ---- dtypes ----
    xd = _dtype_name(fn, "x.dtype", x_dtype)
    wd = _dtype_name(fn, "w.dtype", w_dtype)
    if xd != wd:
        raise TypeError(f"{fn}: x.dtype (={xd}) and w.dtype (={wd}) must match; cast one of them")
    out_dtype = xd if preferred_element_type is None else _dtype_name(fn, "preferred_element_type", preferred_element_type)

    # ---- shapes ----
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
    if b_shape is not None:
        b_shape = tuple(int(s) for s in b_shape)
        if b_shape != (co,):
            raise ValueError(f"{fn}: b.shape (={b_shape}) must be (C_out,) = ({co},)")
        bd = _dtype_name(fn, "b.dtype", b_dtype)
        if bd != xd:
            raise TypeError(f"{fn}: b.dtype (={bd}) must match x.dtype (={xd})")

    # ---- padding ----
    k_eff = ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
    dil_in = ((h - 1) * lhs_dilation[0] + 1, (w_ - 1) * lhs_dilation[1] + 1)
    pads = resolve_padding(fn, padding, dil_in, k_eff, stride, allow_negative=allow_negative_padding)
    if mode in ("reflect", "circular"):
        for (lo, hi), size, axis in zip(pads, (h, w_), ("height", "width")):
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

    return ConvSpec(
        batch=n,
        in_size=(h, w_),
        in_channels=c,
        out_channels=co,
        kernel_size=(kh, kw),
        stride=stride,
        padding=pads,  # type: ignore[arg-type]
        dilation=dilation,
        lhs_dilation=lhs_dilation,
        groups=groups,
        layout=lay,
        batched=batched,
        padding_mode=mode,
        flip_kernel=bool(flip_kernel),
        has_bias=b_shape is not None,
        dtype=xd,
        out_dtype=out_dtype,
        precision=prec,
    )


# --------------------------------------------------------------------------------------------
# The seed's arithmetic, public
# --------------------------------------------------------------------------------------------


def output_size(input_size: int, kernel_size: int, *, padding: Any = 0, stride: int = 1, dilation: int = 1) -> int:
    """``floor((input + pad_lo + pad_hi - dilation*(kernel-1) - 1) / stride) + 1``.

    ``padding``: an int (both sides), a ``(lo, hi)`` pair, ``"VALID"`` or ``"SAME"``.
    The seed's table: ``output_size(28, 3) == 26``, ``output_size(224, 7, padding=3, stride=2) == 112``.
    """
    fn = "output_size"
    for name, v, lo in (("input_size", input_size, 1), ("kernel_size", kernel_size, 1),
                        ("stride", stride, 1), ("dilation", dilation, 1)):
        if not is_int(v):
            raise TypeError(f"{fn}: {name} (={fmt(v)}) must be an int")
        if v < lo:
            raise ValueError(f"{fn}: {name} (={v}) must be >= {lo}")
    k_eff = (kernel_size - 1) * dilation + 1
    if isinstance(padding, str):
        (lo_, hi_), _ = resolve_padding(fn, padding, (input_size, 1), (k_eff, 1), (stride, 1))
    else:
        lo_, hi_ = _axis_pads(fn, "padding", padding, allow_negative=False)
    padded = input_size + lo_ + hi_
    if padded < k_eff:
        raise ValueError(
            f"{fn}: the kernel (dilated size {k_eff}) is larger than the padded input (={padded})"
        )
    return (padded - k_eff) // stride + 1


def conv_params(in_channels: int, out_channels: int, kernel_size: Any, *, groups: int = 1, bias: bool = True) -> int:
    """Learnable parameters of one Conv2D: ``kh*kw*(C_in/groups)*C_out (+ C_out)``.

    The seed: ``conv_params(1, 32, 3) == 320``, ``conv_params(32, 64, 3) == 18_496``.
    """
    fn = "conv_params"
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
        if not is_int(v):
            raise TypeError(f"{fn}: {name} (={fmt(v)}) must be an int")
        if v < 1:
            raise ValueError(f"{fn}: {name} (={v}) must be >= 1")
    kh, kw = pair(fn, "kernel_size", kernel_size)
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"{fn}: groups (={groups}) must divide in_channels (={in_channels}) and out_channels (={out_channels})"
        )
    return kh * kw * (in_channels // groups) * out_channels + (out_channels if bias else 0)


def receptive_field(layers: Sequence[Sequence[int]]) -> int:
    """Receptive field (one axis) of a stack of layers, each ``(kernel, stride[, dilation])``.

    Pooling 2x2 is ``(2, 2)``. The seed: one, two, three 3x3 convs give 3, 5, 7.
    """
    fn = "receptive_field"
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise TypeError(f"{fn}: layers (={fmt(layers)}) must be a sequence of (kernel, stride[, dilation])")
    rf, jump = 1, 1
    for i, layer in enumerate(layers):
        if not isinstance(layer, Sequence) or len(layer) not in (2, 3) or not all(is_int(v) for v in layer):
            raise ValueError(f"{fn}: layers[{i}] (={fmt(layer)}) must be (kernel, stride) or (kernel, stride, dilation) of ints")
        k, s = int(layer[0]), int(layer[1])
        d = int(layer[2]) if len(layer) == 3 else 1
        if min(k, s, d) < 1:
            raise ValueError(f"{fn}: layers[{i}] (={fmt(layer)}) must hold positive ints")
        rf += ((k - 1) * d) * jump
        jump *= s
    return rf


def conv_flops(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    *,
    stride: Any = 1,
    padding: Any = "VALID",
    dilation: Any = 1,
    groups: int = 1,
    layout: str = "NHWC",
) -> int:
    """FLOPs of one Conv2D forward: multiply-adds x 2, from array shapes (bias not counted)."""
    spec = parse_conv2d(
        x_shape, "float32", w_shape, "float32", stride=stride, padding=padding,
        dilation=dilation, groups=groups, layout=layout, fn="conv_flops",
    )
    return spec.flops


def dense_params(in_features: int, out_features: int, *, bias: bool = True) -> int:
    """A fully connected layer's parameters (the seed's comparison: 224*224*3*64)."""
    return in_features * out_features + (out_features if bias else 0)


__all__ = [
    "ConvSpec", "parse_conv2d", "resolve_padding", "output_size", "conv_params",
    "receptive_field", "conv_flops", "dense_params", "LAYOUTS", "PADDING_MODES", "FLOAT_DTYPES",
    "pair", "is_int", "fmt", "canonical_precision",
]
