"""Flax's convolution conventions, translated to jconv calls (shared by jconv.linen and jconv.nnx).

A flax conv module's static arguments are normalised here, once, into a frozen, hashable record
(:func:`parse_conv_args`, :func:`parse_conv_transpose_args`): ints and pairs become ``(h, w)``
tuples, ``None`` becomes flax's "1", flax's padding forms become a ``"SAME"``/``"VALID"``
string or ``((top, bottom), (left, right))`` pairs. Errors name the module's field
(``ConvTranspose: strides (=0) must be >= 1``). Everything that needs the input's shape (output
size, ``"SAME"`` for a forward conv, channel and group checks) is left to the one parse of
:func:`jconv.conv2d` / :func:`jconv.conv_general_dilated`.

:func:`flax_conv2d` and :func:`flax_conv_transpose` then run one call with flax's array
conventions: channels-last inputs with any number of leading batch dimensions (none: one
example), the kernel HWIO (``(KH, KW, out, in)`` for ``transpose_kernel=True``), the bias added
after the convolution.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jconv import fused, geometry
from jconv.conv import conv2d, conv_general_dilated
from jconv.geometry import fmt, is_int
from jconv.impls.common import add_bias

__all__ = ["ConvArgs", "ConvTransposeArgs", "parse_conv_args", "parse_conv_transpose_args", "parse_activation",
           "flax_conv2d", "flax_conv_transpose"]

Pair = tuple[int, int]
Pads = tuple[Pair, Pair]

#: flax's padding strings that mean "pad with these values" -> jconv's padding_mode
_FLAX_PAD_MODES = {"CIRCULAR": "circular", "REFLECT": "reflect"}
_NHWC = ("NHWC", "HWIO", "NHWC")


@dataclasses.dataclass(frozen=True)
class ConvArgs:
    """A ``Conv``'s static arguments. ``padding``: ``"SAME"``, ``"VALID"`` or explicit pairs;
    ``padding_mode`` says what fills explicit pads (flax's ``"CIRCULAR"``/``"REFLECT"``)."""

    kernel_size: Pair
    strides: Pair
    padding: str | Pads
    input_dilation: Pair
    kernel_dilation: Pair
    feature_group_count: int
    padding_mode: str


@dataclasses.dataclass(frozen=True)
class ConvTransposeArgs:
    """A ``ConvTranspose``'s static arguments: ``pads`` are the explicit pads of the input-dilated
    convolution (``lax.conv_transpose``'s rule for ``"SAME"``/``"VALID"``); ``circular``: the
    output is then wrapped periodically (flax's ``"CIRCULAR"``)."""

    kernel_size: Pair
    strides: Pair
    kernel_dilation: Pair
    pads: Pads
    circular: bool


def _pair(fn: str, name: str, value: Any) -> Pair:
    """flax's int-or-sequence, ``None`` meaning 1 (flax's backward-compatible sentinel)."""
    return geometry.pair(fn, name, 1 if value is None else value)


def _explicit_pads(fn: str, padding: Any) -> Pads:
    """flax's explicit padding: an int (every side), or one entry per spatial axis, each an int
    (both sides) or a ``(low, high)`` pair."""

    def side(v):
        if is_int(v):
            return int(v), int(v)
        if isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 2 and all(map(is_int, v)):
            return int(v[0]), int(v[1])
        raise TypeError(
            f"{fn}: padding (={fmt(padding)}) must be a string, an int, or one int or (low, high) pair "
            "of ints per spatial axis"
        )

    if is_int(padding):
        return side(padding), side(padding)
    if isinstance(padding, Sequence) and not isinstance(padding, str):
        if len(padding) != 2:
            raise ValueError(
                f"{fn}: padding (={fmt(padding)}) must have one entry per spatial axis (2), got {len(padding)}"
            )
        return side(padding[0]), side(padding[1])
    raise TypeError(f"{fn}: padding (={fmt(padding)}) must be a string, an int or a sequence, "
                    f"not {type(padding).__name__}")


def _effective(kernel_size: Pair, dilation: Pair) -> Pair:
    return tuple((k - 1) * d + 1 for k, d in zip(kernel_size, dilation))  # type: ignore[return-value]


def parse_conv_args(fn: str, *, kernel_size, strides, padding, input_dilation, kernel_dilation,
                    feature_group_count, padding_mode) -> ConvArgs:
    """A ``Conv`` module's fields -> :class:`ConvArgs` (an int ``kernel_size`` means ``(k, k)``)."""
    ks = geometry.pair(fn, "kernel_size", kernel_size)
    dil = _pair(fn, "kernel_dilation", kernel_dilation)
    if not is_int(feature_group_count):
        raise TypeError(f"{fn}: feature_group_count (={fmt(feature_group_count)}) must be an int")
    if feature_group_count < 1:
        raise ValueError(f"{fn}: feature_group_count (={feature_group_count}) must be >= 1")
    if not isinstance(padding_mode, str):
        raise TypeError(f"{fn}: padding_mode (={fmt(padding_mode)}) must be a string")
    if isinstance(padding, str):
        name = padding.upper()
        if name in _FLAX_PAD_MODES:
            mode = _FLAX_PAD_MODES[name]
            if padding_mode not in ("zeros", mode):
                raise ValueError(f"{fn}: padding (={padding!r}) already sets padding_mode={mode!r}, which "
                                 f"conflicts with padding_mode (={padding_mode!r})")
            # flax pads (k_eff - 1) // 2 before and k_eff // 2 after, then runs VALID
            pads = tuple(((k - 1) // 2, k // 2) for k in _effective(ks, dil))
            padding, padding_mode = pads, mode
        elif name == "CAUSAL":
            raise ValueError(f"{fn}: padding (={padding!r}) is only defined for 1-D convolutions (as in flax)")
        elif name in ("SAME", "SAME_LOWER", "VALID"):
            padding = name  # needs the input size: conv2d resolves it
        else:
            raise ValueError(f"{fn}: padding (={padding!r}) must be 'SAME', 'SAME_LOWER', 'VALID', 'CIRCULAR', "
                             "'REFLECT', an int, (ph, pw) or ((top, bottom), (left, right))")
    else:
        padding = _explicit_pads(fn, padding)
    return ConvArgs(
        kernel_size=ks, strides=_pair(fn, "strides", strides), padding=padding,
        input_dilation=_pair(fn, "input_dilation", input_dilation), kernel_dilation=dil,
        feature_group_count=int(feature_group_count), padding_mode=padding_mode,
    )


def parse_activation(fn: str, activation: Any):
    """A ``Conv`` module's ``activation`` (jconv's field; flax's modules have none): None,
    ``"relu"`` (the bias and ReLU as the convolution's epilogue: :mod:`jconv.fused`; so is
    ``jax.nn.relu``, which ``flax.linen.relu`` and ``flax.nnx.relu`` are), or any other
    callable, applied to the output."""
    if activation is None or activation is jax.nn.relu:
        return None if activation is None else "relu"
    if isinstance(activation, str):
        if activation not in fused.ACTIVATIONS:
            raise ValueError(f"{fn}: activation (={activation!r}) must be one of {fused.ACTIVATIONS}, a callable "
                             "or None")
        return activation
    if not callable(activation):
        raise TypeError(f"{fn}: activation (={fmt(activation)}) must be None, a string or a callable")
    return activation


def _transpose_pads(name: str, k_eff: int, s: int) -> Pair:
    """The pads of the input-dilated convolution that transposes a forward conv with ``name``
    padding (``lax.conv_transpose``'s rule): ``SAME`` gives ``in * s`` outputs, ``VALID``
    ``in * s + max(k_eff - s, 0)``."""
    if name == "SAME":
        total = k_eff + s - 2
        lo = k_eff - 1 if s > k_eff - 1 else -(-total // 2)
    else:
        total = k_eff + s - 2 + max(k_eff - s, 0)
        lo = k_eff - 1
    return lo, total - lo


def parse_conv_transpose_args(fn: str, *, kernel_size, strides, padding, kernel_dilation) -> ConvTransposeArgs:
    """A ``ConvTranspose`` module's fields -> :class:`ConvTransposeArgs`. The padding strings
    are flax's (upper case, as ``lax.conv_transpose`` reads them)."""
    ks = geometry.pair(fn, "kernel_size", kernel_size)
    strides = _pair(fn, "strides", strides)
    dil = _pair(fn, "kernel_dilation", kernel_dilation)
    circular = isinstance(padding, str) and padding == "CIRCULAR"
    if isinstance(padding, str):
        if padding not in ("SAME", "VALID", "CIRCULAR"):
            raise ValueError(f"{fn}: padding (={padding!r}) must be 'SAME', 'VALID' or 'CIRCULAR' (upper case, "
                             "as in flax), an int, (ph, pw) or ((top, bottom), (left, right))")
        name = "VALID" if circular else padding
        pads = tuple(_transpose_pads(name, k, s) for k, s in zip(_effective(ks, dil), strides))
    else:
        pads = _explicit_pads(fn, padding)  # the input-dilated conv's own pads (may crop)
    return ConvTransposeArgs(kernel_size=ks, strides=strides, kernel_dilation=dil, pads=pads, circular=circular)


def _flatten_batch(fn: str, inputs):
    """``(*batch, H, W, C)`` -> ``(N, H, W, C)`` and the batch shape to restore (None: one
    leading batch dimension already; ``()``: one unbatched example)."""
    if inputs.ndim < 3:
        raise ValueError(f"{fn}: inputs.shape (={tuple(inputs.shape)}) must be (*batch_dims, H, W, C)")
    if inputs.ndim == 4:
        return inputs, None
    return jnp.reshape(inputs, (-1,) + inputs.shape[-3:]), inputs.shape[:-3]


def flax_conv2d(inputs, kernel, bias, args: ConvArgs, *, flip_kernel=False, precision=None,
                preferred_element_type=None, impl="auto", fn="Conv2D", activation=None):
    """``flax.linen.Conv``'s computation on jconv: :func:`jconv.conv2d`, or
    :func:`jconv.conv_general_dilated` for ``input_dilation > 1`` (zero padding only), then
    ``activation`` (from :func:`parse_activation`; ``"relu"``: conv2d's epilogue).
    ``inputs``, ``kernel`` and ``bias`` are already promoted to one dtype."""
    x, batch_shape = _flatten_batch(fn, inputs)
    epilogue = activation if isinstance(activation, str) and args.input_dilation == (1, 1) else None
    if args.input_dilation == (1, 1):
        y = conv2d(
            x, kernel, bias, stride=args.strides, padding=args.padding, dilation=args.kernel_dilation,
            groups=args.feature_group_count, padding_mode=args.padding_mode, flip_kernel=flip_kernel,
            impl=impl, precision=precision, preferred_element_type=preferred_element_type, activation=epilogue,
        )
    else:
        if args.padding_mode != "zeros" or flip_kernel:
            raise NotImplementedError(
                f"{fn}: input_dilation (={args.input_dilation}) > 1 supports only zero padding without "
                f"flip_kernel; got padding_mode={args.padding_mode!r}, flip_kernel={flip_kernel}"
            )
        y = conv_general_dilated(
            x, kernel, args.strides, args.padding,
            lhs_dilation=args.input_dilation, rhs_dilation=args.kernel_dilation, dimension_numbers=_NHWC,
            feature_group_count=args.feature_group_count, precision=precision,
            preferred_element_type=preferred_element_type, impl=impl,
        )
        y = add_bias(y, bias)
    if activation is not None and epilogue is None:
        y = jax.nn.relu(y) if activation == "relu" else activation(y)
    return y if batch_shape is None else jnp.reshape(y, batch_shape + y.shape[1:])


def _wrap(y, axis: int, period: int, shift: int):
    """Fold ``y`` periodically along ``axis``: entry ``i`` lands on ``(i + shift) % period``."""
    n = y.shape[axis]
    reps = -(-n // period)
    pad = [(0, 0)] * y.ndim
    pad[axis] = (0, reps * period - n)
    y = jnp.pad(y, pad)
    y = jnp.sum(jnp.reshape(y, y.shape[:axis] + (reps, period) + y.shape[axis + 1:]), axis=axis)
    return jnp.roll(y, shift % period, axis=axis)


def _circular(y, in_size: Pair, args: ConvTransposeArgs, transpose_kernel: bool):
    """flax's ``"CIRCULAR"``: the VALID result folded onto a period of ``in * stride`` per axis.
    The fold's offset is flax's: the surplus ``-(L - period) mod 2 * period`` split evenly, its
    odd one before (after with ``transpose_kernel``)."""
    for axis, (n, s) in enumerate(zip(in_size, args.strides), start=1):
        period = n * s
        surplus = -(y.shape[axis] - period) % (2 * period)
        shift = surplus // 2 if transpose_kernel else (surplus + 1) // 2
        y = _wrap(y, axis, period, shift)
    return y


def flax_conv_transpose(inputs, kernel, bias, args: ConvTransposeArgs, *, transpose_kernel=False,
                        precision=None, preferred_element_type=None, impl="auto", fn="ConvTranspose"):
    """``flax.linen.ConvTranspose``'s computation on jconv: one input-dilated
    :func:`jconv.conv_general_dilated` (``lhs_dilation = strides``, window stride 1), the
    kernel flipped and its channel axes swapped first for ``transpose_kernel``."""
    x, batch_shape = _flatten_batch(fn, inputs)
    if transpose_kernel:  # stored (KH, KW, out, in): flip H and W, swap the channel axes -> HWIO
        kernel = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)
    y = conv_general_dilated(
        x, kernel, (1, 1), args.pads, lhs_dilation=args.strides, rhs_dilation=args.kernel_dilation,
        dimension_numbers=_NHWC, precision=precision, preferred_element_type=preferred_element_type, impl=impl,
    )
    if args.circular:
        y = _circular(y, x.shape[1:3], args, transpose_kernel)
    y = add_bias(y, bias)
    return y if batch_shape is None else jnp.reshape(y, batch_shape + y.shape[1:])
