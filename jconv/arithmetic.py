"""The seed's arithmetic, public: output sizes, parameter counts, receptive fields, FLOPs.

Each function checks its arguments as :func:`jconv.conv2d` does (the same parser,
:mod:`jconv.geometry`) and names the function in its errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jconv.geometry import axis_pads, fmt, is_int, pair, parse_conv2d, resolve_padding



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
        lo_, hi_ = axis_pads(fn, "padding", padding, allow_negative=False)
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


__all__ = ["output_size", "conv_params", "receptive_field", "conv_flops", "dense_params"]
